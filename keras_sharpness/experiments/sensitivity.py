"""How much the SB-vs-LB conclusion depends on the metric's settings.

Runs on saved trials (`keras_sharpness.experiments.trials`), no retraining:
for every trial directory under ``--workdir`` and every combination of BN at
evaluation x L-BFGS-B start x eps x space (full, or a random subspace with a
given scale of A), it measures Metric 2.1 of the kept SB and LB minimizers,
and of the last iterates where a run kept an earlier epoch, through the one
sharpness sweep (`keras_sharpness.measure.sweep`, the one of
``compute_sharpness.py``; records in ``<trial>/sensitivity.json``, reused when
run again). Each run lasts
``--maxiter`` iterations and its ascent gives phi after the paper's 10
iterations and after all of them, so the iteration axis costs nothing extra.

    python -m keras_sharpness.experiments.sensitivity --workdir=runs/F1_trials \
        --bn_evals=batch,moving --starts=zero,corner --eps=1e-3,5e-4 \
        --spaces=full,100:gaussian,100:normalized --maxiter=100

Writes ``<workdir>/<report>.json`` (every comparison; ``--report``, default
``sensitivity``) and ``<workdir>/<report>.md`` (one table row per setting: SB and LB mean ±
std, trials with LB > SB, Wilcoxon and paired-t p-values, LB/SB with its
bootstrap interval; at 10 iterations and at ``--maxiter``).
"""

import functools
import itertools
import pathlib
import re

from keras_sharpness import io, reports
from keras_sharpness.errors import UserError
from keras_sharpness.statistics import paired_comparison

#: Which checkpoint of a run a measurement is taken at.
POINTS = {"kept": "{name}.keras", "last": "{name}_last.keras"}


def parse_space(text):
    """``"full"`` -> (0, "identity"); ``"100:normalized"`` -> (100, "normalized")."""
    from keras_sharpness.metric import SUBSPACE_SCALES

    text = str(text).strip()
    if text in ("full", "0"):
        return 0, "identity"
    dim, _, scale = text.partition(":")
    scale = scale or "gaussian"
    try:
        dim = int(dim)
    except ValueError:
        raise UserError(f"a space is 'full' or 'P:SCALE' (e.g. 100:gaussian), got {text!r}") from None
    if dim < 1 or scale not in SUBSPACE_SCALES:
        raise UserError(f"a space is 'full' or 'P:SCALE' with P >= 1 and SCALE one of "
                        f"{', '.join(SUBSPACE_SCALES)}; got {text!r}")
    return dim, scale


def trial_dirs(workdir):
    """``{trial number: directory}`` of the trials under `workdir` with finished
    SB and LB minimizers (``trial<t>``, as `trials` names them)."""
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"workdir {workdir} does not exist")
    found = {int(m.group(1)): d for d in workdir.iterdir()
             if (m := re.fullmatch(r"trial(\d+)", d.name)) and (d / "sb.keras").is_file()
             and (d / "lb.keras").is_file()}
    if not found:
        raise UserError(f"workdir {workdir} holds no finished trial (trial*/sb.keras and "
                        f"lb.keras); run keras_sharpness.experiments.trials first")
    return found


def measure(workdir, *, bn_evals=("batch",), starts=("zero",), eps=(1e-3,),
            spaces=("full",), maxiter=100, points=("kept",), seed=0, batch_size=1000,
            num_samples=None, echo=print):
    """Measures every setting on every trial (reusing finished records).

    Returns:
        A list of ``(trial index, record)`` for every record of the grid.
    """
    from keras_sharpness import io, sharpness_cli
    from keras_sharpness.data import load_arrays
    from keras_sharpness.measure import MeasureSettings, Subject, sweep

    spaces = [parse_space(s) for s in spaces]
    for point in points:
        if point not in POINTS:
            raise UserError(f"unknown point {point!r}; choose from {', '.join(POINTS)}")
    grid = [MeasureSettings(eps=tuple(eps), subspace_dims=(dim,), maxiter=maxiter, start=start,
                            bn_eval=bn_eval, eval_batch_size=batch_size, num_samples=num_samples,
                            seed=seed, subspace_scale=scale if dim else "gaussian")
            for bn_eval, (dim, scale), start in itertools.product(bn_evals, spaces, starts)]
    trials = trial_dirs(workdir)
    out = []
    for t, trial in sorted(trials.items()):
        located = sharpness_cli.locate_models(workdir=trial)
        models, same_as_kept = [], []
        for point in points:
            for name in ("sb", "lb"):
                path = trial / POINTS[point].format(name=name)
                if point == "last" and not path.is_file():
                    # The run kept its last epoch: its kept records serve twice.
                    same_as_kept.append(name.upper())
                    continue
                models.append((f"{name.upper()}@{point}", path))
        if same_as_kept and "kept" not in points:
            models += [(f"{name}@kept", trial / f"{name.lower()}.keras") for name in same_as_kept]
        # Each model and the data are loaded once for the whole grid (the data
        # only if some record must be computed).
        models = [Subject(label, io.load_model(path), path) for label, path in models]
        training_data = functools.cache(functools.partial(load_arrays, **located["data"]))
        for settings in grid:
            dim = settings.subspace_dims[0]
            echo(f"trial {t}: BN {settings.bn_eval}, "
                 f"{'full space' if dim == 0 else f'p={dim} ({settings.subspace_scale})'}, "
                 f"start {settings.start}, eps {', '.join(f'{e:g}' for e in eps)}")
            records = sweep(models, training_data, settings, trial / "sensitivity.json",
                            network=located["network"], dataset=located["data"]["source"],
                            echo=None)
            out += [(t, r) for r in records if r["model"].endswith("@kept") and "kept" in points
                    or not r["model"].endswith("@kept")]
            out += [(t, {**r, "model": r["model"].replace("@kept", "@last")}) for r in records
                    if r["model"].split("@")[0] in same_as_kept and r["model"].endswith("@kept")]
    return out


def setting_of(record):
    """The settings that define one row of the report."""
    return (record["bn_eval"], record["subspace_dim"], record.get("subspace_scale", "identity"),
            record["start"], record["eps"], record["model"].split("@")[1])


def report(measured, *, maxiter):
    """Paired comparisons per setting, at 10 iterations and at `maxiter`.

    Returns:
        ``(rows, markdown)``; every row is JSON-ready.
    """
    by_setting = {}
    for t, r in measured:
        key = setting_of(r)
        by_setting.setdefault(key, {}).setdefault(t, {})[r["model"].split("@")[0]] = r
    rows = []
    for key, per_trial in by_setting.items():
        bn_eval, dim, scale, start, eps, point = key
        trials = sorted(t for t, pair in per_trial.items() if set(pair) == {"SB", "LB"})
        row = {"bn_eval": bn_eval, "subspace_dim": dim, "subspace_scale": scale,
               "start": start, "eps": eps, "point": point, "trials": trials}
        for label, field in (("at_10", "phi_paper"), ("at_maxiter", "sharpness")):
            row[label] = paired_comparison([per_trial[t]["SB"][field] for t in trials],
                                           [per_trial[t]["LB"][field] for t in trials])
        row["iterations"] = {name: [per_trial[t][name]["iterations"] for t in trials]
                             for name in ("SB", "LB")}
        rows.append(row)
    rows.sort(key=lambda r: (r["point"], r["bn_eval"], r["subspace_dim"], r["subspace_scale"],
                             r["start"], -r["eps"]))
    header = ["point", "BN", "space", "start", "eps", "iterations", "SB phi", "LB phi",
              "LB > SB", "Wilcoxon p", "paired t p", "LB/SB [95 % CI]"]
    table = []
    counts = (("at_10", "10"),) + ((("at_maxiter", str(maxiter)),) if maxiter > 10 else ())
    for row in rows:
        for label, iterations in counts:
            c = row[label]
            space = "full" if row["subspace_dim"] == 0 else f"{row['subspace_dim']} {row['subspace_scale']}"
            table.append([row["point"], row["bn_eval"], space, row["start"], f"{row['eps']:g}",
                          iterations, _cell(c["sb"]), _cell(c["lb"]),
                          f"{c['lb_greater']}/{c['n']}", _p(c["wilcoxon"]), _p(c["paired_t"]),
                          _ratio(c)])
    text = reports.markdown_table(header, table)
    return rows, text + "\n"


def _cell(side):
    """mean ± std in significant digits: phi spans 1e-5 to 1e3 across settings."""
    if side["mean"] is None:
        return "–"
    return f"{side['mean']:.3g} ± {side['std']:.2g}"


def _p(test):
    return "–" if test is None or test["p_value"] is None else f"{test['p_value']:.3g}"


def _ratio(c):
    if c["ratio"] is None:
        return "–"
    interval = c["ratio_interval"]
    return f"{c['ratio']:.3g}" + (f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else "")


def run(workdir, *, maxiter=100, echo=print, report_name="sensitivity", **grid):
    """Measures the grid, writes ``<report_name>.json`` and ``.md`` in `workdir`."""
    workdir = pathlib.Path(workdir)
    measured = measure(workdir, maxiter=maxiter, echo=echo, **grid)
    rows, text = report(measured, maxiter=maxiter)
    io.write_json(workdir / f"{report_name}.json", {"grid": {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in grid.items()},
                                                "maxiter": maxiter, "rows": rows,
                                                "versions": io.versions()})
    io.write_text(workdir / f"{report_name}.md", text)
    echo(text)
    echo(f"wrote {workdir / report_name}.json and .md")
    return rows, text


def main(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    del argv  # cli.run refuses positional arguments
    if not FLAGS.workdir:
        raise UserError("--workdir is required: a trials work directory (trial*/sb.keras, lb.keras)")
    from keras_sharpness.sharpness_cli import parse_eps

    if FLAGS.maxiter < 10:
        raise UserError(f"--maxiter must be at least 10 (the paper's iterations), got {FLAGS.maxiter}")
    run(FLAGS.workdir, maxiter=FLAGS.maxiter, bn_evals=tuple(FLAGS.bn_evals),
        starts=tuple(FLAGS.starts), eps=tuple(parse_eps(FLAGS.eps)), spaces=tuple(FLAGS.spaces),
        points=tuple(FLAGS.points), seed=FLAGS.seed, batch_size=FLAGS.batch_size,
        num_samples=FLAGS.num_samples, report_name=FLAGS.report)


def define_flags():
    from absl import flags

    flags.DEFINE_string("workdir", None, "A trials work directory.")
    flags.DEFINE_list("bn_evals", ["batch", "moving"], "BatchNorm at evaluation.")
    flags.DEFINE_list("starts", ["zero", "corner"], "L-BFGS-B starts (zero, corner, random).")
    flags.DEFINE_list("eps", ["1e-3", "5e-4"], "Box scales.")
    flags.DEFINE_list("spaces", ["full", "100:gaussian", "100:normalized"],
                      "full, or P:SCALE for a random P-dim subspace (gaussian or normalized A).")
    flags.DEFINE_integer("maxiter", 100, "L-BFGS-B iterations (>= 10; phi after 10 is "
                         "read off the same run).")
    flags.DEFINE_list("points", ["kept", "last"], "kept: the best epoch; last: the last "
                      "iterate (where the run saved it).")
    flags.DEFINE_integer("seed", 0, "Seed of A and the random start.")
    flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f.")
    flags.DEFINE_integer("num_samples", None, "Seeded subset of the training set for f.")
    flags.DEFINE_string("report", "sensitivity", "Name of the report files in --workdir "
                        "(<report>.json, <report>.md); records are shared by all reports.")


if __name__ == "__main__":
    from keras_sharpness.cli import run as run_main

    define_flags()
    run_main(main)
