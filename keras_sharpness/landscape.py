"""Filter-normalized loss landscapes (Li et al., 2018).

Li, Xu, Taylor, Studer and Goldstein, *Visualizing the Loss Landscape of
Neural Nets* (NeurIPS 2018), plot f(w + alpha d) and f(w + alpha d1 + beta d2)
along random directions whose every **filter** has the norm of the matching
filter of w. Because ReLU networks are invariant to rescaling a filter (see
`keras_sharpness.reparam`), an unnormalized direction perturbs small filters
relatively more than large ones; filter normalization makes plots of
differently scaled minimizers comparable.

Conventions (the reference code, ``net_plotter.normalize_directions_for_weights``):

* A **filter** is the slice of a kernel that produces one output unit: Keras
  kernels end in the output axis (Dense ``(in, out)``, Conv2D
  ``(kh, kw, in, out)``), so filter j is ``kernel[..., j]``, all axes but the
  last. (PyTorch stores the output axis first; the slice is the same.)
  Each filter of the Gaussian direction is multiplied by
  ``||w_filter|| / (||d_filter|| + FILTER_EPS)``.
* One-dimensional variables are the biases and the BatchNorm gamma and beta:
  with ``ignore_bn_and_bias=True`` (Li et al.'s ``--xignore biasbn``, the
  default) the direction is zero there; otherwise it equals w there (their
  code's ``d.copy_(w)``: each scalar is its own filter). Scalars (rank 0)
  are treated like one-dimensional variables.
* The BN moving statistics are not weights: they are held at the values the
  caller passes (``non_trainable``; None: the model's), and the BN evaluation
  semantics is the objective's ``bn_eval`` (``"batch"``: each batch normalizes
  with its own statistics at every point), recorded in every result.

Losses and accuracies come from the objective (`TrainingLoss`): the same f,
fixed batches and precision as every other measure of the package.
"""

import dataclasses
import time

import numpy as np

from keras_sharpness.errors import UserError

#: Added to a direction filter's norm before dividing by it (Li et al.: 1e-10),
#: so an all-zero filter stays zero instead of dividing by zero.
FILTER_EPS = 1e-10
SB_LB_NORMALIZATIONS = ("unit", "filter", "none")


def _point(objective, point):
    if point is None:
        return objective.initial_point()
    point = np.asarray(point, np.float64)
    if point.shape != (objective.num_params,):
        raise UserError(f"point must have {objective.num_params} entries (the weights), "
                        f"got shape {point.shape}")
    return point


def _check_direction(objective, direction, name):
    direction = np.asarray(direction, np.float64)
    if direction.shape != (objective.num_params,):
        raise UserError(f"{name} must have {objective.num_params} entries (the weights), "
                        f"got shape {direction.shape}")
    if not np.all(np.isfinite(direction)):
        raise UserError(f"{name} has non-finite entries")
    return direction


def _check_grid(values, name):
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise UserError(f"{name} must be a non-empty list of finite numbers")
    return values


def filter_normalize(objective, direction, weights, *, ignore_bn_and_bias=True):
    """`direction` with every filter rescaled to the norm of that filter of `weights`.

    See the module doc for filters and one-dimensional variables. Both vectors
    are flat, in the objective's order (`TrainingLoss.flatten`).

    Returns:
        A new float64 vector.
    """
    direction = _check_direction(objective, direction, "direction")
    weights = _check_direction(objective, weights, "weights")
    parts = []
    for d, w in zip(objective.unflatten(direction), objective.unflatten(weights)):
        if d.ndim <= 1:
            parts.append(np.zeros_like(d) if ignore_bn_and_bias else w.copy())
            continue
        axes = tuple(range(d.ndim - 1))
        w_norm = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
        d_norm = np.sqrt(np.sum(d * d, axis=axes, keepdims=True))
        parts.append(d * (w_norm / (d_norm + FILTER_EPS)))
    return objective.flatten(parts)


def filter_normalized_direction(objective, seed=0, *, point=None, ignore_bn_and_bias=True):
    """A random filter-normalized direction (Li et al. 2018, Section 4).

    Example::

        f = ks.TrainingLoss(model, x, y, bn_eval="batch")
        d = filter_normalized_direction(f, seed=0)
        curve = landscape_1d(f, d, np.linspace(-1, 1, 51))

    Args:
        objective: a `TrainingLoss` (its ``unflatten`` gives the variable shapes).
        seed: seed of the Gaussian direction (``np.random.default_rng``).
        point: the weights whose filter norms are matched (None: the model's).
        ignore_bn_and_bias: zero on biases and BN parameters (default, Li et
            al.'s "biasbn"); otherwise equal to the weights there.

    Returns:
        A float64 vector of length ``objective.num_params``.
    """
    w = _point(objective, point)
    gaussian = np.random.default_rng(seed).standard_normal(objective.num_params)
    return filter_normalize(objective, gaussian, w, ignore_bn_and_bias=ignore_bn_and_bias)


def sb_lb_direction(objective, w_sb, w_lb, *, normalize="unit", ignore_bn_and_bias=True):
    """The direction from the SB minimizer to the LB one, for a landscape axis.

    Args:
        objective: a `TrainingLoss` (for the variable shapes).
        w_sb, w_lb: the two weight vectors (flat, the objective's order).
        normalize: ``"unit"`` (default): (w_lb - w_sb) / ||w_lb - w_sb||, so
            alpha is a Euclidean distance and LB sits at alpha = ||w_lb - w_sb||;
            ``"filter"``: the difference filter-normalized to the filters of
            w_sb (`filter_normalize`, comparable with a
            `filter_normalized_direction` on the other axis; LB is then off
            the axis in general); ``"none"``: the raw difference (LB at
            alpha = 1, the parametric plot's axis).
        ignore_bn_and_bias: for ``"filter"`` only (`filter_normalize`).

    Returns:
        A float64 vector.

    Raises:
        UserError: bad ``normalize``, bad shapes, or w_sb == w_lb with
            ``"unit"``.
    """
    if normalize not in SB_LB_NORMALIZATIONS:
        raise UserError(f"unknown normalize {normalize!r}; choose one of "
                        f"{', '.join(SB_LB_NORMALIZATIONS)}")
    w_sb = _check_direction(objective, w_sb, "w_sb")
    difference = _check_direction(objective, w_lb, "w_lb") - w_sb
    if normalize == "none":
        return difference
    if normalize == "filter":
        return filter_normalize(objective, difference, w_sb,
                                ignore_bn_and_bias=ignore_bn_and_bias)
    norm = float(np.linalg.norm(difference))
    if norm == 0.0:
        raise UserError("w_sb and w_lb are the same point: no SB-LB direction")
    return difference / norm


@dataclasses.dataclass
class Landscape1DResult:
    """f and accuracy along w + alpha d.

    Attributes:
        alphas: the step of each point, in units of the direction.
        loss, accuracy: f (mean cross-entropy) and the fraction classified
            right, one per alpha.
        direction_norm: ||d||.
        point_norm: ||w||.
        bn_eval: the objective's BatchNorm evaluation (None: no BN).
        batch_size, num_samples, num_params: the objective's.
        seconds: wall time.
    """

    alphas: list
    loss: list
    accuracy: list
    direction_norm: float
    point_norm: float
    bn_eval: str
    batch_size: int
    num_samples: int
    num_params: int
    seconds: float = 0.0

    def to_dict(self):
        return {"kind": "landscape_1d", **dataclasses.asdict(self)}


@dataclasses.dataclass
class Landscape2DResult:
    """f and accuracy on the plane w + alpha d1 + beta d2.

    Attributes:
        alphas, betas: the grid axes.
        loss, accuracy: nested lists, ``loss[i][j]`` at
            ``(alphas[i], betas[j])`` (shape ``(len(alphas), len(betas))``).
        d1_norm, d2_norm: the directions' norms.
        cosine: cosine of the angle between d1 and d2 (0: orthogonal; random
            Gaussian directions in high dimension are nearly so).
        point_norm, bn_eval, batch_size, num_samples, num_params, seconds: as
            in `Landscape1DResult`.
    """

    alphas: list
    betas: list
    loss: list
    accuracy: list
    d1_norm: float
    d2_norm: float
    cosine: float
    point_norm: float
    bn_eval: str
    batch_size: int
    num_samples: int
    num_params: int
    seconds: float = 0.0

    def to_dict(self):
        return {"kind": "landscape_2d", **dataclasses.asdict(self)}


def _objective_fields(objective, w):
    return {"point_norm": float(np.linalg.norm(w)), "bn_eval": objective.bn_eval,
            "batch_size": int(objective.batch_size), "num_samples": int(objective.num_samples),
            "num_params": int(objective.num_params)}


def landscape_1d(objective, direction, alphas, *, point=None, non_trainable=None,
                 progress=None):
    """f(w + alpha d) and accuracy for each alpha.

    Args:
        objective: a `TrainingLoss`.
        direction: d, e.g. `filter_normalized_direction` or `sb_lb_direction`.
        alphas: the steps (any order; kept as given).
        point: w (None: the model's weights).
        non_trainable: BN moving statistics held at every point (None: the
            model's); read only with ``bn_eval="moving"``.
        progress: optional callable, called with a short str per point.

    Returns:
        `Landscape1DResult`.
    """
    started = time.perf_counter()
    w = _point(objective, point)
    d = _check_direction(objective, direction, "direction")
    alphas = _check_grid(alphas, "alphas")
    loss, accuracy = [], []
    for alpha in alphas:
        value, correct = objective.loss_and_accuracy(w + alpha * d, non_trainable)
        loss.append(float(value))
        accuracy.append(float(correct))
        if progress is not None:
            progress(f"alpha {alpha:+.4g}: loss {value:.5g} accuracy {100 * correct:.2f}%")
    return Landscape1DResult(alphas=[float(a) for a in alphas], loss=loss, accuracy=accuracy,
                             direction_norm=float(np.linalg.norm(d)),
                             **_objective_fields(objective, w),
                             seconds=time.perf_counter() - started)


def landscape_2d(objective, d1, d2, alphas, betas, *, point=None, non_trainable=None,
                 progress=None):
    """f(w + alpha d1 + beta d2) and accuracy on a grid.

    Args:
        objective: a `TrainingLoss`.
        d1, d2: the two directions (e.g. two `filter_normalized_direction`
            with different seeds, or `sb_lb_direction` and a random one).
        alphas, betas: the grid axes (len(alphas) x len(betas) evaluations).
        point, non_trainable, progress: as in `landscape_1d` (progress is
            called once per grid row).

    Returns:
        `Landscape2DResult` with ``loss[i][j]`` at ``(alphas[i], betas[j])``.
    """
    started = time.perf_counter()
    w = _point(objective, point)
    d1 = _check_direction(objective, d1, "d1")
    d2 = _check_direction(objective, d2, "d2")
    alphas = _check_grid(alphas, "alphas")
    betas = _check_grid(betas, "betas")
    loss = np.zeros((len(alphas), len(betas)))
    accuracy = np.zeros_like(loss)
    for i, alpha in enumerate(alphas):
        for j, beta in enumerate(betas):
            loss[i, j], accuracy[i, j] = objective.loss_and_accuracy(
                w + alpha * d1 + beta * d2, non_trainable)
        if progress is not None:
            progress(f"row {i + 1}/{len(alphas)} (alpha {alpha:+.4g}): "
                     f"min loss {loss[i].min():.5g}")
    n1, n2 = float(np.linalg.norm(d1)), float(np.linalg.norm(d2))
    cosine = float(d1 @ d2 / (n1 * n2)) if n1 > 0 and n2 > 0 else 0.0
    return Landscape2DResult(alphas=[float(a) for a in alphas], betas=[float(b) for b in betas],
                             loss=loss.tolist(), accuracy=accuracy.tolist(), d1_norm=n1,
                             d2_norm=n2, cosine=cosine, **_objective_fields(objective, w),
                             seconds=time.perf_counter() - started)


def _as_dict(result):
    return result if isinstance(result, dict) else result.to_dict()


def plot_landscape_1d(result, out_stem, *, title=None):
    """Draws a 1-D landscape: loss (left axis, blue) and accuracy in % (right, red).

    Args:
        result: `Landscape1DResult` or its ``to_dict()`` (e.g. loaded JSON).
        out_stem: path without suffix; ``.pdf`` and ``.png`` are written.
        title: None for one naming the BN semantics.

    Returns:
        The two paths written, (pdf, png).
    """
    from keras_sharpness.plotting import pyplot, save_figure

    r = _as_dict(result)
    plt = pyplot()
    fig, ax1 = plt.subplots(figsize=(6.4, 4.8))
    ax2 = ax1.twinx()
    ax1.plot(r["alphas"], r["loss"], "b-", label="loss")
    ax2.plot(r["alphas"], [100.0 * a for a in r["accuracy"]], "r--", label="accuracy")
    ax1.axvline(0.0, color="0.7", linewidth=0.8, zorder=0)
    ax1.set_xlabel(r"$\alpha$  (w + $\alpha$ d)")
    ax1.set_ylabel("Cross Entropy", color="b")
    ax2.set_ylabel("Accuracy (%)", color="r")
    ax1.tick_params(axis="y", colors="b")
    ax2.tick_params(axis="y", colors="r")
    ax1.grid(True, alpha=0.3)
    ax1.set_title(title if title is not None else
                  f"1-D loss landscape, BN: {r.get('bn_eval') or 'none'}", fontsize=10)
    return save_figure(fig, out_stem)


def plot_landscape_2d(result, out_stem, *, title=None, levels=30):
    """Draws a 2-D landscape: contour (left) and 3-D surface (right) of the loss.

    Args:
        result: `Landscape2DResult` or its ``to_dict()``.
        out_stem: path without suffix; ``.pdf`` and ``.png`` are written.
        title: None for one naming the BN semantics.
        levels: number of contour levels.

    Returns:
        The two paths written, (pdf, png).
    """
    from keras_sharpness.plotting import pyplot, save_figure

    r = _as_dict(result)
    plt = pyplot()
    alphas, betas = np.asarray(r["alphas"]), np.asarray(r["betas"])
    loss = np.asarray(r["loss"], np.float64)
    if loss.shape != (len(alphas), len(betas)) or min(loss.shape) < 2:
        raise UserError(f"a 2-D landscape plot needs a grid of at least 2 x 2 losses shaped "
                        f"(alphas, betas); got {loss.shape}")
    a_grid, b_grid = np.meshgrid(alphas, betas, indexing="ij")
    fig = plt.figure(figsize=(11.0, 4.8))
    ax1 = fig.add_subplot(1, 2, 1)
    contour = ax1.contour(a_grid, b_grid, loss, levels=int(levels), cmap="viridis")
    ax1.clabel(contour, inline=True, fontsize=7, fmt="%.3g")
    ax1.plot([0.0], [0.0], "k+", markersize=8)
    ax1.set_xlabel(r"$\alpha$ (d1)")
    ax1.set_ylabel(r"$\beta$ (d2)")
    ax1.set_title("loss contours", fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2, projection="3d")
    ax2.plot_surface(a_grid, b_grid, loss, cmap="viridis", linewidth=0, antialiased=True)
    ax2.set_xlabel(r"$\alpha$")
    ax2.set_ylabel(r"$\beta$")
    ax2.set_zlabel("loss")
    fig.suptitle(title if title is not None else
                 f"2-D loss landscape, BN: {r.get('bn_eval') or 'none'}", fontsize=10)
    return save_figure(fig, out_stem)


#: Directions of `run`: random filter-normalized ones, or SB -> LB (plus a random one in 2-D).
DIRECTIONS = ("random", "sb_lb")


def run(models, data, settings, output_dir, *, direction="random", dims=1, echo=None):
    """Landscapes of saved models, as ``ks-landscape`` draws them; JSON and figures.

    * ``direction="random"``: for every model, f along one filter-normalized
      random direction (``dims=1``, alpha in [-span, span]) or on the plane of
      two (``dims=2``, seeds ``seed`` and ``seed + 1``).
    * ``direction="sb_lb"``: the models must be ``SB`` and ``LB``; the axis is
      w_LB - w_SB from SB (alpha in [-0.5, 1.5]: SB at 0, LB at 1, the
      parametric plot's axis), and in 2-D a filter-normalized random
      direction of SB (beta in [-span, span]) across it. f is SB's (its BN
      moving statistics, where ``bn_eval`` is ``"moving"``).

    f is `keras_sharpness.measure.training_loss` of `settings` (BN choice,
    batch size, ``num_samples`` subset, seed), the f of every other measure.

    Args:
        models: ``(label, checkpoint path)`` pairs.
        data: `keras_sharpness.data.ArrayData`, or a function returning it.
        settings: `keras_sharpness.measure.MeasureSettings` (also
            ``landscape_points`` and ``landscape_span``).
        output_dir: where ``landscape_<direction>_<dims>d.json`` and the
            figures ``<label>_landscape_<direction>_<dims>d.{pdf,png}`` go.
        direction: one of `DIRECTIONS`.
        dims: 1 or 2 (a 2-D grid costs points^2 evaluations of f).
        echo: progress lines (None: silent).

    Returns:
        The JSON-ready dict written.

    Raises:
        UserError: a bad direction or dims, or sb_lb without SB and LB.
    """
    import pathlib

    from keras_sharpness import io
    from keras_sharpness.measure import training_loss

    echo = echo or (lambda line: None)
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    if dims not in (1, 2):
        raise UserError(f"dims must be 1 or 2, got {dims!r}")
    labels = [label for label, _ in models]
    if direction == "sb_lb" and sorted(labels) != ["LB", "SB"]:
        raise UserError("direction sb_lb needs a run directory with sb.keras and lb.keras")
    output_dir = io.ensure_writable_dir(output_dir, "--output_dir")
    loaded = {label: io.load_model(path) for label, path in models}
    data = data() if callable(data) else data
    n, span = settings.landscape_points, settings.landscape_span
    sides = np.linspace(-span, span, n)
    name = f"landscape_{direction}_{dims}d"
    out = {"direction": direction, "dims": dims, "settings": settings.to_dict(),
           "models": {label: str(path) for label, path in models}, "results": {},
           "figures": [], "versions": io.versions()}
    targets = ["SB"] if direction == "sb_lb" else labels
    for label in targets:
        objective = training_loss(loaded[label], data.x_train, data.y_train, settings,
                                  settings.num_samples)
        random = filter_normalized_direction(objective, seed=settings.seed)
        if direction == "sb_lb":
            w_lb = training_loss(loaded["LB"], data.x_train[:1], data.y_train[:1],
                                 settings).initial_point()
            first = sb_lb_direction(objective, objective.initial_point(), w_lb,
                                    normalize="none")
            alphas = np.linspace(-0.5, 1.5, n)
        else:
            first, alphas = random, sides
        progress = (lambda line, label=label: echo(f"{label} {name}: {line}"))
        if dims == 1:
            result = landscape_1d(objective, first, alphas, progress=progress)
            figures = plot_landscape_1d(result, output_dir / f"{label}_{name}")
        else:
            second = (filter_normalized_direction(objective, seed=settings.seed + 1)
                      if direction == "random" else random)
            result = landscape_2d(objective, first, second, alphas, sides, progress=progress)
            figures = plot_landscape_2d(result, output_dir / f"{label}_{name}")
        out["results"][label] = result.to_dict()
        out["figures"] += [str(f) for f in figures]
        echo(f"{label} {name}: figure {figures[-1]}")
    path = pathlib.Path(output_dir) / f"{name}.json"
    io.write_json(path, out)
    echo(f"wrote {path}")
    return out


if __name__ == "__main__":
    from keras_sharpness import commands

    commands.landscape()
