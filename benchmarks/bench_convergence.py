"""Benchmark: what the per-epoch training-set f costs an SB epoch.

`keras_sharpness.convergence.TrainingSetMonitor` evaluates f and the accuracy
over the whole training set after every epoch (one forward pass, BN batch
statistics, fixed batches of 1000). This measures, in one run, the wall time
of an SB epoch of ``train_minimizer`` without that pass (plain ``model.fit``
of the same network, batch size and data) and of the pass itself, alternating
the two ``--repeats`` times so that load from other jobs falls on both, and
prints the ratio (goal: <= 0.35).

    python benchmarks/bench_convergence.py --network=F1 \\
        --dataset=npz:../shared/data/mnist-t10k-split.npz
    python benchmarks/bench_convergence.py --network=C1 \\
        --dataset=folder:../shared/data/cifar10-jpeg.tar.gz --train_size=10000
"""

import pathlib
import sys
import time

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()

flags.DEFINE_string("network", "F1", "Network.")
flags.DEFINE_string("dataset", "digits", "Data source.")
flags.DEFINE_integer("train_size", None, "Seeded subset of the training set.")
flags.DEFINE_integer("sb_batch_size", 256, "SB batch.")
flags.DEFINE_integer("eval_batch_size", 1000, "Batch size of f.")
flags.DEFINE_integer("repeats", 3, "Timed (epoch, f pass) pairs after one warm-up pair.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras
    import numpy as np

    from keras_sharpness import data as data_lib
    from keras_sharpness.convergence import TrainingSetMonitor
    from keras_sharpness.networks import build_network
    from keras_sharpness.objective import TrainingLoss

    data = data_lib.load_arrays(FLAGS.dataset, train_size=FLAGS.train_size)
    keras.utils.set_random_seed(0)
    model = build_network(FLAGS.network, data.info.input_shape, data.info.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    objective = TrainingLoss(model, data.x_train, data.y_train, bn_eval="batch",
                             batch_size=FLAGS.eval_batch_size)
    monitor = TrainingSetMonitor(objective, model, "/dev/null", history=None,
                                 until_converged=False, patience=1, min_delta=0.0)
    epochs, passes = [], []
    for repeat in range(FLAGS.repeats + 1):
        start = time.perf_counter()
        model.fit(data.x_train, data.y_train, batch_size=FLAGS.sb_batch_size, epochs=1,
                  shuffle=True, verbose=0)
        epoch_seconds = time.perf_counter() - start
        start = time.perf_counter()
        w, fixed = monitor.point()
        objective.loss_and_accuracy(w, fixed)
        pass_seconds = time.perf_counter() - start
        if repeat:  # the first pair traces
            epochs.append(epoch_seconds)
            passes.append(pass_seconds)
    epoch, f_pass = float(np.median(epochs)), float(np.median(passes))
    n = data.info.train_size
    print(f"{FLAGS.network} on {n} training samples, SB batch {FLAGS.sb_batch_size}, "
          f"median of {FLAGS.repeats}:")
    print(f"  SB epoch (plain model.fit)        {epoch:8.2f} s  ({n / epoch:,.0f} samples/s)")
    print(f"  training-set f + accuracy pass    {f_pass:8.2f} s  ({n / f_pass:,.0f} samples/s)")
    print(f"  added to an SB epoch              {f_pass / epoch:8.1%}  (goal <= 35 %)")


if __name__ == "__main__":
    cli.run(main)
