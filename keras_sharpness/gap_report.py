"""Which measure tracks the generalization gap: a small-scale Jiang et al. (2020).

Reads the record stores of several runs (the ``sharpness.json`` of each run
directory: a batch sweep, the trials, a remedy grid, compute_sharpness
outputs), makes one row per measured model with its generalization gap
(test - train mean cross-entropy, and train - test accuracy, from its
``accuracy`` record) and every measure recorded for it, then ranks each
measure against the gap with Kendall's tau (`scipy.stats.kendalltau`) and a
paired bootstrap confidence interval over the rows (`scipy.stats.bootstrap`).

    report = build_report(["runs/batch_sweep_F1", "runs/trials_F1"])
    write_report(report, "runs/report")      # report.json, report.md, report.{pdf,png}

Plain data in, plain data out; ``ks-report`` (`keras_sharpness.commands`) is
the command.
"""

import json
import math
import pathlib

import numpy as np

from keras_sharpness.errors import UserError

#: The gaps a measure is ranked against: row field -> what it is.
GAPS = {"gap_loss": "test - train mean cross-entropy",
        "gap_acc": "train - test accuracy (percentage points)"}

#: Name of the record store in a run directory.
STORE_NAME = "sharpness.json"


def find_stores(paths):
    """The record stores under `paths` (files as given; directories searched).

    Raises:
        UserError: a path that does not exist, or none holding a store.
    """
    stores = []
    for path in paths:
        path = pathlib.Path(path)
        if path.is_file():
            stores.append(path)
        elif path.is_dir():
            found = sorted(path.rglob(STORE_NAME))
            if not found:
                raise UserError(f"{path} holds no {STORE_NAME}; measure its models first "
                                f"(compute_sharpness.py --workdir {path} --measures=all)")
            stores += found
        else:
            raise UserError(f"{path} does not exist")
    if not stores:
        raise UserError("give at least one run directory or record store")
    return list(dict.fromkeys(stores))


def _column(record):
    """The measure a record gives a value of, as ``(measure, details)``, or None."""
    kind = record.get("measure", "sharpness")
    if kind == "accuracy":
        return None
    # Measures of a different f (subset, batch size) or seed are different columns.
    samples = (f"samples={record.get('num_samples') or 'all'} "
               f"batch={record.get('batch_size')} seed={record.get('seed')}")
    if kind == "sharpness":
        p = record["subspace_dim"]
        space = "full" if p == 0 else f"p={p}"
        return ("sharpness", f"{space} eps={record['eps']:g} maxiter={record['maxiter']}"
                             f" start={record['start']} {samples}")
    params = record.get("params") or {}
    return (kind, " ".join([*(f"{k}={v}" for k, v in sorted(params.items())), samples]))


def _value(record):
    value = record.get("sharpness") if "measure" not in record else record.get("value")
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def collect(stores):
    """One row per measured model with an accuracy record: per (store, model
    label), and once per checkpoint (SHA-256) however many stores hold it.

    Returns:
        ``(rows, columns)``: rows are dicts with ``store``, ``model``,
        ``checkpoint_sha256``, the four accuracy values, ``gap_loss``,
        ``gap_acc`` and ``values`` (column -> number); columns are dicts with
        ``name`` (short, unique), ``measure``, ``details`` and
        ``sharper_is_larger``, in the order of `keras_sharpness.measure.MEASURES`.

    Raises:
        UserError: a model measured without an accuracy record, or no rows.
    """
    from keras_sharpness.measure import MEASURES, record_store

    rows, keys, seen = [], {}, set()
    for path in stores:
        records = record_store(path).read()
        by_model = {}
        for record in records:
            by_model.setdefault((record["model"], record.get("checkpoint_sha256"),
                                 record.get("bn_eval")), []).append(record)
        for (label, digest, bn_eval), group in by_model.items():
            accuracy = [r for r in group if r.get("measure") == "accuracy"]
            measured = [r for r in group if r.get("measure") != "accuracy"]
            if not accuracy:
                if measured:
                    raise UserError(
                        f"{path}: model {label!r} has measures but no accuracy record; run "
                        f"compute_sharpness.py on it with --measures=accuracy")
                continue
            if digest is not None and (digest, bn_eval) in seen:
                continue  # the same checkpoint in another store (e.g. a reused SB): one row
            seen.add((digest, bn_eval))
            acc = accuracy[-1]
            row = {"store": str(path), "model": label, "checkpoint_sha256": digest,
                   "bn_eval": bn_eval,
                   **{k: float(acc[k]) for k in ("train_loss", "test_loss", "train_acc",
                                                 "test_acc")},
                   "values": {}}
            row["gap_loss"] = row["test_loss"] - row["train_loss"]
            row["gap_acc"] = 100.0 * (row["train_acc"] - row["test_acc"])
            for record in measured:
                column, value = _column(record), _value(record)
                if column is not None and value is not None:
                    keys.setdefault(column, None)
                    row["values"][column] = value
            rows.append(row)
    if not rows:
        raise UserError("no measured model with an accuracy record in "
                        + ", ".join(str(s) for s in stores))
    order = list(MEASURES)
    ordered = sorted(keys, key=lambda c: (order.index(c[0]) if c[0] in order else len(order),
                                          c[1]))
    columns = []
    for measure, details in ordered:
        several = sum(1 for m, _ in ordered if m == measure) > 1
        columns.append({"name": f"{measure} ({details})" if several or measure == "sharpness"
                        else measure, "measure": measure, "details": details,
                        "sharper_is_larger": MEASURES[measure].sharper_is_larger
                        if measure in MEASURES else True})
    for row in rows:
        row["values"] = {c["name"]: row["values"][(c["measure"], c["details"])]
                         for c in columns if (c["measure"], c["details"]) in row["values"]}
    return rows, columns


def kendall(values, gaps, *, bootstrap=2000, confidence=0.95, seed=0):
    """Kendall's tau-b of `values` against `gaps`, its p-value and a paired
    percentile bootstrap interval over the pairs.

    Returns:
        dict: ``n``, ``tau``, ``p_value``, ``ci_low``, ``ci_high`` (None
        where there are too few pairs, fewer than 3, or no variation).
    """
    import scipy.stats

    x, y = np.asarray(values, np.float64), np.asarray(gaps, np.float64)
    out = {"n": int(len(x)), "tau": None, "p_value": None, "ci_low": None, "ci_high": None,
           "confidence": confidence}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    result = scipy.stats.kendalltau(x, y)
    out["tau"], out["p_value"] = float(result.statistic), float(result.pvalue)

    def tau(a, b):
        statistic = scipy.stats.kendalltau(a, b).statistic
        return 0.0 if np.isnan(statistic) else statistic  # a resample without variation

    interval = scipy.stats.bootstrap(
        (x, y), tau, paired=True, vectorized=False, n_resamples=int(bootstrap),
        confidence_level=confidence, method="percentile",
        rng=np.random.default_rng(seed)).confidence_interval
    out["ci_low"], out["ci_high"] = float(interval.low), float(interval.high)
    return out


def build_report(paths, *, bootstrap=2000, confidence=0.95, seed=0):
    """Rows, columns and each column's Kendall tau against each gap (`GAPS`).

    Returns:
        A JSON-ready dict: ``stores``, ``rows``, ``columns`` and
        ``correlations`` (one per column and gap: ``column``, ``gap`` and
        the fields of `kendall`).
    """
    stores = find_stores(paths)
    rows, columns = collect(stores)
    correlations = []
    for column in columns:
        pairs = [row for row in rows if column["name"] in row["values"]]
        for gap in GAPS:
            correlations.append({
                "column": column["name"], "gap": gap,
                **kendall([r["values"][column["name"]] for r in pairs],
                          [r[gap] for r in pairs], bootstrap=bootstrap,
                          confidence=confidence, seed=seed)})
    return {"stores": [str(s) for s in stores], "rows": rows, "columns": columns,
            "correlations": correlations, "bootstrap": int(bootstrap), "seed": int(seed)}


def _number(value):
    if value is None:
        return "-"
    return f"{value:.4g}"


def format_markdown(report):
    """The report as Markdown: the rows, then tau per measure and gap."""
    columns = [c["name"] for c in report["columns"]]
    lines = ["| run | model | train acc % | test acc % | gap (loss) | gap (acc) | "
             + " | ".join(columns) + " |",
             "|" + "---|" * (6 + len(columns))]
    for row in report["rows"]:
        run = pathlib.Path(row["store"]).parent.name
        lines.append(f"| {run} | {row['model']} | {100 * row['train_acc']:.2f} | "
                     f"{100 * row['test_acc']:.2f} | {row['gap_loss']:.4g} | "
                     f"{row['gap_acc']:.3g} | "
                     + " | ".join(_number(row["values"].get(c)) for c in columns) + " |")
    level = None
    lines += ["", "| measure | gap | n | Kendall tau | interval | p |", "|---|---|---|---|---|---|"]
    for c in report["correlations"]:
        level = c["confidence"]
        interval = ("-" if c["ci_low"] is None
                    else f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]")
        lines.append(f"| {c['column']} | {GAPS[c['gap']]} | {c['n']} | "
                     f"{'-' if c['tau'] is None else format(c['tau'], '.2f')} | {interval} | "
                     f"{_number(c['p_value'])} |")
    if level is not None:
        lines += ["", f"Intervals: {100 * level:g} % paired percentile bootstrap over the "
                      f"rows ({report['bootstrap']} resamples, seed {report['seed']}). "
                      "A measure that tracks generalization has tau > 0 against the gap "
                      "(the noise scale is no sharpness: no sign is expected)."]
    return lines


def plot_report(report, out_stem):
    """Each measure against the loss gap, one panel per measure (PDF + PNG)."""
    from keras_sharpness import plotting

    plt = plotting.pyplot()
    columns = report["columns"]
    if not columns:
        return ()
    width = min(4, len(columns))
    height = math.ceil(len(columns) / width)
    fig, axes = plt.subplots(height, width, figsize=(3.2 * width, 2.8 * height), squeeze=False)
    taus = {c["column"]: c for c in report["correlations"] if c["gap"] == "gap_loss"}
    for ax, column in zip(axes.flat, columns):
        pairs = [(r["values"][column["name"]], r["gap_loss"], r["model"])
                 for r in report["rows"] if column["name"] in r["values"]]
        for value, gap, model in pairs:
            ax.scatter(value, gap, s=18, color="tab:red" if model.upper().startswith("LB")
                       else "tab:blue")
        if pairs and min(p[0] for p in pairs) > 0:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labels on decades only
        tau = taus.get(column["name"], {}).get("tau")
        ax.set_title(f"{column['name'][:40]}\ntau={_number(tau)}", fontsize=8)
        ax.set_ylabel("test - train loss", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    return plotting.save_figure(fig, out_stem)


def write_report(report, output_dir):
    """Writes ``report.json``, ``report.md`` and ``report.{pdf,png}`` into `output_dir`.

    Returns:
        The paths written.
    """
    from keras_sharpness import io

    output_dir = io.ensure_writable_dir(output_dir, "--output_dir")
    io.write_json(output_dir / "report.json", report)
    markdown = output_dir / "report.md"
    io.write_text(markdown, "\n".join(format_markdown(report)) + "\n")
    figures = plot_report(report, output_dir / "report")
    return [output_dir / "report.json", markdown, *figures]


def main(*, runs, output_dir, bootstrap=2000, confidence=0.95, seed=0, echo=print):
    """``ks-report``: builds the report of `runs`, writes it, prints its tables."""
    report = build_report(runs, bootstrap=bootstrap, confidence=confidence, seed=seed)
    written = write_report(report, output_dir)
    for line in format_markdown(report):
        echo(line)
    echo("wrote " + ", ".join(str(p) for p in written))
    return report


def dumps(report):
    """The report as JSON text (for tests and pipes)."""
    return json.dumps(report, indent=1, sort_keys=True)


if __name__ == "__main__":
    from keras_sharpness import commands

    commands.report()
