"""Appendix E of Keskar et al. (2017): attempts to fix large-batch training.

The paper tried three changes to LB training; they improved test accuracy, but
the minima found stayed sharp. Each is an option of
`keras_sharpness.training.train_minimizer` (and of ``train_sb_lb`` and
``plot_parametric_plot.py``), described by a `Remedies` record:

* **Data augmentation** (C1-C4): horizontal flips, rotations up to 10 degrees
  and translations up to 0.2 of the image size, with the Keras preprocessing
  layers ``RandomFlip("horizontal")``, ``RandomRotation(10 / 360)`` and
  ``RandomTranslation(0.2, 0.2)`` (their default ``fill_mode="reflect"``).
  `ImageAugmentation` transforms each *training batch* in the input pipeline
  (`keras_sharpness.training.SeededBatches`), as a function of
  (seed, epoch, batch index) only: a resumed run sees exactly the augmented
  batches of an uninterrupted one. The network, its evaluation and the saved
  model contain no augmentation layer.
* **Conservative training** (Li et al. 2014): each batch B_k solves
  ``x_{k+1} = argmin_x (1/|B_k|) sum_{i in B_k} f_i(x) + (lambda/2) ||x - x_k||^2``
  inexactly with `conservative_steps` (3) Adam iterations on that batch,
  ``lambda = 1e-3`` in the paper (`RemedyModel`).
* **Adversarial training** (FGSM, Goodfellow et al. 2014): the loss is
  ``alpha J(x) + (1 - alpha) J(x + eps sign(grad_x J(x)))`` with Goodfellow's
  ``alpha = 0.5`` by default (`adversarial_clean_weight`; 0 trains on the
  perturbed inputs alone). The perturbation is computed at the current weights
  with the network in training mode (the same function the step minimizes) and
  is not differentiated through (`RemedyModel`, `fgsm_perturbation`).

Side effects worth knowing: in training mode every forward pass updates the
BatchNorm moving statistics, so conservative training updates them
`conservative_steps` times per batch and adversarial training twice (clean and
perturbed inputs). With the default ``bn_eval="batch"`` (the paper's
``mode=2``) the moving statistics are never used.

The remedies found since (issue 12, docs/remedies.md) are options of the same
record, all off by default (the defaults are the paper's training):

* **Optimizer and learning rate** (`keras_sharpness.schedules.make_optimizer`):
  ``optimizer`` (``adam``, the paper's; ``sgd`` and ``lars`` with
  ``momentum``; ``lamb``), ``learning_rate`` (Keras Adam's 0.001).
* **Learning-rate scaling** (Goyal et al. 2017; Hoffer et al. 2017):
  ``lr_scaling`` ``linear`` or ``sqrt`` multiplies ``learning_rate`` by
  ``B / B_ref`` or ``sqrt(B / B_ref)``, ``B_ref = lr_reference_batch``
  (0: the run's SB batch).
* **Gradual warm-up** (Goyal et al. 2017): ``warmup_epochs`` of linear
  ramp, from ``learning_rate`` to the scaled rate with scaling, from 0 to
  ``learning_rate`` without; ``lr_decay="cosine"`` then decays to 0 at the
  end of the run's epoch cap.
* **Train longer** (Hoffer et al. 2017): ``train_longer`` gives LB the
  epochs that make its number of updates SB's
  (`keras_sharpness.schedules.train_longer_epochs`).
* **Ghost Batch Normalization** (Hoffer et al. 2017): ``ghost_batch_size``
  (`keras_sharpness.layers.with_ghost_batch_norm`).
* **SAM / ASAM** (Foret et al. 2021; Kwon et al. 2021): ``sam_rho``,
  ``sam_adaptive``, ``sam_eta`` (`keras_sharpness.sam.SAM`, `sam_model`).
* **Increase the batch instead of decaying the rate** (Smith et al. 2018):
  ``batch_increase_epochs`` (the epochs, from 0, at which the batch grows),
  ``batch_increase_factor`` and ``batch_increase_max`` (0: no cap; where it
  binds the learning rate falls instead), as a
  `keras_sharpness.schedules.BatchSchedule` of the run's batch
  (`Remedies.batch_schedule`).
"""

import dataclasses
from typing import Tuple

import numpy as np

from keras_sharpness import sam as sam_lib
from keras_sharpness import schedules
from keras_sharpness.errors import UserError

#: Which runs of `keras_sharpness.training.train_sb_lb` get the remedies.
APPLY_TO = ("lb", "sb", "both")

#: Learning-rate decays after the warm-up (over the run's epoch cap).
LR_DECAYS = ("none", "cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RemedyFields:
    """The remedy options, their types and defaults: the one list of them.

    `Remedies` is these fields with their meaning (methods);
    `keras_sharpness.config.TrainingSettings` inherits them, so a run's
    settings hold them flat (keyword-only: they follow its own fields).

    Attributes:
        augment: flip / rotate / translate training images.
        conservative_lambda: proximal weight lambda; conservative training is
            on when it is > 0 (the paper: 1e-3).
        conservative_steps: Adam iterations per batch on the proximal problem.
        adversarial_eps: FGSM step in input units (inputs are scaled to
            [0, 1]); adversarial training is on when it is > 0.
        adversarial_clean_weight: alpha, the weight of the clean loss in
            ``alpha J(x) + (1 - alpha) J(x_adv)``; in [0, 1).
        optimizer: ``adam`` (the paper's), ``sgd``, ``lamb`` or ``lars``
            (`keras_sharpness.schedules.make_optimizer`).
        learning_rate: the base rate (Keras Adam's default 0.001 is the paper's).
        momentum: momentum of ``sgd`` and ``lars`` (unused otherwise).
        lr_scaling: ``none``, ``linear`` or ``sqrt`` scaling of
            `learning_rate` from `lr_reference_batch` to the run's batch.
        lr_reference_batch: the batch `learning_rate` belongs to, in samples;
            0 means the SB batch of the run (resolved by
            `keras_sharpness.training.train_sb_lb`).
        warmup_epochs: epochs of linear warm-up (may be fractional; 0: none).
        lr_decay: ``none`` or ``cosine`` (to 0 at the end of the epoch cap).
        train_longer: LB trains for the epochs that give it SB's number of
            updates (with ``until_converged``: its ``max_epochs`` scaled so).
        ghost_batch_size: Ghost BatchNorm's ghost batch, in samples (0: off).
        sam_rho, sam_adaptive, sam_eta: SAM / ASAM (`keras_sharpness.sam.SAM`).
        batch_increase_epochs: epochs (from 0; >= 1, strictly increasing) at
            which the batch is multiplied by `batch_increase_factor` (Smith
            et al. 2018); empty: a constant batch.
        batch_increase_factor: the growth at each of those epochs (> 1).
        batch_increase_max: the largest batch, in samples (0: no cap); where
            it binds, the learning rate is lowered by what the batch could not
            take (`keras_sharpness.schedules.BatchSchedule.learning_rate_factor`).
    """

    augment: bool = False
    conservative_lambda: float = 0.0
    conservative_steps: int = 3
    adversarial_eps: float = 0.0
    adversarial_clean_weight: float = 0.5
    optimizer: str = "adam"
    learning_rate: float = 0.001
    momentum: float = 0.9
    lr_scaling: str = "none"
    lr_reference_batch: int = 0
    warmup_epochs: float = 0.0
    lr_decay: str = "none"
    train_longer: bool = False
    ghost_batch_size: int = 0
    sam_rho: float = 0.0
    sam_adaptive: bool = False
    sam_eta: float = 0.01
    batch_increase_epochs: Tuple[int, ...] = ()
    batch_increase_factor: float = 2.0
    batch_increase_max: int = 0


#: The names of the remedy fields, in order.
FIELDS = tuple(field.name for field in dataclasses.fields(RemedyFields))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Remedies(RemedyFields):
    """The remedy options of one training run (all off by default): the
    fields of `RemedyFields`, and what they mean."""

    @property
    def conservative(self):
        return self.conservative_lambda > 0

    @property
    def adversarial(self):
        return self.adversarial_eps > 0

    @property
    def sam(self):
        """The SAM / ASAM settings as a `keras_sharpness.sam.SAM`."""
        return sam_lib.SAM(rho=self.sam_rho, adaptive=self.sam_adaptive, eta=self.sam_eta)

    @property
    def ghost(self):
        return int(self.ghost_batch_size) > 0

    @property
    def batch_increase(self):
        """Whether the batch grows during the run (Smith et al. 2018)."""
        return len(self.batch_increase_epochs) > 0

    def batch_schedule(self, initial_batch):
        """The run's batch per epoch: a `keras_sharpness.schedules.BatchSchedule`
        from `initial_batch`, or `initial_batch` itself without a batch increase."""
        if not self.batch_increase:
            return int(initial_batch)
        return schedules.BatchSchedule(
            int(initial_batch), float(self.batch_increase_factor),
            tuple(int(e) for e in self.batch_increase_epochs),
            int(self.batch_increase_max) or None)

    @property
    def scheduled(self):
        """Whether the learning rate varies during the run (warm-up or decay)."""
        return self.warmup_epochs > 0 or self.lr_decay != "none"

    @property
    def default_optimizer(self):
        """Whether the optimizer is the paper's: Adam at 0.001, unscaled, constant."""
        return (self.optimizer == "adam" and self.learning_rate == 0.001
                and self.lr_scaling == "none" and not self.scheduled)

    @property
    def any(self):
        """Whether any remedy is on."""
        return (self.augment or self.conservative or self.adversarial
                or not self.default_optimizer or self.train_longer or self.ghost
                or self.sam.on or self.batch_increase)

    @property
    def needs_train_step(self):
        """Whether training needs `RemedyModel` (augmentation does not)."""
        return self.conservative or self.adversarial

    def check(self, input_shape=None, accumulation_steps=1):
        """Raises a one-line `UserError` for values or data they cannot apply to.

        Args:
            input_shape: shape of one example, if known (augmentation needs
                images, ``(height, width, channels)``).
            accumulation_steps: gradient accumulation of the run.
        """
        if self.conservative_lambda < 0 or not np.isfinite(self.conservative_lambda):
            raise UserError(f"conservative_lambda must be >= 0, got {self.conservative_lambda:g}")
        if int(self.conservative_steps) < 1:
            raise UserError(f"conservative_steps must be at least 1, got {self.conservative_steps}")
        if self.adversarial_eps < 0 or not np.isfinite(self.adversarial_eps):
            raise UserError(f"adversarial_eps must be >= 0, got {self.adversarial_eps:g}")
        if not 0 <= self.adversarial_clean_weight < 1:
            raise UserError("adversarial_clean_weight must be in [0, 1), got "
                            f"{self.adversarial_clean_weight:g}")
        if self.augment and input_shape is not None and len(tuple(input_shape)) != 3:
            raise UserError(f"--augment needs image inputs (height, width, channels); the "
                            f"data has shape {tuple(int(d) for d in input_shape)}")
        if self.conservative and int(accumulation_steps or 1) > 1:
            raise UserError("conservative training takes its Adam steps on whole batches; "
                            "it cannot be combined with accumulation_steps > 1")
        self._check_modern()

    def _check_modern(self):
        """The issue-12 options (the flag named in each message)."""
        if self.optimizer not in schedules.OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(schedules.OPTIMIZERS)}, "
                            f"got {self.optimizer!r}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UserError(f"--learning_rate must be a finite number > 0, "
                            f"got {self.learning_rate:g}")
        if not (np.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum:g}")
        if self.lr_scaling not in schedules.SCALING_RULES:
            raise UserError(f"--lr_scaling must be one of {', '.join(schedules.SCALING_RULES)}, "
                            f"got {self.lr_scaling!r}")
        if int(self.lr_reference_batch) < 0 or self.lr_reference_batch != int(
                self.lr_reference_batch):
            raise UserError(f"--lr_reference_batch must be a whole number >= 0 (0: the SB "
                            f"batch), got {self.lr_reference_batch!r}")
        if not (np.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise UserError(f"--warmup_epochs must be a finite number >= 0, "
                            f"got {self.warmup_epochs:g}")
        if self.lr_decay not in LR_DECAYS:
            raise UserError(f"--lr_decay must be one of {', '.join(LR_DECAYS)}, "
                            f"got {self.lr_decay!r}")
        if int(self.ghost_batch_size) < 0 or self.ghost_batch_size != int(self.ghost_batch_size):
            raise UserError(f"--ghost_batch_size must be a whole number >= 0 (0: off), "
                            f"got {self.ghost_batch_size!r}")
        try:
            self.sam.check()
        except UserError as e:  # name the flags
            raise UserError(str(e).replace("sam rho", "--sam_rho").replace(
                "sam eta", "--sam_eta").replace("sam adaptive", "--sam_adaptive")) from None
        if self.sam.on and self.needs_train_step:
            raise UserError("--sam_rho cannot be combined with conservative or adversarial "
                            "training (each has its own train step)")
        self._check_batch_increase()

    def _check_batch_increase(self):
        epochs = self.batch_increase_epochs
        if isinstance(epochs, (str, bytes)) or not hasattr(epochs, "__iter__"):
            raise UserError(f"--batch_increase_epochs must be a list of epochs, got {epochs!r}")
        epochs = list(epochs)
        if any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1
               for e in epochs):
            raise UserError(f"--batch_increase_epochs must be whole epochs >= 1 (epoch 0 is the "
                            f"first), got {epochs}")
        if any(a >= b for a, b in zip(epochs, epochs[1:])):
            raise UserError(f"--batch_increase_epochs must be strictly increasing, got {epochs}")
        factor = self.batch_increase_factor
        if not (np.isfinite(factor) and factor > 1):
            raise UserError(f"--batch_increase_factor must be a finite number > 1, "
                            f"got {factor:g}")
        if int(self.batch_increase_max) < 0 or self.batch_increase_max != int(
                self.batch_increase_max):
            raise UserError(f"--batch_increase_max must be a whole number >= 0 (0: no cap), "
                            f"got {self.batch_increase_max!r}")
        if self.batch_increase and (self.scheduled or self.train_longer):
            raise UserError("--batch_increase_epochs cannot be combined with --warmup_epochs, "
                            "--lr_decay or --train_longer (they count updates of a constant "
                            "batch)")

    def record(self):
        """The options as ``run.json`` keys; settings of an unused remedy are None."""
        scaled = self.lr_scaling != "none"
        return {
            "augment": bool(self.augment),
            "conservative_lambda": float(self.conservative_lambda),
            "conservative_steps": int(self.conservative_steps) if self.conservative else None,
            "adversarial_eps": float(self.adversarial_eps),
            "adversarial_clean_weight": (float(self.adversarial_clean_weight)
                                         if self.adversarial else None),
            "optimizer": str(self.optimizer),
            "learning_rate": float(self.learning_rate),
            "momentum": (float(self.momentum) if self.optimizer in ("sgd", "lars")
                         else None),
            "lr_scaling": str(self.lr_scaling),
            "lr_reference_batch": int(self.lr_reference_batch) if scaled else None,
            "warmup_epochs": float(self.warmup_epochs),
            "lr_decay": str(self.lr_decay),
            "train_longer": bool(self.train_longer),
            "ghost_batch_size": int(self.ghost_batch_size),
            **self.sam.record(),
            "batch_increase_epochs": [int(e) for e in self.batch_increase_epochs],
            "batch_increase_factor": (float(self.batch_increase_factor)
                                      if self.batch_increase else None),
            "batch_increase_max": (int(self.batch_increase_max)
                                   if self.batch_increase else None),
        }

    def describe_optimizer(self):
        """The optimizer and its learning rate in words (e.g. ``adam lr=0.001``)."""
        rate = f"{self.optimizer} lr={self.learning_rate:g}"
        if self.optimizer in ("sgd", "lars"):
            rate += f" momentum={self.momentum:g}"
        if self.lr_scaling != "none":
            rate += f" {self.lr_scaling}-scaled"
        if self.warmup_epochs:
            rate += f", {self.warmup_epochs:g} warm-up epochs"
        if self.lr_decay != "none":
            rate += f", {self.lr_decay} decay"
        return rate

    def describe(self):
        """A short human-readable summary ("" when none is on)."""
        parts = []
        if self.augment:
            parts.append("augmentation")
        if self.conservative:
            parts.append(f"conservative lambda={self.conservative_lambda:g} "
                         f"x{int(self.conservative_steps)}")
        if self.adversarial:
            parts.append(f"FGSM eps={self.adversarial_eps:g} "
                         f"alpha={self.adversarial_clean_weight:g}")
        if not self.default_optimizer:
            parts.append(self.describe_optimizer())
        if self.train_longer:
            parts.append("train longer")
        if self.ghost:
            parts.append(f"Ghost BN {int(self.ghost_batch_size)}")
        if self.sam.on:
            parts.append(self.sam.describe())
        if self.batch_increase:
            parts.append(f"batch x{self.batch_increase_factor:g} at epochs "
                         f"{','.join(str(int(e)) for e in self.batch_increase_epochs)}"
                         + (f" (max {int(self.batch_increase_max)})"
                            if self.batch_increase_max else ""))
        return ", ".join(parts)


#: `run.json` values of a run made without remedies (or before they existed).
RECORD_DEFAULTS = Remedies().record()


# ---------------------------------------------------------- optimizer
def learning_rate_plan(remedies, *, batch_size, num_samples, epochs, accumulation_steps=1):
    """The learning rate of a run: base, scaled peak, warm-up and decay, in updates.

    Args:
        remedies: `Remedies` (``lr_reference_batch`` resolved: >= 1 when
            ``lr_scaling`` is not ``none``).
        batch_size: the run's batch (of epoch 0 with a batch increase), in samples.
        num_samples: training-set size.
        epochs: the run's epoch cap (the end of a cosine decay).
        accumulation_steps: micro-batches per update.

    Returns:
        A JSON-ready dict: ``base``, ``peak`` (the scaled rate), ``start``
        (the rate of the first warm-up update), ``warmup_steps``,
        ``total_steps`` (updates in `epochs` epochs, the growing batch
        counted), ``decay``, ``steps_per_epoch`` (of epoch 0).

    Raises:
        UserError: scaling without a reference batch, or a cosine decay that
            ends before the warm-up does.
    """
    k = max(1, int(accumulation_steps or 1))
    per_epoch = schedules.steps_in_epoch(num_samples, batch_size, k)
    base = float(remedies.learning_rate)
    if remedies.lr_scaling == "none":
        peak, start = base, 0.0
    else:
        if int(remedies.lr_reference_batch) < 1:
            raise UserError("--lr_scaling needs --lr_reference_batch (train_sb_lb sets 0 to "
                            "the SB batch)")
        peak = schedules.scaled_learning_rate(base, batch_size, int(remedies.lr_reference_batch),
                                              remedies.lr_scaling)
        start = min(base, peak)  # Goyal et al.: from the reference rate up
    warmup = 0
    if remedies.warmup_epochs > 0:
        warmup = max(1, int(round(float(remedies.warmup_epochs) * per_epoch)))
    total = int(epochs) * per_epoch
    if remedies.batch_increase:  # the rate is constant then; this counts what it spans
        total = remedies.batch_schedule(batch_size).total_steps(num_samples, int(epochs), k)
    if remedies.lr_decay == "cosine" and total <= warmup:
        raise UserError(f"--lr_decay=cosine needs more updates ({total} in {int(epochs)} "
                        f"epochs) than --warmup_epochs takes ({warmup})")
    return {"base": base, "peak": float(peak), "start": float(start) if warmup else float(peak),
            "warmup_steps": warmup, "total_steps": total,
            "decay": None if remedies.lr_decay == "none" else remedies.lr_decay,
            "steps_per_epoch": per_epoch}


def make_optimizer(remedies, plan, accumulation_steps=1):
    """The run's Keras optimizer: `remedies.optimizer` at the rate of `plan`.

    Args:
        remedies: `Remedies`.
        plan: `learning_rate_plan` of the run.
        accumulation_steps: the optimizer's gradient accumulation (the
            schedule counts updates, not micro-batches).
    """
    k = max(1, int(accumulation_steps or 1))
    rate = schedules.make_schedule(
        plan["peak"], warmup_steps=plan["warmup_steps"], start_lr=plan["start"],
        decay=plan["decay"], total_steps=plan["total_steps"], accumulation_steps=k)
    return schedules.make_optimizer(remedies.optimizer, rate, momentum=remedies.momentum,
                                    gradient_accumulation_steps=k if k > 1 else None)


# ------------------------------------------------------------ augmentation
def augmentation_key(seed, epoch, batch):
    """The random key of one training batch: a function of its coordinates only."""
    return int(np.random.default_rng([int(seed), int(epoch), int(batch), 0xE]).integers(2**31 - 2))


class ImageAugmentation:
    """Appendix E augmentation of a batch of images, seeded per batch.

    ``augmentation(images, key)`` flips horizontally with probability 1/2,
    rotates by a uniform angle in [-10, 10] degrees and translates by uniform
    fractions in [-0.2, 0.2] of the height and width, independently per image.
    The result is a function of the images and ``key`` alone (the layers draw
    from one `keras.random.SeedGenerator` reset to ``key`` at every call), so
    seeding with `augmentation_key` makes the augmented batches reproducible
    across runs and resumes.
    """

    def __init__(self, *, flip=True, max_degrees=10.0, max_translation=0.2):
        import keras

        self.layers = []
        if flip:
            self.layers.append(keras.layers.RandomFlip("horizontal"))
        if max_degrees:
            self.layers.append(keras.layers.RandomRotation(float(max_degrees) / 360.0))
        if max_translation:
            self.layers.append(keras.layers.RandomTranslation(float(max_translation),
                                                              float(max_translation)))
        self.seed_generator = keras.random.SeedGenerator(0)

    def __call__(self, images, key):
        """Augmented copy of a batch ``(n, height, width, channels)`` (NumPy float32)."""
        import keras

        state = self.seed_generator.state
        state.assign(keras.ops.convert_to_tensor([int(key), 0], dtype=state.dtype))
        x = keras.ops.convert_to_tensor(np.asarray(images, np.float32))
        for layer in self.layers:
            transformation = layer.get_random_transformation(
                x, training=True, seed=self.seed_generator)
            x = layer.transform_images(x, transformation, training=True)
        return np.asarray(keras.ops.convert_to_numpy(x), np.float32)


# --------------------------------------------------------------- train step
def proximal_term(variables, anchor, lam):
    """``(lam / 2) sum_v ||v - anchor_v||^2``, the conservative-training penalty."""
    import tensorflow as tf

    return 0.5 * lam * tf.add_n([tf.reduce_sum(tf.square(v - a))
                                 for v, a in zip(variables, anchor)])


def fgsm_perturbation(model, x, y, eps, *, loss=None, sample_weight=None, training=True):
    """``eps * sign(grad_x loss(model(x), y))`` (Goodfellow et al. 2014), not differentiable.

    Args:
        model: a Keras model outputting logits.
        x, y: a batch of inputs and integer labels.
        eps: step size in input units.
        loss: ``loss(y, logits, sample_weight)``; default mean sparse
            cross-entropy on logits (the training loss of this package).
        sample_weight: optional per-sample weights.
        training: mode of the forward pass.

    Returns:
        A tensor shaped like `x`.
    """
    import keras
    import tensorflow as tf

    if loss is None:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(y, model(x, training=training), sample_weight=sample_weight)
    return tf.stop_gradient(eps * tf.sign(tape.gradient(value, x)))


def _remedy_model_class():
    import keras
    import tensorflow as tf

    class RemedyModel(keras.Model):
        """A functional network whose `train_step` does conservative and/or FGSM training.

        Built on the network's own graph, ``RemedyModel(net.inputs, net.outputs,
        ...)``, so it shares the network's layers and weights (same order, same
        checkpoints); `fit`, callbacks and distribution work as for the plain
        network.

        One `train_step` on a batch (x, y):

        1. ``x_k`` = the current trainable weights (conservative only);
        2. ``inner_steps`` times: one Adam update (the compiled optimizer) with
           the gradient of ``J + (lambda/2) ||w - x_k||^2``, where J is the
           compiled loss on the batch, or with FGSM the mixed loss
           ``alpha J(x) + (1 - alpha) J(x + eps sign(grad_x J(x)))``, the
           perturbation recomputed at each inner iterate.

        ``conservative_lambda=None`` means no proximal term and one inner step;
        ``adversarial_eps=None`` means clean inputs. The logged ``loss`` is the
        objective at the start of the step (for FGSM, the mixed loss), the
        metrics are those of the clean predictions, as `fit` logs them for a
        plain step (before the update).
        """

        def __init__(self, inputs, outputs, *, conservative_lambda=None,
                     conservative_steps=1, adversarial_eps=None,
                     adversarial_clean_weight=0.5, **kwargs):
            super().__init__(inputs=inputs, outputs=outputs, **kwargs)
            self.conservative_lambda = (None if conservative_lambda is None
                                        else float(conservative_lambda))
            self.inner_steps = int(conservative_steps) if conservative_lambda is not None else 1
            self.adversarial_eps = None if adversarial_eps is None else float(adversarial_eps)
            self.adversarial_clean_weight = float(adversarial_clean_weight)

        def _objective(self, tape, x, y, sample_weight):
            """Batch objective (recorded on `tape`) and clean predictions."""
            if self.adversarial_eps is None:
                y_pred = self(x, training=True)
                return self.compute_loss(x=x, y=y, y_pred=y_pred,
                                         sample_weight=sample_weight, training=True), y_pred
            with tf.GradientTape() as input_tape:
                input_tape.watch(x)
                y_pred = self(x, training=True)
                clean = self.compute_loss(x=x, y=y, y_pred=y_pred,
                                          sample_weight=sample_weight, training=True)
            with tape.stop_recording():
                x_adv = tf.stop_gradient(
                    x + self.adversarial_eps * tf.sign(input_tape.gradient(clean, x)))
            perturbed = self.compute_loss(x=x_adv, y=y, y_pred=self(x_adv, training=True),
                                          sample_weight=sample_weight, training=True)
            alpha = self.adversarial_clean_weight
            return alpha * clean + (1.0 - alpha) * perturbed, y_pred

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            x = tf.convert_to_tensor(x)
            variables = self.trainable_variables
            # The compiled loss is divided by the replica count and gradients
            # are summed over replicas; the penalty must follow suit.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            anchor = None
            if self.conservative_lambda is not None:
                anchor = [tf.identity(v.value) for v in variables]
            for step in range(self.inner_steps):
                with tf.GradientTape() as tape:
                    objective, y_pred = self._objective(tape, x, y, sample_weight)
                    if anchor is not None:
                        objective = objective + proximal_term(
                            variables, anchor, self.conservative_lambda) / replicas
                    scaled = self.optimizer.scale_loss(objective)
                if step == 0:
                    reported, reported_pred = objective, y_pred
                gradients = tape.gradient(scaled, variables)
                self.optimizer.apply(gradients, variables)
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(reported * replicas, sample_weight=tf.shape(x)[0])
            return self.compute_metrics(x, y, reported_pred, sample_weight=sample_weight)

    return RemedyModel


_REMEDY_MODEL = None


def remedy_model_class():
    """The `RemedyModel` class (defined lazily: importing this module needs no Keras)."""
    global _REMEDY_MODEL
    if _REMEDY_MODEL is None:
        _REMEDY_MODEL = _remedy_model_class()
    return _REMEDY_MODEL


def remedy_model(network, remedies):
    """`network` as a `RemedyModel` doing the train-step remedies of `remedies`.

    Args:
        network: a functional `keras.Model` (built).
        remedies: `Remedies`; augmentation is ignored here (it lives in the
            input pipeline).

    Returns:
        `network` itself when no train-step remedy is on, else a `RemedyModel`
        sharing its layers and weights (compile and fit it instead).
    """
    if not remedies.needs_train_step:
        return network
    return remedy_model_class()(
        network.inputs, network.outputs, name=network.name,
        conservative_lambda=remedies.conservative_lambda if remedies.conservative else None,
        conservative_steps=remedies.conservative_steps,
        adversarial_eps=remedies.adversarial_eps if remedies.adversarial else None,
        adversarial_clean_weight=remedies.adversarial_clean_weight)


__all__ = ["APPLY_TO", "FIELDS", "ImageAugmentation", "LR_DECAYS", "RECORD_DEFAULTS",
           "RemedyFields", "Remedies",
           "augmentation_key", "fgsm_perturbation", "learning_rate_plan", "make_optimizer",
           "proximal_term", "remedy_model", "remedy_model_class"]
