"""Figure 6: sharpness against training cross-entropy along SB and LB training.

SB and LB train from one x0 for ``--epochs``; every ``--every``-th epoch's
iterate is measured (training cross-entropy, and Metric 2.1 through the one
sweep of `keras_sharpness.measure`: records labelled ``sb_epoch<E>`` /
``lb_epoch<E>`` in ``<workdir>/sharpness.json``).

    python -m keras_sharpness.experiments.trajectory -n F1 \
        --dataset=npz:../shared/data/mnist-t10k-split.npz --epochs=50 --every=5

Writes ``<workdir>/trajectory.json`` and ``<figures_dir>/<network>_trajectory.{pdf,png}``.
"""

import functools
import pathlib
import time

from keras_sharpness import io, migrate
from keras_sharpness.experiments import figures
from keras_sharpness.experiments.batch_sweep import phi_label
from keras_sharpness.experiments.measure import SaveEvery, experiment_dir, train_or_reuse
from keras_sharpness.measure import Subject, measure_model


def run(data, network, workdir, *, dataset, epochs, every, settings, sb_batch_size,
        lb_batch_size, figures_dir=None, seed=0, verbose=1):
    """Runs (or resumes) both trajectories; returns the JSON-ready dict."""
    from keras_sharpness.training import initial_point

    workdir = pathlib.Path(workdir)
    started = time.time()
    identity = {"network": network, "dataset": dataset, "seed": seed, "epochs": epochs,
                "every": every, "sb_batch_size": sb_batch_size, "lb_batch_size": lb_batch_size}
    with experiment_dir(workdir, "trajectory", identity) as run:
        x0 = initial_point(run.model("x0"), network, data.info, seed=seed,
                           bn_eval=settings.bn_eval)
        result = {"network": network, "dataset": dataset, "seed": seed, "epochs": epochs,
                  "every": every, "settings": settings.to_dict()}
        curves = {}
        echo = functools.partial(print, flush=True) if verbose else None
        context = {"network": network, "dataset": dataset}
        for name, batch in (("sb", sb_batch_size), ("lb", lb_batch_size)):
            iterates = workdir / f"{name}_iterates"
            save = SaveEvery(every, iterates / "epoch{epoch:03d}.keras")
            train_or_reuse(x0, network, data, run.model(name), batch_size=batch,
                           seed=seed, bn_eval=settings.bn_eval,
                           training_kwargs={"epochs": epochs}, run_name=name.upper(),
                           callbacks=(save,), verbose=verbose)
            points = []
            for epoch in range(every, epochs + 1, every):
                checkpoint = iterates / f"epoch{epoch:03d}.keras"
                subject = Subject(f"{name}_epoch{epoch:03d}", io.load_model(checkpoint),
                                  checkpoint)
                # Measured by a version that kept a memo per point: its records are reused.
                migrate.adopt_memo(workdir / f"{name}_epoch{epoch:03d}_measurements.json",
                                   {"epoch": epoch, "settings": settings.to_dict()},
                                   {None: subject}, settings, run.records_path, **context)
                measured = measure_model(subject, data, settings, run.records_path, echo=echo,
                                         **context)
                points.append({"epoch": epoch, **measured})
                if verbose:
                    print(f"{name.upper()} epoch {epoch}: train CE {measured['train_loss']:.4g}, "
                          f"phi {measured['sharpness'][0]['sharpness']:.4g}", flush=True)
            result[name] = {"batch_size": batch, "epochs": [p["epoch"] for p in points],
                            "train_loss": [p["train_loss"] for p in points],
                            "sharpness": [p["sharpness"][0]["sharpness"] for p in points],
                            "points": points}
            curves[f"{name.upper()} (batch {batch})"] = (
                result[name]["train_loss"], result[name]["sharpness"], result[name]["epochs"])
        result.update(seconds=time.time() - started, versions=io.versions())
        io.write_json(workdir / "trajectory.json", result)
        result["figures"] = [str(p) for p in figures.plot_trajectory(
            curves, pathlib.Path(figures_dir or workdir) / f"{network}_trajectory",
            title=f"{network}: sharpness along training (Figure 6)",
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
    common = common_from_flags(FLAGS, "trajectory")
    if FLAGS.every < 1 or FLAGS.epochs < FLAGS.every:
        raise UserError("--every must be at least 1 and at most --epochs")
    sb_batch_size, lb_batch_size = resolved_batch_sizes(common)
    result = run(epochs=FLAGS.epochs, every=FLAGS.every, sb_batch_size=sb_batch_size,
                 lb_batch_size=lb_batch_size, **run_arguments(common, FLAGS))
    print(f"wrote {common['workdir'] / 'trajectory.json'} and {', '.join(result['figures'])}")


def define_flags(flags):
    flags.DEFINE_integer("every", 5, "Measure every k-th epoch's iterate.")


if __name__ == "__main__":
    from keras_sharpness.experiments.flags import start

    start(main, define_flags)
