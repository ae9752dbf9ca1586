"""Small-batch (SB) and large-batch (LB) training from one initial point x0.

The released experiment of Keskar et al. (2017) saves an initial point x0,
trains it with Adam (Keras defaults) at batch 256 (SB) and at batch 5000 (LB),
and compares the two minimizers. This module does that with `keras.Model.fit`
and its callbacks, and adds what a long run needs:

* **Seeded data order.** Every epoch visits the training set in the order
  ``np.random.default_rng([seed, epoch]).permutation(n)``: a function of the
  seed and the epoch number alone, so a run resumed at epoch k sees exactly the
  batches an uninterrupted run sees (`SeededBatches`). SB and LB use the same
  seed, hence the same permutation of each epoch.
* **Nothing lost.** `keras_sharpness.backup.CrashSafeBackup` writes the
  weights and optimizer state after every epoch, atomically; a killed run
  restarted with the same arguments resumes at the first unfinished epoch.
  Per-epoch history is written as JSON as it grows. Finished models
  (``sb.keras``, ``lb.keras``) are reused.
* **Ends at a minimizer** (`keras_sharpness.convergence`). Every epoch ends
  with f and the accuracy over the whole training set, evaluated as the
  measurements evaluate them. The run keeps the epoch with the lowest f, not
  the last iterate, and records why it stopped: ``converged`` (with
  ``until_converged``: f has not improved by more than ``max(min_delta,
  relative_min_delta * f)`` for ``patience`` epochs, the paper's "until the
  loss ceased to improve"), ``max_epochs``, or ``diverged`` (a NaN or
  infinite loss; the best finished epoch is kept, and with none finished
  `TrainingDivergedError` says so in one line). The decision is a function of
  the saved history, so it survives a resume too.

Large batches and BatchNorm
---------------------------
``strategy="default"``
    One device. Every BN layer normalizes each training batch with that batch's
    statistics (all ``batch_size`` samples).
``strategy="mirrored"``
    `tf.distribute.MirroredStrategy` over all visible GPUs (or, with no GPU,
    all logical CPU devices). The global batch is split evenly over the
    replicas; the network is built with *synchronized* BatchNorm, so BN sees the
    statistics of the whole global batch, exactly as on one device.
``strategy="multiworker"``
    `tf.distribute.MultiWorkerMirroredStrategy`, configured by the ``TF_CONFIG``
    environment variable (one process per machine, same command on each).
    Synchronized BN as above. Only the chief writes files.
``accumulation_steps=k`` (any strategy)
    The optimizer (Keras 3 ``gradient_accumulation_steps``) averages the
    gradients of k consecutive micro-batches of ``batch_size / k`` samples and
    applies one Adam step: the same update as one batch of ``batch_size`` for
    a network without BN, with the memory of a micro-batch. **BN, however,
    sees only the micro-batch**: training-mode normalization (and so the
    gradient) uses the statistics of ``batch_size / k`` samples, and the moving
    statistics are updated k times per step. With BN the result is therefore
    *not* the large-batch run of the paper; prefer ``mirrored`` when devices
    allow. A final short batch is cut into k micro-batches weighted so the
    average is still that batch's mean loss.

The saved models are always the plain, unsynchronized network (weights only;
no optimizer), whatever strategy trained them.

Appendix E remedies
-------------------
``augment``, ``conservative_lambda`` / ``conservative_steps`` and
``adversarial_eps`` / ``adversarial_clean_weight`` switch on the paper's
attempts to fix LB training (`keras_sharpness.remedies`): augmentation in the
input pipeline (seeded per batch, so resume stays exact), conservative and
FGSM training in an overridden ``train_step``. The saved model is the plain
network either way.

Remedies found since (docs/remedies.md)
---------------------------------------
The same `keras_sharpness.remedies.Remedies` record holds them, all off by
default: the optimizer and its learning rate (``optimizer``,
``learning_rate``, ``momentum``; ``lr_scaling`` from ``lr_reference_batch``,
``warmup_epochs``, ``lr_decay``: `keras_sharpness.remedies.learning_rate_plan`,
whose steps are optimizer updates, so a warm-up is the same with
accumulation), ``train_longer`` (resolved by `train_sb_lb`: LB's epochs, or
``max_epochs`` with ``until_converged``, scaled to SB's number of updates),
Ghost BatchNorm (``ghost_batch_size``: `keras_sharpness.layers.with_ghost_batch_norm`
on the network that trains) and SAM / ASAM (``sam_rho``, ``sam_adaptive``,
``sam_eta``: `keras_sharpness.sam.sam_model`) and Smith et al.'s growing
batch (``batch_increase_epochs``, ``batch_increase_factor``,
``batch_increase_max``: `SeededBatches` over a
`keras_sharpness.schedules.BatchSchedule`). The optimizer's iteration
counter is part of the per-epoch backup, so a resumed run continues on the
same learning-rate curve.
"""

import dataclasses
import os
import pathlib
import time
import warnings

import numpy as np

from keras_sharpness import io
from keras_sharpness import remedies as remedies_lib
from keras_sharpness import runs
from keras_sharpness.errors import CheckpointError, UserError

STRATEGIES = ("default", "mirrored", "multiworker")

#: Keys of ``run.json`` that define which models a work directory holds; a
#: later run must agree on all of them to reuse its checkpoints.
IDENTITY_KEYS = ("network", "dataset", "seed", "train_size", "sb_batch_size",
                 "lb_batch_size", "epochs", "until_converged", "patience",
                 "min_delta", "max_epochs", "accumulation_steps", "remedies_apply_to",
                 "relative_min_delta", "eval_batch_size", "keeps", *remedies_lib.FIELDS)

#: The ``kind`` of a run directory of SB and LB minimizers in its manifest.
KIND = "sb_lb"

#: Identity keys that refuse a work directory even before it holds checkpoints.
STRICT_KEYS = ("network", "dataset")

#: Values of identity keys added later, for a ``run.json`` written before
#: them: such a work directory was made without any remedy (Adam at Keras'
#: default rate, the paper's training).
IDENTITY_DEFAULTS = {**remedies_lib.RECORD_DEFAULTS, "remedies_apply_to": None,
                     "relative_min_delta": None, "eval_batch_size": None, "keeps": "last"}


#: ``run.json``'s ``optimizer`` before it was an identity key (the words of
#: what is now ``optimizer="adam"`` at the default learning rate).
LEGACY_OPTIMIZER = "Adam (Keras defaults)"


class TrainingDivergedError(UserError):
    """The training loss became NaN or infinite."""


# ------------------------------------------------------------------ set-up
def make_deterministic(seed):
    """Seeds Python, NumPy, TensorFlow and Keras and asks TF for deterministic ops."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def resolve_batch_size(value, train_size, *, name="batch size"):
    """A batch size in samples from a count (>= 1) or a fraction (< 1).

    Args:
        value: number of samples, or a fraction in (0, 1) of the training set
            (the paper's LB is 10 % of the training set: ``0.1``).
        train_size: number of training samples.
        name: what to call it in error messages.

    Returns:
        The batch size as an int in [1, train_size].

    Raises:
        UserError: non-positive, fractional above 1, or larger than the data.
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {value:g}")
    if value < 1:
        size = max(1, int(round(value * train_size)))
    else:
        if value != int(value):
            raise UserError(f"{name} must be a whole number of samples or a "
                            f"fraction below 1, got {value:g}")
        size = int(value)
    if size > train_size:
        raise UserError(f"{name} {size} is larger than the training set "
                        f"({train_size} samples); use at most {train_size} or a "
                        f"fraction such as 0.1")
    return size


#: The LB batch of the released script (CIFAR-10: 10 % of the training set).
RELEASED_LB_BATCH_SIZE = 5000


def default_lb_batch_size(train_size):
    """The released script's 5000, or the paper's 10 % where 5000 does not fit.

    5000 is used while it is at most half the training set; on smaller data
    (e.g. the offline ``digits``) LB is 10 % of the training set.
    """
    return RELEASED_LB_BATCH_SIZE if 2 * RELEASED_LB_BATCH_SIZE <= train_size else 0.1


#: The one-line refusal of gradient accumulation under `MultiWorkerMirroredStrategy`.
NO_ACCUMULATION_ACROSS_WORKERS = (
    "gradient accumulation (--accumulation_steps) does not work across workers in Keras 3; "
    "use a smaller global batch or more workers")

#: The process's one `MultiWorkerMirroredStrategy` (TensorFlow allows one,
#: created before anything else runs: the commands make it at start-up).
_MULTIWORKER = None


def make_strategy(name):
    """The `tf.distribute.Strategy` called `name` (see the module docstring).

    Raises:
        UserError: unknown name, or ``multiworker`` without ``TF_CONFIG``.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multiworker":
        global _MULTIWORKER
        if _MULTIWORKER is None:
            if not os.environ.get("TF_CONFIG"):
                raise UserError("--strategy=multiworker needs the TF_CONFIG environment "
                                "variable (cluster and task of this worker)")
            try:
                _MULTIWORKER = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as e:
                raise UserError(f"--strategy=multiworker must start before TensorFlow runs "
                                f"anything (make_strategy('multiworker') first): {e}") from None
        return _MULTIWORKER
    raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def is_chief_process(name):
    """`is_chief` of the strategy called `name`: False only on a non-chief
    worker of ``multiworker`` (the commands ask before they open a work
    directory, which only the chief holds)."""
    return name != "multiworker" or is_chief(make_strategy(name))


def is_chief(strategy):
    """Whether this process writes files: TensorFlow's
    ``strategy.extended.should_checkpoint`` (False only on the non-chief
    workers of a multi-worker strategy)."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


# -------------------------------------------------------------------- data
def epoch_permutation(num_samples, seed, epoch):
    """The order in which epoch `epoch` visits the samples (a function of both)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_samples)


class SeededBatches:
    """Training batches in a seeded order that depends only on (seed, epoch).

    Epoch ``e`` visits ``epoch_permutation(n, seed, e)`` in consecutive
    batches of ``batch_size`` (the last one may be shorter), or, when
    `batch_size` is a `keras_sharpness.schedules.BatchSchedule` (Smith et al.
    2018), of that epoch's ``schedule.batch_size(e)``: exactly the batches of
    `keras_sharpness.schedules.epoch_batches`. With
    ``accumulation_steps=k`` each batch is cut into k micro-batches
    (`numpy.array_split`), each with a sample weight ``k * m / b`` (m its size,
    b its batch's size) so that the mean of the k micro-batch losses is the
    batch's mean loss; weights are 1 when k divides the batch. A final batch
    with fewer than k samples is dropped.

    With ``augment`` (e.g. `keras_sharpness.remedies.ImageAugmentation`),
    every batch ``x`` is replaced by ``augment(x, augmentation_key(seed, epoch,
    batch))`` before it is cut into micro-batches: the augmented batches too
    are a function of (seed, epoch) alone.

    `as_dataset` gives a `tf.data.Dataset` that reads `epoch` each time it is
    iterated; the `FollowEpoch` callback sets it at the start of every epoch
    of `fit`, including the first epoch of a resumed run.
    """

    def __init__(self, x, y, batch_size, *, seed=0, accumulation_steps=1, augment=None):
        from keras_sharpness.schedules import BatchSchedule

        self.augment = augment
        self.x = np.asarray(x, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.int64)
        self.schedule = batch_size if isinstance(batch_size, BatchSchedule) else None
        self.batch_size = (self.schedule.initial_batch if self.schedule is not None
                           else int(batch_size))  # of epoch 0
        self.seed = int(seed)
        self.accumulation_steps = max(1, int(accumulation_steps or 1))
        self.epoch = 0
        #: Replicas across all workers, and this worker's (see `shard`).
        self.replicas, self.local_replicas = 1, (0,)
        self._tensors = None  # x and y as TensorFlow constants, made once

    def shard(self, replicas, local_replicas):
        """This worker's part of every batch, for `MultiWorkerMirroredStrategy`.

        Each batch is cut into `replicas` consecutive parts
        (`numpy.array_split`); `batches` then yields, per batch, the parts of
        `local_replicas` (global replica ids, in order), each with a sample
        weight ``replicas * m / b`` (m its size, b its batch's size): Keras
        takes the mean loss of each part and sums the replicas' gradients
        divided by `replicas`, so the update is the batch's mean loss, as on
        one device. A final batch with fewer samples than replicas is dropped.
        """
        if self.accumulation_steps > 1:
            raise UserError(NO_ACCUMULATION_ACROSS_WORKERS)
        self.replicas, self.local_replicas = int(replicas), tuple(int(r) for r in local_replicas)
        return self

    @property
    def constant(self):
        """Whether every epoch has the same batch (and so the same number of steps)."""
        return self.schedule is None or not self.schedule.epochs

    def batch_size_at(self, epoch):
        """The batch of epoch `epoch`, in samples."""
        return self.batch_size if self.schedule is None else self.schedule.batch_size(epoch)

    def batches_in(self, epoch):
        """Batches (optimizer updates) of epoch `epoch`."""
        n, b = len(self.x), self.batch_size_at(epoch)
        return n // b + (1 if n % b >= max(self.accumulation_steps, self.replicas) else 0)

    @property
    def num_batches(self):
        """Batches of the current `epoch`."""
        return self.batches_in(self.epoch)

    def __len__(self):
        """Elements of the current `epoch`: optimizer micro-steps, or with `shard`
        the batches times this worker's replicas."""
        return self.num_batches * self.accumulation_steps * len(self.local_replicas)

    def elements(self, epoch):
        """Yields ``(batch, whole, part, weight)`` for every element of epoch `epoch`.

        `whole` holds the samples (rows of `x`) of batch number `batch`;
        the element is ``whole[part]`` (`part`: positions, or None for all of
        it) with sample weights `weight` (None where every weight is 1: no
        micro-batches, no `shard`).
        """
        order = epoch_permutation(len(self.x), self.seed, epoch)
        k, size = self.accumulation_steps, self.batch_size_at(epoch)
        for batch in range(self.batches_in(epoch)):
            whole = order[batch * size:(batch + 1) * size]
            if self.replicas > 1:
                parts = np.array_split(np.arange(len(whole)), self.replicas)
                cuts, scale = [parts[replica] for replica in self.local_replicas], self.replicas
            elif k == 1:
                yield batch, whole, None, None
                continue
            else:
                cuts, scale = np.array_split(np.arange(len(whole)), k), k
            for part in cuts:
                yield batch, whole, part, np.full(len(part), scale * len(part) / len(whole),
                                                  np.float32)

    def batches(self, epoch):
        """Yields the (x, y) or (x, y, sample_weight) batches of one epoch."""
        augmented = (None, None)  # (batch, its augmented inputs): once per batch
        for batch, whole, part, weight in self.elements(epoch):
            rows = whole if part is None else whole[part]
            if self.augment is None:
                x = self.x[rows]
            else:
                if augmented[0] != batch:
                    augmented = (batch, self.augment(
                        self.x[whole], remedies_lib.augmentation_key(self.seed, epoch, batch)))
                x = augmented[1] if part is None else np.asarray(augmented[1])[part]
            yield (x, self.y[rows]) if weight is None else (x, self.y[rows], weight)

    def as_dataset(self):
        """A `tf.data.Dataset` of the batches of epoch `self.epoch` (read per pass).

        With a constant batch its cardinality is the steps of an epoch. With a
        growing batch it is unknown: Keras 3 ``fit`` then iterates the first
        epoch it runs to exhaustion and later ones up to one step more than
        that epoch had, i.e. to exhaustion too, since the number of steps
        never grows (tests/test_batch_increase.py pins this).
        """
        import tensorflow as tf

        signature = (tf.TensorSpec([None, *self.x.shape[1:]], tf.float32),
                     tf.TensorSpec([None], tf.int64))
        if self.accumulation_steps > 1 or self.replicas > 1:
            signature += (tf.TensorSpec([None], tf.float32),)
        if self.augment is not None:
            dataset = tf.data.Dataset.from_generator(
                lambda: self.batches(self.epoch), output_signature=signature)
        else:
            # Only the sample indices pass through Python; TensorFlow gathers
            # the rows (those of `batches`), which spares large batches a trip
            # through the generator (BENCHMARKS.md).
            if self._tensors is None:  # one copy (in host memory, where tf.data runs)
                with tf.device("/cpu:0"):
                    self._tensors = (tf.constant(self.x), tf.constant(self.y))
            x, y = self._tensors
            indices = tf.data.Dataset.from_generator(
                lambda: ((rows if part is None else rows[part],) + (() if w is None else (w,))
                         for _, rows, part, w in self.elements(self.epoch)),
                output_signature=(tf.TensorSpec([None], tf.int64), *signature[2:]))
            dataset = indices.map(lambda i, *w: (tf.gather(x, i), tf.gather(y, i), *w))
        if self.constant:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(self)))
        return dataset.prefetch(2)


def fit_input(data, strategy):
    """What `fit` reads from `data` (a `SeededBatches`) under `strategy`.

    The dataset itself, which Keras splits over a machine's replicas; under
    `tf.distribute.MultiWorkerMirroredStrategy` a distributed dataset in which
    every worker makes only its own replicas' parts of each batch
    (`SeededBatches.shard`): the same batches, in the same order, as one
    process would train on, whatever the number of workers (except a final
    batch with fewer samples than replicas, which is dropped).
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return data.as_dataset()

    def dataset_fn(context):  # called once per worker, in that worker
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local
        data.shard(context.num_replicas_in_sync, range(first, first + local))
        return data.as_dataset()

    return strategy.distribute_datasets_from_function(dataset_fn)


def _fit_across_workers(model, strategy):
    """Lets Keras 3 ``fit`` train `model` under `MultiWorkerMirroredStrategy`.

    Keras 3.15 ``fit`` fails there twice (keras-team/keras#20585):

    * before its first step it builds the model from one batch averaged over
      the replicas with ``strategy.reduce`` on the whole ``(x, y, w)`` tuple,
      which the strategy refuses ("unsupported type PerReplica"). The model
      builds from this worker's first replica's part instead: only the
      shapes matter.
    * after every step it averages the replicas' logs with
      ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalars. The
      train step returns each scalar log as a vector of one, which that
      reduce averages into the scalar.

    The update itself (gradients summed across all replicas) is Keras' own.
    """
    import tensorflow as tf

    step = model.train_step

    def train_step(data):
        return tf.nest.map_structure(
            lambda t: tf.reshape(t, [1]) if tf.is_tensor(t) and t.shape.rank == 0 else t,
            step(data))

    model.train_step = train_step

    def build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (strategy.experimental_local_results(v)[0]
                               if isinstance(v, tf.distribute.DistributedValues) else v),
                    next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build


# --------------------------------------------------------------- callbacks
def _callbacks_module():
    import keras

    class FollowEpoch(keras.callbacks.Callback):
        """Tells a `SeededBatches` which epoch `fit` is about to run.

        With `learning_rate` (a batch schedule with a cap), it also sets the
        optimizer's rate to ``learning_rate * schedule.learning_rate_factor(epoch)``
        (Smith et al.: where the batch cannot grow, the rate falls instead): a
        function of the epoch alone, set after a resume's restore, so resumed
        and uninterrupted runs agree.
        """

        def __init__(self, batches, learning_rate=None):
            super().__init__()
            self.batches = batches
            self.learning_rate = learning_rate

        def on_epoch_begin(self, epoch, logs=None):
            self.batches.epoch = epoch
            if self.learning_rate is not None:
                self.model.optimizer.learning_rate = (
                    self.learning_rate * self.batches.schedule.learning_rate_factor(epoch))

    class HistoryWriter(keras.callbacks.Callback):
        """Writes the per-epoch logs to a JSON file after every epoch.

        On the first epoch of a resumed run, entries of that epoch and later
        (written before a kill that beat the backup) are dropped.
        """

        def __init__(self, path, header, write=True):
            super().__init__()
            self.path = pathlib.Path(path)
            self.header = header
            self.write = write
            self.epochs = read_history(self.path)
            self._started = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs = [e for e in self.epochs if e["epoch"] < epoch + 1]
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            entry = {"epoch": epoch + 1}
            entry.update({k: float(v) for k, v in (logs or {}).items()})
            entry["seconds"] = time.perf_counter() - self._started
            self.epochs.append(entry)
            if self.write:
                io.write_json(self.path, {**self.header, "finished": False,
                                          "epochs": self.epochs})

    return FollowEpoch, HistoryWriter


def read_history(path):
    """The per-epoch entries of a history JSON file ([] if absent)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    return list(io.read_json(path).get("epochs", []))


# ---------------------------------------------------------------- training
def _build(network, info, bn_eval, synchronized):
    from keras_sharpness.networks import build_network

    return build_network(network, info.input_shape, info.num_classes,
                         bn_eval=bn_eval, synchronized=synchronized)


def initial_point(path, network, info, *, seed, bn_eval="batch", save=True):
    """Loads x0 from `path`, or builds it from `seed` and saves it there
    (unless `save` is False).

    Returns:
        The x0 model (uncompiled).

    Raises:
        CheckpointError: `path` holds another network's x0 or is unreadable.
    """
    import keras

    path = pathlib.Path(path)
    if path.is_file():
        model = io.load_model(path)
        if model.name != network:
            raise CheckpointError(f"{path} holds network {model.name}, not {network}")
        return model
    keras.utils.set_random_seed(int(seed))
    model = _build(network, info, bn_eval, synchronized=False)
    if save:
        io.save_model(model, path)
    return model


def train_minimizer(x0, network, info, x_train, y_train, *, batch_size, out_path,
                    history_path, backup_dir, run_name="run", epochs=20,
                    until_converged=False, patience=10, min_delta=1e-4,
                    max_epochs=500, seed=0, strategy="default",
                    accumulation_steps=1, bn_eval="batch", verbose=1,
                    callbacks=(), builder=None, augment=False, conservative_lambda=0.0,
                    conservative_steps=3, adversarial_eps=0.0,
                    adversarial_clean_weight=0.5, relative_min_delta=0.0,
                    eval_batch_size=1000, remedies=None):
    """Trains x0 (with Adam, or as `remedies` say) at one batch size and saves the best epoch.

    After every epoch f and the accuracy over the whole training set are
    evaluated as the measurements evaluate them (BN evaluation choice `bn_eval`, fixed
    batches of `eval_batch_size`; `keras_sharpness.convergence`); the saved
    model holds the weights of the epoch with the lowest f (``kept_epoch``),
    and ``<out>_last.keras`` the last iterate where that differs. The history
    JSON records per epoch ``loss`` (Keras' running mean), ``train_f`` and
    ``train_f_accuracy``; at the end ``kept_epoch``, ``stopped_because``
    (``converged``, ``max_epochs`` or ``diverged``) and ``kept`` (f, accuracy
    and |grad f| on the training set at the kept point).

    Args:
        x0: the initial-point model (its weights are copied; it is not changed).
        network: network name (rebuilt under the strategy's scope).
        info: `keras_sharpness.data.DataInfo` of the data.
        x_train, y_train: training arrays.
        batch_size: samples per optimizer step (the global batch).
        out_path: where the trained model goes (``.keras``).
        history_path: per-epoch history JSON.
        backup_dir: per-epoch `BackupAndRestore` directory (removed at the end).
        run_name: ``"SB"`` / ``"LB"``, for messages.
        epochs: number of epochs when not `until_converged`.
        until_converged: stop when f over the training set has ceased to
            improve (`keras_sharpness.convergence.converged`: patience,
            min_delta, relative_min_delta), at most `max_epochs` epochs.
        relative_min_delta: improvement relative to the best f that counts.
        eval_batch_size: fixed batch size of the per-epoch f (in ``"batch"``
            BN mode part of f's definition, as in the measurements).
        seed: seed of the data order (and of dropout).
        strategy: ``"default"``, ``"mirrored"`` or ``"multiworker"``, or a
            `tf.distribute.Strategy`.
        accumulation_steps: gradient accumulation micro-steps per update (1: none).
        bn_eval: BN evaluation mode saved with the model and used for the
            per-epoch f.
        verbose: `fit` verbosity (1: progress bar).
        callbacks: more Keras callbacks (tests use one that interrupts).
        builder: ``builder(synchronized) -> keras.Model`` replacing
            ``build_network(network, ...)`` (e.g. a BN-free model in tests).
        augment: Appendix E data augmentation of the training batches (image
            inputs only; `keras_sharpness.remedies.ImageAugmentation`).
        conservative_lambda: conservative training (Li et al. 2014) with this
            proximal weight when > 0 (the paper: 1e-3).
        conservative_steps: Adam iterations per batch of conservative training.
        adversarial_eps: FGSM adversarial training with this step when > 0.
        adversarial_clean_weight: weight alpha of the clean loss in FGSM
            training (Goodfellow et al.: 0.5).
        remedies: a `keras_sharpness.remedies.Remedies` with every remedy
            option (optimizer, learning rate, Ghost BN, SAM, ...); when given,
            it replaces the five Appendix E keywords above. Its
            ``lr_reference_batch`` must be resolved (>= 1) with
            ``lr_scaling``; ``train_longer`` is `train_sb_lb`'s business (pass
            the epochs it implies).

    Returns:
        The trained model (plain network, uncompiled, weights of the run).

    Raises:
        TrainingDivergedError: the loss became NaN or Inf before any epoch
            finished (with a finished epoch the run stops and keeps the best).
        UserError: remedy settings out of range or not applicable to the data
            or network (e.g. Ghost BN without BatchNorm).
    """
    import keras
    import tensorflow as tf

    from keras_sharpness import convergence
    from keras_sharpness.backup import CrashSafeBackup
    from keras_sharpness.objective import TrainingLoss

    FollowEpoch, HistoryWriter = _callbacks_module()
    if isinstance(strategy, str):
        strategy = make_strategy(strategy)
    synchronized = isinstance(strategy, (tf.distribute.MirroredStrategy,
                                         tf.distribute.MultiWorkerMirroredStrategy))
    workers = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    chief = is_chief(strategy)
    k = max(1, int(accumulation_steps or 1))
    if k > batch_size:
        raise UserError(f"accumulation_steps {k} is larger than the {run_name} "
                        f"batch size {batch_size}")
    if k > 1 and workers:
        raise UserError(NO_ACCUMULATION_ACROSS_WORKERS)
    if batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"{run_name} batch size {batch_size} is not divisible by the "
                        f"{strategy.num_replicas_in_sync} replicas of --strategy")
    cap = int(max_epochs) if until_converged else int(epochs)
    if cap < 1 or int(patience) < 1:
        raise UserError(f"epochs, max_epochs and patience must be at least 1 (got epoch cap "
                        f"{cap}, patience {patience})")
    for name, value in (("min_delta", min_delta), ("relative_min_delta", relative_min_delta)):
        if not (np.isfinite(float(value)) and float(value) >= 0):
            raise UserError(f"{name} must be a finite number >= 0, got {value}")
    if remedies is None:
        remedies = remedies_lib.Remedies(
            augment=bool(augment), conservative_lambda=float(conservative_lambda),
            conservative_steps=int(conservative_steps), adversarial_eps=float(adversarial_eps),
            adversarial_clean_weight=float(adversarial_clean_weight))
    remedies.check(np.shape(x_train)[1:], k)
    schedule = remedies.batch_schedule(batch_size)  # the batch per epoch
    if remedies.batch_increase:
        schedule.check(len(x_train), k)
    sizes = sorted({schedule.batch_size(e) for e in (0, *schedule.epochs)}
                   if remedies.batch_increase else {batch_size})
    for size in sizes[1:]:  # the first is `batch_size`, checked above
        if size % strategy.num_replicas_in_sync:
            raise UserError(f"{run_name} batch size {size} (--batch_increase_epochs) is not "
                            f"divisible by the {strategy.num_replicas_in_sync} replicas of "
                            f"--strategy")
    # Across workers a final batch with fewer samples than replicas is dropped,
    # as one with fewer than k under accumulation (the two never meet).
    rate_plan = remedies_lib.learning_rate_plan(
        remedies, batch_size=batch_size, num_samples=len(x_train), epochs=cap,
        accumulation_steps=strategy.num_replicas_in_sync if workers else k)
    # Each BN call sees one micro-batch of one replica (fewest samples: the first batch).
    per_call = batch_size // (k * strategy.num_replicas_in_sync)
    if remedies.ghost and remedies.ghost_batch_size > per_call:
        raise UserError(f"--ghost_batch_size {remedies.ghost_batch_size} is larger than the "
                        f"{per_call} samples each BatchNorm call of {run_name} sees (batch "
                        f"{batch_size}, {k} micro-batch(es), "
                        f"{strategy.num_replicas_in_sync} replica(s))")
    # Created outside the strategy scope: its seed state is a plain variable
    # of the input pipeline, reset for every batch.
    augmentation = remedies_lib.ImageAugmentation() if remedies.augment else None

    # Same seed before building: dropout seeds match across runs and resumes.
    if builder is None:
        def builder(synchronized):
            return _build(network, info, bn_eval, synchronized=synchronized)
    keras.utils.set_random_seed(int(seed))
    with strategy.scope():
        plain = builder(synchronized)
        plain.set_weights(x0.get_weights())
        if remedies.ghost:
            from keras_sharpness.layers import has_batch_norm, with_ghost_batch_norm

            if not has_batch_norm(plain):
                raise UserError(f"--ghost_batch_size needs a network with BatchNormalization; "
                                f"{plain.name} has none")
            # The network that trains; weights as `plain`'s, saved as the plain network.
            plain = with_ghost_batch_norm(plain, remedies.ghost_batch_size)
        # `plain` itself, or a SAMModel / RemedyModel sharing its layers and weights.
        if remedies.sam.on:
            from keras_sharpness.sam import sam_model

            model = sam_model(plain, remedies.sam_rho, adaptive=remedies.sam_adaptive,
                              eta=remedies.sam_eta)
        else:
            model = remedies_lib.remedy_model(plain, remedies)
        optimizer = remedies_lib.make_optimizer(remedies, rate_plan, k)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])

    if workers:
        _fit_across_workers(model, strategy)
    data = SeededBatches(x_train, y_train, schedule, seed=seed, accumulation_steps=k,
                         augment=augmentation)
    stop_rule = {"monitor": convergence.MONITOR_KEY, "until_converged": bool(until_converged),
                 "patience": int(patience), "min_delta": float(min_delta),
                 "relative_min_delta": float(relative_min_delta), "epoch_cap": cap}
    header = {"run": run_name, "batch_size": batch_size, "accumulation_steps": k,
              "strategy": type(strategy).__name__,
              "replicas": strategy.num_replicas_in_sync, "seed": seed,
              "train_size": len(x_train), **remedies.record(),
              "learning_rate_plan": rate_plan,
              **({"batch_schedule": {**schedule.to_dict(),
                                     "batch_sizes": [schedule.batch_size(e) for e in range(cap)]}}
                 if remedies.batch_increase else {}),
              "stop_rule": stop_rule,
              "train_f": {"bn_eval": bn_eval, "eval_batch_size": int(eval_batch_size),
                          "num_samples": len(x_train)}}
    last_path = pathlib.Path(out_path).with_name(pathlib.Path(out_path).stem + "_last.keras")
    history = HistoryWriter(history_path, header, write=chief)
    backup_dir = pathlib.Path(backup_dir)
    best_path = backup_dir / "best.npz"
    done = [e.get(convergence.MONITOR_KEY) for e in history.epochs]
    diverged_before = convergence.diverged_entry(history.epochs)
    if diverged_before is not None or (until_converged and convergence.converged(
            done, patience, min_delta, relative_min_delta)):
        cap = len(done)  # ended before a kill: restore the backup, train no more
    # f over the training set, evaluated like every measurement evaluates it.
    # Under a strategy f is spread over its replicas and gathered: across
    # workers every worker then holds the same f, so all take the same keep
    # and stop decisions (and on several GPUs the pass uses all of them).
    objective = TrainingLoss(builder(False), x_train, y_train, bn_eval=bn_eval,
                             batch_size=int(eval_batch_size),
                             strategy=strategy if synchronized else None)
    monitor = convergence.TrainingSetMonitor(
        objective, plain, best_path, history, until_converged=until_converged,
        patience=int(patience), min_delta=float(min_delta),
        relative_min_delta=float(relative_min_delta), write=chief)
    if diverged_before is not None:
        monitor.diverged = (int(diverged_before["epoch"]), None,
                            float(diverged_before.get("loss", float("nan"))))
    # Order matters: the monitor adds f to the logs and saves the best
    # weights, then the history is written, then the backup marks the epoch
    # finished. A kill between them repeats that epoch identically.
    capped = remedies.batch_increase and schedule.max_batch is not None
    all_callbacks = [FollowEpoch(data, rate_plan["peak"] if capped else None), monitor, history, CrashSafeBackup(backup_dir, write=chief),
                     *callbacks]

    if verbose:
        print(f"{run_name}: batch {batch_size}"
              + (f" ({k} micro-batches of ~{batch_size // k})" if k > 1 else "")
              + f", {cap} epochs" + (" at most" if until_converged else "")
              + f", {strategy.num_replicas_in_sync} replica(s)"
              + (f"; {remedies.describe()}" if remedies.any else ""), flush=True)
    with warnings.catch_warnings():
        if not data.constant:  # each epoch of a growing batch ends when its data does
            warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(fit_input(data, strategy), epochs=cap, shuffle=False, verbose=verbose,
                  callbacks=all_callbacks)

    barrier(strategy)  # every worker reads the chief's best weights once written
    kept_epoch = convergence.best_epoch(history.epochs)
    if monitor.diverged is not None or kept_epoch is None:
        epoch, step, loss = monitor.diverged or (len(history.epochs), None, float("nan"))
        where = f"epoch {epoch}" + (f", step {step}" if step else "")
        if kept_epoch is None:
            raise TrainingDivergedError(
                f"{run_name} training diverged: loss is {loss} at {where} before any epoch "
                f"finished; try a smaller batch or learning rate, or another --seed")
        stopped_because = "diverged"
    elif until_converged and convergence.converged(
            [e.get(convergence.MONITOR_KEY) for e in history.epochs], patience, min_delta,
            relative_min_delta):
        stopped_because = "converged"
    else:
        stopped_because = "max_epochs"
    best_weights, stored = io.read_arrays(best_path)
    if int(stored["epoch"]) != kept_epoch:
        raise CheckpointError(f"{best_path} holds epoch {stored['epoch']}, not the best "
                              f"epoch {kept_epoch} of {history_path}; delete {backup_dir} "
                              f"and train again")
    barrier(strategy)  # ... and before the chief removes them
    trained = builder(False)
    trained.set_weights(best_weights)
    kept_weights = objective.flatten([np.asarray(v) for v in trained.trainable_variables])
    kept = {"epoch": kept_epoch,
            **convergence.kept_point_summary(
                objective, kept_weights, [np.asarray(v) for v in trained.non_trainable_variables])}
    final = {"finished": True, "kept_epoch": kept_epoch, "stopped_because": stopped_because,
             "epochs_run": len(history.epochs), "kept": kept}
    if monitor.diverged is not None:
        final["diverged_at"] = dict(zip(("epoch", "step", "loss"), monitor.diverged))
    if chief:
        # The model file comes last: its presence means "finished" to every
        # later run, so the history must be final before it exists.
        if kept_epoch != len(history.epochs) and stopped_because != "diverged":
            last = builder(False)  # only needed where it differs from the kept point
            last.set_weights([np.asarray(w) for w in plain.get_weights()])
            io.save_model(last, last_path)
            final["last_checkpoint"] = last_path.name
        io.write_json(history_path, {**header, **final, "epochs": history.epochs})
        io.save_model(trained, out_path)
    if verbose:
        print(f"{run_name}: stopped ({stopped_because}) after {len(history.epochs)} epochs; "
              f"kept epoch {kept_epoch}: training f={kept['f']:.4g}, accuracy "
              f"{100 * kept['accuracy']:.2f} %, |grad f|={kept['gradient_norm']:.3g}",
              flush=True)
    if chief:
        _remove_tree(backup_dir)
    return trained


def barrier(strategy):
    """Waits until every worker of a multi-worker `strategy` gets here (else nothing)."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def _remove_tree(path):
    import shutil

    if pathlib.Path(path).exists():
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- work dir
def canonical_source(source):
    """The data source with ``npz:``/``folder:`` paths made absolute."""
    kind, sep, rest = str(source).partition(":")
    if sep and kind in ("npz", "folder") and rest:
        return f"{kind}:{pathlib.Path(rest).expanduser().resolve()}"
    return str(source)


def run_identity(settings):
    """What defines a run directory's checkpoints: the `IDENTITY_KEYS` (except
    ``keeps``) of resolved `keras_sharpness.config.RunSettings`, valued as
    ``run.json`` records them (settings a run does not use are None)."""
    t, d = settings.training, settings.data
    converged = t.until_converged
    options = t.remedies
    return {
        "network": t.network, "dataset": d.dataset, "seed": t.seed,
        "train_size": d.train_size,
        "sb_batch_size": t.sb_batch_size, "lb_batch_size": t.lb_batch_size,
        "epochs": None if converged else t.epochs,
        "until_converged": converged,
        "patience": t.patience if converged else None,
        "min_delta": t.min_delta if converged else None,
        "max_epochs": t.max_epochs if converged else None,
        "relative_min_delta": t.relative_min_delta if converged else None,
        "eval_batch_size": t.eval_batch_size,
        "accumulation_steps": t.accumulation_steps,
        **options.record(),
        "remedies_apply_to": t.remedies_apply_to if options.any else None,
    }


def run_manifest(settings, info, *, lb_batch_size_requested, status):
    """The ``run.json`` of a run directory.

    Args:
        settings: the run's `keras_sharpness.config.RunSettings`, resolved
            against the data (batch sizes in samples, absolute paths).
        info: `keras_sharpness.data.DataInfo` of the loaded data.
        lb_batch_size_requested: the LB batch as asked (a fraction, or the
            default chosen for the data).
        status: ``"training"`` until both minimizers are saved, then
            ``"finished"``.

    Returns:
        A dict: ``kind`` (`KIND`), the identity (`run_identity`) and the other settings as flat
        keys, which readers of every version use (``compute_sharpness.py
        --workdir``, the trials), ``settings`` (``settings.to_dict()``, what
        a resumed run is compared with), ``status``, seeds and versions.
    """
    t, d = settings.training, settings.data
    return {
        "kind": KIND,
        **run_identity(settings),
        "data_dir": d.data_dir, "bn_eval": t.bn_eval,
        # Seed of the train/test subsets (`load_arrays(..., seed=)`), when it
        # differs from the run's seed (e.g. trials of one data subset).
        "data_seed": d.seed,
        "test_size": d.test_size,
        "data": info.to_dict(),
        "lb_batch_size_requested": float(lb_batch_size_requested),
        # Which epoch a run keeps: the one with the lowest training-set f.
        "keeps": "best",
        "strategy": t.strategy,
        # ``optimizer`` (an identity key) names it; this says it in words.
        "optimizer_summary": _optimizer_summary(t),
        "status": status,
        "settings": settings.to_dict(),
        "versions": io.versions(),
    }


def _optimizer_summary(training_settings):
    """``run.json``'s one-line ``optimizer``: the paper's Adam unless a remedy changes it."""
    options = training_settings.remedies
    if options.default_optimizer:
        return LEGACY_OPTIMIZER
    remedied = training_settings.remedied_runs
    other = "" if len(remedied) == 2 else f"; otherwise {LEGACY_OPTIMIZER}"
    return f"{'/'.join(r.upper() for r in remedied)}: {options.describe_optimizer()}{other}"


def recorded_identity(record):
    """The identity of the run a ``run.json`` (of any version) describes.

    A manifest with ``settings`` is read through
    `keras_sharpness.config.RunSettings` (so it is checked too); one written
    before manifests recorded settings holds the identity as flat keys, and
    keys added since then take the values such runs were made with
    (`IDENTITY_DEFAULTS`).

    Raises:
        CheckpointError: ``settings`` that are not valid settings.
    """
    if "settings" not in record:
        flat = {k: record[k] for k in IDENTITY_KEYS if k in record}
        if flat.get("optimizer") == LEGACY_OPTIMIZER:
            flat["optimizer"] = "adam"
        return {**IDENTITY_DEFAULTS, **flat}
    from keras_sharpness.config import RunSettings

    try:
        settings = RunSettings.from_dict(record["settings"])
    except UserError as e:
        raise CheckpointError(f"run.json holds settings this version cannot read ({e}); "
                              f"use another --workdir") from None
    return {**run_identity(settings), "keeps": record.get("keeps", IDENTITY_DEFAULTS["keeps"])}


def check_workdir(workdir, record):
    """Refuses a work directory whose checkpoints belong to another run.

    `keras_sharpness.runs.RunDir.check` with the identity of
    `recorded_identity`: another network or data set is refused always, other
    `IDENTITY_KEYS` once the directory holds checkpoints.

    Args:
        workdir: the directory (a path or a `RunDir`).
        record: the new run's manifest (`run_manifest`; a dict of flat
            `IDENTITY_KEYS` is accepted too).

    Raises:
        CheckpointError: one line naming the settings that differ.
    """
    _run_dir(workdir).check({"kind": KIND, **record}, identity=recorded_identity,
                            strict=STRICT_KEYS)


def train_longer_epochs(epochs, sb_batch, batch, num_samples):
    """Hoffer et al.'s "train longer": the epochs at `batch` that make as many
    updates as `epochs` epochs at `sb_batch` (`keras_sharpness.schedules.train_longer_epochs`,
    rounded up; `epochs` itself for SB)."""
    from keras_sharpness.schedules import train_longer_epochs as longer

    return longer(epochs, sb_batch, batch, num_samples=num_samples)


def _run_dir(workdir):
    return workdir if isinstance(workdir, runs.RunDir) else runs.RunDir(workdir)


def train_sb_lb(data, settings, workdir, *, verbose=1, callbacks=()):
    """Trains (or reuses) the SB and LB minimizers from one x0 in `workdir`.

    The work directory (`keras_sharpness.runs.RunDir`, held for the call)
    holds ``x0.keras``, ``sb.keras``, ``lb.keras``, ``sb_history.json``,
    ``lb_history.json``, ``backups/{sb,lb}/`` while a run is unfinished, and
    ``run.json`` (`run_manifest`: the settings, resolved against the data,
    seeds, status and versions). A work directory made with other settings is
    refused before anything is written (`check_workdir`). Accumulation
    applies to LB only; the remedies to the runs named by ``remedies_apply_to``.

    Args:
        data: `keras_sharpness.data.ArrayData`, loaded as ``settings.data`` says.
        settings: `keras_sharpness.config.RunSettings`.
        workdir: the work directory: a path, or a `RunDir` (e.g. one the
            caller holds already).
        verbose: `fit` verbosity (0 silent, 1 progress bars, 2 one line per epoch).
        callbacks: more Keras callbacks for both runs (`train_minimizer`).

    Returns:
        dict with ``x0``, ``sb``, ``lb`` (models) and ``record`` (run.json).

    Raises:
        UserError: batch sizes the data does not allow, remedies it cannot
            take, a foreign or busy work directory, divergence.
    """
    run = _run_dir(workdir)
    t = settings.training
    n = data.info.train_size
    lb_requested = t.lb_batch_size
    if lb_requested is None:
        lb_requested = default_lb_batch_size(n)
        if verbose and lb_requested != RELEASED_LB_BATCH_SIZE:
            print(f"LB batch: the released {RELEASED_LB_BATCH_SIZE} does not fit "
                  f"{n} training samples twice; using the paper's 10 % "
                  f"({resolve_batch_size(lb_requested, n)}); --lb_batch_size chooses",
                  flush=True)
    sb = resolve_batch_size(t.sb_batch_size, n, name="SB batch size")
    lb = resolve_batch_size(lb_requested, n, name="LB batch size")
    remedied = t.remedied_runs
    t.remedies.check(data.info.input_shape, t.accumulation_steps if "lb" in remedied else 1)
    if t.remedies.batch_increase:  # every epoch's batch must fit the data
        for name, batch, k in (("sb", sb, 1), ("lb", lb, t.accumulation_steps)):
            if name in remedied:
                t.remedies.batch_schedule(batch).check(n, k)
    strategy = make_strategy(t.strategy)
    data_dir = settings.data.data_dir
    if data_dir is not None:
        data_dir = str(pathlib.Path(data_dir).expanduser().resolve())
    # lr_reference_batch 0 means the SB batch of this run.
    reference = t.lr_reference_batch or (sb if t.lr_scaling != "none" else 0)
    resolved = dataclasses.replace(
        settings,
        data=dataclasses.replace(settings.data, dataset=canonical_source(settings.data.dataset),
                                 data_dir=data_dir),
        training=dataclasses.replace(t, sb_batch_size=sb, lb_batch_size=lb,
                                     lr_reference_batch=reference))
    remedies = resolved.training.remedies
    record = run_manifest(resolved, data.info, lb_batch_size_requested=lb_requested,
                          status="training")
    chief = is_chief(strategy)
    # Only the chief holds the directory and writes; the other workers read
    # it (it must be on a file system they all see) and compute the same.
    with run.open(read_only=not chief):
        if chief:
            run.claim(record, identity=recorded_identity, strict=STRICT_KEYS)
            x0 = initial_point(run.model("x0"), t.network, data.info, seed=t.seed,
                               bn_eval=t.bn_eval)
        barrier(strategy)  # the chief's run.json and x0 first
        if not chief:
            check_workdir(run, record)
            x0 = initial_point(run.model("x0"), t.network, data.info, seed=t.seed,
                               bn_eval=t.bn_eval, save=False)
        models = {"x0": x0}
        for name, batch, k in (("sb", sb, 1), ("lb", lb, t.accumulation_steps)):
            out = run.model(name)
            if out.is_file():
                if verbose:
                    print(f"{name.upper()}: reusing finished {out}", flush=True)
                models[name] = io.load_model(out)
                continue
            options = remedies if name in remedied else remedies_lib.Remedies()
            epochs, max_epochs = t.epochs, t.max_epochs
            if options.train_longer:
                epochs, max_epochs = (train_longer_epochs(e, sb, batch, n)
                                      for e in (t.epochs, t.max_epochs))
            models[name] = train_minimizer(
                x0, t.network, data.info, data.x_train, data.y_train, batch_size=batch,
                out_path=out, history_path=run.history(name), backup_dir=run.backup(name),
                run_name=name.upper(), epochs=epochs, until_converged=t.until_converged,
                patience=t.patience, min_delta=t.min_delta, max_epochs=max_epochs,
                seed=t.seed, relative_min_delta=t.relative_min_delta,
                eval_batch_size=t.eval_batch_size, strategy=strategy, accumulation_steps=k,
                bn_eval=t.bn_eval, verbose=verbose, callbacks=callbacks, remedies=options)
        backups = run.backup("sb").parent
        if chief and backups.is_dir() and not any(backups.iterdir()):
            backups.rmdir()
        record = {**record, "status": "finished"}
        if chief:
            run.write_manifest(record)
    models["record"] = record
    return models


__all__ = ["KIND", "STRATEGIES", "SeededBatches", "TrainingDivergedError", "barrier",
           "canonical_source", "check_workdir", "epoch_permutation", "fit_input",
           "initial_point", "is_chief", "is_chief_process",
           "make_deterministic", "make_strategy", "read_history", "recorded_identity",
           "resolve_batch_size", "run_identity", "run_manifest", "train_longer_epochs",
           "train_minimizer", "train_sb_lb"]
