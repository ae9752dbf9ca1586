"""Figures. Matplotlib with the non-interactive Agg backend (no display needed)."""

import pathlib

from keras_sharpness import io


def pyplot():
    """`matplotlib.pyplot` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_stem):
    """Saves `fig` as ``<out_stem>.pdf`` and ``.png`` (150 dpi), closes it.

    Returns:
        The two paths written, (pdf, png).
    """
    out_stem = pathlib.Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    pdf, png = out_stem.with_suffix(".pdf"), out_stem.with_suffix(".png")
    fig.tight_layout()
    with io.atomic_path(pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    with io.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    pyplot().close(fig)
    return pdf, png


def plot_parametric(result, out_stem, *, title=None):
    """Draws the parametric plot of the original code and saves PDF and PNG.

    Cross-entropy on a logarithmic left axis (blue), accuracy in % on the right
    axis (red); training data solid, test data dashed, as in the released
    ``plot_parametric_plot.py``.

    Example::

        pdf, png = ks.plot_parametric(ks.parametric_curve(sb, lb, data), "figures/F1")

    Args:
        result: `keras_sharpness.parametric.ParametricResult` (or a dict with
            the same keys, e.g. a loaded ``parametric.json``).
        out_stem: path without suffix, e.g. ``Figures/F1``; ``.pdf`` and
            ``.png`` are written next to each other.
        title: figure title; None for one naming the curve and BN semantics.

    Returns:
        The two paths written, (pdf, png).
    """
    plt = pyplot()
    r = result if isinstance(result, dict) else result.to_dict()
    out_stem = pathlib.Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)

    fig, ax1 = plt.subplots(figsize=(6.4, 4.8))
    ax2 = ax1.twinx()
    ax1.semilogy(r["alphas"], r["train_loss"], "b-", label="Train")
    ax1.semilogy(r["alphas"], r["test_loss"], "b--", label="Test")
    ax2.plot(r["alphas"], [100.0 * a for a in r["train_acc"]], "r-")
    ax2.plot(r["alphas"], [100.0 * a for a in r["test_acc"]], "r--")
    for x in (0.0, 1.0):
        if min(r["alphas"]) <= x <= max(r["alphas"]):
            ax1.axvline(x, color="0.7", linewidth=0.8, zorder=0)
    ax1.set_xlabel(r"$\alpha$" + ("  (0: SB, 1: LB)" if r.get("curve") != "sin"
                                  else r"  (sin/cos path; 0: SB, 1: LB)"))
    ax1.set_ylabel("Cross Entropy", color="b")
    ax2.set_ylabel("Accuracy (%)", color="r")
    ax1.tick_params(axis="y", colors="b")
    ax2.tick_params(axis="y", colors="r")
    ax1.legend(loc="best")
    ax1.grid(True, which="both", alpha=0.3)
    if title is None:
        title = f"{r.get('curve', 'linear')} path, BN: {r.get('bn_eval', '?')}"
    ax1.set_title(title, fontsize=10)
    return save_figure(fig, out_stem)


def plot_spectral_density(result, out_stem, *, title=None):
    """Draws the Hessian eigenvalue density on a log scale (PyHessian's figure).

    Example::

        pdf, png = ks.plot_spectral_density(ks.spectral_density(f), "figures/density")

    The Gaussian-broadened density of `SpectralDensityResult.density` (its
    default grid and width) against the eigenvalue, density axis logarithmic
    and clipped below at 1e-8 of its peak so that empty stretches of the
    spectrum stay on the page.

    Args:
        result: `keras_sharpness.hessian.SpectralDensityResult` (or its
            `to_dict()`, e.g. a loaded JSON record).
        out_stem: path without suffix; ``.pdf`` and ``.png`` are written.
        title: figure title; None for one naming probes and Lanczos steps.

    Returns:
        The two paths written, (pdf, png).
    """
    import numpy as np

    from keras_sharpness.hessian import SpectralDensityResult

    if isinstance(result, dict):
        result = SpectralDensityResult.from_dict(result)
    grid, values = result.density()
    floor = 1e-8 * float(values.max()) if values.max() > 0 else 1e-300
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.semilogy(grid, np.maximum(values, floor), "b-", linewidth=1.0)
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("Eigenvalue")
    ax.set_ylabel("Density (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    if title is None:
        title = (f"Hessian eigenvalue density (SLQ, {result.num_probes} probe"
                 f"{'s' if result.num_probes != 1 else ''}, {result.lanczos_steps} Lanczos steps)")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out_stem)
