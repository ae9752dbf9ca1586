"""Large-batch recipes: learning-rate scaling, warm-up, batch-size schedules, optimizers.

The paper trains SB and LB with Adam at Keras' default learning rate. The
literature since proposes recipes that shrink the generalization gap; this
module holds them as small functions, each pinned by a test:

* **Learning-rate scaling** with the batch (`scaled_learning_rate`): the
  linear rule of Goyal et al. (2017), ``lr = base_lr * B / B_ref``, or the
  square-root rule of Krizhevsky (2014) and Hoffer et al. (2017),
  ``lr = base_lr * sqrt(B / B_ref)``.
* **Gradual warm-up** (Goyal et al. 2017, `WarmupSchedule`, `make_schedule`):
  the learning rate rises linearly from ``start_lr`` (Goyal: the reference
  rate eta) to ``peak_lr`` (``k * eta``) over ``warmup_steps`` and then
  follows a Keras decay schedule (cosine, step, exponential) or stays at the
  peak. `large_batch_schedule` is scaling and warm-up in one call.
* **Train longer** (Hoffer et al. 2017, `train_longer_epochs`): as many
  epochs as give LB as many updates as SB.
* **Increase the batch instead of decaying the learning rate** (Smith et al.
  2018, `BatchSchedule`, `epoch_batches`).
* **Optimizers** (`make_optimizer`): Adam (the paper's, Keras defaults), SGD
  with momentum, `keras.optimizers.Lamb` (You et al. 2020) and LARS (You et al.
  2017, `LARS` below).

Steps
-----
Every step count here (``warmup_steps``, ``total_steps``, ``boundaries``,
``decay_steps``, `steps_in_epoch`) counts *optimizer updates*, and update
``j`` (from 0) uses the rate at step ``j``. Keras evaluates a schedule at the
optimizer's iteration counter before it increments; with
``gradient_accumulation_steps=k`` that counter counts micro-batches and the
update happens on the k-th, so `WarmupSchedule` takes the same
``accumulation_steps=k`` and reads ``floor(counter / k)``. The counter is part
of the optimizer state that `keras_sharpness.backup.CrashSafeBackup` and a
``.keras`` file with its optimizer save, so a resumed run continues on the
same curve.

Keras is imported on first use (the schedule and optimizer classes are made by
`warmup_schedule_class` and `lars_class`, and are also reachable as
``schedules.WarmupSchedule`` and ``schedules.LARS``): the settings can check
names and batch schedules without TensorFlow. Load a ``.keras`` file whose
optimizer uses them after calling `keras_objects` (which registers them), or
pass its result as ``custom_objects``.
"""

import dataclasses
import math
from typing import Optional, Tuple

import numpy as np

from keras_sharpness.errors import UserError

#: Rules of `scaled_learning_rate`.
SCALING_RULES = ("none", "linear", "sqrt")

#: Decays of `make_schedule` after the warm-up (None: constant peak).
DECAYS = ("cosine", "step", "exponential")

#: Optimizers of `make_optimizer`; the first is the paper's.
OPTIMIZERS = ("adam", "sgd", "lamb", "lars")


# ------------------------------------------------------------------ checks
def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise UserError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if not (np.isfinite(value) and value == int(value) and int(value) >= minimum):
        raise UserError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _finite(value, name, *, minimum=None, strict=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value:g}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise UserError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    return value


# ---------------------------------------------------------------- scaling
def scaled_learning_rate(base_lr, batch_size, reference_batch, rule):
    """The learning rate for `batch_size`, given `base_lr` at `reference_batch`.

    Args:
        base_lr: learning rate tuned at `reference_batch` (> 0).
        batch_size: the batch to train at, in samples.
        reference_batch: the batch `base_lr` belongs to, in samples.
        rule: ``"none"`` (``base_lr``), ``"linear"`` (Goyal et al. 2017:
            ``base_lr * batch_size / reference_batch``) or ``"sqrt"``
            (Krizhevsky 2014; Hoffer et al. 2017:
            ``base_lr * sqrt(batch_size / reference_batch)``).

    Returns:
        The scaled learning rate (a float), e.g. ``0.001`` at 256 is ``0.008``
        at 2048 linearly and ``0.001 * sqrt(8)`` by the square root.

    Raises:
        UserError: unknown rule, non-positive rate or batch sizes.
    """
    if rule not in SCALING_RULES:
        raise UserError(f"lr scaling rule must be one of {', '.join(SCALING_RULES)}, "
                        f"got {rule!r}")
    base_lr = _finite(base_lr, "base learning rate", minimum=0.0, strict=True)
    batch_size = _positive_int(batch_size, "batch size")
    reference_batch = _positive_int(reference_batch, "reference batch")
    ratio = batch_size / reference_batch
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    return base_lr


def train_longer_epochs(sb_epochs, sb_batch, lb_batch, *, num_samples=None):
    """Epochs that give LB as many updates as `sb_epochs` epochs of SB give SB.

    Hoffer et al. (2017), "train longer, generalize better": the gap shrinks
    when LB makes as many updates as SB.

    Rounding: always *up*, so LB makes at least as many updates as SB. Without
    `num_samples` the count is idealized (``B`` samples per update, no short
    final batch): ``ceil(sb_epochs * lb_batch / sb_batch)``. With
    `num_samples` each epoch's updates are counted as training makes them
    (`steps_in_epoch`, the short final batch included): the least ``E`` with
    ``E * steps(lb) >= sb_epochs * steps(sb)``.

    Args:
        sb_epochs: epochs of the SB run.
        sb_batch, lb_batch: the two batch sizes, in samples.
        num_samples: training-set size (optional; see above).

    Returns:
        The LB epoch count, an int >= 1.

    Raises:
        UserError: a count below 1, or a batch larger than `num_samples`.
    """
    sb_epochs = _positive_int(sb_epochs, "SB epochs")
    sb_batch = _positive_int(sb_batch, "SB batch size")
    lb_batch = _positive_int(lb_batch, "LB batch size")
    if num_samples is None:
        return max(1, -(-sb_epochs * lb_batch // sb_batch))
    sb_updates = sb_epochs * steps_in_epoch(num_samples, sb_batch)
    return max(1, -(-sb_updates // steps_in_epoch(num_samples, lb_batch)))


# ------------------------------------------------------- batch-size schedule
def steps_in_epoch(num_samples, batch, accumulation_steps=1):
    """Optimizer updates in one epoch, as `keras_sharpness.training.SeededBatches` makes them.

    ``ceil(num_samples / batch)`` batches (the last may be short), one update
    each; with ``accumulation_steps=k`` a final batch of fewer than ``k``
    samples is dropped, and ``len(SeededBatches)`` (micro-batches) is ``k``
    times this count.

    Raises:
        UserError: counts below 1, or a batch larger than the data.
    """
    n = _positive_int(num_samples, "number of samples")
    b = _positive_int(batch, "batch size")
    k = _positive_int(accumulation_steps, "accumulation_steps")
    if b > n:
        raise UserError(f"batch size {b} is larger than the training set ({n} samples)")
    if k > b:
        raise UserError(f"accumulation_steps {k} is larger than the batch size {b}")
    return n // b + (1 if n % b >= k else 0)


@dataclasses.dataclass(frozen=True)
class BatchSchedule:
    """A batch size that grows at given epochs (Smith et al. 2018).

    "Don't decay the learning rate, increase the batch size": where a
    step schedule would divide the learning rate by ``factor``, multiply the
    batch by ``factor`` instead. Epoch ``e`` (counted from 0, as Keras ``fit``
    and `keras_sharpness.training.epoch_permutation` count) trains at
    ``initial_batch * factor ** j``, ``j`` the number of `epochs` entries
    ``<= e``, rounded to the nearest whole number (halves up) and capped at
    `max_batch`. A float factor is allowed; the rounding is of the exact
    product, so it does not compound. Where the cap binds, Smith et al. decay
    the learning rate by what the batch could not take:
    `learning_rate_factor`.

    Attributes:
        initial_batch: batch size of epoch 0, in samples.
        factor: growth at each milestone (>= 1).
        epochs: the epochs (>= 1, strictly increasing) from which the batch grows.
        max_batch: largest batch (e.g. what fits in memory); None: no cap.
    """

    initial_batch: int
    factor: float
    epochs: Tuple[int, ...] = ()
    max_batch: Optional[int] = None

    def __post_init__(self):
        def set_(name, value):  # frozen: validated values are set once, here
            object.__setattr__(self, name, value)

        set_("initial_batch", _positive_int(self.initial_batch, "initial batch size"))
        set_("factor", _finite(self.factor, "batch growth factor", minimum=1.0))
        if isinstance(self.epochs, (str, bytes)) or not hasattr(self.epochs, "__iter__"):
            raise UserError(f"batch schedule epochs must be a list of epochs, got {self.epochs!r}")
        epochs = tuple(_positive_int(e, "batch schedule epoch") for e in self.epochs)
        if any(a >= b for a, b in zip(epochs, epochs[1:])):
            raise UserError(f"batch schedule epochs must be strictly increasing, "
                            f"got {list(epochs)}")
        set_("epochs", epochs)
        if self.max_batch is not None:
            set_("max_batch", _positive_int(self.max_batch, "max batch size"))
            if self.max_batch < self.initial_batch:
                raise UserError(f"max batch size {self.max_batch} is below the initial batch "
                                f"size {self.initial_batch}")

    def _ideal(self, epoch):
        epoch = _positive_int(epoch, "epoch", minimum=0)
        return self.initial_batch * self.factor ** sum(1 for e in self.epochs if e <= epoch)

    def batch_size(self, epoch):
        """The batch size of epoch `epoch` (from 0), in samples."""
        size = int(math.floor(self._ideal(epoch) + 0.5))
        return size if self.max_batch is None else min(size, self.max_batch)

    def learning_rate_factor(self, epoch):
        """1, or ``max_batch / (uncapped batch)`` where the cap binds: the factor
        by which to lower the learning rate so that the noise scale still
        falls as the schedule asks (Smith et al.)."""
        ideal = self._ideal(epoch)
        if self.max_batch is None or ideal <= self.max_batch:
            return 1.0
        return self.max_batch / ideal

    def check(self, num_samples, accumulation_steps=1):
        """Raises `UserError` if some epoch's batch does not fit the data."""
        for epoch in (0, *self.epochs):
            steps_in_epoch(num_samples, self.batch_size(epoch), accumulation_steps)

    def total_steps(self, num_samples, num_epochs, accumulation_steps=1):
        """Optimizer updates in epochs ``0 .. num_epochs - 1`` (`steps_in_epoch`)."""
        num_epochs = _positive_int(num_epochs, "number of epochs", minimum=0)
        return sum(steps_in_epoch(num_samples, self.batch_size(e), accumulation_steps)
                   for e in range(num_epochs))

    def to_dict(self):
        """A JSON-ready dict; `from_dict` reads it back."""
        return {"initial_batch": self.initial_batch, "factor": self.factor,
                "epochs": list(self.epochs), "max_batch": self.max_batch}

    @classmethod
    def from_dict(cls, record):
        """The schedule `to_dict` wrote; `UserError` on unknown or missing keys."""
        if not isinstance(record, dict):
            raise UserError(f"a batch schedule must be a dict, got {type(record).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - fields)
        if unknown:
            raise UserError(f"unknown batch schedule keys: {', '.join(unknown)}")
        missing = sorted({"initial_batch", "factor"} - set(record))
        if missing:
            raise UserError(f"batch schedule needs {', '.join(missing)}")
        return cls(**{**record, "epochs": tuple(record.get("epochs", ()))})


def epoch_batches(num_samples, schedule, epoch, seed, *, accumulation_steps=1):
    """The sample indices of each batch of epoch `epoch`.

    The epoch visits ``keras_sharpness.training.epoch_permutation(num_samples,
    seed, epoch)`` in consecutive batches of the epoch's batch size (the last
    one may be shorter): a function of (seed, epoch) alone, so a resumed run
    sees the batches of an uninterrupted one, and with a constant batch these
    are exactly the batches of `keras_sharpness.training.SeededBatches`. Every
    sample is in exactly one batch, except that with ``accumulation_steps=k``
    a final batch of fewer than ``k`` samples is dropped (as SeededBatches does).

    Args:
        num_samples: training-set size.
        schedule: a `BatchSchedule`, or a constant batch size.
        epoch: the epoch, from 0.
        seed: the run's seed.
        accumulation_steps: micro-batches per update (only the drop rule above).

    Returns:
        A list of int arrays, one per batch.
    """
    from keras_sharpness.training import epoch_permutation

    if isinstance(schedule, BatchSchedule):
        batch = schedule.batch_size(epoch)
    else:
        batch = _positive_int(schedule, "batch size")
    epoch = _positive_int(epoch, "epoch", minimum=0)
    k = _positive_int(accumulation_steps, "accumulation_steps")
    count = steps_in_epoch(num_samples, batch, k)
    order = epoch_permutation(int(num_samples), int(seed), epoch)
    return [order[i * batch:(i + 1) * batch] for i in range(count)]


# --------------------------------------------------- learning-rate schedules
def _warmup_schedule_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="keras_sharpness")
    class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to a peak, then another schedule (Goyal et al. 2017).

        ``lr(t) = start_lr + (peak_lr - start_lr) * t / warmup_steps`` for
        ``t < warmup_steps``; from then on ``after(t - warmup_steps)``, or
        ``peak_lr`` without `after`. `after` should start at the peak
        (``after(0) == peak_lr``) for a continuous curve; `make_schedule`
        builds it so. ``t`` counts optimizer updates (see the module
        docstring): the first update uses `start_lr` and update
        ``warmup_steps`` is the first at the peak.

        Args:
            peak_lr: the rate at the end of the warm-up (Goyal: ``k * eta``).
            warmup_steps: length of the ramp in updates (0: none).
            start_lr: the rate of the first update (Goyal: ``eta``).
            after: a `keras.optimizers.schedules.LearningRateSchedule` (or its
                serialized dict) for the updates after the warm-up.
            accumulation_steps: the optimizer's ``gradient_accumulation_steps``
                (micro-batches per update); the schedule reads update
                ``floor(iterations / accumulation_steps)``.
        """

        def __init__(self, peak_lr, warmup_steps, start_lr=0.0, after=None,
                     accumulation_steps=1, name="Warmup"):
            super().__init__()
            self.peak_lr = _finite(peak_lr, "peak learning rate", minimum=0.0, strict=True)
            self.warmup_steps = _positive_int(warmup_steps, "warmup_steps", minimum=0)
            self.start_lr = _finite(start_lr, "warm-up start learning rate", minimum=0.0)
            if isinstance(after, dict):
                after = keras.optimizers.schedules.deserialize(after)
            if after is not None and not isinstance(
                    after, keras.optimizers.schedules.LearningRateSchedule):
                raise UserError(f"the schedule after the warm-up must be a Keras "
                                f"LearningRateSchedule, got {type(after).__name__}")
            self.after = after
            self.accumulation_steps = _positive_int(accumulation_steps, "accumulation_steps")
            self.name = name

        def __call__(self, step):
            step = ops.cast(step, "float32")
            if self.accumulation_steps > 1:
                step = ops.floor(step / float(self.accumulation_steps))
            warmup = float(self.warmup_steps)
            if self.after is None:
                value = ops.convert_to_tensor(self.peak_lr, "float32")
            else:
                value = ops.cast(self.after(ops.maximum(step - warmup, 0.0)), "float32")
            if self.warmup_steps == 0:
                return value
            ramp = self.start_lr + (self.peak_lr - self.start_lr) * (step / warmup)
            return ops.where(step < warmup, ramp, value)

        def get_config(self):
            return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                    "start_lr": self.start_lr, "name": self.name,
                    "accumulation_steps": self.accumulation_steps,
                    "after": (None if self.after is None
                              else keras.optimizers.schedules.serialize(self.after))}

        @classmethod
        def from_config(cls, config):
            return cls(**config)  # __init__ deserializes `after`

    WarmupSchedule.__qualname__ = "WarmupSchedule"
    return WarmupSchedule


_CLASSES = {}


def warmup_schedule_class():
    """The `WarmupSchedule` class (defined lazily: importing this module needs no Keras)."""
    if "WarmupSchedule" not in _CLASSES:
        _CLASSES["WarmupSchedule"] = _warmup_schedule_class()
    return _CLASSES["WarmupSchedule"]


def make_schedule(peak_lr, *, warmup_steps=0, start_lr=0.0, decay=None, total_steps=None,
                  decay_rate=0.1, boundaries=(), decay_steps=None, alpha=0.0,
                  accumulation_steps=1):
    """A learning rate: constant, or a warm-up followed by a decay.

    Args:
        peak_lr: the rate after the warm-up (the scaled rate,
            `scaled_learning_rate`).
        warmup_steps: updates of linear warm-up from `start_lr` (0: none).
        start_lr: the rate of the first update. Goyal et al. start at the
            reference rate eta (``peak_lr / k``); 0 ramps from zero.
        decay: after the warm-up, ``None`` (stay at the peak), ``"cosine"``
            (`keras.optimizers.schedules.CosineDecay` from the peak to
            ``alpha * peak_lr`` at `total_steps`), ``"step"``
            (`PiecewiseConstantDecay`: multiply by `decay_rate` at each of
            `boundaries`) or ``"exponential"`` (`ExponentialDecay`:
            ``peak_lr * decay_rate ** ((t - warmup_steps) / decay_steps)``).
        total_steps: updates of the whole run (``"cosine"``), > warmup_steps.
        decay_rate: factor of ``"step"`` and ``"exponential"`` (He et al.,
            Goyal et al.: 0.1).
        boundaries: ``"step"``: updates, counted from the start of the run
            and >= warmup_steps, from which the rate is multiplied by
            `decay_rate` once more (update ``boundaries[i]`` is the first at
            the new rate, so ``30 * steps_in_epoch(n, b)`` means "from epoch 30").
        decay_steps: ``"exponential"``: updates per factor `decay_rate`.
        alpha: ``"cosine"``: final rate as a fraction of the peak.
        accumulation_steps: the optimizer's ``gradient_accumulation_steps``
            (so that the steps above count updates, not micro-batches).

    Returns:
        ``peak_lr`` (a float) without warm-up and decay, else a `WarmupSchedule`.

    Raises:
        UserError: a value out of range or missing for the chosen decay.
    """
    peak_lr = _finite(peak_lr, "peak learning rate", minimum=0.0, strict=True)
    warmup_steps = _positive_int(warmup_steps, "warmup_steps", minimum=0)
    start_lr = _finite(start_lr, "warm-up start learning rate", minimum=0.0)
    if decay is not None and decay not in DECAYS:
        raise UserError(f"lr decay must be one of {', '.join(DECAYS)} or None, got {decay!r}")
    _positive_int(accumulation_steps, "accumulation_steps")
    if decay is None and warmup_steps == 0:
        return peak_lr
    import keras

    after = None
    if decay == "cosine":
        if total_steps is None:
            raise UserError("lr decay 'cosine' needs total_steps")
        total_steps = _positive_int(total_steps, "total_steps")
        if total_steps <= warmup_steps:
            raise UserError(f"total_steps {total_steps} must exceed warmup_steps {warmup_steps}")
        alpha = _finite(alpha, "cosine alpha", minimum=0.0)
        if alpha > 1:
            raise UserError(f"cosine alpha must be in [0, 1], got {alpha:g}")
        after = keras.optimizers.schedules.CosineDecay(
            peak_lr, decay_steps=total_steps - warmup_steps, alpha=alpha)
    elif decay == "step":
        decay_rate = _finite(decay_rate, "decay_rate", minimum=0.0, strict=True)
        bounds = [_positive_int(b, "lr decay boundary", minimum=0) for b in boundaries]
        if not bounds:
            raise UserError("lr decay 'step' needs boundaries (optimizer updates)")
        if bounds[0] < warmup_steps or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise UserError(f"lr decay boundaries must be strictly increasing and >= "
                            f"warmup_steps {warmup_steps}, got {bounds}")
        # PiecewiseConstantDecay switches after a boundary (step > b); shift by one so
        # update `b` is the first at the new rate.
        after = keras.optimizers.schedules.PiecewiseConstantDecay(
            [b - warmup_steps - 1 for b in bounds],
            [peak_lr * decay_rate ** i for i in range(len(bounds) + 1)])
    elif decay == "exponential":
        decay_rate = _finite(decay_rate, "decay_rate", minimum=0.0, strict=True)
        if decay_steps is None:
            raise UserError("lr decay 'exponential' needs decay_steps")
        after = keras.optimizers.schedules.ExponentialDecay(
            peak_lr, decay_steps=_positive_int(decay_steps, "decay_steps"),
            decay_rate=decay_rate)
    return warmup_schedule_class()(peak_lr, warmup_steps, start_lr=start_lr, after=after,
                                   accumulation_steps=accumulation_steps)


def large_batch_schedule(base_lr, batch_size, reference_batch, *, rule="linear",
                         warmup_steps=0, **decay):
    """Goyal et al.'s recipe: scale `base_lr` by `rule`, warm up from `base_lr`.

    ``make_schedule(scaled_learning_rate(base_lr, batch_size, reference_batch,
    rule), warmup_steps=warmup_steps, start_lr=base_lr, **decay)``; Goyal et
    al. warm up over 5 epochs (``5 * steps_in_epoch(n, batch_size)``).
    """
    peak = scaled_learning_rate(base_lr, batch_size, reference_batch, rule)
    return make_schedule(peak, warmup_steps=warmup_steps, start_lr=float(base_lr), **decay)


# -------------------------------------------------------------- optimizers
def _lars_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="keras_sharpness")
    class LARS(keras.optimizers.Optimizer):
        """Layer-wise Adaptive Rate Scaling (You, Gitman and Ginsburg 2017).

        Algorithm 1 of the paper, per variable ``w`` with gradient ``g``::

            local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||)
            v <- momentum * v + learning_rate * local_lr * (g + weight_decay * w)
            w <- w - v

        ``local_lr`` is 1 where ``||w||`` or ``||g||`` is 0 (as in the
        TensorFlow reference implementations). As is standard (You et al.;
        Goyal et al. for the decay), variables with at most one dimension
        (biases, BatchNorm scale and offset) are neither adapted nor decayed
        (`exclude_1d`): ``v <- momentum * v + learning_rate * g``.

        The weight decay is the L2 term of the algorithm, inside the trust
        ratio; it is *not* Keras' decoupled ``weight_decay`` (which stays off).
        Gradient accumulation, clipping and the other keyword arguments of
        `keras.optimizers.Optimizer` work as for any Keras optimizer.

        Args:
            learning_rate: the global rate gamma (float or schedule).
            momentum: m, in [0, 1).
            weight_decay: beta, >= 0.
            trust_coefficient: eta (the paper: 0.001).
            exclude_1d: keep variables with ndim <= 1 out of adaptation and decay.
        """

        def __init__(self, learning_rate=0.01, momentum=0.9, weight_decay=0.0,
                     trust_coefficient=0.001, exclude_1d=True, name="lars", **kwargs):
            super().__init__(learning_rate=learning_rate, name=name, weight_decay=None,
                             **kwargs)
            self.momentum = _finite(momentum, "momentum", minimum=0.0)
            if self.momentum >= 1:
                raise UserError(f"momentum must be in [0, 1), got {self.momentum:g}")
            self.lars_weight_decay = _finite(weight_decay or 0.0, "weight_decay", minimum=0.0)
            self.trust_coefficient = _finite(trust_coefficient, "trust_coefficient",
                                             minimum=0.0, strict=True)
            self.exclude_1d = bool(exclude_1d)

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self._momentums = self.add_optimizer_variables(var_list, "momentum")

        def update_step(self, gradient, variable, learning_rate):
            lr = ops.cast(learning_rate, variable.dtype)
            gradient = ops.cast(gradient, variable.dtype)
            v = self._momentums[self._get_variable_index(variable)]
            if self.exclude_1d and len(variable.shape) <= 1:
                step = lr * gradient
            else:
                decay = self.lars_weight_decay
                w_norm = ops.sqrt(ops.sum(ops.square(variable)))
                g_norm = ops.sqrt(ops.sum(ops.square(gradient)))
                denominator = g_norm + decay * w_norm
                adapt = ops.logical_and(ops.greater(w_norm, 0), ops.greater(g_norm, 0))
                local_lr = ops.where(
                    adapt,
                    self.trust_coefficient * w_norm
                    / ops.where(adapt, denominator, ops.ones_like(denominator)),
                    ops.ones_like(w_norm))
                step = lr * local_lr * (gradient + decay * variable)
            self.assign(v, ops.add(ops.multiply(v, self.momentum), step))
            self.assign_sub(variable, v)

        def get_config(self):
            config = super().get_config()
            config.update({"momentum": self.momentum, "weight_decay": self.lars_weight_decay,
                           "trust_coefficient": self.trust_coefficient,
                           "exclude_1d": self.exclude_1d})
            return config

    LARS.__qualname__ = "LARS"
    return LARS


def lars_class():
    """The `LARS` optimizer class (defined lazily, like `warmup_schedule_class`)."""
    if "LARS" not in _CLASSES:
        _CLASSES["LARS"] = _lars_class()
    return _CLASSES["LARS"]


def keras_objects():
    """``{"WarmupSchedule": ..., "LARS": ...}``, defined and registered with Keras.

    Call before loading a ``.keras`` file whose optimizer uses them, or pass
    as ``custom_objects`` to `keras.models.load_model`.
    """
    return {"WarmupSchedule": warmup_schedule_class(), "LARS": lars_class()}


def make_optimizer(name="adam", learning_rate=0.001, *, momentum=0.9, nesterov=False,
                   weight_decay=None, gradient_accumulation_steps=None, **kwargs):
    """A Keras optimizer by name.

    Args:
        name: ``"adam"`` (the paper's; `keras.optimizers.Adam`, Keras defaults
            otherwise), ``"sgd"`` (`keras.optimizers.SGD` with `momentum`,
            optionally `nesterov`), ``"lamb"`` (`keras.optimizers.Lamb`) or
            ``"lars"`` (`LARS`, with `momentum`; ``trust_coefficient`` and
            ``exclude_1d`` through `kwargs`).
        learning_rate: a float, or a schedule (`make_schedule`).
        momentum: momentum of ``sgd`` and ``lars`` (ignored by adam and lamb,
            whose moments are ``beta_1``/``beta_2`` in `kwargs`).
        nesterov: Nesterov momentum (``sgd`` only).
        weight_decay: None/0 for none. Adam, SGD, Lamb: Keras' decoupled decay
            (``w -= lr * weight_decay * w`` each step; Loshchilov & Hutter).
            LARS: the L2 term of its algorithm (see `LARS`).
        gradient_accumulation_steps: micro-batches per update (None or 1: none).
        **kwargs: more arguments of the optimizer's constructor.

    Returns:
        The (unbuilt) optimizer.

    Raises:
        UserError: unknown name, or an argument out of range or unknown.
    """
    import keras

    if name not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        learning_rate = _finite(learning_rate, "learning rate", minimum=0.0, strict=True)
    momentum = _finite(momentum, "momentum", minimum=0.0)
    if momentum >= 1:
        raise UserError(f"momentum must be in [0, 1), got {momentum:g}")
    if weight_decay is not None:
        weight_decay = _finite(weight_decay, "weight_decay", minimum=0.0) or None
    if gradient_accumulation_steps is not None:
        steps = _positive_int(gradient_accumulation_steps, "gradient_accumulation_steps")
        gradient_accumulation_steps = steps if steps > 1 else None
    if nesterov and name != "sgd":
        raise UserError(f"nesterov applies to optimizer sgd only, not {name}")
    common = {"learning_rate": learning_rate, "weight_decay": weight_decay,
              "gradient_accumulation_steps": gradient_accumulation_steps, **kwargs}
    try:
        if name == "adam":
            return keras.optimizers.Adam(**common)
        if name == "sgd":
            return keras.optimizers.SGD(momentum=momentum, nesterov=bool(nesterov), **common)
        if name == "lamb":
            return keras.optimizers.Lamb(**common)
        return lars_class()(momentum=momentum, **common)
    except (TypeError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"optimizer {name}: {message[:200]}") from None


def __getattr__(name):
    if name == "WarmupSchedule":
        return warmup_schedule_class()
    if name == "LARS":
        return lars_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `WarmupSchedule` and `LARS` are left out: a star import would import Keras.
__all__ = ["BatchSchedule", "DECAYS", "OPTIMIZERS", "SCALING_RULES", "epoch_batches",
           "keras_objects", "large_batch_schedule", "lars_class", "make_optimizer",
           "make_schedule", "scaled_learning_rate", "steps_in_epoch", "train_longer_epochs",
           "warmup_schedule_class"]
