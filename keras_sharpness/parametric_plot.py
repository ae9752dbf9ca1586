"""The released experiment end to end: train SB and LB, sweep the path, plot.

`run` is what ``plot_parametric_plot.py`` calls with its flags; it is also the
function to call from Python. Outputs (see ``docs/parametric_plot.md``):

* ``<workdir>/``: ``x0.keras``, ``sb.keras``, ``lb.keras``, ``sb_history.json``,
  ``lb_history.json``, ``run.json``, ``parametric.json`` (and ``backups/``
  while a training run is unfinished);
* ``<figures_dir>/<network>.pdf`` and ``.png``.
"""

import pathlib

from keras_sharpness.errors import UserError


def default_dataset(network):
    """The paper's data set for `network`, or a `UserError` saying what to pass."""
    from keras_sharpness.networks import DEFAULT_DATASET

    source = DEFAULT_DATASET[network]
    if source is None:
        raise UserError(f"network {network} has no default data set (TIMIT is licensed); "
                        f"pass --dataset=npz:PATH with 360-dim features and 1973 classes")
    return source


def run(network, *, dataset=None, data_dir=None, train_size=None, test_size=None,
        sb_batch_size=256, lb_batch_size=None, epochs=20, until_converged=False,
        patience=10, min_delta=1e-4, max_epochs=500, relative_min_delta=0.0,
        strategy="default",
        accumulation_steps=1, num_points=25, alpha_min=-1.0, alpha_max=2.0,
        curve="linear", bn_eval="batch", eval_batch_size=1000, workdir=None,
        figures_dir=None, seed=0, verbose=1, augment=False,
        conservative_lambda=0.0, conservative_steps=3, adversarial_eps=0.0,
        adversarial_clean_weight=0.5, remedies_apply_to="lb"):
    """Trains (or reuses) SB and LB from one x0, sweeps alpha, writes JSON and figures.

    Args:
        network: ``F1``, ``F2``, ``C1``..``C4`` (case-insensitive).
        dataset: data source (`keras_sharpness.data.load_arrays`); None for the
            network's paper data set.
        data_dir: TensorFlow Datasets directory.
        train_size, test_size: seeded subsets (None: whole splits).
        sb_batch_size, lb_batch_size: samples, or fractions (< 1) of the
            training set; ``lb_batch_size=None``: the released 5000, or 10 %
            of a training set too small for it
            (`keras_sharpness.training.default_lb_batch_size`).
        epochs, until_converged, patience, min_delta, max_epochs,
            relative_min_delta, strategy, accumulation_steps: see `keras_sharpness.training.train_sb_lb`.
        num_points, alpha_min, alpha_max, curve, bn_eval, eval_batch_size: see
            `keras_sharpness.parametric.parametric_curve`.
        workdir: checkpoints and JSON; None for ``runs/<network>``.
        figures_dir: where ``<network>.pdf`` / ``.png`` go (None: `workdir`).
        seed: x0, data order, dropout, subsets and augmentation.
        verbose: 0 silent, 1 progress bars and one line per alpha, 2 one line
            per epoch.
        augment, conservative_lambda, conservative_steps, adversarial_eps,
            adversarial_clean_weight, remedies_apply_to: Appendix E attempts
            to fix LB training (`keras_sharpness.remedies`; by default applied
            to the LB run only).

    Returns:
        dict with ``result`` (`ParametricResult`), ``json``, ``pdf``, ``png``.

    Raises:
        UserError: any bad input, in one line, before training starts where
            it can be known then.
    """
    from keras_sharpness import data as data_lib
    from keras_sharpness import io, parametric, plotting, runs, training
    from keras_sharpness.networks import check_network
    from keras_sharpness.remedies import APPLY_TO, Remedies

    network = check_network(network)
    parametric.check_path_arguments(num_points, alpha_min, alpha_max, curve, bn_eval)
    if strategy not in training.STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of "
                        f"{', '.join(training.STRATEGIES)}")
    if int(accumulation_steps) < 1:
        raise UserError(f"accumulation_steps must be at least 1, got {accumulation_steps}")
    if int(eval_batch_size) < 1:
        raise UserError(f"eval_batch_size must be at least 1, got {eval_batch_size}")
    if until_converged and (int(patience) < 1 or int(max_epochs) < 1):
        raise UserError("patience and max_epochs must be at least 1")
    if not until_converged and int(epochs) < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}")
    remedies = Remedies(augment=bool(augment), conservative_lambda=float(conservative_lambda),
                        conservative_steps=int(conservative_steps),
                        adversarial_eps=float(adversarial_eps),
                        adversarial_clean_weight=float(adversarial_clean_weight))
    remedies.check()
    if remedies_apply_to not in APPLY_TO:
        raise UserError(f"remedies_apply_to must be one of {', '.join(APPLY_TO)}, "
                        f"got {remedies_apply_to!r}")
    dataset = default_dataset(network) if dataset is None else dataset
    workdir = pathlib.Path(workdir) if workdir else pathlib.Path("runs") / network
    # Outputs first: an unwritable place is found before the data and training.
    io.ensure_writable_dir(workdir, "--workdir")
    figures_dir = io.ensure_writable_dir(workdir if figures_dir is None else figures_dir,
                                         "--figures_dir")

    # One owner per work directory: a second process is refused at once.
    with runs.exclusive(workdir, what=f"--workdir {workdir}"):
        training.make_deterministic(seed)
        data = data_lib.load_arrays(dataset, data_dir=data_dir, train_size=train_size,
                                    test_size=test_size, seed=seed)
        models = training.train_sb_lb(
            data, network, workdir, dataset=dataset, data_dir=data_dir,
            sb_batch_size=sb_batch_size, lb_batch_size=lb_batch_size, epochs=epochs,
            until_converged=until_converged, patience=patience, min_delta=min_delta,
            max_epochs=max_epochs, relative_min_delta=relative_min_delta,
            eval_batch_size=eval_batch_size, seed=seed, strategy=strategy,
            accumulation_steps=accumulation_steps, train_size=train_size,
            test_size=test_size, verbose=verbose, augment=augment,
            conservative_lambda=conservative_lambda, conservative_steps=conservative_steps,
            adversarial_eps=adversarial_eps, adversarial_clean_weight=adversarial_clean_weight,
            remedies_apply_to=remedies_apply_to)

        if verbose:
            print(f"parametric plot: {num_points} points, alpha in [{alpha_min:g}, "
                  f"{alpha_max:g}], {curve} path, BN {bn_eval}", flush=True)
        result = parametric.parametric_curve(
            models["sb"], models["lb"], data, num_points=num_points, alpha_min=alpha_min,
            alpha_max=alpha_max, curve=curve, bn_eval=bn_eval,
            batch_size=eval_batch_size, verbose=bool(verbose))
        record = models["record"]
        flags = {
            "network": network, "dataset": record["dataset"], "data_dir": record["data_dir"],
            "train_size": train_size, "test_size": test_size,
            "sb_batch_size": record["sb_batch_size"], "lb_batch_size": record["lb_batch_size"],
            "epochs": epochs, "until_converged": until_converged, "patience": patience,
            "min_delta": min_delta, "max_epochs": max_epochs,
            "relative_min_delta": relative_min_delta, "strategy": strategy,
            "accumulation_steps": accumulation_steps, "num_points": num_points,
            "alpha_min": alpha_min, "alpha_max": alpha_max, "curve": curve,
            "bn_eval": bn_eval, "eval_batch_size": eval_batch_size,
            "workdir": str(workdir), "figures_dir": str(figures_dir), "seed": seed,
            "augment": bool(augment), "conservative_lambda": conservative_lambda,
            "conservative_steps": conservative_steps, "adversarial_eps": adversarial_eps,
            "adversarial_clean_weight": adversarial_clean_weight,
            "remedies_apply_to": remedies_apply_to,
        }
        json_path = workdir / "parametric.json"
        sb_epochs = len(training.read_history(workdir / "sb_history.json"))
        lb_epochs = len(training.read_history(workdir / "lb_history.json"))
        parametric.write_parametric_json(
            result, json_path, network=network, dataset=record["dataset"], seed=seed,
            data=data.info.to_dict(), flags=flags,
            trained_epochs={"sb": sb_epochs, "lb": lb_epochs})
        data_name = pathlib.Path(str(data.info.name).split(":", 1)[-1]).name or data.info.name
        title = (f"{network} on {data_name}: SB {record['sb_batch_size']} vs "
                 f"LB {record['lb_batch_size']} (BN: {bn_eval})")
        if remedies.any:
            title += f"\n{remedies_apply_to.upper()} with {remedies.describe()}"
        pdf, png = plotting.plot_parametric(result, pathlib.Path(figures_dir) / network,
                                            title=title)
        if verbose:
            print(f"wrote {json_path}, {pdf}, {png}", flush=True)
        return {"result": result, "json": json_path, "pdf": pdf, "png": png}
