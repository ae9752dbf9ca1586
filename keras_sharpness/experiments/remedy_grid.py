"""The remedy grid: SB, LB and LB with each large-batch remedy, from one x0 per trial.

Trial t (seed t) is a trials run directory ``<workdir>/trial<t>/``: SB and
plain LB are trained and measured exactly as ``ks-trials`` does
(`keras_sharpness.experiments.trials.run_trial`), then, for every arm of
``--arms``, LB is trained again from the same ``x0.keras`` with that arm's
remedies (`keras_sharpness.training.train_minimizer`) into
``lb_<arm>.keras`` (history ``lb_<arm>_history.json``, crash-safe backup
``backups/lb_<arm>/`` while it trains) and measured into the trial's record
store ``sharpness.json`` (`keras_sharpness.measure.measure_model`). Finished
checkpoints and records are reused; a killed run resumes where it stopped.

An arm is a preset of `ARMS` (one table: name -> `Remedies` fields) or
presets joined by ``+`` (``ghost_bn+sam``); it changes LB only (SB and
plain LB are the paper's runs, or those the remedy flags make with
``--remedies_apply_to=both``, on top of which the arm's fields are set).

    python -m keras_sharpness.experiments.remedy_grid -n C1 \\
        --arms=ghost_bn,sam,linear_warmup,train_longer,ghost_bn+sam --trials=3

Writes ``<workdir>/remedy_grid.json``, ``remedy_grid.md`` and, in
``--figures_dir`` (default the workdir), ``remedy_grid.{pdf,png}``.
"""

import dataclasses
import functools
import time

import numpy as np

from keras_sharpness import io, reports, runs
from keras_sharpness.errors import CheckpointError, UserError
from keras_sharpness.experiments import trials as trials_lib
from keras_sharpness.measure import MeasureSettings, Subject, measure_model
from keras_sharpness.remedies import Remedies
from keras_sharpness.statistics import (CONFIDENCE, format_comparison, mean_interval,
                                        paired_comparison)

#: The manifest ``kind`` of a remedy-grid work directory.
KIND = "remedy_grid"


def _sb_batch(context):
    return context["sb_batch"]


def _warmup(context):
    return min(5.0, context["epoch_cap"] / 4)


#: The arms: name -> `Remedies` fields set on LB. A value may be a function of
#: the run (``context``: ``sb_batch``, ``epoch_cap``), resolved per trial.
ARMS = {
    # Hoffer et al. 2017: BN statistics of SB-sized ghost batches.
    "ghost_bn": {"ghost_batch_size": _sb_batch},
    # Foret et al. 2021 (their rho).
    "sam": {"sam_rho": 0.05},
    # Kwon et al. 2021 (their rho for CIFAR).
    "asam": {"sam_rho": 0.5, "sam_adaptive": True},
    # Goyal et al. 2017: linear scaling from the SB batch, gradual warm-up
    # (their 5 epochs, or a quarter of a shorter run).
    "linear_warmup": {"lr_scaling": "linear", "warmup_epochs": _warmup},
    # Krizhevsky 2014, Hoffer et al. 2017.
    "sqrt_scaling": {"lr_scaling": "sqrt"},
    # You et al. 2020, at the base rate.
    "lamb": {"optimizer": "lamb"},
    # You et al. 2017: LARS needs a rate near 1 (trust coefficient 0.001), with warm-up.
    "lars": {"optimizer": "lars", "learning_rate": 1.0, "warmup_epochs": _warmup},
    # Hoffer et al. 2017: as many updates as SB.
    "train_longer": {"train_longer": True},
    # Appendix E of the paper: flips, rotations, translations (image data).
    "augment": {"augment": True},
}

#: ``--arms`` by default (``all``: every preset; ``augment`` needs images).
DEFAULT_ARMS = ("ghost_bn", "sam", "linear_warmup", "sqrt_scaling", "train_longer")

#: Label of an arm's LB in records and tables (``LB+sam``).
LABEL_PREFIX = "LB+"


# ------------------------------------------------------------------ arms
def parse_arms(arms):
    """The canonical arm names of ``--arms``: presets of `ARMS` joined by ``+``.

    The presets of a combination are put in `ARMS` order (``sam+ghost_bn`` is
    ``ghost_bn+sam``); an arm given twice counts once; ``all`` is every preset.

    Args:
        arms: a comma-separated string or a list of arm names.

    Raises:
        UserError: no arm, an unknown preset, or presets setting one field
            to different values (one line).
    """
    items = arms.split(",") if isinstance(arms, str) else list(arms)
    items = [str(a).strip() for a in items if str(a).strip()]
    if items == ["all"]:
        items = list(ARMS)
    out = []
    for arm in items:
        parts = [p.strip() for p in arm.split("+")]
        unknown = [p for p in parts if p not in ARMS]
        if unknown:
            raise UserError(f"unknown arm {unknown[0]!r} in --arms; choose from "
                            f"{', '.join(ARMS)} (or all), combined with +")
        parts = sorted(set(parts), key=list(ARMS).index)
        merged = {}
        for part in parts:
            for field, value in ARMS[part].items():
                if field in merged and merged[field][1] != value:
                    raise UserError(f"arm {arm!r}: {merged[field][0]} and {part} both set "
                                    f"{field}; combine arms that change different things")
                merged[field] = (part, value)
        name = "+".join(parts)
        if name not in out:
            out.append(name)
    if not out:
        raise UserError("--arms names no arm; choose from " + ", ".join(ARMS))
    return out


def arm_overrides(arm, *, sb_batch, epoch_cap):
    """The `Remedies` fields `arm` sets, resolved for a run (plain values)."""
    context = {"sb_batch": int(sb_batch), "epoch_cap": float(epoch_cap)}
    out = {}
    for part in arm.split("+"):
        for field, value in ARMS[part].items():
            out[field] = value(context) if callable(value) else value
    return out


def arm_remedies(arm, base, *, sb_batch, epoch_cap):
    """The `Remedies` of `arm`'s LB run: `base` with the arm's fields set.

    Args:
        arm: a canonical arm name (`parse_arms`).
        base: the `Remedies` of the plain LB run (the paper's by default).
        sb_batch: the SB batch in samples (the reference of learning-rate
            scaling and Ghost BN's ghost batch).
        epoch_cap: the run's epoch cap (``epochs``, or ``max_epochs`` with
            ``until_converged``), which sets the warm-up of a short run.
    """
    remedies = dataclasses.replace(base, **arm_overrides(arm, sb_batch=sb_batch,
                                                         epoch_cap=epoch_cap))
    if remedies.lr_scaling != "none" and not remedies.lr_reference_batch:
        remedies = dataclasses.replace(remedies, lr_reference_batch=int(sb_batch))
    return remedies


def label(arm):
    """The label of `arm`'s LB in records and tables."""
    return LABEL_PREFIX + arm


def run_name(arm):
    """The name of `arm`'s LB in its trial directory (``lb_<arm>.keras``)."""
    return f"lb_{arm}"


def check_settings(run_settings, arms):
    """Refuses, in one line, settings the grid cannot run (nothing is loaded).

    The remedy flags set the base of every run, which only
    ``--remedies_apply_to=both`` makes the same for SB, LB and the arms; every
    arm must combine with them (`Remedies.check`).
    """
    t = run_settings.training
    default = Remedies()
    changed = [f.name for f in dataclasses.fields(default)
               if getattr(t.remedies, f.name) != getattr(default, f.name)]
    if changed and t.remedies_apply_to != "both":
        raise UserError(f"--{changed[0]} would change the plain LB the arms are compared "
                        f"with; the arms are --arms, and remedy flags set the base of every "
                        f"run only with --remedies_apply_to=both")
    sb = t.sb_batch_size if isinstance(t.sb_batch_size, int) else 1
    cap = t.max_epochs if t.until_converged else t.epochs
    for arm in arms:
        remedies = arm_remedies(arm, t.remedies, sb_batch=sb, epoch_cap=cap)
        try:
            remedies.check(accumulation_steps=t.accumulation_steps)
        except UserError as e:
            raise UserError(f"arm {arm}: {e}") from None


# -------------------------------------------------------------- training
def train_arm(data, settings, run, arm, x0, *, verbose=1):
    """Trains `arm`'s LB from `x0` in the trial's run directory, or reuses it.

    The run is `keras_sharpness.training.train_minimizer` at the LB batch
    with the arm's remedies (`arm_remedies`), saved as ``lb_<arm>.keras``;
    an interrupted one resumes from its backup.

    Args:
        data: `keras_sharpness.data.ArrayData`.
        settings: the trial's resolved `keras_sharpness.config.RunSettings`
            (its ``run.json``: batch sizes in samples).
        run: the trial's `RunDir` (held by the caller).
        arm: a canonical arm name.
        x0: the trial's x0 model.
        verbose: `fit` verbosity.

    Returns:
        ``(model, remedies)``: the trained model and the arm's `Remedies`.

    Raises:
        CheckpointError: the arm's history records other remedies or another
            batch (a preset changed since): its work would be reused wrongly.
    """
    from keras_sharpness import training

    t = settings.training
    cap = t.max_epochs if t.until_converged else t.epochs
    remedies = arm_remedies(arm, t.remedies, sb_batch=t.sb_batch_size, epoch_cap=cap)
    name = run_name(arm)
    out, history = run.model(name), run.history(name)
    _check_history(history, remedies, t.lb_batch_size)
    if out.is_file():
        if verbose:
            print(f"{label(arm)}: reusing finished {out}", flush=True)
        return io.load_model(out), remedies
    epochs, max_epochs = t.epochs, t.max_epochs
    if remedies.train_longer:
        epochs, max_epochs = (training.train_longer_epochs(
            e, t.sb_batch_size, t.lb_batch_size, data.info.train_size)
            for e in (t.epochs, t.max_epochs))
    model = training.train_minimizer(
        x0, t.network, data.info, data.x_train, data.y_train, batch_size=t.lb_batch_size,
        out_path=out, history_path=history, backup_dir=run.backup(name),
        run_name=label(arm), epochs=epochs, until_converged=t.until_converged,
        patience=t.patience, min_delta=t.min_delta, max_epochs=max_epochs, seed=t.seed,
        relative_min_delta=t.relative_min_delta, eval_batch_size=t.eval_batch_size,
        strategy=t.strategy, accumulation_steps=t.accumulation_steps, bn_eval=t.bn_eval,
        verbose=verbose, remedies=remedies)
    backups = run.backup(name).parent
    if backups.is_dir() and not any(backups.iterdir()):
        backups.rmdir()
    return model, remedies


def _check_history(path, remedies, batch_size):
    """Refuses an arm's run made with other remedies or another batch."""
    if not path.is_file():
        return
    header = io.read_json(path)
    wanted = {**remedies.record(), "batch_size": int(batch_size)}  # JSON values already
    differ = [k for k, v in wanted.items() if k in header and header[k] != v]
    if differ:
        diffs = ", ".join(f"{k}={header[k]!r} (now {wanted[k]!r})" for k in differ)
        raise CheckpointError(f"{path} was trained with {diffs}; use another --workdir or "
                              f"delete that arm's files")


def run_trial(data, run_settings, trial_dir, *, arms, settings, verbose=1):
    """SB and LB of one trial (`trials.run_trial`), then every arm: trained or reused, measured.

    Returns:
        The dict of `trials.run_trial` with ``arms``: per arm, its accuracy,
        loss, ``sharpness`` and ``measures`` records (`measure_model`),
        ``remedies`` (its `Remedies` record), ``epochs`` and ``training``.
    """
    from keras_sharpness.config import RunSettings
    from keras_sharpness.training import canonical_source, read_history

    run = trial_dir if isinstance(trial_dir, runs.RunDir) else runs.RunDir(trial_dir)
    network = run_settings.training.network
    dataset = canonical_source(run_settings.data.dataset)
    with run.open():
        result = trials_lib.run_trial(data, run_settings, run, settings=settings,
                                      verbose=verbose)
        started = time.time()
        resolved = RunSettings.from_dict(run.manifest()["settings"])
        x0 = io.load_model(run.model("x0"))
        result["arms"] = {}
        for arm in arms:
            model, remedies = train_arm(data, resolved, run, arm, x0, verbose=verbose)
            if verbose:
                print(f"trial {run_settings.training.seed}: measuring {label(arm)}",
                      flush=True)
            measured = measure_model(
                Subject(label(arm), model, run.model(run_name(arm))), data, settings,
                run.records_path, network=network, dataset=dataset,
                echo=functools.partial(print, flush=True) if verbose else None)
            result["arms"][arm] = {
                **measured, "remedies": remedies.record(),
                "description": remedies.describe(),
                "epochs": len(read_history(run.history(run_name(arm)))),
                "training": trials_lib.training_outcome(run.history(run_name(arm)))}
        result["seconds"] += time.time() - started
    return result


# ----------------------------------------------------------------- tables
def gap_closed(sb, lb, arm, *, seed=0, confidence=CONFIDENCE, resamples=9999):
    """The fraction of the SB-LB gap an arm recovers, over paired trials.

    ``(mean(arm) - mean(LB)) / (mean(SB) - mean(LB))``: 0 is plain LB, 1 is
    SB, negative is worse than LB. The interval is a percentile bootstrap
    over trials (SB, LB and arm resampled together); it is None when fewer
    than `confidence` of the resamples have SB above LB (no sure gap to close).

    Args:
        sb, lb, arm: one value per trial each (e.g. test accuracy).

    Returns:
        dict: ``value`` (None without a gap: mean SB <= mean LB),
        ``per_trial`` (each trial's own fraction; None where its gap is not
        positive), ``interval``, ``confidence``.
    """
    sb, lb, arm = (np.asarray(v, np.float64) for v in (sb, lb, arm))
    gap, gain = np.mean(sb - lb), np.mean(arm - lb)
    out = {"value": float(gain / gap) if gap > 0 else None,
           "per_trial": [float((c - b) / (a - b)) if a > b else None
                         for a, b, c in zip(sb, lb, arm)],
           "interval": None, "confidence": confidence}
    n = len(sb)
    if n >= 2 and out["value"] is not None:
        index = np.random.default_rng(seed).integers(0, n, (int(resamples), n))
        gaps = np.mean(sb[index] - lb[index], axis=1)
        gains = np.mean(arm[index] - lb[index], axis=1)
        sure = gaps > 0
        if np.mean(sure) >= confidence:
            ratios = gains[sure] / gaps[sure]
            tail = 50 * (1 - confidence)
            out["interval"] = [float(np.percentile(ratios, tail)),
                               float(np.percentile(ratios, 100 - tail))]
    return out


def _phi(measured, p, eps):
    """phi of one model after the paper's 10 iterations (all of them for shorter runs)."""
    return trials_lib._phi({"m": measured}, "m", p, eps)


def metric_values(measured, settings):
    """The numbers of one model that the grid tabulates, by column name.

    Columns: ``test_acc`` and ``train_acc`` (%), ``train_loss``,
    ``sharpness[eps=E,p=P]`` for every Metric 2.1 setting and each other
    measure's ``value``.
    """
    values = {"test_acc": 100 * measured["test_acc"], "train_acc": 100 * measured["train_acc"],
              "train_loss": measured["train_loss"]}
    for p in settings.subspace_dims if "sharpness" in settings.measures else ():
        for e in settings.eps:
            values[f"sharpness[eps={e:g},p={p}]"] = _phi(measured, p, e)
    for record in measured.get("measures", []):
        values[record["measure"]] = record.get("value")
    return values


def _versus_lb(lb, arm):
    """`paired_comparison` of an arm against plain LB, its sides named ``lb``/``arm``."""
    c = paired_comparison(lb, arm)
    c["lb"], c["arm"], c["arm_greater"] = c.pop("sb"), c.pop("lb"), c.pop("lb_greater")
    return c


def _format_versus(c, name):
    back = {**c, "sb": c["lb"], "lb": c["arm"], "lb_greater": c["arm_greater"]}
    return format_comparison(back, labels=("LB", name))


def verdict(comparison, confidence=CONFIDENCE):
    """Whether an arm changes a value against plain LB: ``higher``, ``lower``,
    ``no significant change`` (paired t test at 1 - `confidence`), or
    ``one trial: untested``."""
    if comparison["n"] < 2:
        return "one trial: untested"
    test = comparison["paired_t"]
    p = None if test is None else test["p_value"]
    if p is None or p >= 1 - confidence:
        return "no significant change"
    return "higher" if comparison["arm"]["mean"] > comparison["lb"]["mean"] else "lower"


def tables(results, arms, network, settings):
    """The grid's table from per-trial results, as a JSON-ready dict and Markdown.

    Returns:
        ``(data, markdown)``: `data` has ``rows`` (``SB``, ``LB`` and each arm's
        label: per column a mean/std/n/values summary and its ``interval``,
        the t interval of the mean), ``gap_closed`` and ``versus_lb`` (per arm
        and column, `paired_comparison` against plain LB) and ``arm_remedies``.
    """
    labels = ["SB", "LB", *(label(a) for a in arms)]
    per_label = {"SB": [metric_values(t["sb"], settings) for t in results],
                 "LB": [metric_values(t["lb"], settings) for t in results]}
    for arm in arms:
        per_label[label(arm)] = [metric_values(t["arms"][arm], settings) for t in results]
    columns = list(dict.fromkeys(c for values in per_label.values() for v in values for c in v))
    rows = {}
    for name in labels:
        rows[name] = {}
        for c in columns:
            values = [v.get(c) for v in per_label[name]]
            rows[name][c] = {**reports.summarize([v for v in values if v is not None]),
                             "interval": mean_interval(values)}
    lb_values = {c: [v.get(c) for v in per_label["LB"]] for c in columns}
    data = {"network": network, "trials": len(results), "arms": list(arms),
            "labels": labels, "columns": columns, "rows": rows,
            "settings": settings.to_dict(),
            "arm_remedies": {a: results[0]["arms"][a]["remedies"] for a in arms},
            "arm_descriptions": {a: results[0]["arms"][a]["description"] for a in arms},
            "gap": _versus_lb(lb_values["test_acc"],
                              [v["test_acc"] for v in per_label["SB"]]),
            "gap_closed": {}, "versus_lb": {}}
    for arm in arms:
        name = label(arm)
        data["gap_closed"][name] = gap_closed(
            [v["test_acc"] for v in per_label["SB"]], lb_values["test_acc"],
            [v["test_acc"] for v in per_label[name]])
        data["versus_lb"][name] = {c: _versus_lb(lb_values[c],
                                                 [v.get(c) for v in per_label[name]])
                                   for c in columns}
    data["training_runs"] = [
        {"sb": t["training"]["sb"], "lb": t["training"]["lb"],
         **{label(a): t["arms"][a]["training"] for a in arms}} for t in results]
    return data, markdown(data)


def _cell(summary, digits=2):
    if not summary["n"]:
        return "–"
    return reports.format_mean_std(summary["mean"], summary["std"], digits)


def _percent(fraction):
    return "–" if fraction is None else f"{100 * fraction:.0f} %"


def _gap_cell(closed):
    text = _percent(closed["value"])
    if closed["interval"] is not None:
        low, high = closed["interval"]
        text += f" [{_percent(low)}, {_percent(high)}]"
    return text


def markdown(data):
    """The grid's table in Markdown, the comparisons with plain LB below it."""
    n, columns = data["trials"], data["columns"]
    level = int(round(100 * CONFIDENCE))
    out = [f"### Remedy grid ({data['network']}, mean ± std of {n} trial(s); LB+x: LB "
           f"trained with remedy x from the trial's x0)", ""]
    header = ["run", "test acc %", "gap closed", "train loss", "train acc %",
              *[c for c in columns if c not in ("test_acc", "train_loss", "train_acc")]]
    keys = ["test_acc", None, "train_loss", "train_acc", *header[5:]]
    rows = []
    for name in data["labels"]:
        cells = [name]
        for key in keys:
            if key is None:
                closed = data["gap_closed"].get(name)
                cells.append(_gap_cell(closed) if closed else "–")
            else:
                digits = 2 if key.endswith("acc") else 4
                cells.append(_cell(data["rows"][name][key], digits))
        rows.append(cells)
    out += [reports.markdown_table(header, rows), ""]
    gap = data["gap"]
    difference = gap["arm"]["mean"] - gap["lb"]["mean"]
    out.append(f"SB-LB test-accuracy gap: SB - LB = {difference:.2f} points; "
               f"{_format_versus(gap, 'SB')}. Gap closed = (arm - LB) / (SB - LB) of the mean "
               f"test accuracies ({level} % bootstrap interval over trials)."
               + ("" if difference > 0 else " SB is not better than LB here: there is no "
                  "gap for a remedy to close."))
    out += ["", "Remedies of each arm (LB only): "
            + "; ".join(f"{label(a)}: {d}" for a, d in data["arm_descriptions"].items()),
            "", f"Against plain LB, paired over trials (Wilcoxon and paired t, two-sided; "
            f"'higher'/'lower': paired t p < {1 - CONFIDENCE:.2g}):"]
    for name in data["labels"][2:]:
        c = data["versus_lb"][name]["test_acc"]
        out.append(f"- **{name}**: test accuracy {verdict(c)} "
                   f"({c['arm']['mean'] - c['lb']['mean']:+.2f} points); "
                   f"{_format_versus(c, name)}")
        for column in columns:
            if column == "test_acc":
                continue
            c = data["versus_lb"][name][column]
            if c["n"]:
                out.append(f"  - {column}: {verdict(c)}; {_format_versus(c, name)}")
    out += ["", *_training_lines(data["training_runs"])]
    return "\n".join(out) + "\n"


def _training_lines(outcomes):
    lines = ["Training runs (kept: the epoch with the lowest training-set f):"]
    unconverged = []
    for t, outcome in enumerate(outcomes):
        cells = []
        for name, o in outcome.items():
            o = o or {}
            cells.append(f"{name.upper() if name in ('sb', 'lb') else name} "
                         f"{o.get('stopped_because', '?')} after {o.get('epochs_run', '?')} "
                         f"epochs")
            if o.get("stopped_because") != "converged":
                unconverged.append(f"trial {t} {name.upper() if name in ('sb', 'lb') else name}")
        lines.append(f"- trial {t}: " + "; ".join(cells))
    if unconverged:
        lines.append(f"**Not converged** (the stop rule did not end these runs): "
                     f"{', '.join(unconverged)}.")
    return lines


def figure(data, out_stem):
    """Bars of test accuracy and of the first sharpness column per run, with
    the t intervals of the means (`plot_remedy_grid`)."""
    from keras_sharpness.experiments.figures import plot_remedy_grid

    sharpness = [c for c in data["columns"] if c not in ("test_acc", "train_acc", "train_loss")]
    panels = [("test_acc", "test accuracy (%)")]
    if sharpness:  # Metric 2.1 comes first, then the other measures
        first = sharpness[0]
        panels.append((first, "Metric 2.1 " + first[len("sharpness"):]
                       if first.startswith("sharpness[") else first))
    bars = []
    for column, axis in panels:
        rows = [data["rows"][name][column] for name in data["labels"]]
        bars.append((axis, [r["mean"] for r in rows], [r["interval"] for r in rows]))
    return plot_remedy_grid(data["labels"], bars, out_stem,
                            title=f"{data['network']}: remedies of LB, {data['trials']} "
                                  f"trial(s), {int(round(100 * CONFIDENCE))} % intervals")


def run(data, run_settings, workdir, *, arms=DEFAULT_ARMS, trials=3, settings=None,
        figures_dir=None, verbose=1):
    """Runs (or resumes) the grid and writes ``remedy_grid.json`` / ``.md`` and the figure.

    Args:
        data: `keras_sharpness.data.ArrayData`, loaded as ``run_settings.data`` says.
        run_settings: `keras_sharpness.config.RunSettings`; trial t trains
            with seed t (the data subsets keep ``run_settings.data.seed``).
        workdir: the work directory (a path or a `RunDir`).
        arms: arm names (`parse_arms`).
        trials: number of trials.
        settings: `MeasureSettings` (default: Metric 2.1 at eps 1e-3, full space).
        figures_dir: where ``remedy_grid.{pdf,png}`` go (default: `workdir`).
        verbose: 0 quiet, 1 progress bars, 2 one line per epoch.

    Returns:
        ``(tables_data, markdown)``.
    """
    from keras_sharpness.training import (canonical_source, default_lb_batch_size,
                                          resolve_batch_size)

    arms = parse_arms(arms)
    check_settings(run_settings, arms)
    if int(trials) < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    settings = settings or MeasureSettings(eps=(1e-3,), subspace_dims=(0,))
    t = run_settings.training
    n = data.info.train_size
    sb = resolve_batch_size(t.sb_batch_size, n, name="SB batch size")
    lb = resolve_batch_size(t.lb_batch_size or default_lb_batch_size(n), n,
                            name="LB batch size")
    cap = t.max_epochs if t.until_converged else t.epochs
    for arm in arms:  # what the data decides, before anything trains
        remedies = arm_remedies(arm, t.remedies, sb_batch=sb, epoch_cap=cap)
        try:
            remedies.check(data.info.input_shape, t.accumulation_steps)
        except UserError as e:
            raise UserError(f"arm {arm}: {e}") from None
        if remedies.ghost and remedies.ghost_batch_size > lb // t.accumulation_steps:
            raise UserError(f"arm {arm}: its ghost batch {remedies.ghost_batch_size} is "
                            f"larger than the LB batch {lb} (per micro-batch)")
    workdir = workdir if isinstance(workdir, runs.RunDir) else runs.RunDir(workdir)
    started = time.time()
    results = []
    with workdir.open() as folder:
        folder.claim({"kind": KIND, "settings": {"run": run_settings.to_dict(),
                                                  "measure": settings.to_dict(),
                                                  "trials": int(trials), "arms": arms},
                      "status": "running", "versions": io.versions()},
                     identity=lambda manifest: {})  # each trial and arm checks its own
        for seed in range(int(trials)):
            if verbose:
                print(f"=== trial {seed + 1}/{trials} (seed {seed}) ===", flush=True)
            trial = dataclasses.replace(run_settings, training=dataclasses.replace(t, seed=seed))
            results.append(run_trial(data, trial, folder.path / f"trial{seed}", arms=arms,
                                     settings=settings, verbose=verbose))
        table_data, text = tables(results, arms, t.network, settings)
        stem = (folder.path if figures_dir is None else io.ensure_writable_dir(
            figures_dir, "--figures_dir")) / "remedy_grid"
        table_data["figure"] = [str(p) for p in figure(table_data, stem)]
        table_data.update({"dataset": canonical_source(run_settings.data.dataset),
                           "data": data.info.to_dict(), "run_settings": run_settings.to_dict(),
                           "per_trial": results, "seconds": time.time() - started,
                           "versions": io.versions()})
        io.write_json(folder.path / "remedy_grid.json", table_data)
        io.write_text(folder.path / "remedy_grid.md", text)
        folder.set_status("finished")
    return table_data, text


# ------------------------------------------------------------------ command
def check_flags(FLAGS, run_settings):
    """The grid's own flags, checked before TensorFlow is imported."""
    if FLAGS.trials < 1:
        raise UserError(f"--trials must be at least 1, got {FLAGS.trials}")
    check_settings(run_settings, parse_arms(FLAGS.arms))


def main(argv):
    from absl import flags

    from keras_sharpness.experiments.flags import common_from_flags

    del argv
    FLAGS = flags.FLAGS
    common = common_from_flags(FLAGS, KIND)
    _, text = run(common["data"], common["run_settings"], common["run_dir"],
                  arms=FLAGS.arms, trials=FLAGS.trials, settings=common["settings"],
                  figures_dir=common["figures_dir"], verbose=common["verbose"])
    print(text)
    print(f"wrote {common['workdir'] / 'remedy_grid.json'}, remedy_grid.md and "
          f"{common['figures_dir'] / 'remedy_grid.pdf'}")


def define_flags(flags):
    flags.DEFINE_integer("trials", 3, "Number of trials (seeds 0..N-1).")
    flags.DEFINE_list("arms", list(DEFAULT_ARMS),
                      f"Remedies of LB, comma-separated: {', '.join(ARMS)}, or all; join "
                      f"presets with + (ghost_bn+sam). See docs/remedies.md.")


if __name__ == "__main__":
    from keras_sharpness.experiments.flags import start

    start(main, define_flags, one_sharpness=True, check_flags=check_flags)
