"""Benchmark: our SB/LB training and parametric sweep against plain Keras.

Measures, in one run on one machine:

* samples/s of `keras_sharpness.training.train_minimizer` (seeded order,
  the f pass over the training set that keeps the best epoch and stops the
  run, history, crash-safe backups, NaN check) against a plain ``model.fit``
  of the same model, batch size and arrays, for the SB and the LB batch
  size: the median epoch (the first, tracing, excluded) of `repeats` runs of
  each, alternated. Also split: the seconds inside the training steps (where
  the two do the same work) and the end-of-epoch extras.
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
flags.DEFINE_integer("epochs", 4, "Epochs per measurement (the first is warm-up).")
flags.DEFINE_integer("repeats", 2, "Alternated runs of ours and plain fit per batch size.")
flags.DEFINE_integer("num_points", 25, "Points of the sweep.")
flags.DEFINE_integer("eval_batch_size", 1000, "Evaluation batch size.")
flags.DEFINE_integer("seed", 0, "Seed.")
FLAGS = flags.FLAGS


def _epoch_timer():
    """A callback recording, per epoch, its total seconds and those inside steps."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.totals, self.steps = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.in_steps = time.perf_counter(), 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.step_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.in_steps += time.perf_counter() - self.step_start

        def on_epoch_end(self, epoch, logs=None):
            self.totals.append(time.perf_counter() - self.start)
            self.steps.append(self.in_steps)

    return EpochTimer()


def _plain_fit(network, info, x, y, batch_size, epochs, x0):
    """Per-epoch (total, in steps) seconds of a plain ``model.fit`` (epoch 1 dropped)."""
    import keras

    from keras_sharpness.networks import build_network

    model = build_network(network, info.input_shape, info.num_classes)
    model.set_weights(x0.get_weights())
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    timer = _epoch_timer()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[timer])
    return timer.totals[1:], timer.steps[1:]


def _our_fit(network, info, x, y, batch_size, epochs, x0, seed):
    """Per-epoch (total, in steps) seconds of `train_minimizer` (epoch 1 dropped).

    The timer is the last callback, so an epoch's total includes the f pass,
    the history and the crash-safe backup that end it.
    """
    from keras_sharpness import training

    timer = _epoch_timer()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        training.train_minimizer(
            x0, network, info, x, y, batch_size=batch_size, out_path=tmp / "m.keras",
            history_path=tmp / "h.json", backup_dir=tmp / "b", epochs=epochs,
            seed=seed, verbose=0, callbacks=[timer])
    return timer.totals[1:], timer.steps[1:]


def _f_pass_seconds(network, info, x, y, x0, repeats=5):
    """Median seconds of the per-epoch f + accuracy pass over the training set."""
    import numpy as np

    from keras_sharpness.objective import TrainingLoss

    objective = TrainingLoss(x0, x, y, bn_eval="batch", batch_size=1000)
    w, fixed = objective.initial_point(), objective.non_trainable_values()
    objective.loss_and_accuracy(w, fixed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        objective.loss_and_accuracy(w, fixed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


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
    import numpy as np

    f_pass = _f_pass_seconds(network, info, data.x_train, data.y_train, x0)
    for label, batch in (("SB", FLAGS.sb_batch_size), ("LB", min(FLAGS.lb_batch_size, n))):
        ours, plain = ([], []), ([], [])
        for _ in range(FLAGS.repeats):  # alternated, so that drift in the machine's load hits both
            for store, times in ((ours, _our_fit(network, info, data.x_train, data.y_train,
                                                 batch, FLAGS.epochs, x0, FLAGS.seed)),
                                 (plain, _plain_fit(network, info, data.x_train, data.y_train,
                                                    batch, FLAGS.epochs, x0))):
                store[0].extend(times[0])
                store[1].extend(times[1])
        total, steps = (float(np.median(t)) for t in ours)
        plain_total, plain_steps = (float(np.median(t)) for t in plain)
        print(f"{label} batch {batch}: per epoch (median) ours {total:.3f} s, plain fit "
              f"{plain_total:.3f} s: ratio ours/plain {plain_total / total:.2f} in samples/s "
              f"(goal >= 1.0)")
        print(f"  inside the training steps: ours {steps:.3f} s, plain {plain_steps:.3f} s "
              f"(ratio {plain_steps / steps:.2f}); ours' end of epoch {total - steps:.3f} s, "
              f"plain's {plain_total - plain_steps:.3f} s; of ours', the f + accuracy pass over "
              f"the training set {f_pass:.3f} s, the rest (history, crash-safe backup) "
              f"{max(0.0, total - steps - f_pass):.3f} s")

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
