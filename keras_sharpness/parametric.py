"""The parametric plot: the loss along the path from x_SB to x_LB (Figure 3).

For alpha in [alpha_min, alpha_max] the weights are

* ``curve="linear"``: x(alpha) = alpha x_LB + (1 - alpha) x_SB (Figure 3),
* ``curve="sin"``: x(alpha) = sin(alpha pi/2) x_LB + cos(alpha pi/2) x_SB
  (Appendix D),

so alpha = 0 is the SB solution and alpha = 1 the LB one. At every point the
train and test cross-entropy and accuracy are evaluated through
`keras_sharpness.objective.TrainingLoss`: the same f, fixed batches and
precision as the sharpness metric. The trained models are never modified.

BatchNorm along the path
------------------------
The weights are interpolated; what BN normalizes with is a choice, recorded
in the output as ``bn_eval``:

``"batch"`` (default; the original code)
    Every evaluation batch is normalized with its own statistics (Keras 1
    ``mode=2``). Moving statistics play no part.
``"recompute"``
    At each point the BN statistics are recomputed from the training data at
    x(alpha), then the network is evaluated with them (standard inference).
    Each layer gets the exact population mean and variance of its inputs over
    the whole training set (in fixed batches of ``batch_size``, accumulated as
    sum of means and of second moments), with the layers before it in training
    mode, i.e. normalizing with batch statistics and with dropout active, as
    Keras' moving averages see them during training. Costs one extra pass over
    the training data per point.
``"moving"``
    The stored moving statistics are interpolated with the same coefficients
    as the weights; interpolated variances are clipped at zero (extrapolation
    beyond [0, 1] can make them negative). Cheap but not principled: the
    statistics of x(alpha) are not the interpolation of the end points'.
"""

import dataclasses

import numpy as np

from keras_sharpness.errors import UserError

CURVES = ("linear", "sin")
PLOT_BN_EVAL = ("batch", "recompute", "moving")


@dataclasses.dataclass
class ParametricResult:
    """Losses and accuracies along the path; accuracies are fractions.

    Attributes:
        alphas: the path parameter of each point.
        train_loss, train_acc, test_loss, test_acc: one value per alpha.
        curve: ``"linear"`` or ``"sin"``.
        bn_eval: ``"batch"``, ``"recompute"`` or ``"moving"``.
        batch_size: evaluation batch size (defines f in ``"batch"`` mode).
        num_params: number of trainable weights.
        seconds: wall time of the sweep.
    """

    alphas: list
    train_loss: list
    train_acc: list
    test_loss: list
    test_acc: list
    curve: str
    bn_eval: str
    batch_size: int
    num_params: int
    seconds: float = 0.0

    def to_dict(self):
        return dataclasses.asdict(self)


def check_path_arguments(num_points, alpha_min, alpha_max, curve, bn_eval):
    """Raises `UserError` (one line) for a bad path specification."""
    if int(num_points) < 2:
        raise UserError(f"num_points must be at least 2, got {num_points}")
    if not float(alpha_min) < float(alpha_max):
        raise UserError(f"alpha_min ({alpha_min:g}) must be smaller than alpha_max "
                        f"({alpha_max:g})")
    if curve not in CURVES:
        raise UserError(f"unknown curve {curve!r}; choose one of {', '.join(CURVES)}")
    if bn_eval not in PLOT_BN_EVAL:
        raise UserError(f"unknown BN semantics {bn_eval!r}; choose one of "
                        f"{', '.join(PLOT_BN_EVAL)}")


def path_coefficients(alpha, curve="linear"):
    """(c_LB, c_SB) with x(alpha) = c_LB x_LB + c_SB x_SB."""
    if curve == "linear":
        return float(alpha), 1.0 - float(alpha)
    if curve == "sin":
        return float(np.sin(alpha * np.pi / 2)), float(np.cos(alpha * np.pi / 2))
    raise UserError(f"unknown curve {curve!r}; choose one of {', '.join(CURVES)}")


def _bn_statistic_slots(model):
    """Indices in ``model.non_trainable_variables`` of BN means and variances."""
    from keras_sharpness.layers import batchnorm_layers

    ids = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    slots = []
    for layer in batchnorm_layers(model):
        slots.append((ids[id(layer.moving_mean)], ids[id(layer.moving_variance)],
                      float(layer.momentum)))
    return slots


class _StatisticsRecomputer:
    """Population BN statistics of a model at given weights (see module doc)."""

    def __init__(self, model, x, batch_size):
        import tensorflow as tf

        self.slots = _bn_statistic_slots(model)
        self.batches = [tf.constant(np.asarray(x[i:i + batch_size], np.float32))
                        for i in range(0, len(x), batch_size)]
        self.sizes = [int(b.shape[0]) for b in self.batches]

        def step(trainable, fixed, xb):
            # Moving statistics start at 0, so after one training-mode call
            # each holds (1 - momentum) x the batch statistic, read back exactly.
            _, updated = model.stateless_call(trainable, fixed, xb, training=True)
            return updated

        self.step = tf.function(step, reduce_retracing=True)

    def __call__(self, trainable, fixed):
        import tensorflow as tf

        fixed = [np.array(v) for v in fixed]
        for mean_i, var_i, _ in self.slots:
            fixed[mean_i] = np.zeros_like(fixed[mean_i])
            fixed[var_i] = np.zeros_like(fixed[var_i])
        fixed_t = [tf.constant(v) for v in fixed]
        trainable_t = [tf.constant(w, tf.float32) for w in trainable]
        sums = {i: 0.0 for slot in self.slots for i in slot[:2]}
        total = sum(self.sizes)
        for xb, size in zip(self.batches, self.sizes):
            updated = self.step(trainable_t, fixed_t, xb)
            for mean_i, var_i, momentum in self.slots:
                mean = np.asarray(updated[mean_i], np.float64) / (1.0 - momentum)
                var = np.asarray(updated[var_i], np.float64) / (1.0 - momentum)
                sums[mean_i] = sums[mean_i] + size * mean
                sums[var_i] = sums[var_i] + size * (var + mean ** 2)
        out = list(fixed)
        for mean_i, var_i, _ in self.slots:
            mean = sums[mean_i] / total
            out[mean_i] = mean.astype(fixed[mean_i].dtype)
            out[var_i] = np.maximum(sums[var_i] / total - mean ** 2, 0.0).astype(
                fixed[var_i].dtype)
        return out


def parametric_curve(sb_model, lb_model, data, *, num_points=25, alpha_min=-1.0,
                     alpha_max=2.0, curve="linear", bn_eval="batch",
                     batch_size=1000, verbose=False):
    """Train/test loss and accuracy along the path from x_SB to x_LB.

    Example::

        data = ks.ArrayData.from_arrays(x_train, y_train, x_test, y_test)
        curve = ks.parametric_curve(sb_model, lb_model, data, num_points=25)
        ks.plot_parametric(curve, "figures/F1")   # figures/F1.pdf and .png

    Args:
        sb_model, lb_model: the two minimizers (same architecture, logits).
            Not modified.
        data: `keras_sharpness.data.ArrayData` (train and test arrays).
        num_points: number of alphas, evenly spaced in [alpha_min, alpha_max].
        alpha_min, alpha_max: the range of alpha (Figure 3: [-1, 2]).
        curve: ``"linear"`` or ``"sin"`` (Appendix D).
        bn_eval: ``"batch"``, ``"recompute"`` or ``"moving"`` (module doc).
        batch_size: evaluation batch size of `TrainingLoss`.
        verbose: print one line per point.

    Returns:
        `ParametricResult`.

    Raises:
        UserError: bad arguments or models of different architectures.
    """
    import time

    from keras_sharpness.objective import TrainingLoss

    check_path_arguments(num_points, alpha_min, alpha_max, curve, bn_eval)
    if ([tuple(v.shape) for v in sb_model.weights]
            != [tuple(v.shape) for v in lb_model.weights]):
        raise UserError(f"the SB and LB models differ in architecture "
                        f"({sb_model.name} vs {lb_model.name})")
    started = time.perf_counter()
    eval_mode = "batch" if bn_eval == "batch" else "moving"
    train = TrainingLoss(sb_model, data.x_train, data.y_train, bn_eval=eval_mode,
                         batch_size=batch_size)
    test = TrainingLoss(sb_model, data.x_test, data.y_test, bn_eval=eval_mode,
                        batch_size=batch_size)
    w_sb = train.initial_point()
    w_lb = train.flatten([np.asarray(v) for v in lb_model.trainable_variables])
    fixed_sb = train.non_trainable_values()
    fixed_lb = [np.array(v) for v in lb_model.non_trainable_variables]
    slots = _bn_statistic_slots(sb_model)
    variance_slots = {var_i for _, var_i, _ in slots}
    statistic_slots = {i for slot in slots for i in slot[:2]}
    recompute = (_StatisticsRecomputer(sb_model, data.x_train, batch_size)
                 if bn_eval == "recompute" else None)

    alphas = np.linspace(float(alpha_min), float(alpha_max), int(num_points))
    result = ParametricResult(alphas=[float(a) for a in alphas], train_loss=[],
                              train_acc=[], test_loss=[], test_acc=[], curve=curve,
                              bn_eval=bn_eval, batch_size=int(batch_size),
                              num_params=train.num_params)
    for alpha in alphas:
        c_lb, c_sb = path_coefficients(alpha, curve)
        w = c_lb * w_lb + c_sb * w_sb
        fixed = fixed_sb
        if bn_eval == "moving":
            fixed = []
            for i, (a, b) in enumerate(zip(fixed_sb, fixed_lb)):
                if i in statistic_slots:
                    value = c_lb * b.astype(np.float64) + c_sb * a.astype(np.float64)
                    if i in variance_slots:
                        value = np.maximum(value, 0.0)
                    a = value.astype(a.dtype)
                fixed.append(a)
        elif bn_eval == "recompute":
            fixed = recompute(train.unflatten(w), fixed_sb)
        train_loss, train_acc = train.loss_and_accuracy(w, fixed)
        test_loss, test_acc = test.loss_and_accuracy(w, fixed)
        result.train_loss.append(float(train_loss))
        result.train_acc.append(float(train_acc))
        result.test_loss.append(float(test_loss))
        result.test_acc.append(float(test_acc))
        if verbose:
            print(f"alpha {alpha:+.3f}: train loss {train_loss:.4g} acc {100 * train_acc:.2f}% "
                  f"| test loss {test_loss:.4g} acc {100 * test_acc:.2f}%", flush=True)
    result.seconds = time.perf_counter() - started
    return result


def write_parametric_json(result, path, **provenance):
    """Writes `result` and provenance (flags, seed, versions) to `path` atomically.

    The file has keys ``alphas``, ``train_loss``, ``train_acc``, ``test_loss``,
    ``test_acc`` (accuracy as a fraction), ``curve``, ``bn_eval``,
    ``batch_size``, ``num_params``, ``seconds``, ``versions`` and whatever
    `provenance` adds (e.g. ``flags``, ``seed``).
    """
    from keras_sharpness import io

    io.write_json(path, {**result.to_dict(), **provenance, "versions": io.versions()})
