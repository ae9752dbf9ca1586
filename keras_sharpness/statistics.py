"""How sure we are: paired comparisons of SB and LB over trials.

Trial t trains SB and LB from the same x0, so the two values of a trial are a
pair. `paired_comparison` reports, beside the per-trial values and mean ± std,
how many trials have LB > SB, Wilcoxon's signed-rank test and the paired t
test (two-sided, `scipy.stats`), and a bootstrap confidence interval of the
ratio of means LB / SB (trials resampled as pairs, `scipy.stats.bootstrap`,
percentile method: with five trials the BCa correction is itself too noisy to
estimate).

With few trials these say little and are reported as they are: with 5 pairs
the smallest two-sided exact Wilcoxon p-value is 2/32 = 0.0625, and a
percentile bootstrap over 5 pairs has only 126 distinct resamples, so its
interval is approximate (too narrow, if anything).
"""

import math

import numpy as np

#: Confidence level of the bootstrap interval.
CONFIDENCE = 0.95
#: Bootstrap resamples.
RESAMPLES = 9999


def _finite_pairs(sb, lb):
    pairs = [(float(a), float(b)) for a, b in zip(sb, lb)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _none_if_nan(value):
    value = float(value)
    return None if math.isnan(value) else value


def paired_comparison(sb, lb, *, seed=0, confidence=CONFIDENCE, resamples=RESAMPLES):
    """SB against LB over paired trials.

    Args:
        sb, lb: one value per trial each (same order; pairs with a missing or
            non-finite value are left out).
        seed: seed of the bootstrap.
        confidence: level of the interval.
        resamples: bootstrap resamples.

    Returns:
        A JSON-ready dict: ``n``, ``sb``/``lb`` (values, mean, std with
        ``ddof=1``), ``lb_greater`` (trials with LB > SB), ``wilcoxon`` and
        ``paired_t`` (``statistic``, ``p_value``; None where undefined, e.g.
        fewer than two pairs or all differences zero), ``ratio`` (mean LB /
        mean SB) and ``ratio_interval`` ([low, high], None where undefined).
    """
    import scipy.stats  # 2 s to import: not at command start-up (--help)

    a, b = _finite_pairs(sb, lb)
    n = len(a)
    out = {"n": n, "confidence": confidence,
           "sb": {"values": a.tolist(), "mean": _mean(a), "std": _std(a)},
           "lb": {"values": b.tolist(), "mean": _mean(b), "std": _std(b)},
           "lb_greater": int(np.sum(b > a)),
           "wilcoxon": None, "paired_t": None, "ratio": None, "ratio_interval": None}
    if n and np.mean(a) != 0:
        out["ratio"] = float(np.mean(b) / np.mean(a))
    differences = b - a
    if n >= 2 and np.any(differences != 0):
        w = scipy.stats.wilcoxon(b, a, alternative="two-sided")
        out["wilcoxon"] = {"statistic": float(w.statistic), "p_value": float(w.pvalue)}
        t = scipy.stats.ttest_rel(b, a, alternative="two-sided")
        out["paired_t"] = {"statistic": _none_if_nan(t.statistic),
                           "p_value": _none_if_nan(t.pvalue)}
    if n >= 2 and np.all(a != 0) and out["ratio"] is not None:
        def ratio_of_means(x, y, axis=-1):
            return np.mean(y, axis=axis) / np.mean(x, axis=axis)

        if np.all(differences == differences[0]) and np.all(a == a[0]):
            out["ratio_interval"] = [out["ratio"], out["ratio"]]
        else:
            result = scipy.stats.bootstrap(
                (a, b), ratio_of_means, paired=True, vectorized=True,
                confidence_level=confidence, n_resamples=resamples, method="percentile",
                rng=np.random.default_rng(seed))
            low, high = result.confidence_interval
            if math.isfinite(low) and math.isfinite(high):
                out["ratio_interval"] = [float(low), float(high)]
    return out


def _mean(values):
    return float(np.mean(values)) if len(values) else None


def _std(values):
    if not len(values):
        return None
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def format_comparison(comparison, digits=3, *, labels=("SB", "LB")):
    """One Markdown-friendly line: LB > SB count, p-values, ratio and interval.

    `labels` name the two sides (``paired_comparison``'s ``sb`` and ``lb``).
    """
    first, second = labels
    n = comparison["n"]
    parts = [f"{second} > {first} in {comparison['lb_greater']}/{n}"]
    for key, name in (("wilcoxon", "Wilcoxon"), ("paired_t", "paired t")):
        test = comparison[key]
        p = None if test is None else test["p_value"]
        parts.append(f"{name} p = {'–' if p is None else f'{p:.{digits}g}'}")
    ratio, interval = comparison["ratio"], comparison["ratio_interval"]
    if ratio is not None:
        text = f"{second}/{first} = {ratio:.{digits}g}"
        if interval is not None:
            level = int(round(100 * comparison["confidence"]))
            text += (f" [{interval[0]:.{digits}g}, {interval[1]:.{digits}g}] ({level} % "
                     f"bootstrap interval)")
        parts.append(text)
    return "; ".join(parts)


def mean_interval(values, confidence=CONFIDENCE):
    """Student-t confidence interval of the mean of `values` (None-free, finite).

    Returns:
        ``[low, high]``; None for fewer than two values.
    """
    import scipy.stats

    values = np.asarray([float(v) for v in values if v is not None and math.isfinite(v)])
    if len(values) < 2:
        return None
    half = (scipy.stats.t.ppf(0.5 + confidence / 2, len(values) - 1)
            * np.std(values, ddof=1) / math.sqrt(len(values)))
    return [float(np.mean(values) - half), float(np.mean(values) + half)]
