"""Paired SB-vs-LB statistics against values computed by hand."""

import math

import numpy as np
import pytest

from keras_sharpness.statistics import format_comparison, paired_comparison


def t_cdf_four_degrees_of_freedom(t):
    """Student's t CDF for 4 degrees of freedom, in closed form."""
    x = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * x - 0.25 * x ** 3


def test_paired_t_matches_the_formula_and_the_closed_form_p_value():
    sb = [1.0, 2.0, 3.0, 4.0, 5.0]
    lb = [2.0, 4.0, 6.0, 8.0, 10.0]  # differences 1..5
    d = np.array(lb) - np.array(sb)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))  # 3 / (sqrt(2.5) / sqrt(5)) = 4.2426
    out = paired_comparison(sb, lb)
    assert out["paired_t"]["statistic"] == pytest.approx(t, rel=1e-12)
    assert t == pytest.approx(3 * math.sqrt(2), rel=1e-12)
    p = 2 * (1 - t_cdf_four_degrees_of_freedom(t))
    assert out["paired_t"]["p_value"] == pytest.approx(p, rel=1e-9)


def test_wilcoxon_exact_p_values_by_counting_sign_patterns():
    # Five positive differences of distinct sizes: only 1 of the 2^5 sign
    # patterns reaches rank sum 15 on each side, so two-sided p = 2/32.
    out = paired_comparison([1, 1, 1, 1, 1], [2, 3, 4, 5, 6])
    assert out["wilcoxon"]["p_value"] == pytest.approx(2 / 32, rel=1e-12)
    assert out["wilcoxon"]["statistic"] == 0.0
    # One negative difference of the smallest rank: W = 1; patterns with rank
    # sum of negatives <= 1 are {} and {1}: p = 2 * 2/32.
    out = paired_comparison([1, 1, 1, 1, 1], [0.5, 3, 4, 5, 6])
    assert out["wilcoxon"]["p_value"] == pytest.approx(4 / 32, rel=1e-12)
    assert out["lb_greater"] == 4


def test_counts_means_ratio_and_missing_trials():
    out = paired_comparison([1.0, 2.0, None, 3.0], [10.0, 1.0, 5.0, float("nan")])
    assert out["n"] == 2 and out["sb"]["values"] == [1.0, 2.0]
    assert out["lb_greater"] == 1
    assert out["ratio"] == pytest.approx(5.5 / 1.5)
    assert out["sb"]["std"] == pytest.approx(math.sqrt(0.5))


def test_bootstrap_interval_of_the_ratio():
    # LB = 3 SB in every trial: every resample has ratio 3.
    sb = [1.0, 2.0, 0.5, 4.0, 1.5]
    out = paired_comparison(sb, [3 * v for v in sb])
    assert out["ratio_interval"] == pytest.approx([3.0, 3.0], rel=1e-12)
    # Otherwise the interval holds the estimate, lies within the extreme
    # resamples (min and max per-trial ratio bound a ratio of means), and is
    # reproducible from its seed.
    rng = np.random.default_rng(0)
    sb = rng.uniform(1, 2, 6)
    lb = sb * rng.uniform(5, 20, 6)
    out = paired_comparison(sb, lb, seed=3)
    low, high = out["ratio_interval"]
    ratios = lb / sb
    assert ratios.min() <= low <= out["ratio"] <= high <= ratios.max()
    assert paired_comparison(sb, lb, seed=3)["ratio_interval"] == [low, high]


def test_undefined_cases_give_none_not_errors():
    out = paired_comparison([1.0], [2.0])
    assert out["wilcoxon"] is None and out["paired_t"] is None and out["ratio_interval"] is None
    out = paired_comparison([1.0, 2.0], [1.0, 2.0])  # all differences zero
    assert out["wilcoxon"] is None and out["ratio"] == 1.0
    line = format_comparison(paired_comparison([1, 2, 3], [4, 8, 9]))
    assert line.startswith("LB > SB in 3/3") and "Wilcoxon p = 0.25" in line
    assert "paired t p =" in line and "bootstrap interval" in line
