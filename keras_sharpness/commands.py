"""The commands: their flags, then one call.

Each function here is a console script (``setup.py``) and what the
top-level script or module of the same command runs:

================  ==================================================
console script    same as
================  ==================================================
``ks-plot``       ``python plot_parametric_plot.py``
``ks-sharpness``  ``python compute_sharpness.py``
``ks-trials``     ``python -m keras_sharpness.experiments.trials``
``ks-remedy-grid``  ``python -m keras_sharpness.experiments.remedy_grid``
``ks-batch-sweep``  ``python -m keras_sharpness.experiments.batch_sweep``
``ks-warm-start``   ``python -m keras_sharpness.experiments.warm_start``
``ks-trajectory``   ``python -m keras_sharpness.experiments.trajectory``
``ks-sensitivity``  ``python -m keras_sharpness.experiments.sensitivity``
``ks-report``       ``python -m keras_sharpness.gap_report``
``ks-landscape``    ``python -m keras_sharpness.landscape``
================  ==================================================

A command defines its flags when it starts (two commands share flag names,
so one process defines one command's), parses them (``--flagfile=FILE``
reads them from a file), builds its settings object
(`keras_sharpness.config`) and only then imports TensorFlow
(`keras_sharpness.cli.run`): ``--help`` and bad flags answer at once.
"""

import os

PLOT_USAGE = """\
Trains SB and LB Adam from one x0 and plots the loss along the path between them.

Figure 3 of Keskar et al. (2017), for any of the paper's six networks:

    python plot_parametric_plot.py -n C1          # or: ks-plot -n C1
    python plot_parametric_plot.py -n F1 --dataset=npz:../shared/data/mnist-t10k-split.npz
    python plot_parametric_plot.py -n F1 --dataset=digits      # offline demo
    python plot_parametric_plot.py -n C1 --augment --workdir=runs/C1-augment  # Appendix E
    python plot_parametric_plot.py --flagfile=c1.flags         # flags from a file

Writes runs/<network>/ (checkpoints, history, run.json, parametric.json and
<network>.{pdf,png}; --figures_dir puts the figures elsewhere). Run the same
command again after a kill to resume. See docs/parametric_plot.md.
"""

SHARPNESS_USAGE = """\
Sharpness (Metric 2.1) and every other curvature/flatness measure of SB and LB minimizers.

    python compute_sharpness.py --workdir runs/F1 --eps 1e-3,5e-4   # or: ks-sharpness ...
    python compute_sharpness.py --workdir runs/F1 --subspace_dim 100 --hessian_topk 3
    python compute_sharpness.py --workdir runs/F1 --measures=all    # docs/measures.md
    python compute_sharpness.py --model m.keras --dataset npz:data.npz

Prints a Table 3/4-style table and writes <workdir>/sharpness.json (or
<model>.sharpness.json). See docs/sharpness.md.
"""


# -------------------------------------------------------------------- plot
def define_plot_flags(flag_values=None):
    """The flags of the parametric-plot command (`keras_sharpness.config.PlotCommand`)."""
    from absl import flags

    from keras_sharpness.cli import define_stop_rule_flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("network", None, "F1, F2, C1, C2, C3 or C4.", short_name="n",
                        flag_values=fv)
    flags.DEFINE_string("dataset", None,
                        "mnist, cifar10, cifar100, npz:PATH, folder:PATH or digits; "
                        "default: the network's data set in the paper (F2 has none).",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TensorFlow Datasets directory.", flag_values=fv)
    flags.DEFINE_integer("train_size", None, "Seeded subset of the training set (all if "
                         "unset).", flag_values=fv)
    flags.DEFINE_integer("test_size", None, "Seeded subset of the test set (all if unset).",
                         flag_values=fv)
    flags.DEFINE_float("sb_batch_size", 256, "Small batch: samples, or a fraction < 1 of "
                       "the training set.", flag_values=fv)
    flags.DEFINE_float("lb_batch_size", None, "Large batch: samples, or a fraction < 1 "
                       "of the training set (the paper: 0.1). Default: the released 5000, or "
                       "10 % of a training set smaller than 10000.", flag_values=fv)
    define_stop_rule_flags(fv)
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multiworker"],
                      "default: one device; mirrored: all local devices, synchronized "
                      "BN; multiworker: machines listed in TF_CONFIG.", flag_values=fv)
    flags.DEFINE_integer("accumulation_steps", 1, "LB gradient accumulation: micro-batches "
                         "per Adam step (BN then sees a micro-batch).", flag_values=fv)
    flags.DEFINE_integer("num_points", 25, "Number of alphas.", flag_values=fv)
    flags.DEFINE_float("alpha_min", -1.0, "Smallest alpha.", flag_values=fv)
    flags.DEFINE_float("alpha_max", 2.0, "Largest alpha.", flag_values=fv)
    flags.DEFINE_enum("curve", "linear", ["linear", "sin"], "linear: alpha x_LB + "
                      "(1-alpha) x_SB; sin: sin(alpha pi/2) x_LB + cos(alpha pi/2) x_SB.",
                      flag_values=fv)
    flags.DEFINE_enum("bn_eval", "batch", ["batch", "recompute", "moving"],
                      "BatchNorm along the path: batch statistics (original), statistics "
                      "recomputed at each point, or interpolated moving statistics.",
                      flag_values=fv)
    flags.DEFINE_integer("eval_batch_size", 1000, "Evaluation batch size (defines f with "
                         "BN batch statistics).", flag_values=fv)
    flags.DEFINE_string("workdir", None, "Checkpoints and JSON; default runs/<network>.",
                        flag_values=fv)
    flags.DEFINE_string("figures_dir", None, "Where <network>.pdf and .png go (default: "
                        "--workdir).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of x0, data order, dropout and subsets.",
                         flag_values=fv)
    flags.DEFINE_integer("verbose", None, "0 silent, 1 progress bars, 2 one line per epoch "
                         "(default: 1 on a terminal, 2 when output goes to a file).",
                         flag_values=fv)
    define_remedy_flags(fv)
    flags.mark_flag_as_required("network", flag_values=fv)


def define_remedy_flags(flag_values=None):
    """The remedy flags of the training commands (`keras_sharpness.remedies.Remedies`).

    They set the fields of the same name of `keras_sharpness.config.TrainingSettings`;
    all are off by default (the paper's training). docs/remedies.md says what
    each does.
    """
    from absl import flags

    from keras_sharpness.remedies import APPLY_TO, LR_DECAYS
    from keras_sharpness.schedules import OPTIMIZERS, SCALING_RULES

    fv = flags.FLAGS if flag_values is None else flag_values
    # Appendix E: attempts to fix large-batch training.
    flags.DEFINE_bool("augment", False, "Augment training images: horizontal flips, "
                      "rotations up to 10 degrees, translations up to 0.2 (image inputs "
                      "only).", flag_values=fv)
    flags.DEFINE_float("conservative_lambda", 0.0, "Conservative training (Li et al. 2014) "
                       "with this proximal weight when > 0 (the paper: 1e-3).",
                       flag_values=fv)
    flags.DEFINE_integer("conservative_steps", 3, "Adam iterations per batch of "
                         "conservative training.", flag_values=fv)
    flags.DEFINE_float("adversarial_eps", 0.0, "FGSM adversarial training (Goodfellow et "
                       "al. 2014) with this input step when > 0 (inputs are in [0, 1]).",
                       flag_values=fv)
    flags.DEFINE_float("adversarial_clean_weight", 0.5, "alpha in alpha J(x) + (1 - alpha) "
                       "J(x_adv); 0 trains on adversarial inputs only.", flag_values=fv)
    # Remedies found since (docs/remedies.md).
    flags.DEFINE_enum("optimizer", "adam", list(OPTIMIZERS), "adam (the paper's), sgd "
                      "(with --momentum), lamb (You et al. 2020) or lars (You et al. 2017).",
                      flag_values=fv)
    flags.DEFINE_float("learning_rate", 0.001, "Base learning rate (0.001: Keras Adam's "
                       "default, the paper's).", flag_values=fv)
    flags.DEFINE_float("momentum", 0.9, "Momentum of --optimizer=sgd and lars.",
                       flag_values=fv)
    flags.DEFINE_enum("lr_scaling", "none", list(SCALING_RULES), "Scale --learning_rate "
                      "with the batch: linear (Goyal et al. 2017) or sqrt (Hoffer et al. "
                      "2017), from --lr_reference_batch.", flag_values=fv)
    flags.DEFINE_integer("lr_reference_batch", 0, "The batch --learning_rate belongs to "
                         "(0: the SB batch).", flag_values=fv)
    flags.DEFINE_float("warmup_epochs", 0.0, "Epochs of linear learning-rate warm-up "
                       "(Goyal et al. 2017: 5); from --learning_rate to the scaled rate.",
                       flag_values=fv)
    flags.DEFINE_enum("lr_decay", "none", list(LR_DECAYS), "Learning-rate decay after the "
                      "warm-up: cosine to 0 at the epoch cap.", flag_values=fv)
    flags.DEFINE_bool("train_longer", False, "Hoffer et al. 2017: LB trains for as many "
                      "updates as SB (--epochs, or --max_epochs, scaled by LB/SB).",
                      flag_values=fv)
    flags.DEFINE_integer("ghost_batch_size", 0, "Ghost Batch Normalization (Hoffer et al. "
                         "2017): BN statistics per ghost batch of this many samples (0: off).",
                         flag_values=fv)
    flags.DEFINE_float("sam_rho", 0.0, "Sharpness-aware minimization (Foret et al. 2021) "
                       "with this radius when > 0 (Foret et al.: 0.05).", flag_values=fv)
    flags.DEFINE_bool("sam_adaptive", False, "ASAM (Kwon et al. 2021) instead of SAM "
                      "(rho ~0.5 to 2).", flag_values=fv)
    flags.DEFINE_float("sam_eta", 0.01, "ASAM's eta in T = |w| + eta.", flag_values=fv)
    flags.DEFINE_list("batch_increase_epochs", [], "Smith et al. 2018: epochs (from 0, "
                      "comma-separated) at which the batch grows by --batch_increase_factor "
                      "instead of decaying the learning rate (empty: off).", flag_values=fv)
    flags.DEFINE_float("batch_increase_factor", 2.0, "Growth of the batch at each of "
                       "--batch_increase_epochs (> 1).", flag_values=fv)
    flags.DEFINE_integer("batch_increase_max", 0, "Largest batch of --batch_increase_epochs "
                         "(0: no cap); beyond it the learning rate falls instead.",
                         flag_values=fv)
    flags.DEFINE_enum("remedies_apply_to", "lb", list(APPLY_TO), "Which runs get the "
                      "remedy flags above.", flag_values=fv)


def plot():
    """``ks-plot`` / ``plot_parametric_plot.py``: Figure 3 (`keras_sharpness.parametric_plot`)."""
    from keras_sharpness import cli
    from keras_sharpness.config import PlotCommand

    define_plot_flags()
    cli.run(_plot, PlotCommand.from_flags, doc=PLOT_USAGE)


def _plot(settings):
    from keras_sharpness import parametric_plot

    parametric_plot.run(settings)


# --------------------------------------------------------------- sharpness
def define_sharpness_flags(flag_values=None):
    """The flags of the sharpness command (`keras_sharpness.sharpness_cli`)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("workdir", None, "Run directory holding sb.keras, lb.keras and "
                        "run.json.", flag_values=fv)
    flags.DEFINE_string("model", None, "A single .keras checkpoint (instead of --workdir).",
                        flag_values=fv)
    flags.DEFINE_string("dataset", None, "Data source for --model (mnist, cifar10, "
                        "cifar100, npz:PATH, folder:PATH, digits); overrides run.json with "
                        "--workdir.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TensorFlow Datasets directory.", flag_values=fv)
    flags.DEFINE_string("output", None, "Report path (default <workdir>/sharpness.json or "
                        "<model>.sharpness.json).", flag_values=fv)
    flags.DEFINE_multi_string("eps", ["1e-3"], "Box scale(s); repeat the flag or give a "
                              "comma-separated list (paper: 1e-3,5e-4).", flag_values=fv)
    flags.DEFINE_integer("subspace_dim", 0, "0: full space (A = I); p: random n x p "
                         "Gaussian A (paper: 100).", flag_values=fv)
    flags.DEFINE_integer("maxiter", 10, "L-BFGS-B iterations (paper: 10). The record keeps "
                         "phi after every iteration; with more than 10 it also gives the "
                         "paper's value (phi_paper).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of A, the random start and the --num_samples "
                         "subset.", flag_values=fv)
    flags.DEFINE_string("start", "zero", "L-BFGS-B start y0: zero (the paper's reading), "
                        "corner (box corner along the gradient), random (uniform in the "
                        "box), or several separated by commas: phi is then the largest over "
                        "them.", flag_values=fv)
    flags.DEFINE_enum("subspace_scale", "gaussian", ["gaussian", "normalized"], "Scale of "
                      "a random A: gaussian (N(0,1) entries) or normalized (unit-norm "
                      "columns).", flag_values=fv)
    flags.DEFINE_enum("bn_eval", "batch", ["batch", "moving", "model"], "BatchNorm at "
                      "evaluation: batch statistics (Keras 1 mode=2, the paper), moving "
                      "statistics, or the mode the model was saved with.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f (defines f in batch "
                         "mode).", flag_values=fv)
    flags.DEFINE_integer("num_samples", None, "Evaluate f on a seeded subset of the "
                         "training set (default: all of it).", flag_values=fv)
    flags.DEFINE_integer("hessian_topk", 0, "Top Hessian eigenvalues by Lanczos (0: skip).",
                         flag_values=fv)
    flags.DEFINE_integer("hessian_trace_probes", 0, "Hutchinson probes for the Hessian "
                         "trace (0: skip; ~100 for a few % error).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Recompute records already in the report.",
                      flag_values=fv)
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multiworker"],
                      "default: one device; mirrored: f's batches spread over every GPU of "
                      "this machine (MirroredStrategy); multiworker: over the machines of "
                      "TF_CONFIG, the same command on each, the chief writes (the numbers "
                      "do not change).", flag_values=fv)
    define_measure_flags(fv)


#: Help of the flags of the measures' own settings; each flag has the name,
#: and its default the value, of the `MeasureSettings` field it sets.
MEASURE_FLAGS = {
    "measures": "Comma-separated measures (keras_sharpness.measure.MEASURES), or all: "
                "sharpness (Metric 2.1), accuracy, hessian_top, hessian_trace, "
                "spectral_density, adaptive_worst, adaptive_average, pac_bayes, "
                "pac_bayes_magnitude, noise_scale, landscape. See docs/measures.md.",
    "trace_rtol": "hessian_trace: stop once the standard error is at most this fraction "
                  "of the trace (0: use all --hessian_trace_probes).",
    "density_probes": "spectral_density: SLQ probes.",
    "lanczos_steps": "spectral_density: Lanczos steps per probe (one HVP each).",
    "adaptive_rho": "adaptive_*: radius rho of the perturbation, relative to |w|.",
    "adaptive_norm": "adaptive_worst: l2 or linf ball (relative to |w|).",
    "adaptive_eta": "adaptive_*: c = |w| + eta.",
    "adaptive_steps": "adaptive_worst: projected gradient ascent steps.",
    "adaptive_samples": "adaptive_average: Gaussian draws.",
    "m_sharpness": "adaptive_*: m of m-sharpness (per batch of m samples; 0: all at once).",
    "pac_bayes_target": "pac_bayes*: the rise of the training error (0-1) that defines "
                        "sigma (Jiang et al. 2020: 0.1).",
    "pac_bayes_samples": "pac_bayes*: random perturbations per sigma.",
    "noise_bootstrap": "noise_scale: bootstrap resamples of its confidence interval.",
    "noise_group_size": "noise_scale: samples per group (the small batch of the two-batch "
                        "estimator under batch-statistics BN, else the bootstrap's unit).",
    "landscape_points": "landscape: points of the 1-D curve.",
    "landscape_span": "landscape: the curve spans alpha in [-span, span].",
}


def define_measure_flags(flag_values):
    """`MEASURE_FLAGS`, typed and defaulted from `keras_sharpness.measure.MeasureSettings`."""
    import dataclasses

    from absl import flags

    from keras_sharpness.measure import MeasureSettings

    defaults = {f.name: f.default for f in dataclasses.fields(MeasureSettings)}
    for name, help_text in MEASURE_FLAGS.items():
        default = defaults[name]
        if name == "measures":
            flags.DEFINE_string(name, ",".join(default), help_text, flag_values=flag_values)
        elif name == "adaptive_norm":
            flags.DEFINE_enum(name, default, ["l2", "linf"], help_text,
                              flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)


def sharpness():
    """``ks-sharpness`` / ``compute_sharpness.py``: Metric 2.1 and the Hessian."""
    from keras_sharpness import cli

    define_sharpness_flags()
    cli.run(_sharpness, sharpness_settings, doc=SHARPNESS_USAGE)


def sharpness_settings(FLAGS):
    """What ``compute_sharpness.py`` will do, checked before TensorFlow loads.

    Every value is checked (`sharpness_cli.measure_settings`) and
    the checkpoints and data are located (`sharpness_cli.locate_models`), so
    bad numbers, a missing file or a run directory without minimizers answer
    in one line at once.

    Returns:
        Keyword arguments of `keras_sharpness.sharpness_cli.compute` (None
        when `keras_sharpness.cli.CHECK_FLAGS_ONLY` asks for the flag check only).
    """
    from keras_sharpness import cli, sharpness_cli

    cli.check_finite_flags()
    eps = sharpness_cli.parse_eps(FLAGS.eps)
    measure = dict(subspace_dim=FLAGS.subspace_dim, maxiter=FLAGS.maxiter, seed=FLAGS.seed,
                   start=FLAGS.start, subspace_scale=FLAGS.subspace_scale,
                   bn_eval=FLAGS.bn_eval, batch_size=FLAGS.batch_size,
                   num_samples=FLAGS.num_samples, hessian_topk=FLAGS.hessian_topk,
                   hessian_trace_probes=FLAGS.hessian_trace_probes,
                   **{name: FLAGS[name].value for name in MEASURE_FLAGS})
    sharpness_cli.measure_settings(eps=eps, **measure)  # checks every value
    if os.environ.get(cli.CHECK_FLAGS_ONLY):
        return None  # flags checked; files are located only for a real run
    located = sharpness_cli.locate_models(workdir=FLAGS.workdir, model=FLAGS.model,
                                          dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                                          output=FLAGS.output)
    return {"models": located["models"], "data": located["data"],
            "network": located["network"], "output": located["output"], "eps": eps,
            "overwrite": FLAGS.overwrite, "strategy": FLAGS.strategy, **measure}


def _sharpness(settings):
    from keras_sharpness import sharpness_cli

    sharpness_cli.compute(**settings)


# --------------------------------------------------------------- landscape
LANDSCAPE_USAGE = """\
Filter-normalized loss landscapes (Li et al. 2018) of SB and LB minimizers, 1-D or 2-D.

    ks-landscape --workdir runs/F1                         # 1-D, random direction
    ks-landscape --workdir runs/F1 --dims=2 --landscape_points=21
    ks-landscape --workdir runs/F1 --direction=sb_lb --dims=2   # SB -> LB and across
    python -m keras_sharpness.landscape --model m.keras --dataset npz:data.npz

Writes landscape_<direction>_<dims>d.json and figures (contour + surface in
2-D) into --output_dir (default <workdir>/figures). See docs/measures.md.
"""


def define_landscape_flags(flag_values=None):
    """The flags of ``ks-landscape`` (`keras_sharpness.landscape.run`)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("workdir", None, "Run directory holding sb.keras, lb.keras and "
                        "run.json.", flag_values=fv)
    flags.DEFINE_string("model", None, "A single .keras checkpoint (instead of --workdir).",
                        flag_values=fv)
    flags.DEFINE_string("dataset", None, "Data source for --model; overrides run.json.",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TensorFlow Datasets directory.", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Where JSON and figures go (default: figures/ "
                        "beside the models).", flag_values=fv)
    flags.DEFINE_enum("direction", "random", ["random", "sb_lb"], "random: filter-normalized "
                      "random direction(s); sb_lb: from SB to LB (and a random one across "
                      "in 2-D).", flag_values=fv)
    flags.DEFINE_integer("dims", 1, "1 (a curve) or 2 (a grid: points^2 evaluations).",
                         flag_values=fv)
    flags.DEFINE_enum("bn_eval", "batch", ["batch", "moving", "model"], "BatchNorm at "
                      "evaluation (as compute_sharpness).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f.", flag_values=fv)
    flags.DEFINE_integer("num_samples", None, "Seeded subset of the training set.",
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the directions and the subset.", flag_values=fv)
    flags.DEFINE_integer("landscape_points", 21, "Points per axis.", flag_values=fv)
    flags.DEFINE_float("landscape_span", 1.0, "Random axes span [-span, span].",
                       flag_values=fv)


def landscape_settings(FLAGS):
    """Keyword arguments of `keras_sharpness.landscape.run`, checked before TensorFlow."""
    import pathlib

    from keras_sharpness import cli, sharpness_cli
    from keras_sharpness.errors import UserError
    from keras_sharpness.measure import MeasureSettings

    cli.check_finite_flags()
    if FLAGS.dims not in (1, 2):
        raise UserError(f"--dims must be 1 or 2, got {FLAGS.dims}")
    settings = MeasureSettings(
        bn_eval=FLAGS.bn_eval, eval_batch_size=FLAGS.batch_size, num_samples=FLAGS.num_samples,
        seed=FLAGS.seed, landscape_points=FLAGS.landscape_points,
        landscape_span=FLAGS.landscape_span)
    if os.environ.get(cli.CHECK_FLAGS_ONLY):
        return None
    located = sharpness_cli.locate_models(workdir=FLAGS.workdir, model=FLAGS.model,
                                          dataset=FLAGS.dataset, data_dir=FLAGS.data_dir)
    if FLAGS.direction == "sb_lb" and FLAGS.workdir is None:
        raise UserError("--direction=sb_lb needs --workdir (a run with sb.keras and lb.keras)")
    output_dir = FLAGS.output_dir or pathlib.Path(located["models"][0][1]).parent / "figures"
    return dict(models=located["models"], data=located["data"], settings=settings,
                output_dir=output_dir, direction=FLAGS.direction, dims=FLAGS.dims)


def landscape():
    """``ks-landscape``: filter-normalized loss landscapes (`keras_sharpness.landscape`)."""
    from keras_sharpness import cli

    define_landscape_flags()
    cli.run(_landscape, landscape_settings, doc=LANDSCAPE_USAGE)


def _landscape(settings):
    from keras_sharpness import landscape
    from keras_sharpness.data import load_arrays

    data = settings.pop("data")
    landscape.run(data=lambda: load_arrays(**data), echo=print, **settings)


# ------------------------------------------------------------------ report
REPORT_USAGE = """\
Every measure of several runs beside their generalization gap, with Kendall's tau.

    ks-report --runs=runs/batch_sweep_F1,runs/trials_F1 --output_dir=runs/report
    python -m keras_sharpness.gap_report --runs=results/F1_measures

Reads each run's sharpness.json (measure the models first: compute_sharpness.py
--measures=all), writes report.json, report.md and report.{pdf,png}. See
docs/measures.md.
"""


def define_report_flags(flag_values=None):
    """The flags of ``ks-report`` (`keras_sharpness.gap_report`)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_list("runs", None, "Run directories (searched for sharpness.json) or "
                      "record stores, comma-separated.", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Where the report goes (default: report/ in "
                        "the first run).", flag_values=fv)
    flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples of each tau's interval.",
                         flag_values=fv)
    flags.DEFINE_float("confidence", 0.95, "Confidence level of the intervals.",
                       flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.", flag_values=fv)


def report_settings(FLAGS):
    """Keyword arguments of `keras_sharpness.gap_report.main`, checked."""
    import pathlib

    from keras_sharpness import cli
    from keras_sharpness.errors import UserError
    from keras_sharpness.gap_report import find_stores

    cli.check_finite_flags()
    if not FLAGS.runs:
        raise UserError("give --runs: run directories or record stores, comma-separated")
    if FLAGS.bootstrap < 100:
        raise UserError(f"--bootstrap must be at least 100, got {FLAGS.bootstrap}")
    if not 0 < FLAGS.confidence < 1:
        raise UserError(f"--confidence must be between 0 and 1, got {FLAGS.confidence}")
    if os.environ.get(cli.CHECK_FLAGS_ONLY):
        return None  # flags checked; the runs are looked at only for a real report
    find_stores(FLAGS.runs)  # every run exists and holds a store
    output_dir = FLAGS.output_dir or pathlib.Path(FLAGS.runs[0]) / "report"
    return dict(runs=list(FLAGS.runs), output_dir=output_dir, bootstrap=FLAGS.bootstrap,
                confidence=FLAGS.confidence, seed=FLAGS.seed)


def report():
    """``ks-report``: every measure against the generalization gap (`gap_report`)."""
    from keras_sharpness import cli

    define_report_flags()
    cli.run(_report, report_settings, doc=REPORT_USAGE, tensorflow=False)


def _report(settings):
    from keras_sharpness import gap_report

    gap_report.main(**settings)


# ------------------------------------------------------------- experiments
def _run_module(name):
    """Runs module `name` as ``python -m name`` does (its ``__main__`` block)."""
    import runpy

    runpy.run_module(name, run_name="__main__", alter_sys=True)


def trials():
    """``ks-trials``: Tables 2-4 (`keras_sharpness.experiments.trials`)."""
    _run_module("keras_sharpness.experiments.trials")


def remedy_grid():
    """``ks-remedy-grid``: SB, LB and LB with each remedy
    (`keras_sharpness.experiments.remedy_grid`)."""
    _run_module("keras_sharpness.experiments.remedy_grid")


def batch_sweep():
    """``ks-batch-sweep``: Figure 4 (`keras_sharpness.experiments.batch_sweep`)."""
    _run_module("keras_sharpness.experiments.batch_sweep")


def warm_start():
    """``ks-warm-start``: Figure 5 (`keras_sharpness.experiments.warm_start`)."""
    _run_module("keras_sharpness.experiments.warm_start")


def trajectory():
    """``ks-trajectory``: Figure 6 (`keras_sharpness.experiments.trajectory`)."""
    _run_module("keras_sharpness.experiments.trajectory")


def sensitivity():
    """``ks-sensitivity``: the metric's settings on saved trials
    (`keras_sharpness.experiments.sensitivity`)."""
    _run_module("keras_sharpness.experiments.sensitivity")
