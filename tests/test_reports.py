"""Tables: mean ± std over trials against numpy, formatting."""

import math

import numpy as np

from keras_sharpness.reports import (
    PAPER_TABLE3,
    format_mean_std,
    markdown_table,
    mean_std,
    summarize,
)


def test_mean_std_matches_numpy_sample_std():
    values = [1.0, 2.0, 4.0, 8.0, 16.0]
    mean, std, n = mean_std(values)
    assert n == 5
    assert mean == 6.2
    # Sample variance by hand: sum of squared deviations / (n - 1).
    assert math.isclose(std, math.sqrt(sum((v - 6.2) ** 2 for v in values) / 4))
    assert math.isclose(std, np.std(values, ddof=1))


def test_mean_std_edge_cases():
    assert mean_std([3.5]) == (3.5, 0.0, 1)
    mean, std, n = mean_std([])
    assert math.isnan(mean) and n == 0
    assert mean_std([1.0, None, 3.0])[:2] == (2.0, math.sqrt(2.0))


def test_format_row():
    assert format_mean_std(205.14, 69.521) == "205.14 ± 69.52"
    assert format_mean_std(math.nan, math.nan) == "–"
    table = markdown_table(["net", "SB"], [["F1", format_mean_std(1.0, 0.5)]])
    assert table.splitlines() == ["| net | SB |", "|---|---|", "| F1 | 1.00 ± 0.50 |"]


def test_summarize_and_paper_numbers():
    s = summarize([1.0, 3.0])
    assert s["mean"] == 2.0 and s["n"] == 2 and s["values"] == [1.0, 3.0]
    assert PAPER_TABLE3["F1"][1e-3]["lb"] == (205.14, 69.52)
