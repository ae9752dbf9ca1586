"""Figure 5: LB training warm-started from SB iterates ("piggybacking").

SB (Adam, ``--sb_batch_size``) trains for ``--sb_epochs`` from x0, keeping
every ``--every``-th epoch's iterate; from each iterate LB trains for
``--lb_epochs``. Plotted against the SB epoch it started from: the SB
iterate's test accuracy, the LB solution's test accuracy and its sharpness.

    python -m keras_sharpness.experiments.warm_start -n F1 \
        --dataset=npz:../shared/data/mnist-t10k-split.npz --sb_epochs=100 --lb_epochs=100 --every=1

Writes ``<workdir>/warm_start.json`` and ``<figures_dir>/<network>_warm_start.{pdf,png}``.
"""

import functools
import pathlib
import time

from keras_sharpness import io, migrate
from keras_sharpness.experiments import figures
from keras_sharpness.experiments.batch_sweep import phi_label
from keras_sharpness.experiments.measure import SaveEvery, experiment_dir, train_or_reuse
from keras_sharpness.measure import Subject, accuracy, measure_model


def run(data, network, workdir, *, dataset, sb_epochs, lb_epochs, every, settings,
        sb_batch_size, lb_batch_size, figures_dir=None, seed=0, verbose=1):
    """Runs (or resumes) the warm-start experiment; returns the JSON-ready dict."""
    from keras_sharpness.training import initial_point

    workdir = pathlib.Path(workdir)
    started = time.time()
    identity = {"network": network, "dataset": dataset, "seed": seed, "sb_epochs": sb_epochs,
                "lb_epochs": lb_epochs, "every": every, "sb_batch_size": sb_batch_size,
                "lb_batch_size": lb_batch_size}
    with experiment_dir(workdir, "warm_start", identity) as run:
        x0 = initial_point(run.model("x0"), network, data.info, seed=seed,
                           bn_eval=settings.bn_eval)
        iterates = workdir / "sb_iterates"
        save = SaveEvery(every, iterates / "epoch{epoch:03d}.keras", first=True)
        train_or_reuse(x0, network, data, run.model("sb"), batch_size=sb_batch_size,
                       seed=seed, bn_eval=settings.bn_eval, training_kwargs={"epochs": sb_epochs},
                       run_name="SB", callbacks=(save,), verbose=verbose)
        starts = list(range(0, sb_epochs + 1, every))
        points = []
        echo = functools.partial(print, flush=True) if verbose else None
        context = {"network": network, "dataset": dataset}
        for epoch in starts:
            sb_path = iterates / f"epoch{epoch:03d}.keras"
            sb = Subject(f"sb_epoch{epoch:03d}", io.load_model(sb_path), sb_path)
            lb_path = run.model(f"lb_from{epoch:03d}")
            lb_model = train_or_reuse(sb.model, network, data, lb_path,
                                      batch_size=lb_batch_size, seed=seed,
                                      bn_eval=settings.bn_eval,
                                      training_kwargs={"epochs": lb_epochs},
                                      run_name=f"LB from SB epoch {epoch}", verbose=verbose)
            lb = Subject(lb_path.stem, lb_model, lb_path)
            # Measured by a version that kept a memo per point: its records are reused.
            migrate.adopt_memo(workdir / f"from{epoch:03d}_measurements.json",
                               {"epoch": epoch, "settings": settings.to_dict()},
                               {"sb": sb, "lb": lb}, settings, run.records_path, **context)
            measured = {"sb": accuracy(sb, data, settings, run.records_path, **context),
                        "lb": measure_model(lb, data, settings, run.records_path, echo=echo,
                                            **context)}
            points.append({"sb_epoch": epoch, **measured})
            if verbose:
                print(f"from SB epoch {epoch}: SB test {100 * measured['sb']['test_acc']:.2f}%, "
                      f"LB test {100 * measured['lb']['test_acc']:.2f}%, "
                      f"LB phi {measured['lb']['sharpness'][0]['sharpness']:.4g}", flush=True)
        result = {"network": network, "dataset": dataset, "seed": seed, "sb_epochs": sb_epochs,
                  "lb_epochs": lb_epochs, "every": every, "sb_batch_size": sb_batch_size,
                  "lb_batch_size": lb_batch_size, "start_epochs": starts,
                  "sb_test_acc": [p["sb"]["test_acc"] for p in points],
                  "lb_test_acc": [p["lb"]["test_acc"] for p in points],
                  "lb_sharpness": [p["lb"]["sharpness"][0]["sharpness"] for p in points],
                  "points": points, "settings": settings.to_dict(),
                  "seconds": time.time() - started, "versions": io.versions()}
        io.write_json(workdir / "warm_start.json", result)
        result["figures"] = [str(p) for p in figures.plot_warm_start(
            starts, result["sb_test_acc"], result["lb_test_acc"], result["lb_sharpness"],
            pathlib.Path(figures_dir or workdir) / f"{network}_warm_start",
            title=f"{network}: LB warm-started from SB (Figure 5)",
            phi_label=phi_label(settings))]
        return result


def main(argv):
    from absl import flags

    from keras_sharpness.errors import UserError
    from keras_sharpness.experiments.flags import (
        common_from_flags,
        resolved_batch_sizes,
        run_arguments,
    )

    del argv
    FLAGS = flags.FLAGS
    common = common_from_flags(FLAGS, "warm_start")
    if FLAGS.every < 1 or FLAGS.sb_epochs < 1 or FLAGS.lb_epochs < 1:
        raise UserError("--every, --sb_epochs and --lb_epochs must be at least 1")
    sb_batch_size, lb_batch_size = resolved_batch_sizes(common)
    result = run(sb_epochs=FLAGS.sb_epochs, lb_epochs=FLAGS.lb_epochs, every=FLAGS.every,
                 sb_batch_size=sb_batch_size, lb_batch_size=lb_batch_size,
                 **run_arguments(common, FLAGS))
    print(f"wrote {common['workdir'] / 'warm_start.json'} and {', '.join(result['figures'])}")


def define_flags(flags):
    flags.DEFINE_integer("sb_epochs", 100, "SB epochs (paper: 100).")
    flags.DEFINE_integer("lb_epochs", 100, "LB epochs from each iterate (paper: 100).")
    flags.DEFINE_integer("every", 1, "Keep every k-th SB epoch's iterate (paper: 1).")


if __name__ == "__main__":
    from keras_sharpness.experiments.flags import start

    start(main, define_flags)
