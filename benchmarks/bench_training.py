"""Benchmark: our SB/LB training and parametric sweep against plain Keras.

Measures, in one run on one machine:

* samples/s of `keras_sharpness.training.train_minimizer` (seeded order,
  per-epoch backups, history, NaN check) against a plain ``model.fit`` of the
  same model, batch size and arrays, for the SB and the LB batch size. The
  first epoch (tracing) is excluded; the mean of the remaining epochs counts.
* the wall time of the ``num_points`` parametric sweep (train + test, BN batch
  statistics, through `TrainingLoss`) against the original script's loop:
  ``set_weights`` + ``model.evaluate`` on train and test at each point.

    python benchmarks/bench_training.py --network=F1 \\
        --dataset=npz:../shared/data/mnist-t10k-split.npz
"""

import pathlib
import sys
import tempfile
import time

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()

flags.DEFINE_string("network", "F1", "Network.")
flags.DEFINE_string("dataset", "digits", "Data source.")
flags.DEFINE_integer("sb_batch_size", 256, "SB batch.")
flags.DEFINE_integer("lb_batch_size", 5000, "LB batch (capped at the training set).")
flags.DEFINE_integer("epochs", 3, "Epochs per measurement (the first is warm-up).")
flags.DEFINE_integer("num_points", 25, "Points of the sweep.")
flags.DEFINE_integer("eval_batch_size", 1000, "Evaluation batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")
FLAGS = flags.FLAGS


def _plain_fit_rate(network, info, x, y, batch_size, epochs, x0):
    import keras
    import numpy as np

    from keras_sharpness.networks import build_network

    model = build_network(network, info.input_shape, info.num_classes)
    model.set_weights(x0.get_weights())
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[Timer()])
    return len(x) / float(np.mean(times[1:]))


def _our_fit_rate(network, info, x, y, batch_size, epochs, x0, seed):
    import numpy as np

    from keras_sharpness import training

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        training.train_minimizer(
            x0, network, info, x, y, batch_size=batch_size, out_path=tmp / "m.keras",
            history_path=tmp / "h.json", backup_dir=tmp / "b", epochs=epochs,
            seed=seed, verbose=0)
        seconds = [e["seconds"] for e in training.read_history(tmp / "h.json")]
    return len(x) / float(np.mean(seconds[1:]))


def _plain_sweep_seconds(sb, lb, data, num_points, batch_size):
    import keras
    import numpy as np

    model = keras.models.clone_model(sb)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    w_sb = [np.asarray(v) for v in sb.trainable_variables]
    w_lb = [np.asarray(v) for v in lb.trainable_variables]
    start = time.perf_counter()
    for alpha in np.linspace(-1, 2, num_points):
        for var, a, b in zip(model.trainable_variables, w_sb, w_lb):
            var.assign(alpha * b + (1 - alpha) * a)
        model.evaluate(data.x_train, data.y_train, batch_size=batch_size, verbose=0)
        model.evaluate(data.x_test, data.y_test, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def main(argv):
    del argv
    import keras

    from keras_sharpness import data as data_lib
    from keras_sharpness import io, parametric, training
    from keras_sharpness.networks import build_network, check_network

    network = check_network(FLAGS.network)
    training.make_deterministic(FLAGS.seed)
    data = data_lib.load_arrays(FLAGS.dataset, seed=FLAGS.seed)
    info, n = data.info, data.info.train_size
    keras.utils.set_random_seed(FLAGS.seed)
    x0 = build_network(network, info.input_shape, info.num_classes)
    print(f"{network} on {FLAGS.dataset}: {n} train / {info.test_size} test samples, "
          f"{FLAGS.epochs} epochs (first excluded); TF {io.versions()['tensorflow']}, "
          f"Keras {io.versions()['keras']}")
    for label, batch in (("SB", FLAGS.sb_batch_size), ("LB", min(FLAGS.lb_batch_size, n))):
        ours = _our_fit_rate(network, info, data.x_train, data.y_train, batch,
                             FLAGS.epochs, x0, FLAGS.seed)
        plain = _plain_fit_rate(network, info, data.x_train, data.y_train, batch,
                                FLAGS.epochs, x0)
        print(f"{label} batch {batch}: ours {ours:,.0f} samples/s, plain fit "
              f"{plain:,.0f} samples/s, ratio ours/plain {ours / plain:.2f}")

    keras.utils.set_random_seed(FLAGS.seed + 1)
    other = build_network(network, info.input_shape, info.num_classes)
    result = parametric.parametric_curve(x0, other, data, num_points=FLAGS.num_points,
                                         batch_size=FLAGS.eval_batch_size)
    plain = _plain_sweep_seconds(x0, other, data, FLAGS.num_points, FLAGS.eval_batch_size)
    print(f"sweep of {FLAGS.num_points} points (train + test): ours {result.seconds:.2f} s, "
          f"plain set_weights + evaluate {plain:.2f} s, ratio ours/plain "
          f"{result.seconds / plain:.2f}")


if __name__ == "__main__":
    cli.run(main)
