"""Cost of a SAM / ASAM step relative to a plain Adam step, on F1.

    python benchmarks/bench_sam.py [--data ../shared/data/mnist-t10k-split.npz]

F1 (seed 0, batch-statistics BN) on ``--num_samples`` MNIST training images
(synthetic 28x28 images when the data file is absent), batch ``--batch_size``,
Adam in all three: the plain network, `keras_sharpness.sam.sam_model` with
SAM and with ASAM. Each step is one ``train_on_batch`` (it returns the logs,
so the step has finished). The variants take turns: every round runs
``--steps`` steps of each, one variant after the other, so a busy machine
slows all three alike; the time per step is the median over ``--rounds``
rounds, after ``--warm_up`` untimed rounds (tracing), and the ratio to Adam
is the median of the rounds' ratios. A SAM step does two
forward and two backward passes, so about 2x is the floor; goal <= 2.1x.
"""

import pathlib
import statistics
import sys
import time

from absl import flags
from bench_common import SHARED_MNIST

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()


flags.DEFINE_string("data", str(SHARED_MNIST), "MNIST-like npz; synthetic data when absent.")
flags.DEFINE_integer("num_samples", 1024, "Training images (cycled through in batches).")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_float("rho", 0.05, "SAM radius (ASAM uses 10 rho, Kwon et al.'s scale).")
flags.DEFINE_integer("steps", 4, "Steps per variant per round.")
flags.DEFINE_integer("rounds", 25, "Timed rounds (median).")
flags.DEFINE_integer("warm_up", 2, "Untimed rounds first.")
flags.DEFINE_integer("seed", 0, "Seed of the network and the synthetic data.")
flags.DEFINE_string("output", None, "Also write the figures as JSON here.")
FLAGS = flags.FLAGS


def load_images(path, num_samples, seed):
    """``num_samples`` images in [0, 1] (n, 28, 28, 1) and labels, and where from."""
    import numpy as np

    path = pathlib.Path(path)
    if path.is_file():
        with np.load(path) as data:
            x, y = data["x_train"][:num_samples], data["y_train"][:num_samples]
        source = str(path)
    else:
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (num_samples, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, num_samples)
        source = "synthetic"
    return (x.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0, y.astype(np.int64), source)


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from keras_sharpness import io, sam
    from keras_sharpness.networks import build_network

    x, y, source = load_images(FLAGS.data, FLAGS.num_samples, FLAGS.seed)
    b = FLAGS.batch_size
    batches = [(tf.constant(x[i:i + b]), tf.constant(y[i:i + b]))
               for i in range(0, len(x) - b + 1, b)]
    keras.utils.set_random_seed(FLAGS.seed)
    x0 = build_network("F1", (28, 28, 1), 10).get_weights()

    def compiled(wrap):
        network = build_network("F1", (28, 28, 1), 10)
        network.set_weights(x0)
        model = wrap(network)
        model.compile(optimizer=keras.optimizers.Adam(),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    variants = {
        "adam": compiled(lambda net: net),
        "sam": compiled(lambda net: sam.sam_model(net, FLAGS.rho)),
        "asam": compiled(lambda net: sam.sam_model(net, 10 * FLAGS.rho, adaptive=True)),
    }
    per_step = {name: [] for name in variants}
    step = 0
    for round_ in range(FLAGS.warm_up + FLAGS.rounds):
        for name, model in variants.items():
            start = time.perf_counter()
            for i in range(FLAGS.steps):
                model.train_on_batch(*batches[(step + i) % len(batches)])
            if round_ >= FLAGS.warm_up:
                per_step[name].append((time.perf_counter() - start) / FLAGS.steps)
        step += FLAGS.steps
    median = {name: statistics.median(times) for name, times in per_step.items()}
    # Paired: each round's ratio, then the median (load that changes between
    # rounds cancels out).
    ratios = {name: statistics.median(t / a for t, a in zip(per_step[name], per_step["adam"]))
              for name in ("sam", "asam")}
    versions = io.versions()
    print(f"F1, {len(x)} images ({source}), batch {b}, {FLAGS.rounds} rounds x "
          f"{FLAGS.steps} steps; TF {versions['tensorflow']}, Keras {versions['keras']}")
    for name in variants:
        spread = f"[{min(per_step[name]) * 1e3:.1f}, {max(per_step[name]) * 1e3:.1f}]"
        extra = f"  ratio {ratios[name]:.2f}x Adam" if name in ratios else ""
        print(f"{name:>5}: {median[name] * 1e3:7.1f} ms/step (min, max {spread}){extra}")
    print(f"SAM / Adam {ratios['sam']:.2f} (goal <= 2.1): "
          f"{'ok' if ratios['sam'] <= 2.1 else 'over'}")
    if FLAGS.output:
        io.write_json(FLAGS.output, {
            "flags": {k: getattr(FLAGS, k) for k in ("data", "num_samples", "batch_size", "rho",
                                                     "steps", "rounds", "warm_up", "seed")},
            "source": source, "seconds_per_step": median, "ratios": ratios,
            "all_seconds_per_step": per_step, "versions": versions})


if __name__ == "__main__":
    cli.run(main)
