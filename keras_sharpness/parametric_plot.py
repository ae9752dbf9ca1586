"""The released experiment end to end: train SB and LB, sweep the path, plot.

`run` is what ``plot_parametric_plot.py`` (``ks-plot``) calls with the
settings its flags make (`keras_sharpness.config.PlotCommand`); it is also
the function to call from Python. Outputs (see ``docs/parametric_plot.md``):

* ``<workdir>/``: ``x0.keras``, ``sb.keras``, ``lb.keras``, ``sb_history.json``,
  ``lb_history.json``, ``run.json``, ``parametric.json`` (and ``backups/``
  while a training run is unfinished);
* ``<figures_dir>/<network>.pdf`` and ``.png``.
"""

import pathlib


def run(settings, **keywords):
    """Trains (or reuses) SB and LB from one x0, sweeps alpha, writes JSON and figures.

    Args:
        settings: `keras_sharpness.config.PlotCommand` (data, training, plot,
            workdir, figures_dir, verbose), checked when it was made. Earlier
            versions took the network name here and the settings as keyword
            arguments (``dataset=``, ``epochs=``, ``num_points=``, ...); that
            call still works (`PlotCommand.from_keywords`).

    Returns:
        dict with ``result`` (`ParametricResult`), ``json``, ``pdf``, ``png``.

    Raises:
        UserError: an output directory that cannot be written, a work
            directory of another run, data that cannot be had or that the
            settings do not fit (e.g. a batch larger than the training set),
            divergence; in one line, before training starts where it can be
            known then.
    """
    from keras_sharpness import data as data_lib
    from keras_sharpness import io, parametric, plotting, runs, training
    from keras_sharpness.config import PlotCommand

    if isinstance(settings, str):
        settings = PlotCommand.from_keywords(settings, **keywords)
    elif keywords:
        raise TypeError(f"run takes its settings in `settings`, not as keywords "
                        f"({', '.join(sorted(keywords))})")
    network, sweep, verbose = settings.training.network, settings.plot, settings.verbose
    workdir = pathlib.Path(settings.workdir)
    figures_dir = pathlib.Path(settings.figures_dir)
    # Across machines only the chief owns the work directory (and touches
    # it); the other workers train with it.
    chief = training.is_chief_process(settings.training.strategy)
    if chief:  # outputs first: an unwritable place is found before the data and training
        io.ensure_writable_dir(workdir, "--workdir")
        io.ensure_writable_dir(figures_dir, "--figures_dir")

    # One owner per work directory: a second process is refused at once.
    with runs.RunDir(workdir, what=f"--workdir {workdir}").open(read_only=not chief) as run:
        training.make_deterministic(settings.training.seed)
        wanted = settings.data
        data = data_lib.load_arrays(wanted.dataset, data_dir=wanted.data_dir,
                                    train_size=wanted.train_size, test_size=wanted.test_size,
                                    seed=wanted.seed)
        models = training.train_sb_lb(data, settings.run, run, verbose=verbose)
        if not chief:
            if verbose:
                print("SB and LB trained; the chief sweeps the path and writes the results",
                      flush=True)
            return {"result": None, "json": None, "pdf": None, "png": None}

        if verbose:
            print(f"parametric plot: {sweep.num_points} points, alpha in "
                  f"[{sweep.alpha_min:g}, {sweep.alpha_max:g}], {sweep.curve} path, "
                  f"BN {sweep.bn_eval}", flush=True)
        result = parametric.parametric_curve(
            models["sb"], models["lb"], data, num_points=sweep.num_points,
            alpha_min=sweep.alpha_min, alpha_max=sweep.alpha_max, curve=sweep.curve,
            bn_eval=sweep.bn_eval, batch_size=sweep.eval_batch_size, verbose=bool(verbose))
        record = models["record"]
        json_path = workdir / "parametric.json"
        sb_epochs = len(training.read_history(run.history("sb")))
        lb_epochs = len(training.read_history(run.history("lb")))
        parametric.write_parametric_json(
            result, json_path, network=network, dataset=record["dataset"],
            seed=settings.training.seed, data=data.info.to_dict(),
            flags=_flags(settings, record),
            trained_epochs={"sb": sb_epochs, "lb": lb_epochs})
        data_name = pathlib.Path(str(data.info.name).split(":", 1)[-1]).name or data.info.name
        title = (f"{network} on {data_name}: SB {record['sb_batch_size']} vs "
                 f"LB {record['lb_batch_size']} (BN: {sweep.bn_eval})")
        remedies = settings.training.remedies
        if remedies.any:
            title += f"\n{settings.training.remedies_apply_to.upper()} with {remedies.describe()}"
        pdf, png = plotting.plot_parametric(result, pathlib.Path(figures_dir) / network,
                                            title=title)
        if verbose:
            print(f"wrote {json_path}, {pdf}, {png}", flush=True)
        return {"result": result, "json": json_path, "pdf": pdf, "png": png}


def _flags(settings, record):
    """The flags of the command, one key each (``parametric.json`` ``flags``),
    with the data source and batch sizes as the run resolved them."""
    training = settings.training.to_dict()
    del training["bn_eval"]  # the models' own; --bn_eval is the path's
    return {**settings.data.to_dict(), **training, **settings.plot.to_dict(),
            "dataset": record["dataset"], "data_dir": record["data_dir"],
            "sb_batch_size": record["sb_batch_size"],
            "lb_batch_size": record["lb_batch_size"],
            "workdir": settings.workdir, "figures_dir": settings.figures_dir}
