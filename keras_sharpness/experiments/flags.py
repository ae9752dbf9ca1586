"""absl flags shared by the experiment commands (defined only by their mains)."""


from keras_sharpness.errors import UserError


def define_common_flags():
    """Defines the flags every experiment command takes."""
    from absl import flags

    from keras_sharpness.cli import define_stop_rule_flags

    flags.DEFINE_string("network", None, "F1, F2, C1, C2, C3 or C4.", short_name="n")
    flags.DEFINE_string("dataset", None, "Data source (mnist, cifar10, cifar100, npz:PATH, "
                        "folder:PATH, digits); default: the network's paper data set.")
    flags.DEFINE_string("data_dir", None, "TensorFlow Datasets directory.")
    flags.DEFINE_integer("train_size", None, "Seeded subset of the training set (CPU scale).")
    flags.DEFINE_integer("test_size", None, "Seeded subset of the test set.")
    flags.DEFINE_string("workdir", None, "Output directory (default runs/<experiment>_<network>).")
    flags.DEFINE_string("figures_dir", None, "Where figures are written (default: --workdir).")
    flags.DEFINE_integer("seed", 0, "Seed of x0, data order, subspaces.")
    flags.DEFINE_list("eps", ["1e-3", "5e-4"], "Sharpness box scales.")
    flags.DEFINE_list("subspace_dims", ["0", "100"], "0 = full space, p = random p-dim subspace.")
    flags.DEFINE_integer("maxiter", 10, "L-BFGS-B iterations (records keep phi after "
                         "each; tables use phi after the paper's 10).")
    flags.DEFINE_enum("subspace_scale", "gaussian", ["gaussian", "normalized"],
                      "Scale of a random A: N(0,1) entries or unit-norm columns.")
    flags.DEFINE_enum("start", "zero", ["zero", "corner", "random"], "L-BFGS-B start point.")
    flags.DEFINE_enum("bn_eval", "batch", ["batch", "moving"],
                      "BatchNorm at evaluation: batch statistics (Keras 1 mode=2) or moving.")
    flags.DEFINE_integer("eval_batch_size", 1000, "Fixed batch size of the objective.")
    flags.DEFINE_integer("sharpness_samples", None,
                         "Measure sharpness on a seeded subset of the training set.")
    flags.DEFINE_string("sb_batch_size", "256", "SB batch (count, or fraction < 1).")
    flags.DEFINE_string("lb_batch_size", "0.1", "LB batch (count, or fraction < 1; paper 10%).")
    define_stop_rule_flags()
    flags.DEFINE_integer("verbose", None, "0 quiet, 1 progress bars, 2 one line per epoch "
                         "(default: 1 on a terminal, 2 when output goes to a file).")


def number(text, name):
    """A batch-size flag: an int count or a float fraction."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--{name} must be a number, got {text!r}") from None
    return int(value) if value >= 1 and value == int(value) else value


def common_from_flags(FLAGS, experiment):
    """Loads the data and builds settings from the common flags.

    Returns:
        dict: ``network``, ``dataset``, ``data``, ``settings``,
        ``training_kwargs``, ``workdir``, ``figures_dir``, ``verbose``.
    """
    from keras_sharpness import io, runs
    from keras_sharpness.cli import default_verbosity
    from keras_sharpness.data import load_arrays
    from keras_sharpness.experiments.measure import MeasureSettings
    from keras_sharpness.networks import check_network
    from keras_sharpness.parametric_plot import default_dataset
    from keras_sharpness.metric import check_settings
    from keras_sharpness.training import canonical_source, make_deterministic

    if not FLAGS.network:
        raise UserError("--network (-n) is required: F1, F2, C1, C2, C3 or C4")
    network = check_network(FLAGS.network)
    try:
        eps = tuple(float(e) for e in FLAGS.eps)
        dims = tuple(int(p) for p in FLAGS.subspace_dims)
    except ValueError as e:
        raise UserError(f"--eps and --subspace_dims must be numbers ({e})") from None
    for e in eps:
        check_settings(e, 0, FLAGS.maxiter, FLAGS.start, None, FLAGS.subspace_scale)
    if any(p < 0 for p in dims):
        raise UserError("--subspace_dims must be >= 0")
    workdir = io.ensure_writable_dir(FLAGS.workdir or f"runs/{experiment}_{network}",
                                     "--workdir")
    figures_dir = io.ensure_writable_dir(FLAGS.figures_dir or workdir, "--figures_dir")
    # The command owns its work directory until it exits.
    runs.hold(workdir, what=f"--workdir {workdir}")
    make_deterministic(FLAGS.seed)
    dataset = FLAGS.dataset or default_dataset(network)
    data = load_arrays(dataset, data_dir=FLAGS.data_dir, train_size=FLAGS.train_size,
                       test_size=FLAGS.test_size, seed=FLAGS.seed)
    settings = MeasureSettings(eps=eps, subspace_dims=dims, maxiter=FLAGS.maxiter,
                               start=FLAGS.start, bn_eval=FLAGS.bn_eval,
                               eval_batch_size=FLAGS.eval_batch_size,
                               num_samples=FLAGS.sharpness_samples, seed=FLAGS.seed,
                               subspace_scale=FLAGS.subspace_scale)
    training_kwargs = dict(
        sb_batch_size=number(FLAGS.sb_batch_size, "sb_batch_size"),
        lb_batch_size=number(FLAGS.lb_batch_size, "lb_batch_size"),
        epochs=FLAGS.epochs, until_converged=FLAGS.until_converged,
        patience=FLAGS.patience, min_delta=FLAGS.min_delta, max_epochs=FLAGS.max_epochs,
        relative_min_delta=FLAGS.relative_min_delta, eval_batch_size=FLAGS.eval_batch_size,
        train_size=FLAGS.train_size, test_size=FLAGS.test_size, data_dir=FLAGS.data_dir,
        data_seed=FLAGS.seed)
    verbose = default_verbosity() if FLAGS.verbose is None else FLAGS.verbose
    return dict(network=network, dataset=canonical_source(dataset), data=data,
                settings=settings, training_kwargs=training_kwargs, workdir=workdir,
                figures_dir=figures_dir, verbose=verbose)


def resolved_batch_sizes(common):
    """(SB, LB) batch sizes of the common flags as sample counts."""
    from keras_sharpness.training import resolve_batch_size

    n = common["data"].info.train_size
    kw = common["training_kwargs"]
    return (resolve_batch_size(kw["sb_batch_size"], n, name="SB batch size"),
            resolve_batch_size(kw["lb_batch_size"], n, name="LB batch size"))


def start(main, define_flags=None, *, one_sharpness=True):
    """The `__main__` of an experiment: quiet TF, flags, one-line errors.

    Args:
        main: the absl main.
        define_flags: defines the command's own flags (called with `absl.flags`).
        one_sharpness: figures plot one sharpness per point, so default to
            ``--eps=1e-3 --subspace_dims=0`` (full space).
    """
    from absl import flags

    from keras_sharpness.cli import run


    define_common_flags()
    if define_flags is not None:
        define_flags(flags)
    if one_sharpness:
        flags.FLAGS.set_default("subspace_dims", ["0"])
        flags.FLAGS.set_default("eps", ["1e-3"])
    run(main)


def run_arguments(common, FLAGS):
    """Keyword arguments every figure experiment's `run` takes, from the flags."""
    return dict(data=common["data"], network=common["network"], workdir=common["workdir"],
                dataset=common["dataset"], settings=common["settings"],
                figures_dir=common["figures_dir"], seed=FLAGS.seed, verbose=common["verbose"])
