"""Measurements shared by the experiments: accuracy and sharpness of a model."""

import dataclasses
import functools
import json
import pathlib

import numpy as np

from keras_sharpness import io


@dataclasses.dataclass
class MeasureSettings:
    """How a minimizer is measured; recorded with every number.

    Attributes:
        eps: box scales of Metric 2.1 (paper: 1e-3 and 5e-4).
        subspace_dims: 0 for the full space (Table 3), p for a random
            p-dimensional subspace (Table 4: 100).
        maxiter: L-BFGS-B iterations (paper: 10).
        start: L-BFGS-B start point (see `keras_sharpness.metric`).
        bn_eval: BatchNorm semantics at evaluation ("batch" = Keras 1 mode=2).
        eval_batch_size: fixed batch size of the objective.
        num_samples: sharpness on a seeded subset of the training set (None:
            all of it, as the paper). Accuracies always use whole splits.
        seed: seed of the random subspace and of the subset.
        subspace_scale: scale of a random A (``"gaussian"`` or ``"normalized"``).
    """

    eps: tuple = (1e-3, 5e-4)
    subspace_dims: tuple = (0, 100)
    maxiter: int = 10
    start: str = "zero"
    bn_eval: str = "batch"
    eval_batch_size: int = 1000
    num_samples: int = None
    seed: int = 0
    subspace_scale: str = "gaussian"

    #: Fields added after results were stored, with the value those results
    #: were made with: left out of `to_dict` at that value, so stored
    #: measurements keep matching their key.
    ADDED_LATER = {"subspace_scale": "gaussian"}

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["eps"] = [float(e) for e in self.eps]
        d["subspace_dims"] = [int(p) for p in self.subspace_dims]
        for key, old in self.ADDED_LATER.items():
            if d[key] == old:
                del d[key]
        return d


def _objective(model, x, y, settings, num_samples=None):
    from keras_sharpness.objective import TrainingLoss

    return TrainingLoss(model, x, y, bn_eval=settings.bn_eval,
                        batch_size=settings.eval_batch_size, num_samples=num_samples,
                        seed=settings.seed)


def accuracy_and_loss(model, data, settings, *, train_objective=None):
    """Train/test mean cross-entropy and accuracy (fractions) on whole splits.

    `train_objective`, if given, is a whole-training-set objective to reuse.
    """
    out = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        objective = (train_objective if split == "train" and train_objective is not None
                     else _objective(model, x, y, settings))
        loss, acc = objective.loss_and_accuracy(objective.initial_point())
        out[f"{split}_loss"], out[f"{split}_acc"] = float(loss), float(acc)
    return out


def sharpness_records(model, data, settings, *, objective=None, progress=None):
    """Metric 2.1 of `model` for each (subspace_dim, eps): a list of dicts.

    `objective`, if given, is the training-set objective to measure (it must
    match ``settings.num_samples``); otherwise one is built.
    """
    from keras_sharpness.metric import sharpness

    if objective is None:
        objective = _objective(model, data.x_train, data.y_train, settings,
                               settings.num_samples)
    records = []
    for p in settings.subspace_dims:
        subspace = _subspace(objective.num_params, int(p), settings.seed,
                             settings.subspace_scale)
        for e in settings.eps:
            result = sharpness(objective, eps=float(e), subspace_dim=int(p),
                               maxiter=settings.maxiter, seed=settings.seed,
                               start=settings.start, progress=progress, subspace=subspace)
            records.append(result.to_dict())
    return records


def measure_model(model, data, settings):
    """Accuracy and loss on both splits plus the Metric 2.1 records.

    When sharpness uses the whole training set, one objective (one clone of
    the model, one trace) serves both the training accuracy and sharpness.
    """
    train = _objective(model, data.x_train, data.y_train, settings)
    return {**accuracy_and_loss(model, data, settings, train_objective=train),
            "sharpness": sharpness_records(
                model, data, settings,
                objective=train if settings.num_samples is None else None)}


@functools.lru_cache(maxsize=1)
def _subspace(n, p, seed, scale):
    """A (a function of n, p, seed, scale), built once and shared by every eps and model.

    Building a random A and its Gram matrix costs seconds for millions of
    weights; SB and LB of one network, and every eps, use the same A.
    """
    from keras_sharpness.metric import make_subspace

    return make_subspace(n, p, seed, scale)


def weight_distance(a, b):
    """Euclidean distance between the trainable weights of two models."""
    return float(np.sqrt(sum(np.sum((np.asarray(u, np.float64) - np.asarray(v, np.float64)) ** 2)
                             for u, v in zip(a.trainable_weights, b.trainable_weights))))


def cached(path, key, compute):
    """Returns ``compute()``, stored in JSON at `path` and reused while `key` matches.

    An interrupted experiment re-run with the same flags finds every finished
    measurement here and does not redo it.
    """
    path = pathlib.Path(path)
    if path.is_file():
        try:
            stored = io.read_json(path)
        except Exception:
            stored = None
        if stored and stored.get("key") == key:
            return stored["value"]
    value = compute()
    io.write_json(path, {"key": key, "value": value})
    return value


class SaveEvery:
    """Keras callback factory: save the model every `k` epochs as ``pattern``.

    ``pattern`` is formatted with ``epoch`` (1-based). Saving is atomic, and an
    existing file is kept, so a resumed run does not rewrite finished ones.
    """

    def __new__(cls, k, pattern, first=False):
        import keras

        class _SaveEvery(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if first:
                    path = pathlib.Path(str(pattern).format(epoch=0))
                    if not path.is_file():
                        io.save_model(_plain(self.model), path)

            def on_epoch_end(self, epoch, logs=None):
                done = epoch + 1
                if done % k == 0:
                    path = pathlib.Path(str(pattern).format(epoch=done))
                    if not path.is_file():
                        io.save_model(_plain(self.model), path)

        return _SaveEvery()


def _plain(model):
    """A copy of `model` without optimizer state (small checkpoints)."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def claim_workdir(workdir, identity):
    """Records what an experiment's work directory is for; refuses another use.

    Raises:
        CheckpointError: the directory was made by different flags (so its
            checkpoints would be reused for the wrong experiment).
    """
    from keras_sharpness.errors import CheckpointError

    workdir = pathlib.Path(workdir)
    path = workdir / "experiment.json"
    identity = json.loads(json.dumps(identity, default=io._jsonable))
    if path.is_file():
        old = io.read_json(path)
        if old != identity:
            differ = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise CheckpointError(f"workdir {workdir} was made with other flags "
                                  f"({', '.join(differ)}); use another --workdir or the same flags")
    else:
        io.write_json(path, identity)


def train_or_reuse(x0, network, data, path, *, batch_size, seed, bn_eval, training_kwargs,
                   run_name, callbacks=(), verbose=1):
    """Trains x0 at `batch_size` into `path` unless that checkpoint exists."""
    from keras_sharpness.training import resolve_batch_size, train_minimizer

    path = pathlib.Path(path)
    if path.is_file():
        return io.load_model(path)
    keys = ("epochs", "until_converged", "patience", "min_delta", "max_epochs",
            "relative_min_delta", "eval_batch_size")
    kwargs = {k: training_kwargs[k] for k in keys if k in training_kwargs}
    batch = resolve_batch_size(batch_size, data.info.train_size, name=f"{run_name} batch size")
    backups = path.parent / "backups"
    model = train_minimizer(
        x0, network, data.info, data.x_train, data.y_train, batch_size=batch,
        out_path=path, history_path=path.with_name(path.stem + "_history.json"),
        backup_dir=backups / path.stem, run_name=run_name, seed=seed,
        bn_eval=bn_eval, verbose=verbose, callbacks=callbacks, **kwargs)
    if backups.is_dir() and not any(backups.iterdir()):
        backups.rmdir()  # every run finished: no backup left to resume from
    return model
