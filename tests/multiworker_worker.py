"""One process of tests/test_multiworker.py: trains F1's LB run on small
synthetic data with `train_minimizer` as one worker of a
`MultiWorkerMirroredStrategy` (TF_CONFIG set by the test); `main` with
``default`` trains the same alone (the test calls it in its own process).

    python multiworker_worker.py WORKDIR multiworker [KILL_EPOCH KILL_BATCH]
    python multiworker_worker.py WORKDIR measure

With a kill point, this process kills itself (SIGKILL) at that batch of
that epoch (both from 1), as a crashed machine would. Training writes
nothing itself: what lands in WORKDIR is what the library writes; every
file the library writes is also listed in ``WORKDIR/writes/<pid>.txt``
(through `keras_sharpness.io.atomic_path`, which every write goes through),
so the test can tell who wrote what.

``measure`` computes f, grad f, a Hessian-vector product, Metric 2.1, the
largest Ritz value of a Lanczos run (SLQ) and a Hutchinson trace with the objective
spread over the workers and on this process alone, and writes the largest
relative differences to ``WORKDIR/measure-<task>.json``.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile

import keras
import numpy as np

from keras_sharpness import io

from keras_sharpness.data import DataInfo
from keras_sharpness.training import make_strategy, train_minimizer

SAMPLES, FEATURES, CLASSES, BATCH, EPOCHS = 201, 32, 10, 64, 3


class KillAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch + 1) == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def log_writes(folder):
    """Lists in `folder`/<pid>.txt every path the library writes: every file
    (`io.atomic_path`, which every write goes through), and every folder made,
    file or folder removed and temporary file made in `folder`'s parent."""
    os.makedirs(folder, exist_ok=True)
    root = pathlib.Path(folder).resolve().parent

    def log(path):
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "a") as out:
            out.write(f"{path}\n")

    original = io.atomic_path

    @contextlib.contextmanager
    def logged(path):
        log(path)
        with original(path) as tmp:
            yield tmp

    io.atomic_path = logged

    def watch(owner, name, path_of):
        method = getattr(owner, name)

        def watched(*args, **kwargs):
            path = pathlib.Path(path_of(*args, **kwargs)).resolve()
            if (path == root or root in path.parents) and pathlib.Path(folder) not in (
                    path, *path.parents):
                log(path)
            return method(*args, **kwargs)

        setattr(owner, name, watched)

    for name in ("mkdir", "rmdir", "unlink"):
        watch(pathlib.Path, name, lambda self, *a, **k: self)
    watch(shutil, "rmtree", lambda path, *a, **k: path)
    watch(tempfile, "TemporaryFile", lambda *a, dir=None, **k: dir or "/")


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, SAMPLES)


def x0_model():
    from keras_sharpness.networks import build_network

    keras.utils.set_random_seed(0)
    return build_network("F1", (FEATURES,), CLASSES)


def measure(workdir, strategy):
    from keras_sharpness import hessian, metric
    from keras_sharpness.objective import TrainingLoss

    x, y = data()
    model = x0_model()
    # 201 samples in batches of 50: 5 batches, the fifth of 1 sample, in
    # groups of 2 (one per replica), the last group short of a batch.
    one = TrainingLoss(model, x, y, batch_size=50)
    spread = TrainingLoss(model, x, y, batch_size=50, strategy=strategy)
    w = one.initial_point() + 0.01
    v = np.random.default_rng(1).standard_normal(one.num_params)
    pairs = {
        "value": [f.value(w) for f in (one, spread)],
        "gradient": [f.gradient(w) for f in (one, spread)],
        "hvp": [f.hessian_vector_product(w, v) for f in (one, spread)],
        "phi": [metric.sharpness(f, eps=1e-3, maxiter=3).phi for f in (one, spread)],
        # Lanczos (SLQ, 6 steps): its largest Ritz value.
        "lanczos": [max(hessian.spectral_density(f, lanczos_steps=6).nodes[0])
                    for f in (one, spread)],
        "trace": [hessian.hessian_trace(f, num_probes=2, min_probes=2).trace
                  for f in (one, spread)],
    }
    out = {"replicas": strategy.num_replicas_in_sync}
    for name, (a, b) in pairs.items():
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        out[name] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
    # The one sweep of the commands, spread over the workers: the chief writes.
    from keras_sharpness.data import ArrayData
    from keras_sharpness.measure import MeasureSettings, sweep

    log_writes(os.path.join(workdir, "writes"))
    settings = MeasureSettings(eval_batch_size=50, measures=("landscape",), landscape_points=3)
    arrays = ArrayData.from_arrays(x, y, x[:10], y[:10], num_classes=CLASSES)
    sweep([("x0", model)], arrays, settings, os.path.join(workdir, "sharpness.json"),
          strategy=strategy, echo=None)
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    with open(os.path.join(workdir, f"measure-{task}.json"), "w") as f:
        json.dump(out, f)


def main(workdir, mode, kill=None):
    """`mode`: ``default`` (one process; the test calls this in its own
    process, where nothing is logged), ``multiworker`` or ``measure``."""
    strategy = make_strategy("default" if mode == "default" else "multiworker")
    if mode == "measure":
        return measure(workdir, strategy)
    if mode != "default":
        log_writes(os.path.join(workdir, "writes"))
    x, y = data()
    info = DataInfo("synthetic", (FEATURES,), CLASSES, SAMPLES, 0)
    x0 = x0_model()
    train_minimizer(
        x0, "F1", info, x, y, batch_size=BATCH, out_path=os.path.join(workdir, "lb.keras"),
        history_path=os.path.join(workdir, "lb_history.json"),
        backup_dir=os.path.join(workdir, "backup"), run_name="LB", epochs=EPOCHS,
        strategy=strategy, verbose=0, eval_batch_size=SAMPLES,
        callbacks=[KillAt(*kill)] if kill else [])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], tuple(int(a) for a in sys.argv[3:5]) or None)
