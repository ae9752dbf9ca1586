"""The gradient noise scale B_simple and the critical batch size it predicts.

McCandlish, Kaplan, Amodei and the OpenAI Dota team, "An empirical model of
large-batch training" (2018, arXiv:1812.06162), Section 2.2: with G the true
gradient and Sigma the covariance of per-example gradients,

    B_simple = tr(Sigma) / |G|^2,

the batch size at which the noise of a minibatch gradient is comparable to
its signal. It equals the "noise scale" B_noise = tr(H Sigma) / G^T H G when
the Hessian H is a multiple of the identity, and the paper finds the critical
batch size B_crit (beyond which larger batches stop saving steps) close to
B_simple in practice: the prediction B_crit ~ B_simple is an empirical rule
of thumb of that paper (it can be off by a factor when H is ill-conditioned),
not a bound.

Here the data set of f is the population SGD draws from, so G = grad f(w)
(the full-data mean gradient) and

    tr(Sigma) = mean_i |g_i|^2 - |G|^2,

the population covariance (divisor N, not N - 1): exact for f's data, no
estimation. The per-example gradients g_i are those of
`TrainingLoss.gradient_moments`; with batch-statistics BN each g_i is
d l_i(w; batch)/dw over f's fixed batch, so they sum to the batch gradient
(a minibatch of a different size would see different statistics: read the
number with that in mind).

Uncertainty: the basic (reverse-percentile) bootstrap over groups of
samples (`scipy.stats.bootstrap`, ``method="basic"``), resampled with
replacement, describes how B_simple would vary were the data a sample from a
larger distribution. Not the percentile interval: a resample repeats groups,
which inflates its |G*|^2 by about tr(Sigma) / (b K) and pulls every
resampled B_simple down, so the percentile interval lay below the estimate
itself. The basic interval reflects the resamples around the estimate,
which removes that bias to first order. Even so it is a rough spread, not a
calibrated interval: in a simulation with K = 20 groups of 100 Gaussian
"gradients", it covered the population value in 77 % of 200 draws at a
nominal 95 % (the percentile interval: 10 %). The unit is the fixed batch (or a group of
``group_size`` samples) and not the example because the bootstrap needs only
each group's gradient sum (K vectors of length n, K the number of groups)
and sum of squared norms: every resample's |G*|^2 is c^T M c / N*^2 with M the
K x K Gram matrix of the group sums and c the resampled counts, and the N
per-example gradients (N x n numbers) are never kept. With batch-statistics
BN the samples of a batch share statistics, so whole batches are the
independent units.

Under batch-statistics BN (``bn_eval="batch"``) per-example gradients of f
exist (`TrainingLoss.gradient_moments`) but cost one backward pass per
sample, and they are not what SGD at another batch size sees. There the
default is McCandlish et al.'s two-batch-size estimator (their Appendix A.1)
instead: the data are split into K disjoint groups of b consecutive samples,
each evaluated as one batch (`TrainingLoss.batch_objectives`: its BN
statistics are those of its b samples, as in SGD with batch b), and with g_k
the mean gradient of group k and G their mean,

    E |g_k|^2 = |G|^2 + tr(Sigma) / b * (N - b) / (N - 1)

for a random split without replacement (Sigma with divisor N), so

    tr(Sigma) = (mean_k |g_k|^2 - |G|^2) * b (N - 1) / (N - b),

unbiased, at the cost of one gradient pass (`noise_scale_from_group_means`).
It needs no per-example gradient at all, so it serves every model.
"""

import dataclasses
import time

import numpy as np

from keras_sharpness.errors import UserError


@dataclasses.dataclass(frozen=True)
class NoiseScaleResult:
    """The gradient noise scale at one point (`gradient_noise_scale`).

    Attributes:
        b_simple: tr(Sigma) / |G|^2, in samples (None when G = 0).
        trace_sigma: tr(Sigma) = mean |g_i|^2 - |G|^2 (divisor N).
        gradient_norm_sq: |G|^2, G = grad f.
        mean_square_norm: mean_i |g_i|^2.
        critical_batch_size: the predicted critical batch size, B_simple
            (McCandlish et al. 2018's rule of thumb, see the module).
        ci_low, ci_high: basic bootstrap interval of B_simple over
            groups (None without a bootstrap or with fewer than 2 groups).
        confidence: the interval's confidence level.
        bootstrap: number of bootstrap resamples.
        num_samples: N, the samples of f.
        num_batches: groups resampled by the bootstrap (fixed batches unless
            ``group_size`` was given).
        group_size: samples per group, None for fixed batches.
        bn_eval: the BN evaluation choice of f (None: no BN).
        seconds: wall time, bootstrap included.
        method: ``"per_example"`` or ``"two_batch"`` (see the module).
    """

    b_simple: float | None
    trace_sigma: float
    gradient_norm_sq: float
    mean_square_norm: float
    critical_batch_size: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    bootstrap: int
    num_samples: int
    num_batches: int
    group_size: int | None
    bn_eval: str | None
    seconds: float
    method: str = "per_example"

    def to_dict(self):
        return dataclasses.asdict(self)


def noise_scale_from_moments(gradient_sums, square_norm_sums, counts):
    """(B_simple, tr(Sigma), |G|^2, mean |g_i|^2) from group sums (float64).

    Args:
        gradient_sums: ``(K, n)`` sums of per-example gradients by group.
        square_norm_sums: ``(K,)`` sums of their squared norms.
        counts: ``(K,)`` samples per group.
    """
    total = float(np.sum(counts))
    mean_gradient = np.sum(gradient_sums, axis=0) / total
    gradient_norm_sq = float(mean_gradient @ mean_gradient)
    mean_square_norm = float(np.sum(square_norm_sums)) / total
    trace_sigma = mean_square_norm - gradient_norm_sq
    b_simple = trace_sigma / gradient_norm_sq if gradient_norm_sq > 0 else None
    return b_simple, trace_sigma, gradient_norm_sq, mean_square_norm


def noise_scale_from_group_means(group_means, num_samples):
    """(B_simple, tr(Sigma), |G|^2, mean |g_k|^2) from the mean gradients of K
    disjoint groups of b samples each (the two-batch-size estimator, see the
    module): tr(Sigma) = (mean_k |g_k|^2 - |G|^2) b (N - 1) / (N - b).

    Args:
        group_means: ``(K, n)`` mean gradients of the groups, K >= 2.
        num_samples: N, the samples of f (K b <= N).
    """
    means = np.asarray(group_means, dtype=np.float64)
    groups = len(means)
    size = num_samples / groups
    gradient = means.mean(axis=0)
    gradient_norm_sq = float(gradient @ gradient)
    mean_square = float(np.mean(np.sum(means * means, axis=1)))
    trace_sigma = ((mean_square - gradient_norm_sq) * size * (num_samples - 1)
                   / (num_samples - size))
    b_simple = trace_sigma / gradient_norm_sq if gradient_norm_sq > 0 else None
    return b_simple, trace_sigma, gradient_norm_sq, mean_square


def _group_bootstrap(groups, b_simple_of_counts, resamples, confidence, seed):
    """Percentile bootstrap interval over `groups` resampled with replacement.

    Args:
        groups: K, the number of groups.
        b_simple_of_counts: ``(..., K)`` times each group is drawn -> ``(...,)``
            B_simple values (vectorized: every resample is a count vector).
    """
    import scipy.stats

    def statistic(index, axis=-1):
        # index: (..., K) resampled group indices -> counts per group.
        index = np.moveaxis(np.asarray(index), axis, -1)
        flat = index.reshape(-1, groups)
        shifted = flat + groups * np.arange(len(flat))[:, None]
        c = np.bincount(shifted.ravel(), minlength=flat.size).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return b_simple_of_counts(c.reshape(index.shape[:-1] + (groups,)))

    result = scipy.stats.bootstrap(
        (np.arange(groups),), statistic, n_resamples=resamples, vectorized=True,
        confidence_level=confidence, method="basic",
        rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def _two_batch_interval(group_means, num_samples, resamples, confidence, seed):
    """Percentile bootstrap interval of the two-batch B_simple over the groups."""
    means = np.asarray(group_means, dtype=np.float64)
    gram = means @ means.T  # resample norms from K x K numbers, not K x n
    groups = len(means)
    size = num_samples / groups
    factor = size * (num_samples - 1) / (num_samples - size)

    def b_simple(c):
        c = c / groups
        norm_sq = np.einsum("...k,kl,...l->...", c, gram, c)
        return (c @ np.diag(gram) - norm_sq) * factor / norm_sq

    return _group_bootstrap(groups, b_simple, resamples, confidence, seed)


def _bootstrap_interval(moments, resamples, confidence, seed):
    """Percentile bootstrap interval of B_simple over the groups of `moments`."""
    sums = np.asarray(moments.gradient_sums, dtype=np.float64)
    gram = sums @ sums.T  # resample norms from K x K numbers, not K x n
    squares = np.asarray(moments.square_norm_sums, dtype=np.float64)
    counts = np.asarray(moments.counts, dtype=np.float64)

    def b_simple(c):
        total = c @ counts
        norm_sq = np.einsum("...k,kl,...l->...", c, gram, c) / total ** 2
        return (c @ squares / total - norm_sq) / norm_sq

    return _group_bootstrap(len(counts), b_simple, resamples, confidence, seed)


METHODS = ("auto", "per_example", "two_batch")


def gradient_noise_scale(objective, *, point=None, non_trainable=None, bootstrap=1000, seed=0,
                         confidence=0.95, group_size=None, chunk=None, progress=None,
                         method="auto"):
    """B_simple = tr(Sigma) / |G|^2 of f at a point, with a bootstrap interval.

    Example::

        f = ks.TrainingLoss(model, x, y, bn_eval="moving", batch_size=100)
        result = gradient_noise_scale(f, bootstrap=1000)
        result.b_simple, (result.ci_low, result.ci_high)

    Args:
        objective: a `keras_sharpness.objective.TrainingLoss`.
        point: weight vector (None: the model's weights).
        non_trainable: non-trainable values (None: the model's).
        bootstrap: bootstrap resamples (0: no interval).
        seed: seed of the bootstrap (`numpy.random.default_rng`).
        confidence: level of the bootstrap interval, in (0, 1).
        group_size: per_example: resample groups of this many consecutive
            samples of a fixed batch instead of whole fixed batches (for f
            without batch-statistics BN only); two_batch: b, the samples
            of each group (default: f's batch size / 10, at least 2).
        chunk: samples per vectorized call of `TrainingLoss.gradient_moments`
            (None: chosen by memory).
        progress: optional callable, called with a short string per batch.
        method: ``"per_example"`` (exact per-example gradients),
            ``"two_batch"`` (McCandlish et al.'s two-batch-size estimator) or
            ``"auto"``: two_batch under batch-statistics BN, else per_example.

    Returns:
        `NoiseScaleResult`.

    Raises:
        UserError: a bad ``bootstrap``, ``confidence``, ``group_size``,
            ``chunk`` or ``point``.
    """
    start = time.perf_counter()
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise UserError(f"bootstrap must be a non-negative integer, got {bootstrap!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0 < confidence < 1:
        raise UserError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    if method not in METHODS:
        raise UserError(f"unknown noise scale method {method!r}; choose one of "
                        f"{', '.join(METHODS)}")
    if method == "auto":
        method = "two_batch" if objective.bn_eval == "batch" else "per_example"
    if method == "two_batch":
        return _two_batch(objective, point, non_trainable, bootstrap, seed, confidence,
                          group_size, start)
    if group_size is not None and objective.bn_eval == "batch":
        raise UserError("group_size needs samples independent of each other; with "
                        "bn_eval='batch' a batch's samples share statistics: leave it None")
    w = objective.initial_point() if point is None else np.asarray(point, dtype=np.float64)
    if w.shape != (objective.num_params,):
        raise UserError(f"point must be a vector of {objective.num_params} weights, "
                        f"got shape {w.shape}")
    moments = objective.gradient_moments(w, non_trainable, chunk=chunk, group_size=group_size,
                                         progress=progress)
    b_simple, trace_sigma, norm_sq, mean_square = noise_scale_from_moments(
        moments.gradient_sums, moments.square_norm_sums, moments.counts)
    low = high = None
    if bootstrap > 0 and len(moments.counts) >= 2 and b_simple is not None:
        low, high = _bootstrap_interval(moments, int(bootstrap), float(confidence), seed)
    return NoiseScaleResult(
        b_simple=b_simple, trace_sigma=trace_sigma, gradient_norm_sq=norm_sq,
        mean_square_norm=mean_square, critical_batch_size=b_simple, ci_low=low, ci_high=high,
        confidence=float(confidence), bootstrap=int(bootstrap),
        num_samples=moments.num_samples, num_batches=len(moments.counts),
        group_size=group_size, bn_eval=objective.bn_eval,
        seconds=time.perf_counter() - start)


def _two_batch(objective, point, non_trainable, bootstrap, seed, confidence, group_size, start):
    """`gradient_noise_scale` by the two-batch-size estimator (see the module)."""
    n = objective.num_samples
    size = max(2, objective.batch_size // 10) if group_size is None else group_size
    if isinstance(size, bool) or int(size) != size or not 2 <= size <= n // 2:
        raise UserError(f"the two-batch noise scale needs groups of 2 to {n // 2} samples "
                        f"(half of f's {n}), got {size!r}")
    size = int(size)
    groups = n // size
    w = objective.initial_point() if point is None else np.asarray(point, dtype=np.float64)
    if w.shape != (objective.num_params,):
        raise UserError(f"point must be a vector of {objective.num_params} weights, "
                        f"got shape {w.shape}")
    # Disjoint groups of exactly `size` samples; a remainder shorter than that is left out.
    views = objective.batch_objectives(size)[:groups]
    means = np.stack([view.gradient(w, non_trainable) for view in views])
    used = groups * size
    b_simple, trace_sigma, norm_sq, mean_square = noise_scale_from_group_means(means, used)
    low = high = None
    if bootstrap > 0 and b_simple is not None:
        low, high = _two_batch_interval(means, used, int(bootstrap), float(confidence), seed)
    return NoiseScaleResult(
        b_simple=b_simple, trace_sigma=trace_sigma, gradient_norm_sq=norm_sq,
        mean_square_norm=mean_square, critical_batch_size=b_simple, ci_low=low, ci_high=high,
        confidence=float(confidence), bootstrap=int(bootstrap), num_samples=used,
        num_batches=groups, group_size=size, bn_eval=objective.bn_eval,
        seconds=time.perf_counter() - start, method="two_batch")
