"""What `compute_sharpness.py` does: sharpness and Hessian spectra of saved minimizers.

Plain functions with explicit arguments; the entry point only reads flags.
The measuring is `keras_sharpness.measure.sweep`, the one sweep every
experiment uses too: each (model, eps) pair gives one record of its schema in
``sharpness.json``, the file is rewritten after every record, so an
interrupted run keeps what it finished, and a rerun with the same settings
reuses those records (``overwrite=False``) as long as the checkpoint file is
unchanged (its SHA-256 is recorded).
"""

import math
import pathlib

from keras_sharpness.errors import UserError


def parse_eps(values):
    """Floats from ``--eps`` values, each one number or a comma-separated list.

    Raises:
        UserError: a value that is not a finite number > 0, or none at all.
    """
    from keras_sharpness.metric import check_settings

    eps = []
    for value in values or ():
        for item in str(value).split(","):
            item = item.strip()
            if not item:
                continue
            try:
                number = float(item)
            except ValueError:
                raise UserError(f"eps must be a number > 0, got {item!r}") from None
            check_settings(number, 0, 1, "zero")
            eps.append(number)
    if not eps:
        raise UserError("give at least one --eps value")
    return sorted(set(eps), reverse=True)


def locate_models(*, workdir=None, model=None, dataset=None, data_dir=None, output=None):
    """Which checkpoints to evaluate, on which data, and where the report goes.

    Either ``workdir`` (a run directory, `keras_sharpness.runs.RunDir`,
    holding ``sb.keras``, ``lb.keras`` and the ``run.json`` of the run that
    trained them; the report goes to its record store) or ``model`` with
    ``dataset``.

    Returns:
        A dict with ``models`` (list of ``(label, path)``), ``network``,
        ``data`` (keyword arguments for `keras_sharpness.data.load_arrays`)
        and ``output`` (path of the JSON report).

    Raises:
        UserError: both or neither of workdir/model, missing files, no dataset.
    """
    from keras_sharpness.runs import RunDir

    if (workdir is None) == (model is None):
        raise UserError("give either --workdir (a run with sb.keras and lb.keras) or "
                        "--model PATH.keras with --dataset")
    if workdir is not None:
        folder = RunDir(workdir)
        if not folder.path.is_dir():
            raise UserError(f"workdir {workdir} does not exist")
        missing = [path.name for path in (folder.model("sb"), folder.model("lb"))
                   if not path.is_file()]
        if missing:
            raise UserError(f"workdir {workdir} has no {' or '.join(missing)}; train the "
                            f"minimizers first (plot_parametric_plot.py --workdir {workdir})")
        run = folder.manifest()
        if run is None:
            raise UserError(f"workdir {workdir} has no {folder.manifest_path.name} saying "
                            f"what trained its models; pass --model and --dataset instead")
        if dataset is None:
            dataset = run.get("dataset")
        if data_dir is None:
            data_dir = run.get("data_dir")
        if not dataset:
            raise UserError(f"{folder.manifest_path} records no dataset; pass --dataset")
        data = {"source": dataset, "data_dir": data_dir}
        # The training run may have used a seeded subset of the data set.
        for key in ("train_size", "test_size"):
            if run.get(key) is not None:
                data[key] = int(run[key])
        if "train_size" in data or "test_size" in data:
            data["seed"] = int(run.get("data_seed", run.get("seed", 0)))
        return {"models": [("SB", folder.model("sb")), ("LB", folder.model("lb"))],
                "network": run.get("network", "?"), "data": data,
                "output": pathlib.Path(output) if output else folder.records_path}
    model = pathlib.Path(model)
    if not model.is_file():
        raise UserError(f"checkpoint {model} does not exist")
    if not dataset:
        raise UserError("--model needs --dataset (the data set the model was trained on)")
    default_output = model.with_name(f"{model.stem}.sharpness.json")
    return {"models": [(model.stem, model)], "network": None,
            "data": {"source": dataset, "data_dir": data_dir},
            "output": pathlib.Path(output) if output else default_output}


def measure_settings(*, eps, subspace_dim, maxiter, start, bn_eval, batch_size, num_samples,
                     seed, subspace_scale, hessian_topk, hessian_trace_probes, **options):
    """The `MeasureSettings` of this command's arguments (checked on construction);
    `options` are its fields of the same names (``measures``, ``adaptive_rho``, ...)."""
    from keras_sharpness.measure import MeasureSettings

    return MeasureSettings(
        eps=tuple(eps), subspace_dims=(subspace_dim,), maxiter=maxiter, start=start,
        bn_eval=bn_eval, eval_batch_size=batch_size, num_samples=num_samples, seed=seed,
        subspace_scale=subspace_scale, hessian_topk=hessian_topk,
        hessian_trace_probes=hessian_trace_probes, **options)


def compute(*, models, data, network, output, eps, subspace_dim=0, maxiter=10, seed=0,
            start="zero", bn_eval="batch", batch_size=1000, num_samples=None,
            hessian_topk=0, hessian_trace_probes=0, overwrite=False, echo=print,
            subspace_scale="gaussian", strategy="default", **options):
    """Sharpness and the other measures asked for, of each model.

    Args:
        models: list of ``(label, checkpoint path)``.
        data: keyword arguments for `keras_sharpness.data.load_arrays`; f is
            the mean cross-entropy over its training split.
        network: network name for the table (None: each model's name).
        output: path of the JSON report (the record store of
            `keras_sharpness.measure.sweep`).
        eps: list of box scales.
        subspace_dim, maxiter, seed, subspace_scale: as
            `keras_sharpness.metric.sharpness`.
        start: a start rule, or several separated by commas
            (``"zero,corner,random"``): then phi is the largest over the
            starts (`sharpness_multistart`) and the record lists each.
        bn_eval: ``"batch"``, ``"moving"`` or ``"model"`` (the saved mode).
        batch_size: fixed batch size of f (part of f's definition in batch mode).
        num_samples: seeded subset of the training set (None: all of it).
        hessian_topk: number of top Hessian eigenvalues (0: skip).
        hessian_trace_probes: Hutchinson probes for tr(H) (0: skip).
        overwrite: recompute records that the report already holds.
        echo: where progress and the table go (one line per call).
        strategy: ``"default"`` (one device), ``"mirrored"`` (f's batches
            spread over every GPU of the machine) or ``"multiworker"`` (over
            the machines of ``TF_CONFIG``; the chief writes); the numbers do
            not change.
        **options: further `MeasureSettings` fields: ``measures`` (names
            of `keras_sharpness.measure.MEASURES`, or ``"all"``) and their
            settings.

    Returns:
        The list of records computed or reused by this call.
    """
    from keras_sharpness import io
    from keras_sharpness.data import load_arrays
    from keras_sharpness.measure import sweep

    settings = measure_settings(
        eps=eps, subspace_dim=subspace_dim, maxiter=maxiter, start=start, bn_eval=bn_eval,
        batch_size=batch_size, num_samples=num_samples, seed=seed,
        subspace_scale=subspace_scale, hessian_topk=hessian_topk,
        hessian_trace_probes=hessian_trace_probes, **options)
    from keras_sharpness.training import is_chief_process, make_strategy

    output = pathlib.Path(output)
    chief = is_chief_process(strategy)
    if chief:  # across machines only the chief writes
        io.ensure_writable_dir(output.parent, "output directory")
    # Checkpoints are loaded (a bad one refused) before the possibly slow data
    # load, which happens only if some record must be computed.

    done = sweep(models, lambda: load_arrays(**data), settings, output, network=network,
                 dataset=data["source"], overwrite=overwrite, echo=echo,
                 strategy=None if strategy == "default" else make_strategy(strategy))
    for line in format_table(done):
        echo(line)
    echo(f"wrote {output}" if chief else f"the chief writes {output}")
    return done


def format_table(records):
    """Table 3/4-style lines: network, space, eps, then one column per model;
    then one line per model and other measure."""
    others = [r for r in records if "measure" in r]
    records = [r for r in records if "measure" not in r]
    lines = _sharpness_table(records) if records else []
    for r in others:
        if r["measure"] == "accuracy":
            lines.append(f"{r['model']} accuracy: train {100 * r['train_acc']:.2f} %, test "
                         f"{100 * r['test_acc']:.2f} %; loss train {r['train_loss']:.4g}, "
                         f"test {r['test_loss']:.4g}")
        else:
            lines.append(f"{r['model']} {r['measure']}: {r['value_name']} = "
                         f"{_number(r['value'])}")
    return lines


def _sharpness_table(records):
    """`format_table` of Metric 2.1 records."""
    labels = list(dict.fromkeys(r["model"] for r in records))
    rows = {}
    for r in records:
        row = (r.get("network", "?"), r["subspace_dim"], r["eps"])
        rows.setdefault(row, {})[r["model"]] = r["sharpness"]
    width = max(10, *(len(label) for label in labels))
    lines = [f"{'network':<10} {'space':<8} {'eps':<8} "
             + " ".join(f"{label:>{width}}" for label in labels)]
    for (network, subspace_dim, value), cells in rows.items():
        space = "full" if subspace_dim == 0 else f"p={subspace_dim}"
        lines.append(f"{str(network):<10} {space:<8} {value:<8g} " + " ".join(
            f"{_number(cells.get(label)):>{width}}" for label in labels))
    for r in records:
        if r.get("per_start"):
            lines.append(f"{r['model']} eps={r['eps']:g} by start: " + ", ".join(
                f"{s['start']} {s['sharpness']:.4g}" for s in r["per_start"])
                + f" (reported: the largest, from {r['best_start']})")
    lines += _meaning(rows)
    first = records[0]
    if any(r.get("phi_paper") is not None and r["maxiter"] > 10 for r in records):
        lines.append("phi after the paper's 10 iterations: " + ", ".join(
            f"{r['model']} eps={r['eps']:g}: {r['phi_paper']:.4g}" for r in records
            if r.get("phi_paper") is not None))
    lines.append(f"(phi in %, Metric 2.1; BN at evaluation: {first['bn_eval']}; "
                 f"start: {first['start']}; maxiter {first['maxiter']}; seed {first['seed']}"
                 + (f"; A: {first.get('subspace_scale')}" if first["subspace_dim"] else "")
                 + ")")
    return lines


def _meaning(rows):
    """What an SB/LB pair says about the paper's claim, in words."""
    lines = []
    for (network, subspace_dim, value), cells in rows.items():
        sb, lb = cells.get("SB"), cells.get("LB")
        if sb is None or lb is None or not (math.isfinite(sb) and math.isfinite(lb)):
            continue
        space = "full space" if subspace_dim == 0 else f"{subspace_dim}-dim subspace"
        if lb > sb:
            verdict = (f"LB is {lb / sb:.3g}x sharper than SB" if sb > 0 else "LB is sharper")
            verdict += ": the paper's claim (large batches find sharper minimizers) holds here"
        else:
            verdict = ("SB is as sharp as or sharper than LB: the paper's claim does not show "
                       "here; a stuck ascent can cause this (try --start=zero,corner and a "
                       "larger --maxiter, docs/sharpness.md)")
        lines.append(f"meaning ({space}, eps={value:g}): {verdict}")
    return lines


def _number(value):
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"
