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
"""

import dataclasses

import numpy as np

from keras_sharpness.errors import UserError

#: Which runs of `keras_sharpness.training.train_sb_lb` get the remedies.
APPLY_TO = ("lb", "sb", "both")


@dataclasses.dataclass(frozen=True)
class Remedies:
    """The Appendix E options of one training run (all off by default).

    Attributes:
        augment: flip / rotate / translate training images.
        conservative_lambda: proximal weight lambda; conservative training is
            on when it is > 0 (the paper: 1e-3).
        conservative_steps: Adam iterations per batch on the proximal problem.
        adversarial_eps: FGSM step in input units (inputs are scaled to
            [0, 1]); adversarial training is on when it is > 0.
        adversarial_clean_weight: alpha, the weight of the clean loss in
            ``alpha J(x) + (1 - alpha) J(x_adv)``; in [0, 1).
    """

    augment: bool = False
    conservative_lambda: float = 0.0
    conservative_steps: int = 3
    adversarial_eps: float = 0.0
    adversarial_clean_weight: float = 0.5

    @property
    def conservative(self):
        return self.conservative_lambda > 0

    @property
    def adversarial(self):
        return self.adversarial_eps > 0

    @property
    def any(self):
        """Whether any remedy is on."""
        return self.augment or self.conservative or self.adversarial

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

    def record(self):
        """The options as ``run.json`` keys; settings of an unused remedy are None."""
        return {
            "augment": bool(self.augment),
            "conservative_lambda": float(self.conservative_lambda),
            "conservative_steps": int(self.conservative_steps) if self.conservative else None,
            "adversarial_eps": float(self.adversarial_eps),
            "adversarial_clean_weight": (float(self.adversarial_clean_weight)
                                         if self.adversarial else None),
        }

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
        return ", ".join(parts)


#: `run.json` values of a run made without remedies (or before they existed).
RECORD_DEFAULTS = Remedies().record()


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


__all__ = ["APPLY_TO", "ImageAugmentation", "RECORD_DEFAULTS", "Remedies",
           "augmentation_key", "fgsm_perturbation", "proximal_term", "remedy_model",
           "remedy_model_class"]
