"""F1 in keras_sharpness against the same network in PyTorch, side by side (issue 13).

    pip install torch
    python benchmarks/pytorch_peer.py [--data ../shared/data/mnist-t10k-split.npz]

Not part of the test suite (it needs PyTorch). On the same data (the 8,000
MNIST training images of the shared split, or synthetic images when absent)
and the same F1 (Flatten, 5 x [Dense 512, BatchNorm, ReLU], Dense 10 logits),
both on the CPU with the same number of threads, it times:

* **training**: one epoch of Adam at ``--batch_size`` after a warm-up epoch,
  as samples per second: a plain Keras ``fit`` of the package's F1, and a
  plain PyTorch loop (``model.train()``, ``optimizer.zero_grad``, backward,
  step);
* **full-data loss and gradient** (what every sharpness measure calls):
  `keras_sharpness.objective.TrainingLoss.value_and_gradient` with batch
  statistics in fixed batches of ``--eval_batch_size`` (the paper's
  ``mode=2`` f), against PyTorch in ``train()`` mode over the same batches
  (batch statistics), summing the losses and accumulating the gradients.

The PyTorch side runs in a child process: ``torch`` and TensorFlow share a
process badly (``torch.func`` crashes there). Prints one line per
measurement and the ratios (PyTorch time / ours: above 1 means ours is
faster).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from bench_common import SHARED_MNIST


flags.DEFINE_string("data", str(SHARED_MNIST), "MNIST npz (keras mnist.npz keys).")
flags.DEFINE_integer("batch_size", 256, "Training batch.")
flags.DEFINE_integer("eval_batch_size", 1000, "Fixed batches of the full-data f.")
flags.DEFINE_integer("repeats", 3, "Timed full-data gradients (median).")
flags.DEFINE_integer("threads", 2, "CPU threads of each framework.")
flags.DEFINE_bool("torch_child", False, "Internal: run the PyTorch side, print JSON.")
FLAGS = flags.FLAGS


def load(path):
    if pathlib.Path(path).is_file():
        with np.load(path) as d:
            x, y = d["x_train"], d["y_train"]
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (8000, 28, 28)), rng.integers(0, 10, 8000)
    return (x.astype(np.float32) / 255.0).reshape(len(x), 28, 28, 1), y.astype(np.int64)


def torch_side(x, y):
    import torch

    torch.set_num_threads(FLAGS.threads)
    torch.manual_seed(0)
    layers, width = [torch.nn.Flatten()], 28 * 28
    for _ in range(5):
        layers += [torch.nn.Linear(width, 512), torch.nn.BatchNorm1d(512), torch.nn.ReLU()]
        width = 512
    model = torch.nn.Sequential(*layers, torch.nn.Linear(512, 10))
    xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        model.train()
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), FLAGS.batch_size):
            index = order[start:start + FLAGS.batch_size]
            optimizer.zero_grad()
            loss_fn(model(xt[index]), yt[index]).backward()
            optimizer.step()

    epoch()
    t = time.perf_counter()
    epoch()
    train = time.perf_counter() - t
    total = torch.nn.CrossEntropyLoss(reduction="sum")

    def full_gradient():
        model.train()  # batch statistics, as the paper's f
        model.zero_grad()
        value = 0.0
        for start in range(0, len(xt), FLAGS.eval_batch_size):
            loss = total(model(xt[start:start + FLAGS.eval_batch_size]),
                         yt[start:start + FLAGS.eval_batch_size])
            loss.backward()
            value += float(loss)
        return value / len(xt)

    full_gradient()
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        full_gradient()
        times.append(time.perf_counter() - t)
    return {"train_samples_per_s": len(xt) / train, "full_gradient_s": float(np.median(times))}


def main(argv):
    del argv
    x, y = load(FLAGS.data)
    if FLAGS.torch_child:
        print(json.dumps(torch_side(x, y)))
        return
    child = subprocess.run([sys.executable, __file__, "--torch_child", f"--data={FLAGS.data}",
                            f"--batch_size={FLAGS.batch_size}",
                            f"--eval_batch_size={FLAGS.eval_batch_size}",
                            f"--repeats={FLAGS.repeats}", f"--threads={FLAGS.threads}"],
                           capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"the PyTorch side failed (pip install torch?):\n{child.stderr[-1500:]}")
    theirs = json.loads(child.stdout.strip().splitlines()[-1])

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from keras_sharpness import cli

    cli.quiet_tensorflow()
    import keras
    import tensorflow as tf

    from keras_sharpness.networks import build_network
    from keras_sharpness.objective import TrainingLoss

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    keras.utils.set_random_seed(0)
    model = build_network("F1", (28, 28, 1), 10)
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0)
    t = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=1, verbose=0)
    ours_train = len(x) / (time.perf_counter() - t)
    f = TrainingLoss(model, x, y, bn_eval="batch", batch_size=FLAGS.eval_batch_size)
    w = f.initial_point()
    f.value_and_gradient(w)
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        f.value_and_gradient(w)
        times.append(time.perf_counter() - t)
    ours_gradient = float(np.median(times))
    print(f"F1, {len(x)} images, batch {FLAGS.batch_size}, {FLAGS.threads} threads each")
    print(f"training samples/s:   Keras fit {ours_train:9.0f}   PyTorch {theirs['train_samples_per_s']:9.0f}"
          f"   ours / PyTorch = {ours_train / theirs['train_samples_per_s']:.2f}")
    print(f"full-data loss+grad:  TrainingLoss {ours_gradient:.3f} s   PyTorch "
          f"{theirs['full_gradient_s']:.3f} s   PyTorch / ours = "
          f"{theirs['full_gradient_s'] / ours_gradient:.2f}")


if __name__ == "__main__":
    app.run(main)
