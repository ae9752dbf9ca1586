"""Figure 4: final test accuracy and sharpness against the batch size.

From one x0 (``--seed``), Adam trains a solution at every batch size in
``--batch_sizes`` (same epochs / convergence rule for all); each is measured
(test accuracy on the whole test split, Metric 2.1 on the training set through
the one sweep of `keras_sharpness.measure`, records labelled ``batch<B>`` in
``<workdir>/sharpness.json``).

    python -m keras_sharpness.experiments.batch_sweep -n F1 \
        --dataset=npz:../shared/data/mnist-t10k-split.npz \
        --batch_sizes=32,64,128,256,512,1024,2048 --until_converged

Writes ``<workdir>/batch_sweep.json`` and ``<figures_dir>/<network>_batch_sweep.{pdf,png}``.
"""

import functools
import pathlib
import time

from keras_sharpness import io, migrate
from keras_sharpness.experiments import figures
from keras_sharpness.experiments.measure import experiment_dir, train_or_reuse
from keras_sharpness.measure import Subject, measure_model


def phi_label(settings):
    p, e = settings.subspace_dims[0], settings.eps[0]
    space = "full space" if p == 0 else f"{p}-dim subspace"
    return f"sharpness, eps={e:g}, {space}"


def run(data, network, workdir, *, dataset, batch_sizes, settings, training_kwargs,
        figures_dir=None, seed=0, verbose=1):
    """Trains and measures one solution per batch size; writes JSON and the figure.

    Returns:
        The JSON-ready result dict.
    """
    from keras_sharpness.training import initial_point, resolve_batch_size

    workdir = pathlib.Path(workdir)
    started = time.time()
    sizes = [resolve_batch_size(b, data.info.train_size) for b in batch_sizes]
    with experiment_dir(workdir, "batch_sweep", {"network": network, "dataset": dataset,
                                                 "seed": seed, "training": training_kwargs}) as run:
        x0 = initial_point(run.model("x0"), network, data.info, seed=seed,
                           bn_eval=settings.bn_eval)
        points = []
        echo = functools.partial(print, flush=True) if verbose else None
        for batch in sizes:
            path = run.model(f"batch{batch}")
            model = train_or_reuse(x0, network, data, path,
                                   batch_size=batch, seed=seed, bn_eval=settings.bn_eval,
                                   training_kwargs=training_kwargs, run_name=f"B={batch}",
                                   verbose=verbose)
            subject = Subject(path.stem, model, path)
            # Measured by a version that kept a memo per point: its records are reused.
            migrate.adopt_memo(workdir / f"batch{batch}_measurements.json",
                               {"batch": batch, "settings": settings.to_dict()}, {None: subject},
                               settings, run.records_path, network=network, dataset=dataset)
            measured = measure_model(subject, data, settings, run.records_path,
                                     network=network, dataset=dataset, echo=echo)
            points.append({"batch_size": batch, **measured})
            if verbose:
                print(f"B={batch}: test acc {100 * measured['test_acc']:.2f}%, "
                      f"phi {measured['sharpness'][0]['sharpness']:.4g}", flush=True)
        result = {"network": network, "dataset": dataset, "seed": seed,
                  "batch_sizes": sizes,
                  "test_acc": [p["test_acc"] for p in points],
                  "train_acc": [p["train_acc"] for p in points],
                  "sharpness": [p["sharpness"][0]["sharpness"] for p in points],
                  "sharpness_setting": {"eps": settings.eps[0],
                                        "subspace_dim": settings.subspace_dims[0]},
                  "points": points, "settings": settings.to_dict(), "training": training_kwargs,
                  "seconds": time.time() - started, "versions": io.versions()}
        io.write_json(workdir / "batch_sweep.json", result)
        result["figures"] = [str(p) for p in figures.plot_batch_sweep(
            sizes, result["test_acc"], result["sharpness"],
            pathlib.Path(figures_dir or workdir) / f"{network}_batch_sweep",
            title=f"{network}: batch-size sweep (Figure 4)", phi_label=phi_label(settings))]
        return result


def main(argv):
    from absl import flags

    from keras_sharpness.errors import UserError
    from keras_sharpness.experiments.flags import common_from_flags, number, run_arguments

    del argv
    FLAGS = flags.FLAGS
    common = common_from_flags(FLAGS, "batch_sweep")
    sizes = [number(b, "batch_sizes") for b in FLAGS.batch_sizes]
    if not sizes:
        raise UserError("--batch_sizes needs at least one batch size")
    result = run(batch_sizes=sizes, training_kwargs=common["training_kwargs"],
                 **run_arguments(common, FLAGS))
    for b, a, p in zip(result["batch_sizes"], result["test_acc"], result["sharpness"]):
        print(f"batch {b:>6}: test accuracy {100 * a:6.2f}%  sharpness {p:.4g}")
    print(f"wrote {common['workdir'] / 'batch_sweep.json'} and {', '.join(result['figures'])}")


def define_flags(flags):
    flags.DEFINE_list("batch_sizes", ["32", "64", "128", "256", "512", "1024", "2048"],
                      "Batch sizes (counts, or fractions < 1 of the training set).")


if __name__ == "__main__":
    from keras_sharpness.experiments.flags import start

    start(main, define_flags)
