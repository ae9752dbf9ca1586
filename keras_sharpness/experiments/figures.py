"""Figures 4, 5 and 6 (matplotlib Agg; PDF and PNG side by side)."""

from keras_sharpness.plotting import pyplot, save_figure


def _positive(values):
    """Log axes need positive values: a sharpness of 0 is drawn at 1e-6."""
    return [max(float(v), 1e-6) for v in values]


def plot_batch_sweep(batch_sizes, test_acc, phi, out_stem, *, title, phi_label):
    """Figure 4: test accuracy (left) and sharpness (right) against batch size."""
    plt = pyplot()
    fig, ax1 = plt.subplots(figsize=(6.4, 4.4))
    ax2 = ax1.twinx()
    ax1.semilogx(batch_sizes, [100 * a for a in test_acc], "b-o", label="test accuracy")
    ax2.loglog(batch_sizes, _positive(phi), "r--s", label="sharpness")
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("test accuracy (%)", color="b")
    ax2.set_ylabel(phi_label, color="r")
    ax1.set_title(title)
    return save_figure(fig, out_stem)


def plot_warm_start(start_epochs, sb_acc, lb_acc, lb_phi, out_stem, *, title, phi_label):
    """Figure 5: SB and LB test accuracy, LB sharpness, against the SB epoch."""
    plt = pyplot()
    fig, ax1 = plt.subplots(figsize=(6.4, 4.4))
    ax2 = ax1.twinx()
    ax1.plot(start_epochs, [100 * a for a in sb_acc], "b-o", label="SB iterate, test acc.")
    ax1.plot(start_epochs, [100 * a for a in lb_acc], "b--s", label="LB from it, test acc.")
    ax2.semilogy(start_epochs, _positive(lb_phi), "r-^", label="LB sharpness")
    ax1.set_xlabel("SB epochs before switching to LB")
    ax1.set_ylabel("test accuracy (%)", color="b")
    ax2.set_ylabel(phi_label, color="r")
    lines = ax1.get_lines() + ax2.get_lines()
    ax1.legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
    ax1.set_title(title)
    return save_figure(fig, out_stem)


def plot_trajectory(curves, out_stem, *, title, phi_label):
    """Figure 6: sharpness against training cross-entropy along trajectories.

    Args:
        curves: ``{label: (cross_entropies, sharpness_values, epochs)}``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (label, (ce, phi, epochs)), style in zip(curves.items(), ("b-o", "r-s", "g-^")):
        ax.loglog(_positive(ce), _positive(phi), style, label=label)
        for c, p, e in zip(ce, phi, epochs):
            ax.annotate(str(e), (c, p), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.invert_xaxis()  # training proceeds left to right as the loss falls
    ax.set_xlabel("training cross-entropy (epochs annotated)")
    ax.set_ylabel(phi_label)
    ax.legend()
    ax.set_title(title)
    return save_figure(fig, out_stem)


def plot_remedy_grid(labels, panels, out_stem, *, title):
    """The remedy grid: one bar per run in each panel, with interval whiskers.

    Args:
        labels: the runs (``SB``, ``LB``, ``LB+<arm>``...).
        panels: ``(y label, means, intervals)`` per panel; an interval is
            ``[low, high]`` or None (no whisker).
    """
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 0.9 * len(labels) * len(panels),
                                                      4.4), squeeze=False)
    x = np.arange(len(labels))
    colors = ["tab:blue", "tab:red"] + ["tab:green"] * (len(labels) - 2)
    for ax, (ylabel, means, intervals) in zip(axes[0], panels):
        means = [np.nan if m is None else float(m) for m in means]
        errors = np.array([[m - i[0], i[1] - m] if i is not None else [0.0, 0.0]
                           for m, i in zip(means, intervals)]).T
        ax.bar(x, means, yerr=errors, color=colors, capsize=3)
        finite = [m for m in means if np.isfinite(m)]
        if ylabel.startswith("test accuracy") and finite:
            low = min(finite + [i[0] for i in intervals if i is not None])
            ax.set_ylim(max(0.0, low - 2.0), None)  # differences of a few points show
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_stem)
