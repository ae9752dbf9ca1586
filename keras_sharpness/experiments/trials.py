"""Tables 2, 3 and 4: N trials of SB and LB, accuracy and sharpness, mean ± std.

Trial t (seed t) trains SB and LB from its own random x0 in
``<workdir>/trial<t>/``, a run directory of its own
(`keras_sharpness.runs.RunDir`, `keras_sharpness.training.train_sb_lb`),
then measures accuracy on the whole splits and Metric 2.1 for every eps, in
the full space (Table 3) and in a random subspace (Table 4), through the one
sweep (`keras_sharpness.measure`): every number is a record of
``trial<t>/sharpness.json``, the store ``compute_sharpness.py
--workdir=<workdir>/trial<t>`` reads and writes too. Finished trainings and
measurements are reused when the command runs again (measurements that an
earlier version kept in ``trial<t>/measurements.json`` too).

    python -m keras_sharpness.experiments.trials --network=F1 \
        --dataset=npz:../shared/data/mnist-t10k-split.npz --trials=5

Writes ``<workdir>/tables.json`` and ``<workdir>/tables.md``.
"""

import dataclasses
import functools
import time

from keras_sharpness import io, migrate, reports, runs
from keras_sharpness.experiments.measure import weight_distance
from keras_sharpness.measure import MeasureSettings, Subject, measure_model
from keras_sharpness.statistics import format_comparison, paired_comparison

#: The manifest ``kind`` of a trials work directory (each trial is a
#: `keras_sharpness.training.KIND` run directory inside it).
KIND = "trials"


def run_trial(data, run_settings, trial_dir, *, settings, verbose=1):
    """Trains SB/LB of one trial (or reuses them) and measures both.

    Args:
        data: `keras_sharpness.data.ArrayData`.
        run_settings: `keras_sharpness.config.RunSettings` of the trial (its
            training seed is the trial's).
        trial_dir: the trial's run directory (a path or a `RunDir`).
        settings: `MeasureSettings`.
        verbose: 0 quiet, 1 progress bars, 2 one line per epoch.

    Returns:
        dict: ``seed``, ``sb``/``lb`` (accuracy, loss, ``sharpness`` records
        labelled ``SB`` / ``LB``), ``distance_ratio`` = ||x_SB - x0|| /
        ||x_LB - x0||, ``batch_sizes``, ``epochs``, ``training``, ``seconds``.
    """
    from keras_sharpness.training import canonical_source, read_history, train_sb_lb

    seed = run_settings.training.seed
    network = run_settings.training.network
    dataset = canonical_source(run_settings.data.dataset)
    run = trial_dir if isinstance(trial_dir, runs.RunDir) else runs.RunDir(trial_dir)
    started = time.time()
    with run.open():
        models = train_sb_lb(data, run_settings, run, verbose=verbose)
        subjects = {name: Subject(name.upper(), models[name], run.model(name))
                    for name in ("sb", "lb")}
        # Measured by a version that kept a memo per trial: its records are reused.
        memo_key = {"settings": settings.to_dict(), "run": _memo_identity(models["record"])}
        migrate.adopt_memo(run.path / "measurements.json", memo_key, subjects, settings,
                           run.records_path, network=network, dataset=dataset)
        result = {"seed": seed}
        for name, subject in subjects.items():
            if verbose:
                print(f"trial {seed}: measuring {name.upper()}", flush=True)
            result[name] = measure_model(
                subject, data, settings, run.records_path, network=network, dataset=dataset,
                echo=functools.partial(print, flush=True) if verbose else None)
        result["distance_ratio"] = (weight_distance(models["sb"], models["x0"])
                                    / max(weight_distance(models["lb"], models["x0"]), 1e-300))
        result["batch_sizes"] = {"sb": models["record"]["sb_batch_size"],
                                 "lb": models["record"]["lb_batch_size"]}
        result["epochs"] = {name: len(read_history(run.history(name))) for name in ("sb", "lb")}
        result["training"] = {name: training_outcome(run.history(name)) for name in ("sb", "lb")}
    result["seconds"] = time.time() - started
    return result


def training_outcome(history_path):
    """Where a run stopped and what it kept, from its history JSON."""
    from keras_sharpness.io import read_json

    history = read_json(history_path)
    return {key: history.get(key) for key in
            ("kept_epoch", "stopped_because", "epochs_run", "kept")}


def _memo_identity(record):
    """The ``run`` part of the key of an earlier version's ``measurements.json``."""
    return {k: record.get(k) for k in ("network", "dataset", "seed", "sb_batch_size",
                                         "lb_batch_size", "epochs", "until_converged",
                                         "patience", "min_delta", "max_epochs",
                                         "relative_min_delta", "eval_batch_size", "keeps",
                                         "train_size", "test_size")}


def _phi(trial, name, p, eps, field="phi_paper"):
    """phi of one trial's model from its records: after the paper's 10
    iterations (``phi_paper``) or after all ``maxiter`` (``sharpness``);
    records from before ``phi_paper`` existed, or of runs shorter than 10
    iterations, give ``sharpness``."""
    for r in trial[name]["sharpness"]:
        if r["subspace_dim"] == p and abs(r["eps"] - eps) <= 1e-12 * max(1.0, eps):
            value = r.get(field)
            return r["sharpness"] if value is None else value
    return None


def _sharpness_table(trials, p, eps_values, field):
    """Per eps: SB/LB summaries and their paired comparison."""
    table, comparisons = {}, {}
    for e in eps_values:
        sb = [_phi(t, "sb", p, e, field) for t in trials]
        lb = [_phi(t, "lb", p, e, field) for t in trials]
        table[str(e)] = {"sb": reports.summarize(sb), "lb": reports.summarize(lb)}
        comparisons[str(e)] = paired_comparison(sb, lb)
    return table, comparisons


def tables(trials, network, settings):
    """Tables 2-4 from per-trial measurements, as JSON-ready dicts and Markdown.

    Returns:
        ``(data, markdown)``: `data` has ``table2``, ``table3``, ``table4``,
        ``distance_ratio`` (each a mean/std/n/values summary) and the
        paper's numbers where the network is one of the paper's.
    """
    data = {"network": network, "trials": len(trials), "settings": settings.to_dict()}
    t2 = {f"{split}_{name}": reports.summarize([100 * t[name][f"{split}_acc"] for t in trials])
          for split in ("train", "test") for name in ("sb", "lb")}
    data["table2"] = t2
    data["table2_comparison"] = {
        split: paired_comparison([100 * t["sb"][f"{split}_acc"] for t in trials],
                                 [100 * t["lb"][f"{split}_acc"] for t in trials])
        for split in ("train", "test")}
    # Table 3 is the full space; Table 4 the first random subspace (paper:
    # p = 100), both after the paper's 10 iterations; with --maxiter > 10 the
    # same after all iterations too ("..._at_maxiter").
    random_dims = [p for p in settings.subspace_dims if p > 0]
    fields = [("", "phi_paper")]
    if settings.maxiter > 10:
        fields.append(("_at_maxiter", "sharpness"))
    for table, p in (("table3", 0 if 0 in settings.subspace_dims else None),
                     ("table4", random_dims[0] if random_dims else None)):
        if p is None:
            continue
        for suffix, field in fields:
            data[table + suffix], data[f"{table}{suffix}_comparison"] = _sharpness_table(
                trials, p, settings.eps, field)
        data[f"{table}_subspace_dim"] = p
    for p in random_dims[1:]:
        data[f"subspace_{p}"], _ = _sharpness_table(trials, p, settings.eps, "phi_paper")
    data["distance_ratio"] = reports.summarize([t["distance_ratio"] for t in trials])
    data["training_runs"] = [t.get("training") for t in trials]
    data["paper"] = {"table2": reports.PAPER_TABLE2.get(network),
                     "table3": {str(k): v for k, v in reports.PAPER_TABLE3.get(network, {}).items()},
                     "table4": {str(k): v for k, v in reports.PAPER_TABLE4.get(network, {}).items()}}
    return data, markdown(data, network)


def _cell(summary):
    return reports.format_mean_std(summary["mean"], summary["std"])


def _paper_cell(pair):
    return "–" if pair is None else reports.format_mean_std(*pair)


def markdown(data, network):
    """The three tables in Markdown, our row beside the paper's."""
    n = data["trials"]
    out = [f"### Table 2: accuracy % ({network}, mean ± std of {n} trials)", ""]
    t2, p2 = data["table2"], data["paper"]["table2"]
    cols = ("train_sb", "train_lb", "test_sb", "test_lb")
    rows = [["ours"] + [_cell(t2[c]) for c in cols]]
    if p2:
        rows.append(["paper"] + [_paper_cell(p2[c]) for c in cols])
    out += [reports.markdown_table(["", "train SB", "train LB", "test SB", "test LB"], rows), ""]
    for split in ("train", "test"):
        c = data["table2_comparison"][split]
        out.append(f"- {split} accuracy per trial: SB {_values(c['sb']['values'])}, "
                   f"LB {_values(c['lb']['values'])}; {format_comparison(c)}")
    out.append("")
    maxiter = data["settings"]["maxiter"]
    for table, title in (
            ("table3", "Table 3: sharpness, full space"),
            ("table4", f"Table 4: sharpness, random {data.get('table4_subspace_dim')}-dim subspace"),
            ("table3_at_maxiter", f"Table 3 after {maxiter} iterations (not the paper's 10)"),
            ("table4_at_maxiter", f"Table 4 after {maxiter} iterations (not the paper's 10)")):
        if table not in data:
            continue
        eps = list(data[table])
        header = [""] + [f"eps={e} {m}" for e in eps for m in ("SB", "LB")]
        rows = [["ours"] + [_cell(data[table][e][m]) for e in eps for m in ("sb", "lb")]]
        paper = data["paper"].get(table)
        if paper and (table == "table3" or data["table4_subspace_dim"] == 100):
            rows.append(["paper"] + [_paper_cell(paper.get(str(float(e)), {}).get(m))
                                     for e in eps for m in ("sb", "lb")])
        out += [f"### {title} ({network})", "", reports.markdown_table(header, rows), ""]
        for e in eps:
            c = data[f"{table}_comparison"][e]
            out.append(f"- eps={e} per trial: SB {_values(c['sb']['values'])}, "
                       f"LB {_values(c['lb']['values'])}; {format_comparison(c)}")
        out.append("")
    d = data["distance_ratio"]
    out.append(f"Distance ratio ||x_SB - x0|| / ||x_LB - x0|| = {_cell(d)} (paper: between 3 and 10)")
    out += ["", *training_lines(data.get("training_runs") or [])]
    return "\n".join(out) + "\n"


def _values(values):
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def training_lines(outcomes):
    """Where every run stopped, and a warning for runs that did not converge."""
    if not outcomes:
        return []
    lines = ["Training runs (kept: the epoch with the lowest training-set f):"]
    unconverged = []
    for t, outcome in enumerate(outcomes):
        cells = []
        for name in ("sb", "lb"):
            o = (outcome or {}).get(name) or {}
            kept = o.get("kept")
            cells.append(f"{name.upper()} {o.get('stopped_because', '?')} after "
                         f"{o.get('epochs_run', '?')} epochs, kept epoch {o.get('kept_epoch', '?')}"
                         + (f" (f = {kept['f']:.3g}, train acc {100 * kept['accuracy']:.2f} %)"
                            if kept else ""))
            if o.get("stopped_because") != "converged":
                unconverged.append(f"trial {t} {name.upper()} "
                                   f"({o.get('stopped_because') or 'unknown'})")
        lines.append(f"- trial {t}: " + "; ".join(cells))
    if unconverged:
        lines.append(f"**Not converged** (the stop rule did not end these runs, so their "
                     f"kept point may not be a minimizer): {', '.join(unconverged)}.")
    return lines


def run(data, run_settings, workdir, *, trials=5, settings=None, verbose=1):
    """Runs (or resumes) `trials` trials and writes ``tables.json`` / ``tables.md``.

    Args:
        data: `keras_sharpness.data.ArrayData`, loaded as ``run_settings.data`` says.
        run_settings: `keras_sharpness.config.RunSettings`; trial t trains
            with seed t (the data subsets keep ``run_settings.data.seed``).
        workdir: the work directory (a path or a `RunDir`): ``run.json``,
            the tables and ``trial<t>/``.
        trials: number of trials.
        settings: `MeasureSettings` (default: the paper's).
        verbose: 0 quiet, 1 progress bars, 2 one line per epoch.

    Returns:
        ``(tables_data, markdown)``.
    """
    from keras_sharpness.training import canonical_source

    settings = settings or MeasureSettings()
    network = run_settings.training.network
    workdir = workdir if isinstance(workdir, runs.RunDir) else runs.RunDir(workdir)
    started = time.time()
    results = []
    with workdir.open() as folder:
        folder.claim({"kind": KIND, "settings": {"run": run_settings.to_dict(),
                                                  "measure": settings.to_dict(),
                                                  "trials": int(trials)},
                      "status": "running", "versions": io.versions()},
                     identity=lambda manifest: {})  # each trial checks its own settings
        for seed in range(int(trials)):
            if verbose:
                print(f"=== trial {seed + 1}/{trials} (seed {seed}) ===", flush=True)
            trial = dataclasses.replace(
                run_settings, training=dataclasses.replace(run_settings.training, seed=seed))
            results.append(run_trial(data, trial, folder.path / f"trial{seed}",
                                     settings=settings, verbose=verbose))
        table_data, text = tables(results, network, settings)
        table_data.update({"dataset": canonical_source(run_settings.data.dataset),
                           "data": data.info.to_dict(), "run_settings": run_settings.to_dict(),
                           "per_trial": results, "seconds": time.time() - started,
                           "versions": io.versions()})
        io.write_json(folder.path / "tables.json", table_data)
        io.write_text(folder.path / "tables.md", text)
        folder.set_status("finished")
    return table_data, text


def main(argv):
    from absl import flags

    from keras_sharpness.errors import UserError
    from keras_sharpness.experiments.flags import common_from_flags

    del argv
    FLAGS = flags.FLAGS
    if FLAGS.trials < 1:
        raise UserError(f"--trials must be at least 1, got {FLAGS.trials}")
    common = common_from_flags(FLAGS, "trials")
    _, text = run(common["data"], common["run_settings"], common["run_dir"],
                  trials=FLAGS.trials, settings=common["settings"], verbose=common["verbose"])
    print(text)
    print(f"wrote {common['workdir'] / 'tables.json'} and tables.md")


def define_flags(flags):
    flags.DEFINE_integer("trials", 5, "Number of trials (seeds 0..N-1).")


if __name__ == "__main__":
    from keras_sharpness.experiments.flags import start

    start(main, define_flags, one_sharpness=False)
