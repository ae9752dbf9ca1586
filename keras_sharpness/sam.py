"""Sharpness-aware minimization: SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021).

SAM minimizes ``max_{||e|| <= rho} L(w + e)`` with one ascent step per batch:

1. loss and gradient ``g`` at the current weights ``w`` (training mode: this
   pass updates the BatchNorm moving statistics and draws the dropout masks);
2. ``e = rho g / ||g||`` (SAM), or with ASAM ``e = rho T^2 g / ||T g||`` where
   ``T = |w| + eta`` elementwise for weights and ``T = 1`` for offsets (biases
   and BatchNorm ``beta``), as in Kwon et al.'s reference implementation, which
   scales every parameter called ``weight`` (dense and convolution kernels and
   BatchNorm ``gamma``) and leaves biases alone (`is_offset`). ``||.||`` is
   the global 2-norm over all trainable variables;
3. gradient of the loss at ``w + e``, on the same batch, with the same
   dropout masks and the same (training-mode, batch-statistics) BatchNorm;
4. the optimizer applies that gradient to ``w``.

`SAMModel` does this in its `train_step`. The second pass is evaluated
statelessly (`keras.StatelessScope`): ``w + e`` lives in tensors, never in
the variables, so ``w`` is untouched (no add-then-subtract round-off) and
under `tf.distribute` each replica can hold its own ``w + e``; the
non-trainable state (BatchNorm moving statistics, dropout seed states) is
read as it was *before* the first pass and whatever the second pass would
write is dropped. After a step the moving statistics are therefore exactly
those of a plain step (the SAM paper's handling: statistics of the first pass
only), and the seed states have advanced once, as in a plain step.

Which gradient sets the perturbation (m-sharpness, Foret et al. sec. 4.1)
-------------------------------------------------------------------------
``e`` comes from the gradient *this train_step* computes, before any
all-reduce:

* with ``gradient_accumulation_steps=k`` on the optimizer, every micro-batch
  is perturbed along its own gradient; the optimizer averages the k
  second-pass gradients and steps once (m = micro-batch size);
* under `tf.distribute.MirroredStrategy` each replica is perturbed along its
  local gradient; the optimizer all-reduces the second-pass gradients as for
  a plain step (m = per-replica batch). With synchronized BatchNorm the
  batch statistics, hence the gradients, involve the whole global batch, but
  ``e`` still differs per replica.

(Keras 3.15's ``gradient_accumulation_steps`` itself fails under
`MirroredStrategy` on TensorFlow, for a plain model too: its apply step puts a
``merge_call`` inside a ``cond``. Each works alone.)

``rho = 0`` makes ``e = 0`` exactly: a step is then the plain step of the
optimizer (at twice the cost). Gradients scaled by a `LossScaleOptimizer`
give the same ``e`` (it is scale-invariant).

Saving: a `SAMModel` shares the network's layers and weights, so the usual
practice (`keras_sharpness.training` saves the plain network) keeps working.
`SAMModel.get_config` / `from_config` round-trip too (the class registers as
``keras_sharpness>SAMModel`` once `sam_model_class` has been called; call it
before `keras.models.load_model` of such a file). Weights-only checkpoints
(`BackupAndRestore`) need nothing special.

Importing this module needs no Keras or TensorFlow (`SAM` and its checks can
run before TF is imported).
"""

import dataclasses
import math

from keras_sharpness.errors import UserError

#: Names of variables that ASAM leaves unscaled (T = 1): additive offsets.
OFFSET_NAMES = ("bias", "beta")

#: Floor of the gradient norm in the denominator (a zero gradient gives e = 0).
MIN_NORM = 1e-12


def check_sam(rho, *, adaptive=False, eta=0.01):
    """Raises a one-line `UserError` for SAM settings out of range.

    Args:
        rho: neighbourhood radius, finite and >= 0.
        adaptive: ASAM instead of SAM.
        eta: ASAM's offset in ``T = |w| + eta``, finite and >= 0.

    Returns:
        ``(rho, adaptive, eta)`` as (float, bool, float).
    """
    try:
        rho = float(rho)
    except (TypeError, ValueError):
        raise UserError(f"sam rho must be a number, got {rho!r}") from None
    if not math.isfinite(rho) or rho < 0:
        raise UserError(f"sam rho must be a finite number >= 0, got {rho:g}")
    try:
        eta = float(eta)
    except (TypeError, ValueError):
        raise UserError(f"sam eta must be a number, got {eta!r}") from None
    if not math.isfinite(eta) or eta < 0:
        raise UserError(f"sam eta must be a finite number >= 0, got {eta:g}")
    if not isinstance(adaptive, (bool, int)) or adaptive not in (0, 1):
        raise UserError(f"sam adaptive must be True or False, got {adaptive!r}")
    return rho, bool(adaptive), eta


@dataclasses.dataclass(frozen=True)
class SAM:
    """The sharpness-aware settings of one training run (off by default).

    Attributes:
        rho: neighbourhood radius; SAM is on when it is > 0 (Foret et al.
            use 0.05; ASAM, in its scaled coordinates, ~0.5 to 2).
        adaptive: ASAM (Kwon et al. 2021) instead of SAM.
        eta: ASAM's ``T = |w| + eta`` (Kwon et al.: 0.01).
    """

    rho: float = 0.0
    adaptive: bool = False
    eta: float = 0.01

    @property
    def on(self):
        return self.rho > 0

    def check(self):
        """Raises a one-line `UserError` for values out of range; returns self."""
        check_sam(self.rho, adaptive=self.adaptive, eta=self.eta)
        return self

    def record(self):
        """The settings as ``run.json`` keys; those of an unused option are None."""
        return {"sam_rho": float(self.rho),
                "sam_adaptive": bool(self.adaptive) if self.on else None,
                "sam_eta": float(self.eta) if self.on and self.adaptive else None}

    def describe(self):
        """A short human-readable summary ("" when off)."""
        if not self.on:
            return ""
        if self.adaptive:
            return f"ASAM rho={self.rho:g} eta={self.eta:g}"
        return f"SAM rho={self.rho:g}"


#: `run.json` values of a run made without SAM.
RECORD_DEFAULTS = SAM().record()


def is_offset(variable):
    """Whether ASAM leaves `variable` unscaled (T = 1): a bias or BatchNorm beta."""
    return getattr(variable, "name", "").split("/")[-1].split(":")[0] in OFFSET_NAMES


def sam_perturbation(gradients, weights, rho, *, adaptive=False, eta=0.01, scaled=None):
    """The SAM / ASAM ascent step ``e`` (not differentiable).

    Args:
        gradients: gradient tensors (None for a variable the loss ignores:
            its ``e`` is 0).
        weights: the current weight tensors, same shapes (ASAM reads them).
        rho: neighbourhood radius.
        adaptive: ASAM: ``e = rho T^2 g / ||T g||`` with ``T = |w| + eta``.
        eta: ASAM's offset.
        scaled: per tensor, whether ASAM scales it (False: ``T = 1``);
            default all True.

    Returns:
        A list of tensors ``e`` (``rho g / ||g||`` for SAM), the norm taken
        over all tensors together and floored at `MIN_NORM`.
    """
    import tensorflow as tf

    if scaled is None:
        scaled = [True] * len(weights)
    # Sparse gradients (embeddings) become dense: e moves every row.
    gradients = [tf.zeros_like(w) if g is None else tf.cast(tf.convert_to_tensor(g), w.dtype)
                 for g, w in zip(gradients, weights)]
    if adaptive:
        scales = [tf.abs(w) + tf.cast(eta, w.dtype) if s else None
                  for w, s in zip(weights, scaled)]
        gradients_t = [g if t is None else t * g for g, t in zip(gradients, scales)]
    else:
        scales, gradients_t = [None] * len(weights), gradients
    norm = tf.linalg.global_norm(gradients_t)
    factor = rho / tf.maximum(norm, MIN_NORM)
    return [tf.stop_gradient(tf.cast(factor, g.dtype) * (g if t is None else t * g))
            for g, t in zip(gradients_t, scales)]


def _sam_model_class():
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="keras_sharpness")
    class SAMModel(keras.Model):
        """A functional network whose `train_step` is a SAM or ASAM step.

        Built on the network's own graph, ``SAMModel(net.inputs, net.outputs,
        rho=0.05)``, so it shares the network's layers and weights (same
        order, same checkpoints); `fit`, callbacks, gradient accumulation and
        distribution work as for the plain network. See the module docstring
        for the step. The logged loss and metrics are those of the first
        pass (at ``w``, before the update), as `fit` logs them for a plain
        step.

        Args:
            inputs, outputs: the network's graph.
            rho: neighbourhood radius (>= 0).
            adaptive: ASAM instead of SAM.
            eta: ASAM's ``T = |w| + eta``.
            **kwargs: passed to `keras.Model` (e.g. ``name``).
        """

        def __init__(self, inputs, outputs, *, rho=0.05, adaptive=False, eta=0.01, **kwargs):
            rho, adaptive, eta = check_sam(rho, adaptive=adaptive, eta=eta)
            super().__init__(inputs=inputs, outputs=outputs, **kwargs)
            self.rho, self.adaptive, self.eta = rho, adaptive, eta

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            variables = self.trainable_variables
            state = self.non_trainable_variables
            # The non-trainable state the first pass starts from (moving
            # statistics, seed states): the second pass reads it too.
            before = [tf.identity(v.value) for v in state]

            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred,
                                         sample_weight=sample_weight, training=True)
                scaled_loss = self.optimizer.scale_loss(loss)
            # The local (per-replica, per-micro-batch) gradient: m-sharpness.
            gradients = tape.gradient(scaled_loss, variables)
            weights = [tf.identity(v.value) for v in variables]
            perturbation = sam_perturbation(
                gradients, weights, self.rho, adaptive=self.adaptive, eta=self.eta,
                scaled=[not is_offset(v) for v in variables])
            perturbed = [tf.stop_gradient(w + e) for w, e in zip(weights, perturbation)]

            with tf.GradientTape() as tape:
                tape.watch(perturbed)
                with keras.StatelessScope(state_mapping=[*zip(variables, perturbed),
                                                         *zip(state, before)]):
                    perturbed_loss = self.compute_loss(
                        x=x, y=y, y_pred=self(x, training=True),
                        sample_weight=sample_weight, training=True)
                scaled_loss = self.optimizer.scale_loss(perturbed_loss)
            self.optimizer.apply(tape.gradient(scaled_loss, perturbed), variables)

            # The compiled loss is divided by the replica count; log the
            # per-batch mean as a plain step does.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss * replicas, sample_weight=tf.shape(
                        tf.nest.flatten(x)[0])[0])
            return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        def get_config(self):
            # Keras gives a Functional subclass with its own __init__ only a
            # base config; the graph's is that of the plain network.
            network = keras.Model(self.inputs, self.outputs, name=self.name)
            return {**network.get_config(), "rho": self.rho, "adaptive": self.adaptive,
                    "eta": self.eta}

        @classmethod
        def from_config(cls, config, custom_objects=None):
            config = dict(config)
            options = {key: config.pop(key) for key in ("rho", "adaptive", "eta")
                       if key in config}
            network = keras.Model.from_config(config, custom_objects=custom_objects)
            return cls(network.inputs, network.outputs, name=network.name, **options)

    return SAMModel


_SAM_MODEL = None


def sam_model_class():
    """The `SAMModel` class (defined lazily: importing this module needs no Keras)."""
    global _SAM_MODEL
    if _SAM_MODEL is None:
        _SAM_MODEL = _sam_model_class()
    return _SAM_MODEL


def sam_model(network, rho=0.05, *, adaptive=False, eta=0.01):
    """`network` as a `SAMModel`: compile and fit it instead.

    Args:
        network: a functional or Sequential `keras.Model` (built).
        rho: neighbourhood radius (>= 0; 0 gives the plain optimizer step).
        adaptive: ASAM (Kwon et al. 2021) instead of SAM.
        eta: ASAM's ``T = |w| + eta``.

    Returns:
        A `SAMModel` sharing `network`'s layers and weights; save `network`
        (the plain model) when done.

    Raises:
        UserError: rho or eta negative or not finite.
    """
    rho, adaptive, eta = check_sam(rho, adaptive=adaptive, eta=eta)
    if not getattr(network, "built", False) or not hasattr(network, "inputs"):
        raise UserError(f"sam_model needs a built functional or Sequential model, got "
                        f"{type(network).__name__}")
    return sam_model_class()(network.inputs, network.outputs, name=network.name,
                             rho=rho, adaptive=adaptive, eta=eta)


__all__ = ["MIN_NORM", "OFFSET_NAMES", "RECORD_DEFAULTS", "SAM", "check_sam", "is_offset",
           "sam_model", "sam_model_class", "sam_perturbation"]
