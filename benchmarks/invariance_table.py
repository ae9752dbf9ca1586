"""Which measures change under a Dinh et al. (2017) rescaling: the docs table.

    python benchmarks/invariance_table.py [--data ../shared/data/mnist-t10k-split.npz]

Trains F1 briefly on a seeded subset of MNIST (any function will do: the
question is whether a measure sees the function or its weights), builds the
rescaled twin (`keras_sharpness.reparam.rescale`: the same function, layers
scaled by alpha and 1/alpha, outputs checked equal) and takes every measure
of the registry (`keras_sharpness.measure.MEASURES`, as compute_sharpness
does) and Metric 2.1 on both, with the same seeds. Prints a Markdown table
(docs/measures.md) and writes it as JSON with ``--output``.
"""

import pathlib
import sys

from absl import app, flags
from bench_common import SHARED_MNIST

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()


flags.DEFINE_string("data", str(SHARED_MNIST), "MNIST npz (keras mnist.npz keys); digits "
                    "when absent.")
flags.DEFINE_integer("num_samples", 1000, "Training samples (f is evaluated on all of them).")
flags.DEFINE_integer("epochs", 5, "Adam epochs before measuring.")
flags.DEFINE_float("alpha", 10.0, "Rescaling factor.")
flags.DEFINE_enum("bn_eval", "batch", ["batch", "moving"], "BatchNorm at evaluation.")
flags.DEFINE_string("output", None, "Also write the rows as JSON here.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras

    from keras_sharpness import io, metric
    from keras_sharpness.data import load_arrays
    from keras_sharpness.measure import MEASURES, MeasureSettings, training_loss
    from keras_sharpness.networks import build_network
    from keras_sharpness.reparam import invariance

    source = f"npz:{FLAGS.data}" if pathlib.Path(FLAGS.data).is_file() else "digits"
    data = load_arrays(source, train_size=FLAGS.num_samples, test_size=200, seed=0)
    keras.utils.set_random_seed(0)
    model = build_network("F1", data.info.input_shape, data.info.num_classes,
                          bn_eval=FLAGS.bn_eval)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=FLAGS.epochs, verbose=0)
    settings = MeasureSettings(bn_eval=FLAGS.bn_eval, measures="all", hessian_trace_probes=50,
                               eval_batch_size=FLAGS.num_samples, seed=0)

    def registry(name):
        def take(objective):
            value, _, _ = MEASURES[name].take(objective, settings, None, lambda line: None)
            return float("nan") if value is None else value
        return take

    measures = {"f (control)": lambda f: f.value(f.initial_point()),
                "Metric 2.1, eps=1e-3 (sharpness)": lambda f: metric.sharpness(
                    f, eps=1e-3, maxiter=10).phi}
    measures.update({name: registry(name) for name, m in MEASURES.items()
                     if m.take is not None and name != "spectral_density"})
    rows = invariance(model, lambda m: training_loss(m, data.x_train, data.y_train, settings),
                      measures, alpha=FLAGS.alpha, seed=0, rtol=1e-3)
    print(f"F1, {FLAGS.num_samples} MNIST samples, {FLAGS.epochs} epochs, bn_eval="
          f"{FLAGS.bn_eval}, alpha={FLAGS.alpha:g}\n")
    print("| measure | before | after | relative change | invariant |")
    print("|---|---|---|---|---|")
    for row in rows:
        change = row["relative_change"]
        print(f"| {row['measure']} | {row['before']:.4g} | {row['after']:.4g} | "
              f"{'-' if change is None else format(change, '+.2e')} | "
              f"{'yes' if row['invariant'] else 'no'} |")
    if FLAGS.output:
        io.write_json(FLAGS.output, {"alpha": FLAGS.alpha, "bn_eval": FLAGS.bn_eval,
                                     "num_samples": FLAGS.num_samples, "rows": rows,
                                     "versions": io.versions()})


if __name__ == "__main__":
    app.run(main)
