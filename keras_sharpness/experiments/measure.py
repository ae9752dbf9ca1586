"""What the experiments share besides measuring: work directories and training.

Accuracy and sharpness of a model are measured by `keras_sharpness.measure`
(one sweep, one record schema, one record store per work directory).
"""

import contextlib
import pathlib

import numpy as np

from keras_sharpness import io
from keras_sharpness.measure import MeasureSettings  # noqa: F401  (experiments.flags builds it)


def weight_distance(a, b):
    """Euclidean distance between the trainable weights of two models."""
    return float(np.sqrt(sum(np.sum((np.asarray(u, np.float64) - np.asarray(v, np.float64)) ** 2)
                             for u, v in zip(a.trainable_weights, b.trainable_weights))))


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


@contextlib.contextmanager
def experiment_dir(workdir, kind, identity):
    """Holds an experiment's work directory (`keras_sharpness.runs.RunDir`) for the block.

    Its manifest (``run.json``: ``kind``, ``settings`` = `identity`,
    ``status``, versions) is written, or compared with the recorded one: a
    directory made with other flags is refused once it holds checkpoints, one
    of another experiment always. The status is ``running`` until the block
    ends without an error, then ``finished``.

    Yields:
        The `RunDir`.

    Raises:
        CheckpointError: the directory was made by different flags (so its
            checkpoints would be reused for the wrong experiment).
        UserError: another process holds it.
    """
    from keras_sharpness.runs import RunDir

    identity = {"experiment": kind, **identity}
    with RunDir(workdir).open() as run:
        run.claim({"kind": kind, "settings": identity, "status": "running",
                   "versions": io.versions()}, strict=("experiment",))
        yield run
        run.set_status("finished")


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
