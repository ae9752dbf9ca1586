"""BatchNormalization that can normalize with batch statistics at evaluation.

Keras 1's ``BatchNormalization(mode=2)``, used by the original code of Keskar
et al., normalized every batch with *that batch's* mean and variance, in
training and at evaluation alike. Modern Keras normalizes with moving
statistics at evaluation. `SwitchableBatchNormalization` offers both through
one attribute, ``bn_eval``:

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

import contextlib

import keras

#: The values of ``bn_eval`` a BatchNorm layer takes (one table, in
#: keras_sharpness.config). Commands add their own: ``"model"`` (each layer
#: keeps its own) and, along a path, ``"recompute"``.
from keras_sharpness.config import BN_EVAL_MODES as BN_MODES


def check_bn_eval(mode):
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
        bn_eval: ``"batch"`` (Keras 1 ``mode=2``) or ``"moving"``.
        **kwargs: passed to `keras.layers.BatchNormalization`.
    """

    def __init__(self, bn_eval="batch", **kwargs):
        super().__init__(**kwargs)
        self.bn_eval = check_bn_eval(bn_eval)

    def call(self, inputs, training=None, mask=None):
        if training or self.bn_eval == "moving":
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
        return {**super().get_config(), "bn_eval": self.bn_eval}

    @classmethod
    def from_config(cls, config):
        from keras_sharpness.migrate import upgrade

        return super().from_config(upgrade(config))  # checkpoints of earlier versions


def batchnorm_layers(model):
    """Every BatchNormalization layer of `model` (Keras' and ours), nested included."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def model_bn_eval(model):
    """The bn_eval `model` itself follows: "batch", "moving" or None (no BN).

    `SwitchableBatchNormalization` says its own; Keras' `BatchNormalization`
    uses moving statistics at evaluation.

    Raises:
        UserError: the model mixes bn_eval choices.
    """
    from keras_sharpness.errors import UserError

    modes = {getattr(layer, "bn_eval", "moving") for layer in batchnorm_layers(model)}
    if len(modes) > 1:
        raise UserError(f"model {model.name} mixes BatchNorm evaluation modes {sorted(modes)}; "
                        f"pass bn_eval to choose one for all")
    return modes.pop() if modes else None


def set_bn_eval(model, mode):
    """Sets the bn_eval of every `SwitchableBatchNormalization` of `model`.

    Takes effect for calls traced afterwards: functions already compiled by
    `tf.function` (e.g. a fitted model's predict function) keep the mode they
    were traced with, so set the mode before compiling or evaluating. Keras'
    own BatchNormalization cannot switch: `keras_sharpness.objective`
    evaluates a copy in which it is replaced.
    """
    check_bn_eval(mode)
    for layer in batchnorm_layers(model):
        if isinstance(layer, SwitchableBatchNormalization):
            layer.bn_eval = mode
    return model


@contextlib.contextmanager
def using_bn_eval(model, mode):
    """Context manager: `set_bn_eval(model, mode)`, restored on exit."""
    previous = {layer: layer.bn_eval for layer in batchnorm_layers(model)
                if isinstance(layer, SwitchableBatchNormalization)}
    set_bn_eval(model, mode)
    try:
        yield model
    finally:
        for layer, old in previous.items():
            layer.bn_eval = old
