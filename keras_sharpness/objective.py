"""The training loss as a function of a weight vector: f(w), grad f(w), H(w) v.

Every analysis of this package (parametric plot, sharpness, Hessian spectrum)
evaluates the loss through `TrainingLoss`, so all of them see the same
function:

* f(w) is the **mean cross-entropy** (logits and integer labels) over a fixed
  data set: the arrays given, or a seeded subset of ``num_samples`` of them.
* **Dropout is off** (``training=False``).
* **BatchNorm semantics** are chosen by the caller: ``"batch"`` normalizes
  every batch with its own statistics at evaluation (Keras 1 ``mode=2``, the
  paper's setting), ``"moving"`` uses the moving statistics (standard Keras).
  In ``"batch"`` mode a sample's output depends on the rest of its batch, so
  the data are cut into **fixed batches** (same order, same ``batch_size``,
  the last one possibly smaller) and f is a deterministic function of w.
* The model is **never mutated**: the object evaluates a clone with
  ``keras.Model.stateless_call``, feeding it the weights it is asked about.
* **Precision**: the model computes in float32; vectors cross the SciPy
  boundary as float64; per-batch sums are accumulated in float64.

Weights are flattened in the order of ``model.trainable_variables``, each
variable in C order (`flatten` / `unflatten`). Non-trainable variables (the
BatchNorm moving statistics) are held fixed at the model's values unless a
call passes others.

Per-example gradients (`TrainingLoss.per_example_gradients`,
`TrainingLoss.gradient_moments`) and views over consecutive chunks of the
data (`TrainingLoss.batch_objectives`, m-sharpness) are computed with the same
copy of the model, fixed batches and precision.
"""

import copy
import dataclasses
import functools
import threading

import keras
import numpy as np
import tensorflow as tf

from keras_sharpness.errors import UserError
from keras_sharpness.layers import batchnorm_layers, check_bn_eval, model_bn_eval


def _cross_entropy_sum_and_correct(logits, labels):
    """Sum of per-sample cross-entropies and number of correct predictions.

    Written with `tf.nn.log_softmax` rather than the fused sparse op, whose
    second derivative TensorFlow refuses to take (Hessian-vector products
    need it).
    """
    logits = tf.cast(logits, tf.float32)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    picked = tf.gather(log_probs, labels, axis=-1, batch_dims=1)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels),
        tf.float32))
    return -tf.reduce_sum(picked), correct


def _cross_entropies(logits, labels):
    """Per-sample cross-entropies, the terms `_cross_entropy_sum_and_correct` sums."""
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    return -tf.gather(log_probs, labels, axis=-1, batch_dims=1)


def _output_layer(model):
    """The layer that produces the model's (single) output, or None."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(outputs) != 1:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    return getattr(history, "operation", None)


def _output_activation(layer):
    """"softmax", "sigmoid" or None: the probability map a layer ends with."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None) or (activation if isinstance(activation, str) else None)
    return name if name in ("softmax", "sigmoid") else None


def evaluation_model(model, bn_eval):
    """A copy of `model` that computes f as its label says: logits out, BN as asked.

    Functional and Sequential models are cloned (`keras.models.clone_model`);
    in the copy

    * every BatchNormalization (Keras' own or the project's) becomes a
      `SwitchableBatchNormalization` with evaluation statistics `bn_eval`
      (None: the layer's own bn_eval), so "batch" and "moving" mean the same
      for every model, with exact second derivatives;
    * a softmax at the output (an activation of the last layer, an
      ``Activation("softmax")`` or a ``Softmax`` layer) is removed: the
      cross-entropy of softmax(z) is that of the logits z, computed stably.

    A subclassed model cannot be cloned; it is used as it is (evaluated with
    ``stateless_call``, never mutated) when that computes what was asked: no
    BatchNorm, or Keras BN with ``bn_eval`` "moving" or None.

    Returns:
        ``(model, removed)``: the model to evaluate and whether a softmax was
        removed.

    Raises:
        UserError: a sigmoid output, or a subclassed model whose BN evaluation choice
            cannot be switched.
    """
    import keras

    from keras_sharpness.layers import SwitchableBatchNormalization

    own_bn_eval = model_bn_eval(model)
    output = _output_layer(model)
    if output is None:  # subclassed (or multi-output): no graph to rewrite
        layers = batchnorm_layers(model)
        wanted = bn_eval or own_bn_eval
        if layers and not (wanted == "moving" and not any(
                isinstance(layer, SwitchableBatchNormalization) for layer in layers)):
            raise UserError(
                f"model {model.name} is a subclassed keras.Model with BatchNormalization: "
                f"its BN evaluation choice {wanted!r} cannot be applied without cloning; build it as "
                f"a functional or Sequential model, or use bn_eval='moving' with Keras BN")
        return model, False
    activation = _output_activation(output)
    if activation == "sigmoid":
        raise UserError(f"model {model.name} ends in a sigmoid; f is the softmax "
                        f"cross-entropy over classes: give a model whose output is logits "
                        f"or softmax probabilities")

    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            own = getattr(layer, "bn_eval", "moving")
            config["bn_eval"] = bn_eval or own
            return SwitchableBatchNormalization.from_config(config)
        if layer is output and activation == "softmax":
            if isinstance(layer, keras.layers.Softmax) or type(layer) is keras.layers.Activation:
                return keras.layers.Activation("linear", name=config["name"])
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    try:
        # recursive: BN layers inside nested models are switched too.
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    except Exception as e:  # noqa: BLE001 (any failure means: cannot copy this model)
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model {model.name} cannot be copied for evaluation "
                        f"({message[:160]})") from None
    wanted = bn_eval or own_bn_eval
    wrong = [layer.name for layer in batchnorm_layers(clone)
             if getattr(layer, "bn_eval", None) != wanted]
    if wrong:
        raise UserError(f"model {model.name}: BatchNorm layers {', '.join(wrong[:3])} could not "
                        f"be switched to {wanted!r} statistics (inside a wrapper layer?); "
                        f"build the model without wrappers around BatchNormalization")
    return clone, activation == "softmax"


#: Per-example numbers held by one vectorized call when ``chunk`` is None
#: (2**26 float32 = 256 MiB).
_CHUNK_FLOATS = 2 ** 26


@dataclasses.dataclass(frozen=True)
class GradientMoments:
    """Per-example gradient statistics by group (`TrainingLoss.gradient_moments`).

    Attributes:
        gradient_sums: ``(K, n)`` float64, sum of g_i over each group's samples.
        square_norm_sums: ``(K,)`` float64, sum of |g_i|^2 over each group.
        counts: ``(K,)`` samples per group.
        batch_of_group: ``(K,)`` index of the fixed batch each group lies in.
        square_norms: ``(N,)`` float64, |g_i|^2 of every sample, data order.
    """

    gradient_sums: np.ndarray
    square_norm_sums: np.ndarray
    counts: np.ndarray
    batch_of_group: np.ndarray
    square_norms: np.ndarray

    @property
    def num_samples(self):
        return int(self.counts.sum())

    @property
    def gradient(self):
        """The mean gradient, grad f (float64)."""
        return self.gradient_sums.sum(axis=0) / self.num_samples


class TrainingLoss:
    """f(w) = mean cross-entropy of a Keras model at weights w over fixed data.

    Example::

        f = ks.TrainingLoss(model, x_train, y_train, bn_eval="batch")
        w = f.initial_point()              # the model's weights, float64
        value, gradient = f.value_and_gradient(w)
        hv = f.hessian_vector_product(w, gradient)

    Args:
        model: a `keras.Model` that outputs logits, or softmax probabilities
            through a final softmax (removed in the copy that is evaluated:
            see `evaluation_model`). It is never modified; its current
            trainable weights are the default point (`initial_point`) and its
            non-trainable ones (BatchNorm moving statistics) the default
            `non_trainable` values.
        x: inputs, a NumPy array whose first axis indexes samples.
        y: class labels: integers of shape ``(len(x),)``, or one-hot rows.
        bn_eval: ``"batch"`` (batch statistics at evaluation, Keras 1
            ``mode=2``), ``"moving"`` (moving statistics), or None for the
            model's own bn_eval (`model_bn_eval`; Keras' own
            BatchNormalization: moving). Honoured for Keras' BN layers too.
        batch_size: samples per fixed batch. In ``"batch"`` mode it is part of
            the definition of f (the statistics are those of each batch).
        num_samples: evaluate on a seeded random subset of this many samples
            (kept in data order) instead of all of them; None for all.
        seed: seed of that subset.
        strategy: a `tf.distribute.MirroredStrategy` (or None): f, its
            gradient and Hessian-vector products then take R fixed batches at
            a time, one per replica (R = ``num_replicas_in_sync``, e.g. the
            GPUs of a machine), gather the per-batch results and sum them in
            batch order in float64, as on one device (equal to ~1e-7
            relative: the strategy runs inside a compiled function, which
            fuses some operations differently). Under a
            `tf.distribute.MultiWorkerMirroredStrategy`
            the replicas are those of every worker (each worker holds all
            the data and takes its replicas' batches); the per-batch results
            are gathered on every worker, so all of them return the same
            values, and every worker must make the same calls.

    Raises:
        UserError: empty data, labels out of range, a bad ``bn_eval``,
            ``batch_size`` or ``num_samples``, or inputs the model cannot take.
    """

    def __init__(self, model, x, y, *, bn_eval=None, batch_size=1000,
                 num_samples=None, seed=0, strategy=None):

        from keras_sharpness.data import labels_as_indices

        x = np.asarray(x)
        y = labels_as_indices(y, "TrainingLoss", "y")
        if len(x) == 0 or len(x) != len(y):
            raise UserError(f"need as many labels as inputs and at least one sample; got "
                            f"{len(x)} inputs, {len(y)} labels")
        if int(batch_size) < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if num_samples is not None:
            num_samples = int(num_samples)
            if not 1 <= num_samples <= len(x):
                raise UserError(f"num_samples must be between 1 and {len(x)} "
                                f"(the data size), got {num_samples}")
            keep = np.sort(np.random.default_rng(seed).choice(
                len(x), size=num_samples, replace=False))
            x, y = x[keep], y[keep]
        own_mode = model_bn_eval(model)
        if bn_eval is not None:
            check_bn_eval(bn_eval)
        #: The BN evaluation choice f is computed with (None: the model has no BN).
        self.bn_eval = None if own_mode is None else (bn_eval or own_mode)
        self.batch_size = int(batch_size)
        self.num_samples = len(x)
        self.seed = seed
        self._strategy = strategy
        _check_compatible(model, x, y)

        self._model, self.softmax_removed = evaluation_model(model, self.bn_eval)
        source_trainable = list(model.trainable_variables)
        source_fixed = list(model.non_trainable_variables)
        clone_trainable = list(self._model.trainable_variables)
        clone_fixed = list(self._model.non_trainable_variables)
        if ([tuple(v.shape) for v in source_trainable] != [tuple(v.shape) for v in clone_trainable]
                or [tuple(v.shape) for v in source_fixed] != [tuple(v.shape) for v in clone_fixed]):
            raise UserError(f"model {model.name} cannot be cloned faithfully "
                            "(its variables differ from its clone's)")
        self._shapes = [tuple(v.shape) for v in source_trainable]
        self._sizes = [int(np.prod(s, dtype=np.int64)) for s in self._shapes]
        self._offsets = np.cumsum([0] + self._sizes)
        #: Number of trainable weights n (length of every weight vector).
        self.num_params = int(self._offsets[-1])
        self._initial = np.concatenate(
            [np.asarray(v.numpy(), dtype=np.float64).reshape(-1) for v in source_trainable]
            or [np.zeros(0)])
        self._fixed = [np.array(v.numpy()) for v in source_fixed]
        self._fixed_dtypes = [v.dtype for v in clone_fixed]

        # Fixed batches, converted to tensors once: same order on every call.
        self._batches = []
        for start in range(0, len(x), self.batch_size):
            xb = np.asarray(x[start:start + self.batch_size], dtype=np.float32)
            yb = np.asarray(y[start:start + self.batch_size], dtype=np.int64)
            self._batches.append((tf.constant(xb), tf.constant(yb)))
        # Functions compiled on first use (per-example gradients), shared by the
        # views of `batch_objectives` (shallow copies hold the same dict).
        self._lazy = {}
        self._compile()
        if not self.softmax_removed:
            self._refuse_probabilities()

    def _refuse_probabilities(self):
        """One line instead of a silently wrong f when outputs are probabilities."""
        trainable, fixed = self._tensors(self._initial, None)
        xb, _ = self._batches[0]
        outputs, _ = self._model.stateless_call(trainable, fixed, xb[:256], training=False)
        outputs = np.asarray(outputs, dtype=np.float64)
        if (outputs.ndim == 2 and outputs.shape[1] > 1 and np.all(outputs >= 0)
                and np.all(outputs <= 1) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-4)):
            raise UserError(f"model {self._model.name} outputs probabilities (rows sum to 1) "
                            f"from a layer that is not a final softmax; f needs logits: "
                            f"remove the softmax, or end the model in Activation('softmax')")

    # ----------------------------------------------------------------- weights
    def initial_point(self):
        """The model's trainable weights as one float64 vector (a copy)."""
        return self._initial.copy()

    def non_trainable_values(self):
        """The model's non-trainable values (BN moving statistics), copied,
        in ``model.non_trainable_variables`` order."""
        return [v.copy() for v in self._fixed]

    def flatten(self, arrays):
        """Concatenates arrays shaped like the trainable variables (float64)."""
        arrays = list(arrays)
        if [tuple(np.shape(a)) for a in arrays] != self._shapes:
            raise ValueError("arrays do not match the model's trainable variables")
        if not arrays:
            return np.zeros(0)
        return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])

    def unflatten(self, w):
        """Splits a weight vector into arrays shaped like the trainable variables."""
        w = self._check_vector(w, "w")
        return [w[a:b].reshape(shape) for a, b, shape
                in zip(self._offsets[:-1], self._offsets[1:], self._shapes)]

    # ---------------------------------------------------------------- function
    def value(self, w, non_trainable=None):
        """f(w): mean cross-entropy over the data (float).

        Args:
            w: weight vector of length `num_params`.
            non_trainable: values for ``model.non_trainable_variables``; None
                for the model's own (only ``"moving"`` mode reads them).
        """
        return self.loss_and_accuracy(w, non_trainable)[0]

    def loss_and_accuracy(self, w, non_trainable=None):
        """(f(w), accuracy): mean cross-entropy and fraction classified right."""
        trainable, fixed = self._tensors(w, non_trainable)
        loss, correct = _sum_in_order(self._per_batch(self._loss_fn, trainable, fixed))
        return float(loss) / self.num_samples, float(correct) / self.num_samples

    def value_and_gradient(self, w, non_trainable=None):
        """(f(w), grad f(w)): the gradient is a float64 vector (`tf.GradientTape`)."""
        trainable, fixed = self._tensors(w, non_trainable)
        loss, gradient = _sum_in_order(self._per_batch(self._gradient_fn, trainable, fixed))
        return float(loss) / self.num_samples, gradient.numpy() / self.num_samples

    def gradient(self, w, non_trainable=None):
        """grad f(w) as a float64 vector."""
        return self.value_and_gradient(w, non_trainable)[1]

    def hessian_vector_product(self, w, v, non_trainable=None):
        """H(w) v, the Hessian of f at w times v (float64 vector).

        Forward-over-reverse: a `tf.autodiff.ForwardAccumulator` pushes the
        tangent v through the reverse-mode gradient, one pass per batch.
        """
        trainable, fixed = self._tensors(w, non_trainable)
        tangents = [tf.constant(part, dtype=tf.float32)
                    for part in self.unflatten(self._check_vector(v, "v"))]
        (product,) = _sum_in_order((p,) for p in self._per_batch(
            self._hvp_fn, trainable, tangents, fixed))
        return product.numpy() / self.num_samples

    def _per_batch(self, function, *args):
        """``function(*args, xb, yb)`` of every fixed batch, in batch order.

        Under a strategy with R replicas, R consecutive batches run at once,
        one per replica (`strategy.run`); their results come back one by one,
        in batch order, so that callers sum them as on one device. A last
        group of fewer than R batches runs the same way, the spare replicas
        repeating its first batch, whose repeats are dropped: every result
        is a gathered one, the same on every worker.
        """
        strategy, batches = self._strategy, self._batches
        if strategy is None or strategy.num_replicas_in_sync == 1:
            for xb, yb in batches:
                yield function(*args, xb, yb)
            return
        replicas = strategy.num_replicas_in_sync
        for start in range(0, len(batches), replicas):
            group = batches[start:start + replicas]
            real = len(group)  # the last group may be short: its other
            group = group + [group[0]] * (replicas - real)  # replicas repeat a batch

            def per_replica(context, group=group, part=0):
                return group[context.replica_id_in_sync_group][part]

            xb = strategy.experimental_distribute_values_from_function(per_replica)
            yb = strategy.experimental_distribute_values_from_function(
                functools.partial(per_replica, part=1))
            # Every replica's result, gathered in replica (= batch) order (on
            # every worker, across workers: all of them sum the same).
            gathered = self._gathering(function)(*args, xb, yb)
            for replica in range(real):  # the repeats are not summed
                yield tf.nest.map_structure(lambda g, i=replica: g[i], gathered)

    def _gathering(self, function):
        """``function`` run on every replica of the strategy, its results
        gathered along a new first axis (one compiled function each: the
        strategy runs inside it, not eagerly)."""
        key = ("gathering", function)
        if key not in self._lazy:
            strategy = self._strategy

            @tf.function
            def gathering(*values):
                results = strategy.run(
                    lambda *v: tf.nest.map_structure(lambda t: t[None], function(*v)),
                    args=values)
                return tf.nest.map_structure(lambda r: strategy.gather(r, axis=0), results)

            self._lazy[key] = gathering
        return self._lazy[key]

    # ----------------------------------------------------- per-example gradients
    def per_example_gradients(self, w, non_trainable=None, *, chunk=None):
        """The gradients g_i of every sample's cross-entropy, one row each (float64).

        Holds all N x n numbers at once: for small problems and tests; the
        noise scale needs only `gradient_moments`.

        Args:
            w: weight vector of length `num_params`.
            non_trainable: values for ``model.non_trainable_variables`` (None:
                the model's own).
            chunk: samples whose gradients are computed in one vectorized call
                (None: see `gradient_moments`).

        Returns:
            A ``(num_samples, num_params)`` float64 array, rows in data order;
            the rows sum to ``num_samples * gradient(w)``. With
            ``bn_eval="batch"`` row i is d l_i(w; batch)/dw (see
            `gradient_moments`).
        """
        trainable, fixed = self._tensors(w, non_trainable)
        chunk = self._chunk_rows(chunk, self.num_params)
        function = self._compiled("rows")
        rows = []
        for xb, yb in self._batches:
            size = int(xb.shape[0])
            for start in range(0, size, chunk):
                stop = min(start + chunk, size)
                rows.append(np.asarray(function(trainable, fixed, xb, yb, start, stop),
                                       dtype=np.float64))
        return np.concatenate(rows) if rows else np.zeros((0, self.num_params))

    def gradient_moments(self, w, non_trainable=None, *, chunk=None, group_size=None,
                         progress=None):
        """Sums of per-example gradients and of their squared norms, by group.

        What the gradient noise scale needs (`keras_sharpness.noise_scale`),
        without keeping the N per-example gradients g_i: for each group of
        consecutive samples, sum_i g_i (a float64 vector of length n) and
        sum_i |g_i|^2, plus every |g_i|^2.

        g_i is the gradient of sample i's cross-entropy l_i, f = mean_i l_i:

        * BN with moving statistics, or no BN: samples are independent, l_i
          depends on sample i only, and g_i is its usual per-example gradient,
          computed by `tf.vectorized_map` (pfor) over the samples. Dense layers
          (Keras' own, each sample's input a vector or a sequence of T
          vectors a_t, output gradients d_t) are not materialized: the kernel
          gradient of a sample is sum_t a_t d_t^T, its squared norm
          sum_{t,s} (a_t . a_s)(d_t . d_s) (Goodfellow 2015, "Efficient
          per-example gradient computations"; T = 1 for an MLP:
          |a|^2 |d|^2). Its cost is then about one gradient pass.
        * ``bn_eval="batch"``: l_i(w; batch) depends on the whole fixed batch
          through its statistics, and g_i is defined as d l_i(w; batch)/dw,
          so that the g_i of a batch sum to its gradient exactly. These are
          the rows of the Jacobian of the batch's vector of cross-entropies
          (`tf.GradientTape.jacobian` with pfor), computed ``chunk`` rows at a
          time; each row costs a backward pass through the whole batch, so a
          batch costs of the order of ``batch_size`` gradient passes of that
          batch (F1, batches of 1000, CPU: about 770; see
          benchmarks/bench_noise_scale.py).

        Args:
            w: weight vector of length `num_params`.
            non_trainable: values for ``model.non_trainable_variables`` (None:
                the model's own).
            chunk: samples per vectorized call. None: as many as keep the
                per-example numbers of one call (gradient rows, or with
                independent samples the gradients of what is not a Dense
                layer plus Dense layers' inputs and output gradients) near
                2**26 floats (256 MiB), at most a batch.
            group_size: samples per group; groups are consecutive samples of
                one fixed batch (the last of a batch possibly smaller). None:
                one group per fixed batch. With ``bn_eval="batch"`` the
                samples of a batch are not independent: keep whole batches.
            progress: optional callable, called with a short string after
                every fixed batch.

        Returns:
            `GradientMoments` (float64 sums, in data order).

        Raises:
            UserError: a bad ``chunk`` or ``group_size``.
        """
        if group_size is not None:
            if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 1:
                raise UserError(
                    f"group_size must be a positive integer or None, got {group_size!r}")
            group_size = int(group_size)
        trainable, fixed = self._tensors(w, non_trainable)
        if self.bn_eval == "batch":
            function = self._compiled("batch_moments")
            per_row = self.num_params
        else:
            function = self._compiled("moments")
            per_row = self._lazy["moments_row_floats"]
        chunk = self._chunk_rows(chunk, per_row)
        sums, square_sums, counts, batch_of_group, square_norms = [], [], [], [], []
        for index, (xb, yb) in enumerate(self._batches):
            size = int(xb.shape[0])
            length = size if group_size is None else group_size
            for first in range(0, size, length):
                last = min(first + length, size)
                total, norms = np.zeros(self.num_params), []
                for start in range(first, last, chunk):
                    stop = min(start + chunk, last)
                    chunk_norms, chunk_sum = function(trainable, fixed, xb, yb, start, stop)
                    total += chunk_sum.numpy()
                    norms.append(np.asarray(chunk_norms, dtype=np.float64))
                sums.append(total)
                square_norms.extend(norms)
                square_sums.append(float(np.sum(np.concatenate(norms))))
                counts.append(last - first)
                batch_of_group.append(index)
            if progress is not None:
                progress(f"per-example gradients: batch {index + 1}/{len(self._batches)}")
        return GradientMoments(
            gradient_sums=np.stack(sums), square_norm_sums=np.asarray(square_sums),
            counts=np.asarray(counts, dtype=np.int64),
            batch_of_group=np.asarray(batch_of_group, dtype=np.int64),
            square_norms=np.concatenate(square_norms))

    # ------------------------------------------------------------------- views
    def batch_objectives(self, size):
        """Views of f over consecutive chunks of ``size`` samples (data order).

        View k is the objective of samples ``[k*size, (k+1)*size)`` (the last
        chunk possibly smaller), evaluated in batches of
        ``min(size, batch_size)``: exactly a `TrainingLoss` built on that
        chunk with that batch size. Views are `TrainingLoss` objects sharing
        this one's model copy and compiled functions (no cloning, no
        retracing); every method works on them, and the size-weighted mean
        of their values is f when their batches are f's (always without
        batch-statistics BN).

        Args:
            size: samples per chunk, at least 1 (m of m-sharpness).

        Returns:
            A list of ``ceil(num_samples / size)`` objectives.

        Raises:
            UserError: ``size`` is not a positive integer.
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise UserError(f"size must be a positive integer, got {size!r}")
        size = int(size)
        x = tf.concat([xb for xb, _ in self._batches], 0)
        y = tf.concat([yb for _, yb in self._batches], 0)
        views = []
        for start in range(0, self.num_samples, size):
            stop = min(start + size, self.num_samples)
            view = copy.copy(self)  # shares the model, compiled functions and _lazy
            view.batch_size = min(size, self.batch_size)
            view.num_samples = stop - start
            step = view.batch_size
            ends = [(s, min(s + step, stop)) for s in range(start, stop, step)]
            view._batches = [(x[a:b], y[a:b]) for a, b in ends]
            views.append(view)
        return views

    # --------------------------------------------------------------- internals
    def _check_vector(self, w, name):
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.num_params,):
            raise ValueError(f"{name} must have shape ({self.num_params},), got {w.shape}")
        return w

    def _tensors(self, w, non_trainable):
        trainable = [tf.constant(part, dtype=tf.float32) for part in self.unflatten(w)]
        values = self._fixed if non_trainable is None else list(non_trainable)
        if len(values) != len(self._fixed) or any(
                tuple(np.shape(a)) != b.shape for a, b in zip(values, self._fixed)):
            raise ValueError("non_trainable does not match the model's non-trainable variables")
        fixed = [tf.constant(np.asarray(a), dtype=dtype)
                 for a, dtype in zip(values, self._fixed_dtypes)]
        return trainable, fixed

    def _chunk_rows(self, chunk, per_row):
        """Samples per vectorized call: ``chunk`` checked, or chosen by memory."""
        if chunk is None:
            return max(1, min(self.batch_size, _CHUNK_FLOATS // max(1, int(per_row))))
        if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
            raise UserError(f"chunk must be a positive integer or None, got {chunk!r}")
        return int(chunk)

    def _compiled(self, name):
        """The per-example functions, traced on first use (one trace each)."""
        if name not in self._lazy:
            self._lazy.update(_per_example_functions(self))
        return self._lazy[name]

    def _compile(self):
        model = self._model

        def sum_and_correct(trainable, fixed, xb, yb):
            logits, _ = model.stateless_call(trainable, fixed, xb, training=False)
            return _cross_entropy_sum_and_correct(logits, yb)

        def flat(tensors):
            return tf.concat([tf.reshape(tf.cast(t, tf.float64), [-1]) for t in tensors], 0)

        def loss_fn(trainable, fixed, xb, yb):
            return sum_and_correct(trainable, fixed, xb, yb)

        def gradient_fn(trainable, fixed, xb, yb):
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                loss, _ = sum_and_correct(trainable, fixed, xb, yb)
            return loss, flat(tape.gradient(loss, trainable))

        def hvp_fn(trainable, tangents, fixed, xb, yb):
            with tf.autodiff.ForwardAccumulator(trainable, tangents) as accumulator:
                with tf.GradientTape() as tape:
                    tape.watch(trainable)
                    loss, _ = sum_and_correct(trainable, fixed, xb, yb)
                gradient = tape.gradient(loss, trainable)
            return flat(accumulator.jvp(gradient, unconnected_gradients="zero"))

        # One trace for every batch size: the batch axis is left unknown.
        weights = [tf.TensorSpec(s, tf.float32) for s in self._shapes]
        fixed = [tf.TensorSpec(a.shape, d) for a, d in zip(self._fixed, self._fixed_dtypes)]
        xb, yb = self._batches[0]
        data = [tf.TensorSpec([None, *xb.shape[1:]], tf.float32),
                tf.TensorSpec([None], tf.int64)]
        self._loss_fn = tf.function(loss_fn, input_signature=[weights, fixed, *data])
        self._gradient_fn = tf.function(gradient_fn, input_signature=[weights, fixed, *data])
        self._hvp_fn = tf.function(hvp_fn, input_signature=[weights, weights, fixed, *data])


def _sum_in_order(results):
    """Per-field float64 sums of per-batch result tuples, added in batch order.

    The sums stay tensors until the caller reads them: no batch waits for
    the one before it to reach Python, and the float64 additions are the
    ones NumPy would make, in the same order (IEEE addition), so the values
    are those of summing in NumPy.
    """
    totals = None
    for result in results:
        parts = [tf.cast(part, tf.float64) for part in result]
        totals = parts if totals is None else [a + b for a, b in zip(totals, parts)]
    return totals


def _check_compatible(model, x, y):
    """UserError unless `model` takes inputs shaped like `x` and has enough outputs."""
    try:
        expected = tuple(model.input_shape)[1:]
    except (AttributeError, ValueError):
        expected = None
    if expected is not None and not isinstance(expected[0], (tuple, list)):
        got = tuple(x.shape[1:])
        if len(expected) != len(got) or any(
                e is not None and e != g for e, g in zip(expected, got)):
            raise UserError(f"model {model.name} takes inputs of shape "
                            f"{tuple(None if e is None else e for e in expected)}, "
                            f"but the data has shape {got}")
    try:
        num_outputs = tuple(model.output_shape)[-1]
    except (AttributeError, ValueError, TypeError):
        num_outputs = None
    if y.min() < 0 or (num_outputs is not None and y.max() >= num_outputs):
        raise UserError(f"labels range over [{int(y.min())}, {int(y.max())}] but model "
                        f"{model.name} has {num_outputs} outputs")


# ------------------------------------------------------- per-example gradients
# While a tapped forward pass is traced, `_TAPS.records` collects the inputs and
# a zero "tap" added to the output of every tapped Dense layer; the gradient
# with respect to a tap is the gradient with respect to the layer's
# pre-activation. Outside such a trace the tapped layer is a plain Dense.
_TAPS = threading.local()


class _TappedDense(keras.layers.Dense):
    """`keras.layers.Dense` that exposes its inputs and output gradients."""

    def call(self, inputs, training=None):
        records = getattr(_TAPS, "records", None)
        if records is None:
            return super().call(inputs, training=training)
        z = keras.ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            z = keras.ops.add(z, self.bias)
        tap = tf.zeros_like(z)
        _TAPS.tape.watch(tap)
        records.append((self, inputs, tap))
        z = z + tap
        return self.activation(z) if self.activation is not None else z


def _tapped_model(model):
    """A copy of the evaluation model with Keras Dense layers tapped, and the
    tapped layers as ``{layer: (kernel index, bias index or None)}`` into its
    trainable variables; ``(model, {})`` when it cannot be copied."""

    def clone_layer(layer):
        config = layer.get_config()
        if (type(layer) is keras.layers.Dense and not getattr(layer, "lora_enabled", False)
                and getattr(layer, "quantization_mode", None) is None):
            return _TappedDense.from_config(config)
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    except Exception:  # noqa: BLE001 (subclassed or exotic: no taps, still exact)
        return model, {}
    if ([tuple(v.shape) for v in clone.trainable_variables]
            != [tuple(v.shape) for v in model.trainable_variables]
            or len(clone.non_trainable_variables) != len(model.non_trainable_variables)):
        return model, {}
    variables = clone.trainable_variables
    position = {id(v): i for i, v in enumerate(variables)}
    tapped = {}
    for layer in clone._flatten_layers(include_self=False):
        if isinstance(layer, _TappedDense) and id(layer._kernel) in position:
            bias = None if layer.bias is None else position.get(id(layer.bias))
            if layer.bias is None or bias is not None:
                tapped[layer] = (position[id(layer._kernel)], bias)
    return clone, tapped


def _per_example_functions(objective):
    """The compiled per-example functions of `objective` (see its methods).

    Each takes ``(trainable, fixed, xb, yb, start, stop)`` and works on rows
    ``start:stop`` of the batch ``xb, yb``:

    * ``"rows"``: the ``(stop - start, n)`` float32 per-example gradients;
    * ``"moments"`` (independent samples) and ``"batch_moments"``
      (batch-statistics BN): their squared norms (float32) and their sum
      (float64 vector);
    * ``"moments_row_floats"``: per-sample floats one ``"moments"`` call holds.
    """
    model = objective._model
    zero = tf.UnconnectedGradients.ZERO

    def flat(tensors, rows):
        return tf.concat([tf.reshape(t, [rows, -1]) for t in tensors], 1)

    def sample_gradient(trainable, fixed):
        def gradient(args):
            x, y = args
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                logits, _ = model.stateless_call(trainable, fixed, x[None], training=False)
                loss = tf.reduce_sum(_cross_entropies(logits, y[None]))
            return flat(tape.gradient(loss, trainable, unconnected_gradients=zero), 1)[0]
        return gradient

    def jacobian_rows(trainable, fixed, xb, yb, start, stop):
        # Row i: d l_i(w; batch)/dw, the whole batch in the forward pass.
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            logits, _ = model.stateless_call(trainable, fixed, xb, training=False)
            rows = _cross_entropies(logits, yb)[start:stop]
        jacobian = tape.jacobian(rows, trainable, unconnected_gradients=zero,
                                 experimental_use_pfor=True)
        return flat(jacobian, stop - start)

    def rows_fn(trainable, fixed, xb, yb, start, stop):
        if objective.bn_eval == "batch":
            return jacobian_rows(trainable, fixed, xb, yb, start, stop)
        return tf.vectorized_map(sample_gradient(trainable, fixed),
                                 (xb[start:stop], yb[start:stop]))

    def batch_moments_fn(trainable, fixed, xb, yb, start, stop):
        rows = jacobian_rows(trainable, fixed, xb, yb, start, stop)
        return (tf.reduce_sum(tf.square(rows), 1),
                tf.cast(tf.reduce_sum(rows, 0), tf.float64))

    tapped_model, tapped = _tapped_model(model)
    taken = {i for pair in tapped.values() for i in pair if i is not None}
    others = [i for i in range(len(objective._shapes)) if i not in taken]
    layer_order = []  # tapped layers in the order of their calls (set while tracing)

    def moments_fn(trainable, fixed, xb, yb, start, stop):
        def sample(args):
            x, y = args
            records = []
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                _TAPS.records, _TAPS.tape = records, tape
                try:
                    logits, _ = tapped_model.stateless_call(trainable, fixed, x[None],
                                                            training=False)
                finally:
                    _TAPS.records = _TAPS.tape = None
                loss = tf.reduce_sum(_cross_entropies(logits, y[None]))
            records = [r for r in records if r[0] in tapped]
            gradients = tape.gradient(loss, [trainable[i] for i in others]
                                      + [tap for _, _, tap in records], unconnected_gradients=zero)
            layer_order[:] = [layer for layer, _, _ in records]
            inputs = [tf.reshape(a, [-1, a.shape[-1]]) for _, a, _ in records]
            deltas = [tf.reshape(d, [-1, d.shape[-1]]) for d in gradients[len(others):]]
            return gradients[:len(others)], inputs, deltas

        other_grads, inputs, deltas = tf.vectorized_map(sample, (xb[start:stop], yb[start:stop]))
        rows = stop - start
        norms = tf.zeros([rows], tf.float32)
        sums = [None] * len(objective._shapes)
        for i, g in zip(others, other_grads):
            norms += tf.reduce_sum(tf.reshape(tf.square(g), [rows, -1]), 1)
            sums[i] = tf.reduce_sum(g, 0)
        for layer, (kernel, bias) in tapped.items():
            calls = [k for k, other in enumerate(layer_order) if other is layer]
            if not calls:
                continue
            # A layer called several times: its calls are more rows t.
            a = tf.concat([inputs[k] for k in calls], 1)   # (rows, T, d)
            d = tf.concat([deltas[k] for k in calls], 1)   # (rows, T, h)
            if a.shape[1] == 1:
                norms += tf.reduce_sum(tf.square(a), [1, 2]) * tf.reduce_sum(tf.square(d), [1, 2])
            else:
                norms += tf.reduce_sum(tf.einsum("rtd,rsd->rts", a, a)
                                       * tf.einsum("rth,rsh->rts", d, d), [1, 2])
            sums[kernel] = tf.einsum("rtd,rth->dh", a, d)
            if bias is not None:
                per_sample = tf.reduce_sum(d, 1)
                norms += tf.reduce_sum(tf.square(per_sample), 1)
                sums[bias] = tf.reduce_sum(per_sample, 0)
        sums = [tf.zeros(shape) if t is None else t for t, shape in zip(sums, objective._shapes)]
        return norms, tf.concat([tf.reshape(tf.cast(t, tf.float64), [-1]) for t in sums], 0)

    weights = [tf.TensorSpec(shape, tf.float32) for shape in objective._shapes]
    fixed = [tf.TensorSpec(a.shape, d) for a, d in zip(objective._fixed, objective._fixed_dtypes)]
    xb, _ = objective._batches[0]
    signature = [weights, fixed, tf.TensorSpec([None, *xb.shape[1:]], tf.float32),
                 tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32),
                 tf.TensorSpec([], tf.int32)]
    row_floats = (sum(objective._sizes[i] for i in others)
                  + sum(layer.kernel.shape[0] + layer.kernel.shape[1] for layer in tapped))
    return {
        "rows": _ranged(tf.function(rows_fn, input_signature=signature)),
        "moments": _ranged(tf.function(moments_fn, input_signature=signature)),
        "batch_moments": _ranged(tf.function(batch_moments_fn, input_signature=signature)),
        "moments_row_floats": row_floats,
    }


def _ranged(function):
    """Passes Python row bounds as int32 tensors (one trace for all of them)."""
    def call(trainable, fixed, xb, yb, start, stop):
        return function(trainable, fixed, xb, yb, tf.constant(start, tf.int32),
                        tf.constant(stop, tf.int32))
    return call
