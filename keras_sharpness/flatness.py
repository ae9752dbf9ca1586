"""Scale-aware sharpness and PAC-Bayes flatness of the training loss f.

Two families of measures, both functions of a `TrainingLoss` (or anything
with ``num_params``, ``initial_point()``, ``value(w, non_trainable)`` and
``value_and_gradient(w, non_trainable)``):

**Adaptive sharpness** (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023,
*A modern look at the relationship between sharpness and generalization*).
With the scale vector ``c = |w| + eta`` (``adaptive=False``: ``c = 1``)::

    worst:    S_max = max_{||delta / c||_p <= rho} f(w + delta) - f(w),  p in {inf, 2}
    average:  S_avg = E_{delta ~ N(0, rho^2 diag(c^2))} f(w + delta) - f(w)

Both are invariant under the element-wise rescalings w -> D w (D diagonal,
positive) that leave the network's function unchanged (Dinh et al. 2017)
when ``eta = 0``; ``eta > 0`` lets weights that are exactly zero move.

*Worst case*: projected ascent in the scaled variable gamma = delta / c
(the feasible set is then the ball ||gamma||_p <= rho, and the gradient of
gamma -> f(w + c gamma) is c * grad f). Each step moves the best point found
so far by ``alpha`` along sign(c grad f) (linf, the FGSM/PGD step) or along
(c grad f) / ||c grad f||_2 (l2), then projects on the ball (clip, or radial
rescale). The step starts at ``alpha = 2 rho`` (the ball's diameter) and is
halved after every step that does not raise f (a backtracking schedule, the
spirit of APGD's step-size rule, simpler); a step that raises f is accepted
and keeps alpha. So the ascent is monotone and every step costs one
``value_and_gradient``. The start is gamma = 0 (default) or, with
``random_init=True``, a seeded uniform point of the ball. Gradient
components that are exactly zero count as +1 in the sign (as Metric 2.1's
corner start does), and a zero l2 gradient is replaced by a seeded random
direction, so the ascent cannot stall at an exactly stationary w. The result
is the largest f seen (including f(w) at delta = 0, so it is >= 0); its
``ascent`` holds that value after each step.

*Average case*: Monte Carlo with ``samples`` i.i.d. seeded draws; the
standard error is the sample standard deviation over sqrt(samples).

*m-sharpness* (Foret et al. 2021; Andriushchenko et al. 2023): with
``batch_size=m`` the objective is cut into consecutive chunks of m samples
(``objective.batch_objectives(m)``, data order), the measure is computed on
each chunk's own loss (its own worst-case delta, or its own draws) and the
chunk values are averaged (unweighted; the last chunk may be smaller).
``max_batches`` keeps a seeded random subset of the chunks.

**PAC-Bayes flatness** (Jiang et al. 2020, *Fantastic generalization
measures and where to find them*, measures 48-61). sigma is the largest
noise scale such that the expected training error under Gaussian weight
noise rises by at most ``target``::

    sigma  = max { s : E_u[err(w + u)] - err(w) <= target },  u ~ N(0, s^2 I)
    sigma' = the same with u_i ~ N(0, s^2 w_i^2 + eps^2)   (magnitude-aware)

reported with the flatness measure ``1 / sigma^2`` (pac-bayes-flatness,
pac-bayes-mag-flatness) and the paper's bound-style terms. Jiang et al. use
the 0-1 training error (their Algorithm 1 bisects on the deviation of the
training accuracy, target 0.1, tolerance 1e-2); that is ``quantity="error"``
here, the default; ``quantity="loss"`` uses the cross-entropy f instead. The
increase is signed (perturbed minus unperturbed), the expectation a Monte
Carlo mean over ``samples`` seeded directions z_k ~ N(0, I) that are the
**same at every bisection step** (u_k = s z_k, or sqrt(s^2 w^2 + eps^2) z_k),
so the estimated increase is a deterministic, continuous-in-s function and
the bisection is well defined; by default they come in antithetic pairs
(z, -z), which cancel the first-order term of f. Bisection on
``[0, sigma_max]`` (paper: [0, 2]) stops when the increase is within ``tol``
of the target or after ``max_steps`` halvings (paper: 15).
"""

import dataclasses
import math
import time

import numpy as np

from keras_sharpness.errors import UserError

KINDS = ("worst", "average")
NORMS = ("linf", "l2")
QUANTITIES = ("error", "loss")

#: Jiang et al.'s epsilon of the magnitude-aware noise (their code: 1e-3).
MAGNITUDE_EPS = 1e-3

# Independent random streams derived from the seed.
_STREAM_INIT, _STREAM_SAMPLES, _STREAM_BATCHES, _STREAM_PAC_BAYES, _STREAM_DIRECTION = range(5)


def _rng(seed, *key):
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


# ----------------------------------------------------------------- results
@dataclasses.dataclass
class AdaptiveSharpnessResult:
    """Adaptive (or plain) sharpness at one point, with its settings.

    Attributes:
        value: the sharpness, f(w + delta) - f(w) at the worst delta found, or
            the Monte Carlo mean increase (for m-sharpness: the mean over chunks).
        f0: f(w) (for m-sharpness: the mean of the chunks' f(w)).
        kind: ``"worst"`` or ``"average"``.
        norm: ``"linf"`` or ``"l2"`` (worst case); None for the average case.
        rho: radius in the scaled variable delta / c (average: the noise scale).
        adaptive: whether c = |w| + eta (True) or c = 1.
        eta: the additive part of c.
        steps: ascent steps (worst case; None for average).
        samples: Monte Carlo draws per chunk (average case; None for worst).
        standard_error: of ``value`` (average case; None for worst). For
            m-sharpness sqrt(sum of squared chunk errors) / chunks.
        ascent: the best increase found after each step (worst case; for
            m-sharpness the mean over chunks), None for average.
        batch_size: m of m-sharpness; None for the whole objective.
        num_batches: chunks used (1 for the whole objective).
        batch_values: the value of each chunk used (None without batch_size).
        random_init: whether the ascent started at a random point of the ball.
        evaluations: objective evaluations (values and gradients).
        seed: the seed.
        seconds: wall time.
    """

    value: float
    f0: float
    kind: str
    norm: str
    rho: float
    adaptive: bool
    eta: float
    steps: int
    samples: int
    standard_error: float
    ascent: list
    batch_size: int
    num_batches: int
    seconds: float
    batch_values: list = None
    random_init: bool = False
    evaluations: int = 0
    seed: int = 0

    def to_dict(self):
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PacBayesResult:
    """The PAC-Bayes noise scale sigma (Jiang et al. 2020) and its measures.

    Attributes:
        sigma: the noise scale found (the last bisection midpoint; 0 when even
            the smallest noise exceeds the target, ``sigma_max`` when the
            largest does not reach it: see ``bracketed``).
        flatness: 1 / sigma^2 (pac-bayes-flatness, or -mag-flatness); None
            when sigma is 0.
        target: the allowed rise of the expected error (or loss).
        magnitude_aware: whether u_i ~ N(0, sigma^2 w_i^2 + eps^2).
        samples: Monte Carlo directions per evaluation.
        bisection_steps: midpoints evaluated.
        increase_at_sigma: the estimated rise at ``sigma``.
        seconds: wall time.
        quantity: ``"error"`` (0-1 training error, the paper's) or ``"loss"``.
        base_value: the error (or loss) at w, without noise.
        eps: the magnitude-aware epsilon (None for the plain variant).
        tol: the tolerance on |increase - target|.
        sigma_max: upper end of the bisection interval.
        sigma_low, sigma_high: the final bracket (increase <= target at
            sigma_low, > target at sigma_high, as estimated).
        bracketed: False when the target was not crossed inside [0, sigma_max].
        bound: the paper's bound-style term for the reference point (48/49:
            ||w - w0||^2 / (4 sigma^2) + log(m / sigma) + 10; magnitude-aware
            56/57: 1/4 sum_i log((eps^2 + (sigma^2 + 1) ||w - w0||^2 / n) /
            (eps^2 + sigma^2 (w_i - w0_i)^2)) + log(m / sigma) + 10), with m
            the objective's ``num_samples``; None when m is unknown or sigma 0.
        reference: ``"origin"`` (w0 = 0, the "-orig" measures) or ``"given"``.
        history: ``[sigma, increase]`` for every midpoint evaluated.
        antithetic: whether the directions came in pairs (z, -z).
        evaluations: objective evaluations.
        seed: seed of the directions.
    """

    sigma: float
    flatness: float
    target: float
    magnitude_aware: bool
    samples: int
    bisection_steps: int
    increase_at_sigma: float
    seconds: float
    quantity: str = "error"
    base_value: float = None
    eps: float = None
    tol: float = None
    sigma_max: float = None
    sigma_low: float = None
    sigma_high: float = None
    bracketed: bool = True
    bound: float = None
    reference: str = "origin"
    history: list = dataclasses.field(default_factory=list)
    antithetic: bool = True
    evaluations: int = 0
    seed: int = 0

    def to_dict(self):
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


# -------------------------------------------------------------- validation
def _positive(name, value, allow_zero=False):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def _count(name, value, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(name, value, choices):
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def _point(objective, point, name="point"):
    w = objective.initial_point() if point is None else point
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a vector of numbers") from None
    if w.shape != (objective.num_params,):
        raise UserError(f"{name} must have shape ({objective.num_params},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise UserError(f"{name} contains NaN or infinite weights")
    return w


# ------------------------------------------------------ adaptive sharpness
def scale_vector(w, adaptive=True, eta=0.0):
    """c: |w| + eta (adaptive) or a vector of ones."""
    w = np.asarray(w, dtype=np.float64)
    return np.abs(w) + eta if adaptive else np.ones_like(w)


def _project(gamma, rho, norm):
    if norm == "linf":
        return np.clip(gamma, -rho, rho)
    length = np.linalg.norm(gamma)
    return gamma if length <= rho else gamma * (rho / length)


def _random_in_ball(rng, n, rho, norm):
    if norm == "linf":
        return rng.uniform(-rho, rho, size=n)
    direction = rng.standard_normal(n)
    direction /= np.linalg.norm(direction) or 1.0
    return direction * rho * rng.uniform() ** (1.0 / max(n, 1))


def _ascent_direction(gradient, norm, rng):
    if norm == "linf":
        return np.where(gradient >= 0, 1.0, -1.0)
    length = np.linalg.norm(gradient)
    if length == 0 or not math.isfinite(length):
        gradient = rng.standard_normal(len(gradient))
        length = np.linalg.norm(gradient)
    return gradient / length


def _worst_case(objective, w, c, rho, norm, steps, non_trainable, rng, random_init,
                progress, label):
    """(f0, best increase, ascent list, evaluations) for one objective."""
    f0, gradient = objective.value_and_gradient(w, non_trainable)
    f0 = float(f0)
    evaluations = 1
    gamma = np.zeros_like(w)
    value = f0
    if random_init:
        gamma = _random_in_ball(rng, len(w), rho, norm)
        value, gradient = objective.value_and_gradient(w + c * gamma, non_trainable)
        value = float(value)
        evaluations += 1
    best = max(f0, value)
    alpha = 2.0 * rho
    ascent = []
    for step in range(steps):
        direction = _ascent_direction(c * np.asarray(gradient, np.float64), norm, rng)
        candidate = _project(gamma + alpha * direction, rho, norm)
        new_value, new_gradient = objective.value_and_gradient(w + c * candidate, non_trainable)
        new_value = float(new_value)
        evaluations += 1
        if new_value > value:
            gamma, value, gradient = candidate, new_value, new_gradient
        else:
            alpha *= 0.5
        best = max(best, value)
        ascent.append(best - f0)
        if progress is not None:
            progress(f"{label}ascent step {step + 1}/{steps}: increase {best - f0:.6g}")
    return f0, best - f0, ascent, evaluations


def _average_case(objective, w, c, rho, samples, non_trainable, rng, progress, label):
    """(f0, mean increase, standard error, evaluations) for one objective."""
    f0 = float(objective.value(w, non_trainable))
    increases = np.empty(samples)
    for k in range(samples):
        delta = rho * c * rng.standard_normal(len(w))
        increases[k] = float(objective.value(w + delta, non_trainable)) - f0
        if progress is not None:
            progress(f"{label}sample {k + 1}/{samples}: mean increase "
                     f"{increases[:k + 1].mean():.6g}")
    error = float(increases.std(ddof=1) / math.sqrt(samples))
    return f0, float(increases.mean()), error, samples + 1


def adaptive_sharpness(objective, rho, *, kind="worst", norm="linf", adaptive=True,
                       steps=20, samples=10, batch_size=None, max_batches=None, eta=0.0,
                       random_init=False, point=None, non_trainable=None, seed=0,
                       progress=None):
    """Adaptive (scale-invariant) worst-case or average-case sharpness.

    Example::

        f = ks.TrainingLoss(model, x, y)
        ks.adaptive_sharpness(f, rho=0.05, kind="worst", norm="l2", steps=20).value
        ks.adaptive_sharpness(f, rho=0.05, kind="average", samples=100).standard_error

    Args:
        objective: a `TrainingLoss` (``batch_objectives`` needed only with
            ``batch_size``).
        rho: radius of the perturbation set in the scaled variable delta / c
            (average case: the relative noise scale), > 0.
        kind: ``"worst"`` (maximum over the ball) or ``"average"`` (Gaussian).
        norm: ``"linf"`` or ``"l2"``: the ball of the worst case (checked,
            unused, for the average case).
        adaptive: c = |w| + eta if True, c = 1 (plain sharpness) if False.
        steps: ascent steps of the worst case (one gradient each).
        samples: Monte Carlo draws of the average case (>= 2), per chunk.
        batch_size: m of m-sharpness (None: the whole objective).
        max_batches: use at most this many chunks, a seeded random subset.
        eta: the additive part of c (>= 0).
        random_init: start the ascent at a seeded uniform point of the ball
            instead of delta = 0.
        point: w (None: the objective's initial point).
        non_trainable: BatchNorm moving statistics (None: the model's).
        seed: seed of the random start, the draws and the chunk subset.
        progress: optional callable, called with a short str after each step
            or draw.

    Returns:
        `AdaptiveSharpnessResult`.

    Raises:
        UserError: a bad rho, eta, kind, norm, count, or a non-finite point.
    """
    start = time.perf_counter()
    rho = _positive("rho", rho)
    eta = _positive("eta", eta, allow_zero=True)
    _choice("kind", kind, KINDS)
    _choice("norm", norm, NORMS)
    steps = _count("steps", steps)
    samples = _count("samples", samples, minimum=2)
    batch_size = _count("batch_size", batch_size, allow_none=True)
    max_batches = _count("max_batches", max_batches, allow_none=True)
    w = _point(objective, point)
    c = scale_vector(w, adaptive, eta)

    if batch_size is None:
        parts, indices = [objective], [0]
    else:
        if not hasattr(objective, "batch_objectives"):
            raise UserError("batch_size needs an objective with batch_objectives "
                            "(a TrainingLoss)")
        parts = list(objective.batch_objectives(batch_size))
        indices = list(range(len(parts)))
        if max_batches is not None and max_batches < len(parts):
            indices = sorted(int(i) for i in _rng(seed, _STREAM_BATCHES).choice(
                len(parts), size=max_batches, replace=False))

    f0s, values, errors, ascents, evaluations = [], [], [], [], 0
    for position, index in enumerate(indices):
        label = "" if batch_size is None else f"batch {position + 1}/{len(indices)}: "
        part = parts[index]
        if kind == "worst":
            rng = _rng(seed, _STREAM_INIT, index)
            f0, value, ascent, count = _worst_case(part, w, c, rho, norm, steps, non_trainable,
                                                   rng, random_init, progress, label)
            ascents.append(ascent)
        else:
            rng = _rng(seed, _STREAM_SAMPLES, index)
            f0, value, error, count = _average_case(part, w, c, rho, samples, non_trainable,
                                                    rng, progress, label)
            errors.append(error)
        f0s.append(f0)
        values.append(value)
        evaluations += count

    worst = kind == "worst"
    return AdaptiveSharpnessResult(
        value=float(np.mean(values)), f0=float(np.mean(f0s)), kind=kind,
        norm=norm if worst else None, rho=rho, adaptive=bool(adaptive), eta=eta,
        steps=steps if worst else None, samples=None if worst else samples,
        standard_error=None if worst else float(np.sqrt(np.sum(np.square(errors))) / len(errors)),
        ascent=[float(a) for a in np.mean(ascents, axis=0)] if worst else None,
        batch_size=batch_size, num_batches=len(indices),
        batch_values=None if batch_size is None else [float(v) for v in values],
        random_init=bool(random_init), evaluations=evaluations, seed=int(seed),
        seconds=time.perf_counter() - start)


# --------------------------------------------------------------- PAC-Bayes
def _quantity_function(objective, quantity, non_trainable):
    if quantity == "loss":
        return lambda w: float(objective.value(w, non_trainable))
    if not hasattr(objective, "loss_and_accuracy"):
        raise UserError("quantity 'error' needs an objective with loss_and_accuracy "
                        "(a TrainingLoss); use quantity='loss'")
    return lambda w: 1.0 - float(objective.loss_and_accuracy(w, non_trainable)[1])


def pac_bayes_sigma(objective, *, target=0.1, magnitude_aware=False, samples=10, tol=1e-2,
                    sigma_max=2.0, max_steps=15, quantity="error", eps=MAGNITUDE_EPS,
                    antithetic=True, reference=None, point=None, non_trainable=None, seed=0,
                    progress=None):
    """The largest Gaussian weight-noise scale that keeps the error rise <= target.

    Example::

        r = ks.pac_bayes_sigma(ks.TrainingLoss(model, x, y), target=0.1)
        r.sigma, r.flatness            # sigma and 1 / sigma^2 (Jiang et al. measure 53)

    Args:
        objective: a `TrainingLoss` (``loss_and_accuracy`` for the error).
        target: allowed rise of the expected error (or loss), > 0 (paper: 0.1).
        magnitude_aware: noise u_i ~ N(0, sigma^2 w_i^2 + eps^2) instead of
            N(0, sigma^2) (Jiang et al. measures 56, 57, 61).
        samples: Monte Carlo draws per evaluation of the increase (paper: 10).
        tol: stop when |increase - target| <= tol (paper: 1e-2).
        sigma_max: upper end of the bisection interval (paper: 2).
        max_steps: bisection midpoints at most (paper: 15).
        quantity: ``"error"`` (0-1 training error, the paper's) or ``"loss"``
            (the cross-entropy f).
        eps: the magnitude-aware epsilon (paper: 1e-3).
        antithetic: use directions in pairs (z, -z).
        reference: w0 of the bound term (None: the origin, the "-orig"
            measures; the initial weights give the "-init" ones).
        point: w (None: the objective's initial point).
        non_trainable: BatchNorm moving statistics (None: the model's).
        seed: seed of the directions.
        progress: optional callable, called with a short str per midpoint.

    Returns:
        `PacBayesResult`.

    Raises:
        UserError: a bad target, tol, sigma_max, eps, count or quantity, or a
            non-finite point.
    """
    start = time.perf_counter()
    target = _positive("target", target)
    tol = _positive("tol", tol, allow_zero=True)
    sigma_max = _positive("sigma_max", sigma_max)
    eps = _positive("eps", eps, allow_zero=True)
    samples = _count("samples", samples)
    max_steps = _count("max_steps", max_steps)
    _choice("quantity", quantity, QUANTITIES)
    w = _point(objective, point)
    w0 = np.zeros_like(w) if reference is None else _point(objective, reference, "reference")
    measure = _quantity_function(objective, quantity, non_trainable)
    n = len(w)
    evaluations = [0]

    def direction(k):
        # Regenerated on every use (never stored: samples x n floats can be GBs),
        # identical at every bisection step.
        z = _rng(seed, _STREAM_PAC_BAYES, k // 2 if antithetic else k).standard_normal(n)
        return -z if antithetic and k % 2 else z

    def noise_scale(sigma):
        return np.sqrt(sigma ** 2 * w ** 2 + eps ** 2) if magnitude_aware else sigma

    base = measure(w)
    evaluations[0] += 1

    def increase(sigma):
        scale = noise_scale(sigma)
        total = 0.0
        for k in range(samples):
            total += measure(w + scale * direction(k))
        evaluations[0] += samples
        return total / samples - base

    history = []
    midpoints = 0
    lo, hi = 0.0, sigma_max
    top = increase(sigma_max)
    history.append([sigma_max, top])
    bracketed = True
    if top <= target:
        sigma, at_sigma, bracketed = sigma_max, top, False
    else:
        bottom = increase(0.0) if magnitude_aware and eps > 0 else 0.0
        if magnitude_aware and eps > 0:
            history.append([0.0, bottom])
        if bottom > target:
            sigma, at_sigma, bracketed, hi = 0.0, bottom, False, 0.0
        else:
            sigma, at_sigma = None, None
            for _ in range(max_steps):
                midpoints += 1
                sigma = 0.5 * (lo + hi)
                at_sigma = increase(sigma)
                history.append([sigma, at_sigma])
                if progress is not None:
                    progress(f"pac-bayes sigma {sigma:.6g}: increase {at_sigma:.6g} "
                             f"(target {target:g})")
                if abs(at_sigma - target) <= tol:
                    break
                if at_sigma > target:
                    hi = sigma
                else:
                    lo = sigma
    m = getattr(objective, "num_samples", None)
    return PacBayesResult(
        sigma=float(sigma), flatness=None if sigma == 0 else float(1.0 / sigma ** 2),
        target=target, magnitude_aware=bool(magnitude_aware), samples=samples,
        bisection_steps=midpoints, increase_at_sigma=float(at_sigma), quantity=quantity,
        base_value=float(base), eps=eps if magnitude_aware else None, tol=tol,
        sigma_max=sigma_max, sigma_low=float(lo), sigma_high=float(hi), bracketed=bracketed,
        bound=_bound(w - w0, sigma, m, eps if magnitude_aware else None),
        reference="origin" if reference is None else "given",
        history=[[float(s), float(v)] for s, v in history], antithetic=bool(antithetic),
        evaluations=evaluations[0], seed=int(seed), seconds=time.perf_counter() - start)


def _bound(r, sigma, m, eps):
    """Jiang et al.'s bound-style term for the offset r = w - w0 (None if undefined)."""
    if m is None or sigma <= 0:
        return None
    tail = math.log(m / sigma) + 10.0
    if eps is None:
        return float(np.dot(r, r) / (4.0 * sigma ** 2) + tail)
    numerator = eps ** 2 + (sigma ** 2 + 1.0) * np.dot(r, r) / len(r)
    denominator = eps ** 2 + sigma ** 2 * r ** 2
    if numerator <= 0 or np.any(denominator <= 0):
        return None
    return float(0.25 * np.sum(np.log(numerator / denominator)) + tail)
