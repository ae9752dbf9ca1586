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
"""

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

    Raises:
        UserError: empty data, labels out of range, a bad ``bn_eval``,
            ``batch_size`` or ``num_samples``, or inputs the model cannot take.
    """

    def __init__(self, model, x, y, *, bn_eval=None, batch_size=1000,
                 num_samples=None, seed=0):

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
        loss, correct = 0.0, 0.0
        for xb, yb in self._batches:
            batch_loss, batch_correct = self._loss_fn(trainable, fixed, xb, yb)
            loss += float(batch_loss)
            correct += float(batch_correct)
        return loss / self.num_samples, correct / self.num_samples

    def value_and_gradient(self, w, non_trainable=None):
        """(f(w), grad f(w)): the gradient is a float64 vector (`tf.GradientTape`)."""
        trainable, fixed = self._tensors(w, non_trainable)
        loss = 0.0
        gradient = np.zeros(self.num_params)
        for xb, yb in self._batches:
            batch_loss, batch_gradient = self._gradient_fn(trainable, fixed, xb, yb)
            loss += float(batch_loss)
            gradient += batch_gradient.numpy()
        return loss / self.num_samples, gradient / self.num_samples

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
        product = np.zeros(self.num_params)
        for xb, yb in self._batches:
            product += self._hvp_fn(trainable, tangents, fixed, xb, yb).numpy()
        return product / self.num_samples

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
