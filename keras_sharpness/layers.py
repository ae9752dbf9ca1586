"""BatchNormalization that can normalize with batch statistics at evaluation.

Keras 1's ``BatchNormalization(mode=2)``, used by the original code of Keskar
et al., normalized every batch with *that batch's* mean and variance, in
training and at evaluation alike. Modern Keras normalizes with moving
statistics at evaluation. `SwitchableBatchNormalization` offers both through
one attribute, ``eval_statistics``:

* ``"batch"``: at evaluation (``training=False``) the layer normalizes with the
  current batch's statistics, as ``mode=2`` did. The moving statistics are
  *not* updated at evaluation, so evaluation never changes the model. The
  output for one sample then depends on the rest of its batch.
* ``"moving"``: standard Keras behaviour (moving statistics at evaluation).

Training (``training=True``) is the same in both modes: batch statistics, and
the moving statistics are updated.

At evaluation in ``"batch"`` mode the layer computes the batch mean and
variance itself (`exact_moments`), differentiable to every order: Keras'
moments (`tf.nn.moments`) stop the gradient through the mean inside the
variance, which leaves first derivatives right but makes Hessian-vector
products through batch-statistics BN wrong. With ``synchronized=True`` (TensorFlow
backend) the batch statistics are all-reduced across the replicas of a
`tf.distribute` strategy, in training and, in ``"batch"`` mode, at evaluation.
"""

import keras

BN_MODES = ("batch", "moving")


def check_bn_mode(mode):
    """Returns `mode` if it is a known BN evaluation mode, else raises."""
    from keras_sharpness.errors import UserError

    if mode not in BN_MODES:
        raise UserError(
            f"unknown BatchNorm evaluation mode {mode!r}; choose one of "
            f"{', '.join(BN_MODES)}")
    return mode


def exact_moments(inputs, axes):
    """Mean and variance over `axes`, with exact derivatives of every order."""
    axes = list(axes)
    mean = keras.ops.mean(inputs, axis=axes, keepdims=True)
    variance = keras.ops.mean(keras.ops.square(inputs - mean), axis=axes)
    return keras.ops.squeeze(mean, axis=tuple(axes)), variance


@keras.saving.register_keras_serializable(package="keras_sharpness")
class SwitchableBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a choice of evaluation statistics.

    Args:
        eval_statistics: ``"batch"`` (Keras 1 ``mode=2``) or ``"moving"``.
        **kwargs: passed to `keras.layers.BatchNormalization`.
    """

    def __init__(self, eval_statistics="batch", **kwargs):
        super().__init__(**kwargs)
        self.eval_statistics = check_bn_mode(eval_statistics)

    def call(self, inputs, training=None, mask=None):
        if training or self.eval_statistics == "moving":
            return super().call(inputs, training=training, mask=mask)
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = keras.ops.cast(inputs, compute_dtype)
        if self.synchronized or mask is not None:
            mean, variance = self._moments(inputs, mask)  # all-reduced / masked: Keras'
        else:
            mean, variance = exact_moments(inputs, self._reduction_axes)
        outputs = keras.ops.batch_normalization(
            x=inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=None if self.beta is None else keras.ops.cast(self.beta, compute_dtype),
            scale=None if self.gamma is None else keras.ops.cast(self.gamma, compute_dtype),
            epsilon=self.epsilon,
        )
        return keras.ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "eval_statistics": self.eval_statistics}
