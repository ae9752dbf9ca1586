"""absl flags shared by the experiment commands (defined only by their mains)."""

import dataclasses

from keras_sharpness.errors import UserError


def define_common_flags(flag_values=None):
    """Defines the flags every experiment command takes.

    The data and training flags set the fields of the same name of
    `keras_sharpness.config.DataSettings` and `TrainingSettings`
    (`settings_from_flags`); the measurement flags make the experiments'
    `MeasureSettings` (`common_from_flags`).
    """
    from absl import flags

    from keras_sharpness.cli import define_stop_rule_flags
    from keras_sharpness.commands import define_measure_flags, define_remedy_flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("network", None, "F1, F2, C1, C2, C3 or C4.", short_name="n",
                        flag_values=fv)
    flags.DEFINE_string("dataset", None, "Data source (mnist, cifar10, cifar100, npz:PATH, "
                        "folder:PATH, digits); default: the network's paper data set.",
                        flag_values=fv)
    flags.DEFINE_string("data_dir", None, "TensorFlow Datasets directory.", flag_values=fv)
    flags.DEFINE_integer("train_size", None, "Seeded subset of the training set (CPU scale).",
                         flag_values=fv)
    flags.DEFINE_integer("test_size", None, "Seeded subset of the test set.", flag_values=fv)
    flags.DEFINE_string("workdir", None, "Output directory (default "
                        "runs/<experiment>_<network>).", flag_values=fv)
    flags.DEFINE_string("figures_dir", None, "Where figures are written (default: "
                        "--workdir).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of x0, data order, subspaces.", flag_values=fv)
    flags.DEFINE_list("eps", ["1e-3", "5e-4"], "Sharpness box scales.", flag_values=fv)
    flags.DEFINE_list("subspace_dims", ["0", "100"], "0 = full space, p = random p-dim "
                      "subspace.", flag_values=fv)
    flags.DEFINE_integer("maxiter", 10, "L-BFGS-B iterations (records keep phi after "
                         "each; tables use phi after the paper's 10).", flag_values=fv)
    flags.DEFINE_enum("subspace_scale", "gaussian", ["gaussian", "normalized"],
                      "Scale of a random A: N(0,1) entries or unit-norm columns.",
                      flag_values=fv)
    flags.DEFINE_enum("start", "zero", ["zero", "corner", "random"], "L-BFGS-B start point.",
                      flag_values=fv)
    flags.DEFINE_enum("bn_eval", "batch", ["batch", "moving"],
                      "BatchNorm at evaluation: batch statistics (Keras 1 mode=2) or moving.",
                      flag_values=fv)
    flags.DEFINE_integer("eval_batch_size", 1000, "Fixed batch size of the objective.",
                         flag_values=fv)
    flags.DEFINE_integer("sharpness_samples", None,
                         "Measure sharpness on a seeded subset of the training set.",
                         flag_values=fv)
    flags.DEFINE_string("sb_batch_size", "256", "SB batch (count, or fraction < 1).",
                        flag_values=fv)
    flags.DEFINE_string("lb_batch_size", "0.1", "LB batch (count, or fraction < 1; paper "
                        "10%).", flag_values=fv)
    define_stop_rule_flags(fv)
    define_remedy_flags(fv)
    define_measure_flags(fv)
    flags.DEFINE_integer("verbose", None, "0 quiet, 1 progress bars, 2 one line per epoch "
                         "(default: 1 on a terminal, 2 when output goes to a file).",
                         flag_values=fv)


#: The experiments that train through `keras_sharpness.training.train_sb_lb`,
#: hence take the remedy flags; the others refuse them.
REMEDY_EXPERIMENTS = ("trials", "remedy_grid")


def check_remedies_apply(run_settings, experiment):
    """Refuses, in one line, a remedy flag that `experiment` would ignore."""
    from keras_sharpness.remedies import Remedies

    if experiment in REMEDY_EXPERIMENTS:
        return
    options, default = run_settings.training.remedies, Remedies()
    changed = [f.name for f in dataclasses.fields(options)
               if getattr(options, f.name) != getattr(default, f.name)]
    if changed:
        raise UserError(f"--{changed[0]} is a training remedy; the {experiment} experiment "
                        f"trains without remedies (use ks-plot or ks-trials)")


def number(text, name):
    """A batch-size flag: an int count or a float fraction."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--{name} must be a number, got {text!r}") from None
    return int(value) if value >= 1 and value == int(value) else value


def settings_from_flags(FLAGS):
    """The data and training settings of the common flags, checked (nothing is loaded).

    `start` builds them before TensorFlow is imported, so a bad value is one
    line at once; `common_from_flags` builds them again (a pure function of
    the flags) for the experiment's `main`.

    Returns:
        `keras_sharpness.config.RunSettings`.
    """
    from keras_sharpness.config import RunSettings

    return RunSettings.from_flags(FLAGS)


def training_keywords(settings):
    """The ``training_kwargs`` the figure experiments pass on (and record in
    their manifests, as they always did): the training and data settings as
    flat keywords, but the per-run ones (network, seed, bn_eval, ...)."""
    t, d = settings.training, settings.data
    return dict(
        sb_batch_size=t.sb_batch_size, lb_batch_size=t.lb_batch_size, epochs=t.epochs,
        until_converged=t.until_converged, patience=t.patience, min_delta=t.min_delta,
        max_epochs=t.max_epochs, relative_min_delta=t.relative_min_delta,
        eval_batch_size=t.eval_batch_size, train_size=d.train_size, test_size=d.test_size,
        data_dir=d.data_dir, data_seed=d.seed)


def common_from_flags(FLAGS, experiment):
    """Checks the common flags, then loads the data and builds the settings.

    Returns:
        dict: ``network``, ``dataset``, ``data``, ``run_settings``
        (`keras_sharpness.config.RunSettings`), ``settings``
        (`MeasureSettings`), ``training_kwargs`` (`training_keywords`),
        ``workdir``, ``run_dir`` (its `keras_sharpness.runs.RunDir`, held
        until the process exits), ``figures_dir``, ``verbose``.
    """
    from keras_sharpness import io, runs
    from keras_sharpness.cli import default_verbosity
    from keras_sharpness.commands import MEASURE_FLAGS
    from keras_sharpness.data import load_arrays
    from keras_sharpness.experiments.measure import MeasureSettings
    from keras_sharpness.metric import check_settings
    from keras_sharpness.training import canonical_source, make_deterministic

    run_settings = settings_from_flags(FLAGS)
    check_remedies_apply(run_settings, experiment)
    network, wanted = run_settings.training.network, run_settings.data
    try:
        eps = tuple(float(e) for e in FLAGS.eps)
        dims = tuple(int(p) for p in FLAGS.subspace_dims)
    except ValueError as e:
        raise UserError(f"--eps and --subspace_dims must be numbers ({e})") from None
    for e in eps:
        check_settings(e, 0, FLAGS.maxiter, FLAGS.start, None, FLAGS.subspace_scale)
    if any(p < 0 for p in dims):
        raise UserError("--subspace_dims must be >= 0")
    settings = MeasureSettings(eps=eps, subspace_dims=dims, maxiter=FLAGS.maxiter,
                               start=FLAGS.start, bn_eval=FLAGS.bn_eval,
                               eval_batch_size=FLAGS.eval_batch_size,
                               num_samples=FLAGS.sharpness_samples, seed=FLAGS.seed,
                               subspace_scale=FLAGS.subspace_scale,
                               **{name: FLAGS[name].value for name in MEASURE_FLAGS})
    if "sharpness" not in settings.measures and experiment != "remedy_grid":
        raise UserError("the experiments' tables and figures are of Metric 2.1: keep "
                        "sharpness in --measures (e.g. --measures=sharpness,hessian_trace)")
    workdir = io.ensure_writable_dir(FLAGS.workdir or f"runs/{experiment}_{network}",
                                     "--workdir")
    figures_dir = io.ensure_writable_dir(FLAGS.figures_dir or workdir, "--figures_dir")
    # The command owns its work directory until it exits.
    run_dir = runs.RunDir(workdir, what=f"--workdir {workdir}").hold()
    make_deterministic(run_settings.training.seed)
    data = load_arrays(wanted.dataset, data_dir=wanted.data_dir,
                       train_size=wanted.train_size, test_size=wanted.test_size,
                       seed=wanted.seed)
    verbose = default_verbosity() if FLAGS.verbose is None else FLAGS.verbose
    return dict(network=network, dataset=canonical_source(wanted.dataset), data=data,
                run_settings=run_settings, settings=settings,
                training_kwargs=training_keywords(run_settings), workdir=workdir,
                run_dir=run_dir, figures_dir=figures_dir, verbose=verbose)


def resolved_batch_sizes(common):
    """(SB, LB) batch sizes of the common flags as sample counts."""
    from keras_sharpness.training import resolve_batch_size

    n = common["data"].info.train_size
    kw = common["training_kwargs"]
    return (resolve_batch_size(kw["sb_batch_size"], n, name="SB batch size"),
            resolve_batch_size(kw["lb_batch_size"], n, name="LB batch size"))


def start(main, define_flags=None, *, one_sharpness=True, check_flags=None):
    """The `__main__` of an experiment: quiet TF, flags, one-line errors.

    Args:
        main: the absl main.
        define_flags: defines the command's own flags (called with `absl.flags`).
        one_sharpness: figures plot one sharpness per point, so default to
            ``--eps=1e-3 --subspace_dims=0`` (full space).
        check_flags: ``check_flags(FLAGS, run_settings)`` checks the command's
            own flags before TensorFlow is imported (raises `UserError`).
    """
    import sys

    from absl import flags

    from keras_sharpness.cli import run

    define_common_flags()
    if define_flags is not None:
        define_flags(flags)
    if one_sharpness:
        flags.FLAGS.set_default("subspace_dims", ["0"])
        flags.FLAGS.set_default("eps", ["1e-3"])
    def checked(FLAGS):
        settings = settings_from_flags(FLAGS)
        if check_flags is not None:
            check_flags(FLAGS, settings)
        return settings

    # The data and training flags are checked before TensorFlow is imported;
    # `main` builds its settings in `common_from_flags`.
    run(lambda settings: main(sys.argv[:1]), checked)


def run_arguments(common, FLAGS):
    """Keyword arguments every figure experiment's `run` takes, from the flags."""
    return dict(data=common["data"], network=common["network"], workdir=common["workdir"],
                dataset=common["dataset"], settings=common["settings"],
                figures_dir=common["figures_dir"], seed=FLAGS.seed, verbose=common["verbose"])
