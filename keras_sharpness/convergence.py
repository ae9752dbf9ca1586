"""Training that ends at a minimizer: f over the training set every epoch, a
stop rule on it, and the best epoch kept.

The sharpness of a run is measured at the point the run keeps, so that point
must be a minimizer of f, the function Metric 2.1 measures. Keras' own
per-epoch ``loss`` is the mean of the batch losses *while the weights move*,
in training mode (BatchNorm on each training batch, dropout on); it is not f
at any point. So at the end of every epoch `TrainingSetMonitor` evaluates
f(x_epoch) and the accuracy on the whole training set exactly as the
measurements do (one `keras_sharpness.objective.TrainingLoss`: the run's BN
choice (bn_eval), fixed evaluation batches, dropout off) and logs them as ``train_f``
and ``train_f_accuracy`` beside Keras' ``loss``.

* **Stop rule** (`converged`): the run has converged when none of the last
  ``patience`` epochs lowered the best f before them by more than
  ``max(min_delta, relative_min_delta * best)``. It is a function of the
  saved history, so a resumed run decides the same.
* **Best point kept**: whenever f reaches a new minimum the weights are saved
  (atomically) to ``best.npz``; at the end the run's result is that epoch's
  weights, not the last iterate (Keras' ``EarlyStopping(restore_best_weights=
  True)`` does this in memory only, which a killed and resumed run would lose).
* **Why it stopped** is recorded: `STOP_REASONS`. A non-finite training loss
  stops the run (``"diverged"``) and keeps the best finished epoch.
"""

import math
import pathlib

import keras
import numpy as np

from keras_sharpness import io

#: Why a training run ended.
STOP_REASONS = ("converged", "max_epochs", "diverged")

#: The per-epoch history key of f over the training set.
MONITOR_KEY = "train_f"


def improvement_needed(best, min_delta, relative_min_delta=0.0):
    """The decrease of f below `best` that counts as an improvement."""
    return max(float(min_delta), float(relative_min_delta) * abs(float(best)))


def converged(values, patience, min_delta, relative_min_delta=0.0):
    """Whether f has ceased to improve.

    True when none of the last `patience` values lies more than
    ``improvement_needed(best_before, ...)`` below the best value before them.
    Non-finite values never count as improvements.

    Args:
        values: f after every epoch so far, in order.
        patience: epochs without improvement to wait.
        min_delta: smallest absolute decrease that counts.
        relative_min_delta: smallest decrease relative to the best f that
            counts (0: absolute only).
    """
    values = [float(v) if v is not None else math.nan for v in values]
    if len(values) <= patience:
        return False
    earlier = [v for v in values[:-patience] if math.isfinite(v)]
    if not earlier:
        return False
    best_before = min(earlier)
    needed = improvement_needed(best_before, min_delta, relative_min_delta)
    return not any(math.isfinite(v) and v < best_before - needed for v in values[-patience:])


def diverged_entry(entries):
    """The first history entry whose loss or f is not finite, or None.

    A run that diverged and was killed before it finished must end the same
    way when resumed: the decision is read from the saved history.
    """
    for entry in entries:
        for key in ("loss", MONITOR_KEY):
            value = entry.get(key)
            if value is not None and not math.isfinite(value):
                return entry
    return None


def best_epoch(entries, key=MONITOR_KEY):
    """The 1-based epoch of the lowest finite `key` in history entries (first on ties).

    Returns None when no entry has a finite value.
    """
    best = None
    for entry in entries:
        value = entry.get(key)
        if value is not None and math.isfinite(value) and (best is None or value < best[1]):
            best = (int(entry["epoch"]), float(value))
    return None if best is None else best[0]


class TrainingSetMonitor(keras.callbacks.Callback):
    """Logs f on the training set each epoch, keeps the best weights, stops.

    Must come before the callback that writes the history (it adds
    ``train_f`` and ``train_f_accuracy`` to the epoch's logs) and before
    `keras.callbacks.BackupAndRestore`, so that the best weights are on disk
    before the epoch counts as finished.

    Args:
        objective: a `TrainingLoss` over the training set whose variables
            match `network`'s.
        network: the plain network being trained (its current weights are
            the point evaluated).
        best_path: where the best weights go (``.npz``, `io.write_arrays`).
        history: the history writer (``.epochs``: finished epochs' entries).
        until_converged: apply the stop rule (else only max epochs stop).
        patience, min_delta, relative_min_delta: the rule (`converged`).
        write: False for a worker that writes nothing (a non-chief worker of
            `tf.distribute.MultiWorkerMirroredStrategy`: the chief writes
            the same weights).
    """

    def __init__(self, objective, network, best_path, history, *, until_converged,
                 patience, min_delta, relative_min_delta=0.0, write=True):
        super().__init__()
        self.write = write
        self.objective = objective
        self.network = network
        self.best_path = pathlib.Path(best_path)
        self.history = history
        self.until_converged = until_converged
        self.patience = patience
        self.min_delta = min_delta
        self.relative_min_delta = relative_min_delta
        self.diverged = None  # (epoch, step, loss) of the first non-finite loss
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.diverged is None and loss is not None and not math.isfinite(float(loss)):
            self.diverged = (self._epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True

    def point(self):
        """The network's current (weight vector, non-trainable values)."""
        w = self.objective.flatten([np.asarray(v) for v in self.network.trainable_variables])
        return w, [np.asarray(v) for v in self.network.non_trainable_variables]

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.diverged is not None:
            logs[MONITOR_KEY], logs["train_f_accuracy"] = math.nan, math.nan
            self.model.stop_training = True
            return
        w, fixed = self.point()
        f, accuracy = self.objective.loss_and_accuracy(w, fixed)
        logs[MONITOR_KEY], logs["train_f_accuracy"] = float(f), float(accuracy)
        earlier = [e.get(MONITOR_KEY) for e in self.history.epochs if e["epoch"] <= epoch]
        finite = [v for v in earlier if v is not None and math.isfinite(v)]
        if math.isfinite(f) and (not finite or f < min(finite)) and self.write:
            io.write_arrays(self.best_path, self.network.get_weights(), epoch=epoch + 1)
        if not math.isfinite(f):
            self.diverged = (epoch + 1, None, float(f))
            self.model.stop_training = True
        elif self.until_converged and converged(earlier + [f], self.patience, self.min_delta,
                                                self.relative_min_delta):
            self.model.stop_training = True


def kept_point_summary(objective, weights_vector, fixed):
    """f, accuracy and |grad f| on the training set at the kept weights."""
    f, gradient = objective.value_and_gradient(weights_vector, fixed)
    _, accuracy = objective.loss_and_accuracy(weights_vector, fixed)
    return {"f": float(f), "accuracy": float(accuracy),
            "gradient_norm": float(np.linalg.norm(gradient))}
