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

Ghost Batch Normalization (Hoffer, Hubara and Soudry 2017, "Train longer,
generalize better"; Keras 2's ``virtual_batch_size``, which Keras 3 dropped)
is ``virtual_batch_size=g``. It changes *training only*:

* In training (``training=True``, layer trainable) a batch of B samples is cut
  into ghost batches of g consecutive samples, ``ceil(B / g)`` of them; when g
  does not divide B the last one is smaller (B mod g samples). Each ghost
  batch is normalized with its own mean and biased variance, taken over its
  samples and, for convolutional features, over the spatial positions too.
  With ``g >= B`` there is one ghost batch: plain BatchNorm, bitwise in the
  outputs and the moving statistics (gradients to rounding, below). A last
  ghost batch of one sample has variance 0: its outputs are beta.
* The moving statistics are updated once per call, as plain BatchNorm does,
  with ``m <- momentum m + (1 - momentum) mean_b`` and
  ``v <- momentum v + (1 - momentum) var_b``, where ``mean_b`` and ``var_b``
  are the ghost batches' means and variances averaged with weights
  proportional to their sizes, i.e. averaged over the *samples* of the batch.
  When g divides B (all ghost batches equal) that is the plain mean over the
  ghost batches, Keras 2's rule: ``mean_b`` is then the batch mean and
  ``var_b`` the mean within-ghost variance (smaller than the batch variance by
  the spread of the ghost means), which is what `"moving"` evaluation should
  use for a network trained on ghost statistics. A small last ghost batch
  counts for its size, not as a full one.
* At evaluation nothing changes: ``"batch"`` normalizes with the statistics of
  the whole evaluation batch (the paper's ``mode=2``), ``"moving"`` with the
  moving statistics.
* Ghost batches are local: under a `tf.distribute` strategy every replica cuts
  its own part of the batch into ghost batches, and the statistics that
  normalize are never all-reduced, even with ``synchronized=True``. What
  ``synchronized=True`` does with Ghost BN: the pooled values that update the
  moving statistics are averaged over the replicas (weighted by their batch
  sizes), so that they pool every ghost batch of the global batch; and the
  ``"batch"`` evaluation statistics are all-reduced, as without Ghost BN.
  Without it, every replica updates the moving statistics with its own values
  and, in Keras 3 (variables with aggregation ``"none"``), the first
  replica's values are kept, as for plain BatchNorm. Under gradient
  accumulation every micro-batch is one forward pass, so ghost batches lie
  within micro-batches.

The ghost statistics have exact derivatives of every order (no
``stop_gradient``, unlike `tf.nn.moments`). Ghost BN supports neither masks
nor batch renormalization (``renorm=True``). Its cost: the same reductions as
plain BatchNorm, over a reshaped batch; with an unknown batch size (``fit``)
one `keras.ops.cond` picks the path for g dividing B (a reshape) or not (a
slice and a concatenation more).

To use it: `set_virtual_batch_size` switches a model's
`SwitchableBatchNormalization` layers in place (before compiling);
`with_ghost_batch_norm` copies any functional model, Keras' own
BatchNormalization included, with its weights; `has_batch_norm` says whether
a model has a BatchNorm layer to switch at all.
"""

import contextlib
import numbers

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


def check_virtual_batch_size(value):
    """Returns `value` as an int >= 1, or None; raises a one-line UserError otherwise."""
    from keras_sharpness.errors import UserError

    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not float(value).is_integer() or value < 1):
        raise UserError(f"virtual_batch_size must be a positive integer or None, got {value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package="keras_sharpness")
class SwitchableBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a choice of evaluation statistics.

    Args:
        bn_eval: ``"batch"`` (Keras 1 ``mode=2``) or ``"moving"``.
        virtual_batch_size: Ghost BatchNorm: in training, normalize each run of
            this many consecutive samples with its own statistics (see the
            module docstring for the exact rules); None (default): plain BN.
        **kwargs: passed to `keras.layers.BatchNormalization`.
    """

    def __init__(self, bn_eval="batch", virtual_batch_size=None, **kwargs):
        super().__init__(**kwargs)
        self.bn_eval = check_bn_eval(bn_eval)
        self.virtual_batch_size = check_virtual_batch_size(virtual_batch_size)
        if self.virtual_batch_size is not None:
            _check_ghost_compatible(self)

    def call(self, inputs, training=None, mask=None):
        if training and self.trainable and self.virtual_batch_size is not None:
            return self._ghost_call(inputs, mask)
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

    def _ghost_call(self, inputs, mask):
        """Training with ghost batches of `virtual_batch_size` consecutive samples."""
        from keras_sharpness.errors import UserError

        if mask is not None:
            raise UserError(f"layer {self.name}: virtual_batch_size does not support masks")
        _check_ghost_compatible(self)
        ops = keras.ops
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        rest = ops.shape(inputs)[0] % self.virtual_batch_size
        if isinstance(rest, int):  # batch size known now
            outputs, mean, variance = self._ghost_normalize(inputs, tail=rest > 0)
        else:  # g dividing B needs no slice or concatenation
            outputs, mean, variance = ops.cond(
                rest > 0, lambda: self._ghost_normalize(inputs, tail=True),
                lambda: self._ghost_normalize(inputs, tail=False))
        if self.synchronized:
            mean, variance = _pooled_across_replicas(mean, variance, ops.shape(inputs)[0])
        for moving, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(ops.cast(moving, compute_dtype) * self.momentum
                          + value * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def _ghost_normalize(self, inputs, *, tail):
        """Ghost BN outputs and the pooled ghost mean and variance."""
        ops = keras.ops
        ghosts = GhostBatches(inputs, self.virtual_batch_size, self._reduction_axes, tail=tail)
        pieces = ghosts.split(inputs)
        mean = ghosts.means(pieces)
        variance = ghosts.means([ops.square(x - m) for x, m in zip(pieces, mean)])
        # tf.nn.batch_normalization's arithmetic, per ghost batch: with one
        # ghost batch the outputs are bitwise plain BatchNorm's.
        shape = [1] * len(inputs.shape)
        shape[self.axis] = -1
        gamma = None if self.gamma is None else ops.reshape(
            ops.cast(self.gamma, inputs.dtype), shape)
        beta = None if self.beta is None else ops.reshape(
            ops.cast(self.beta, inputs.dtype), shape)
        outputs = []
        for x, m, v in zip(pieces, mean, variance):
            scale = ops.rsqrt(v + self.epsilon)
            if gamma is not None:
                scale = scale * gamma
            offset = -m * scale if beta is None else beta - m * scale
            outputs.append(x * scale + offset)
        return ghosts.join(outputs), ghosts.pooled(mean), ghosts.pooled(variance)

    def get_config(self):
        return {**super().get_config(), "bn_eval": self.bn_eval,
                "virtual_batch_size": self.virtual_batch_size}

    @classmethod
    def from_config(cls, config):
        from keras_sharpness.migrate import upgrade

        return super().from_config(upgrade(config))  # checkpoints of earlier versions


def _pooled_across_replicas(mean, variance, batch_size):
    """The pooled ghost statistics of the global batch: each replica's, averaged
    with weights its batch size (TensorFlow `tf.distribute`; else unchanged)."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return mean, variance
    size = tf.cast(batch_size, mean.dtype)
    mean, variance, size = context.all_reduce(
        tf.distribute.ReduceOp.SUM, [mean * size, variance * size, size])
    return mean / size, variance / size


def _check_ghost_compatible(layer):
    from keras_sharpness.errors import UserError

    if layer.renorm:
        raise UserError(f"layer {layer.name}: virtual_batch_size cannot be combined with renorm")
    if layer.axis == 0:
        raise UserError(f"layer {layer.name}: virtual_batch_size needs the batch axis 0 "
                        f"to be a reduction axis, not axis=0")


class GhostBatches:
    """A batch cut along axis 0 into ghost batches of g consecutive samples.

    There are ``groups = B // g`` full ghost batches, the *head*, viewed as
    one tensor of shape ``(groups, g, ...)``, and, with ``tail=True``, a last
    one of ``rest = B mod g`` samples, the *tail* (shape ``(rest, ...)``,
    possibly empty). With ``tail=False`` (for g dividing B, the common case)
    the batch is the head alone, a reshape, with no slice or concatenation.
    `split` and `join` convert a batch to and from its pieces (``(head,)`` or
    ``(head, tail)``); a statistic of the ghost batches has the same pieces,
    shaped to broadcast against them. Everything is slices, reshapes and
    reductions: it compiles with XLA, is deterministic, and has exact
    derivatives of every order.

    Args:
        inputs: the batch (only its shape is used).
        virtual_batch_size: g.
        axes: the reduction axes of plain BatchNorm (0 and the spatial axes).
        tail: whether to cut a tail (else g must divide B).
    """

    def __init__(self, inputs, virtual_batch_size, axes, *, tail):
        ops = keras.ops
        ndim = len(inputs.shape)
        self.size = virtual_batch_size
        self.tail = tail
        self.spatial = [a % ndim for a in axes if a % ndim != 0]
        self.shape = list(ops.shape(inputs)[1:])
        self.batch = ops.shape(inputs)[0]
        self.groups = self.batch // virtual_batch_size
        self.full = self.groups * virtual_batch_size
        self.rest = self.batch - self.full

    def split(self, values):
        """The pieces of a batch."""
        head_shape = [self.groups, self.size] + self.shape
        if not self.tail:
            return (keras.ops.reshape(values, head_shape),)
        return keras.ops.reshape(values[:self.full], head_shape), values[self.full:]

    def join(self, pieces):
        """The batch of its pieces (inverse of `split`)."""
        head = keras.ops.reshape(pieces[0], [self.full] + self.shape)
        return keras.ops.concatenate([head, pieces[1]], axis=0) if self.tail else head

    def means(self, pieces):
        """Each ghost batch's mean over its samples and the spatial axes."""
        ops = keras.ops
        head = ops.mean(pieces[0], axis=[1] + [a + 1 for a in self.spatial], keepdims=True)
        if not self.tail:
            return (head,)
        tail = ops.mean(pieces[1], axis=[0] + self.spatial, keepdims=True)
        # No tail sample: its mean over nothing is NaN; 0 keeps NaN out of the
        # gradients of gamma and beta (where it would meet a zero).
        return head, ops.where(self.rest > 0, tail, ops.zeros_like(tail))

    def pooled(self, statistic):
        """The ghost batches' values averaged with weights size / B, per channel."""
        ops = keras.ops
        head = statistic[0]
        batch = ops.cast(self.batch, head.dtype)
        pooled = ops.reshape(ops.sum(head, axis=0), (-1,)) * (
            ops.cast(self.size, head.dtype) / batch)
        if self.tail:
            pooled = pooled + ops.reshape(statistic[1], (-1,)) * (
                ops.cast(self.rest, head.dtype) / batch)
        return pooled


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


def has_batch_norm(model):
    """Whether `model` has a BatchNormalization layer (nested included)."""
    return bool(batchnorm_layers(model))


def _check_has_batch_norm(model):
    from keras_sharpness.errors import UserError

    if not has_batch_norm(model):
        raise UserError(f"virtual_batch_size (Ghost BatchNorm) needs BatchNormalization layers; "
                        f"model {model.name} has none")


def set_virtual_batch_size(model, virtual_batch_size):
    """Sets the ghost batch size of every BatchNorm layer of `model`, in place.

    Like `set_bn_eval`, it takes effect for calls traced afterwards: set it
    before compiling. None switches Ghost BN off.

    Raises:
        UserError: bad size, no BatchNorm layer, or a Keras `BatchNormalization`
            (it has no ghost mode: use `with_ghost_batch_norm`).
    """
    from keras_sharpness.errors import UserError

    virtual_batch_size = check_virtual_batch_size(virtual_batch_size)
    _check_has_batch_norm(model)
    layers = batchnorm_layers(model)
    plain = [layer.name for layer in layers
             if not isinstance(layer, SwitchableBatchNormalization)]
    if plain:
        raise UserError(f"model {model.name}: Keras BatchNormalization layers "
                        f"({', '.join(plain[:3])}) have no ghost mode; use "
                        f"with_ghost_batch_norm to copy the model")
    if virtual_batch_size is not None:
        for layer in layers:
            _check_ghost_compatible(layer)
    for layer in layers:
        layer.virtual_batch_size = virtual_batch_size
    return model


def with_ghost_batch_norm(model, virtual_batch_size):
    """A copy of `model` whose BatchNorm layers use Ghost BN, weights copied.

    Every `SwitchableBatchNormalization` keeps its configuration with
    ``virtual_batch_size`` set; every Keras `BatchNormalization` becomes a
    `SwitchableBatchNormalization` with ``bn_eval="moving"`` (what Keras BN
    does at evaluation) and the same configuration. Layers nested in
    sub-models are switched too. Evaluation outputs of the copy equal the
    original's; training differs only by the ghost batches.

    Args:
        model: a functional or Sequential `keras.Model` with BatchNorm.
        virtual_batch_size: the ghost batch size g (>= 1); None gives a copy
            with plain BatchNorm.

    Returns:
        The new, uncompiled model.

    Raises:
        UserError: bad size, no BatchNorm layer, or a model that cannot be cloned.
    """
    from keras_sharpness.errors import UserError

    virtual_batch_size = check_virtual_batch_size(virtual_batch_size)
    _check_has_batch_norm(model)

    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["bn_eval"] = getattr(layer, "bn_eval", "moving")
            config["virtual_batch_size"] = virtual_batch_size
            return SwitchableBatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (subclassed or exotic: say so in one line)
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model {model.name} cannot be copied for Ghost BatchNorm "
                        f"({message[:160]})") from None
    old, new = model.weights, clone.weights
    if [(v.name, tuple(v.shape)) for v in old] != [(v.name, tuple(v.shape)) for v in new]:
        raise UserError(f"model {model.name} cannot be copied faithfully for Ghost BatchNorm "
                        f"(its weights differ from its copy's)")
    for source, target in zip(old, new):
        target.assign(source)
    return clone
