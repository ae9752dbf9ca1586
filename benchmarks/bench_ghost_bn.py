"""Benchmark: the cost of a training step with Ghost BatchNorm against plain BN.

For each network, one model with plain BatchNorm and its copy with Ghost BN
(`keras_sharpness.layers.with_ghost_batch_norm`, same weights) are compiled
with Adam and trained on the same random batch, fed as ``fit`` feeds it: Keras'
compiled train function on a `tf.data` iterator whose batch size is unknown
when traced (so Ghost BN takes its ``cond`` between g dividing B or not). After
warm-up (tracing), rounds of `steps` steps alternate between the two, so that
a background load slows both alike; the fastest round of each counts (the
least disturbed by other work). The target is a ratio ghost / plain <= 1.1.

By default TensorFlow's op determinism is on, as in
`keras_sharpness.training` (which also turns XLA off); ``--nodeterministic``
measures Keras' default, XLA-compiled steps.

    python benchmarks/bench_ghost_bn.py
    python benchmarks/bench_ghost_bn.py --cases=F1:512:128 --rounds=7
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()

flags.DEFINE_list("cases", ["F1:512:128", "C1:256:64"],
                  "network:batch:ghost batch, one per case.")
flags.DEFINE_integer("steps", 5, "Training steps per timing round.")
flags.DEFINE_integer("rounds", 7, "Timing rounds per model (alternating).")
flags.DEFINE_integer("warmup", 2, "Untimed steps per model first.")
flags.DEFINE_bool("deterministic", True, "Op determinism (no XLA), as training does.")
flags.DEFINE_integer("seed", 0, "Seed.")
FLAGS = flags.FLAGS

INPUT_SHAPE = {"F1": (28, 28, 1), "F2": (360,), "C1": (32, 32, 3), "C3": (32, 32, 3)}


def _compiled(model):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def step_seconds(network, batch_size, virtual_batch_size, *, steps, rounds, warmup, seed):
    """Seconds per training step (fastest round), plain BN and Ghost BN."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_sharpness.layers import with_ghost_batch_norm
    from keras_sharpness.networks import build_network

    keras.utils.set_random_seed(seed)
    plain = build_network(network, INPUT_SHAPE[network], 10)
    ghost = with_ghost_batch_norm(plain, virtual_batch_size)
    models = {"plain": _compiled(plain), "ghost": _compiled(ghost)}
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, *INPUT_SHAPE[network])).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    # Batches of unknown size (no drop_remainder), as `fit` and SeededBatches give.
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch_size)
    assert data.element_spec[0].shape[0] is None
    iterators = {}
    for name, model in models.items():
        model.make_train_function()
        iterators[name] = iter(data)
        for _ in range(warmup):
            model.train_function(iterators[name])
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                logs = model.train_function(iterators[name])
            float(logs["loss"])  # wait for the last step
            times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.min(values)) for name, values in times.items()}


def main(argv):
    del argv
    import tensorflow as tf

    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}, "
          f"deterministic={FLAGS.deterministic}, {FLAGS.rounds} rounds x {FLAGS.steps} steps")
    for case in FLAGS.cases:
        network, batch_size, ghost = case.split(":")
        seconds = step_seconds(network, int(batch_size), int(ghost), steps=FLAGS.steps,
                               rounds=FLAGS.rounds, warmup=FLAGS.warmup, seed=FLAGS.seed)
        ratio = seconds["ghost"] / seconds["plain"]
        print(f"{network} batch {batch_size} ghost {ghost}: plain {seconds['plain'] * 1e3:.1f} "
              f"ms/step, ghost {seconds['ghost'] * 1e3:.1f} ms/step, ratio {ratio:.3f} "
              f"({'within' if ratio <= 1.1 else 'ABOVE'} the 1.1x target)")


if __name__ == "__main__":
    app.run(main)
