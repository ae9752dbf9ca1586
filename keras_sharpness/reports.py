"""Tables of the paper: mean ± std over trials, Markdown, the paper's numbers.

Everything here is plain data in, plain text or dicts out; the experiments
module fills it with measured values.
"""

import math

import numpy as np

#: Table 2 of Keskar et al.: accuracy % (mean, std over 5 trials).
PAPER_TABLE2 = {
    "F1": {"train_sb": (99.66, 0.05), "train_lb": (99.92, 0.01), "test_sb": (98.03, 0.07), "test_lb": (97.81, 0.07)},
    "F2": {"train_sb": (99.99, 0.03), "train_lb": (98.35, 2.08), "test_sb": (64.02, 0.20), "test_lb": (59.45, 1.05)},
    "C1": {"train_sb": (99.89, 0.02), "train_lb": (99.66, 0.20), "test_sb": (80.04, 0.12), "test_lb": (77.26, 0.42)},
    "C2": {"train_sb": (99.99, 0.04), "train_lb": (99.99, 0.01), "test_sb": (89.24, 0.12), "test_lb": (87.26, 0.07)},
    "C3": {"train_sb": (99.56, 0.44), "train_lb": (99.88, 0.30), "test_sb": (49.58, 0.39), "test_lb": (46.45, 0.43)},
    "C4": {"train_sb": (99.10, 1.23), "train_lb": (99.57, 1.84), "test_sb": (63.08, 0.50), "test_lb": (57.81, 0.17)},
}

#: Table 3: full-space sharpness, keyed by eps then "sb"/"lb".
PAPER_TABLE3 = {
    "F1": {1e-3: {"sb": (1.23, 0.83), "lb": (205.14, 69.52)}, 5e-4: {"sb": (0.61, 0.27), "lb": (42.90, 17.14)}},
    "F2": {1e-3: {"sb": (1.39, 0.02), "lb": (310.64, 38.46)}, 5e-4: {"sb": (0.90, 0.05), "lb": (93.15, 6.81)}},
    "C1": {1e-3: {"sb": (28.58, 3.13), "lb": (707.23, 43.04)}, 5e-4: {"sb": (7.08, 0.88), "lb": (227.31, 23.23)}},
    "C2": {1e-3: {"sb": (8.68, 1.32), "lb": (925.32, 38.29)}, 5e-4: {"sb": (2.07, 0.86), "lb": (175.31, 18.28)}},
    "C3": {1e-3: {"sb": (29.85, 5.98), "lb": (258.75, 8.96)}, 5e-4: {"sb": (8.56, 0.99), "lb": (105.11, 13.22)}},
    "C4": {1e-3: {"sb": (12.83, 3.84), "lb": (421.84, 36.97)}, 5e-4: {"sb": (4.07, 0.87), "lb": (109.35, 16.57)}},
}

#: Table 4: sharpness in a random 100-dimensional subspace.
PAPER_TABLE4 = {
    "F1": {1e-3: {"sb": (0.11, 0.00), "lb": (9.22, 0.56)}, 5e-4: {"sb": (0.05, 0.00), "lb": (9.17, 0.14)}},
    "F2": {1e-3: {"sb": (0.29, 0.02), "lb": (23.63, 0.54)}, 5e-4: {"sb": (0.05, 0.00), "lb": (6.28, 0.19)}},
    "C1": {1e-3: {"sb": (2.18, 0.23), "lb": (137.25, 21.60)}, 5e-4: {"sb": (0.71, 0.15), "lb": (29.50, 7.48)}},
    "C2": {1e-3: {"sb": (0.95, 0.34), "lb": (25.09, 2.61)}, 5e-4: {"sb": (0.31, 0.08), "lb": (5.82, 0.52)}},
    "C3": {1e-3: {"sb": (17.02, 2.20), "lb": (236.03, 31.26)}, 5e-4: {"sb": (4.03, 1.45), "lb": (86.96, 27.39)}},
    "C4": {1e-3: {"sb": (6.05, 1.13), "lb": (72.99, 10.96)}, 5e-4: {"sb": (1.89, 0.33), "lb": (19.85, 4.12)}},
}


def mean_std(values):
    """Mean and standard deviation over trials.

    The std is the sample standard deviation (``ddof=1``, zero for a single
    trial); the paper does not say which it used.

    Returns:
        ``(mean, std, n)``; ``(nan, nan, 0)`` for no values.
    """
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, 0
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std, int(values.size)


def format_mean_std(mean, std, digits=2):
    """``"mean ± std"`` with `digits` decimals; ``"–"`` for missing values."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header, rows):
    """A GitHub Markdown table from a header list and rows of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summarize(values):
    """`mean_std` as a JSON-ready dict with the values themselves."""
    mean, std, n = mean_std(values)
    return {"mean": mean, "std": std, "n": n, "values": [float(v) for v in values]}
