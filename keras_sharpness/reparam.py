"""Function-preserving rescalings of a ReLU/BatchNorm network (Dinh et al., 2017).

Dinh, Pascanu, Bengio and Bengio, *Sharp Minima Can Generalize For Deep
Nets* (ICML 2017), observe that many weight vectors compute the same
function, so a sharpness measure that is not invariant under these
reparameterizations can be made as large or small as one likes without
changing what the network predicts. `rescale` builds such a twin of a Keras
model; `invariance` measures before and after and says which measures moved.

Rescalable pairs
----------------
A **pair** is a producer layer P and a consumer layer C such that the output
of P reaches C only through layers that commute with multiplication by a
positive number alpha (ReLU, LeakyReLU, linear activations, pooling, Flatten,
Reshape, Dropout, padding, cropping, permutation: the "transparent" layers),
and nowhere else (one consumer, not a model output). For alpha > 0:

* **producer** (its output is multiplied by alpha):

  - a Dense/Conv layer with a linear or ReLU activation: kernel and bias
    times alpha (non-negative homogeneity of ReLU);
  - a BatchNormalization with a scale (gamma): gamma and beta times alpha
    (its output ``gamma * xhat + beta`` is affine in them).

* **consumer** (undoes the factor):

  - a Dense/Conv layer: kernel times 1/alpha (it is linear in its input; its
    bias is untouched);
  - a BatchNormalization (Keras' or `SwitchableBatchNormalization`): with
    batch statistics ``(alpha x - alpha m) / sqrt(alpha^2 v + eps')`` equals
    the original when ``eps' = alpha^2 eps``; with moving statistics the
    moving mean and variance become ``alpha m`` and ``alpha^2 v``. Both are
    applied, so the twin computes the same function in **both** BN modes.
    The epsilon is a constant of the layer's config: it is scaled in the
    twin's config. (Without it BN is only approximately scale invariant, off
    by O(eps / v), which a float32 check at 1e-4 notices.)

Dense/Conv followed directly by BatchNormalization is the empty-chain case
(Dinh et al.'s "BN makes the preceding weights scale invariant"); Dense -
ReLU - Dense the classic one; in the networks of `keras_sharpness.networks`
(Dense/Conv - BN - ReLU - Dense/Conv) both occur: (Dense, BN) and
(BN, next Dense) pairs.

Which pairs are rescaled (``pairs``): all of them (None, the default), a
seeded random subset of a given size (an int; ``np.random.default_rng(seed)``),
or the pairs whose producers are named (a list of layer names). Pairs compose
multiplicatively: a layer that consumes one pair and produces the next gets
both factors (e.g. in F1 the hidden Dense kernels are times alpha for their BN
and times 1/alpha for the preceding BN's gamma: net 1, while the first
kernel, gammas and betas grow by alpha and the logits kernel shrinks by it).

Shared layers (called more than once in the model) and nested models are
never part of a pair. Subclassed models cannot be cloned and are refused.
"""

import collections
import dataclasses

import numpy as np

from keras_sharpness.errors import UserError

#: Relative tolerance of the output check of `rescale` (float32 outputs):
#: max |out_twin - out| <= PROBE_RTOL * max |out|.
PROBE_RTOL = 1e-4
#: Samples of the seeded Gaussian probe batch (several: BN batch statistics).
PROBE_SAMPLES = 16
#: Size given to input axes of unknown size (None) in the probe batch.
PROBE_UNKNOWN_SIZE = 8
#: Default tolerance of `invariance`: |relative change| at or below it counts
#: as invariant. Float32 evaluation moves f by ~1e-6 relative; Dinh's
#: rescalings move non-invariant measures by factors of order alpha.
INVARIANCE_RTOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Pair:
    """One rescalable (producer, consumer) pair of a model, by layer name.

    Attributes:
        producer: name of the layer whose output is multiplied by alpha.
        consumer: name of the layer that undoes it.
        consumer_kind: ``"linear"`` (Dense/Conv kernel / alpha) or
            ``"batchnorm"`` (statistics and epsilon scaled).
        between: names of the transparent layers between them.
    """

    producer: str
    consumer: str
    consumer_kind: str
    between: tuple

    def to_dict(self):
        return {"producer": self.producer, "consumer": self.consumer,
                "consumer_kind": self.consumer_kind, "between": list(self.between)}


def _kernel_layer_types():
    import keras

    return tuple(getattr(keras.layers, name) for name in ("Dense", "Conv1D", "Conv2D", "Conv3D"))


def _transparent_types():
    import keras

    names = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
             "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
             "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
             "GlobalAveragePooling2D", "GlobalAveragePooling3D", "Flatten", "Reshape",
             "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
             "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
             "Cropping3D", "Permute", "Identity", "LeakyReLU")
    return tuple(getattr(keras.layers, name) for name in names if hasattr(keras.layers, name))


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", None) or str(activation)


def _is_transparent(layer):
    """Whether layer(alpha x) == alpha layer(x) for every alpha > 0."""
    import keras

    if type(layer) is keras.layers.Activation:
        return _activation_name(layer) in ("relu", "linear")
    if type(layer) is keras.layers.ReLU:
        return layer.max_value is None and float(layer.threshold) == 0.0
    return isinstance(layer, _transparent_types())


def _producer_kind(layer):
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return "batchnorm" if layer.gamma is not None else None
    if isinstance(layer, _kernel_layer_types()):
        return "linear" if _activation_name(layer) in ("relu", "linear") else None
    return None


def _consumer_kind(layer):
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return "batchnorm"
    if isinstance(layer, _kernel_layer_types()):
        return "linear"
    return None


def _functional(model):
    """The functional graph of `model` (Sequential: its inner functional)."""
    import keras

    graph = model._functional if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes_by_depth"):
        raise UserError(f"model {model.name} has no layer graph (subclassed, or a Sequential "
                        f"model without an Input): build it as a functional or Sequential "
                        f"model with an Input")
    return graph


def rescalable_pairs(model):
    """Every rescalable (producer, consumer) pair of `model`, in layer order.

    Returns:
        A list of `Pair` (see the module doc for what qualifies).

    Raises:
        UserError: a subclassed model (no layer graph).
    """
    import keras

    graph = _functional(model)
    nodes = [node for depth in sorted(graph._nodes_by_depth, reverse=True)
             for node in graph._nodes_by_depth[depth]]
    uses = collections.Counter(id(node.operation) for node in nodes)
    consumers = collections.defaultdict(list)
    for node in nodes:
        for tensor in node.input_tensors:
            consumers[id(tensor)].append(node)
    outputs = {id(t) for t in graph.outputs}

    def usable(layer):
        return uses[id(layer)] == 1 and not isinstance(layer, keras.Model)

    pairs = []
    for layer in graph.layers:
        if not usable(layer) or _producer_kind(layer) is None:
            continue
        node = next(n for n in nodes if n.operation is layer)
        if len(node.outputs) != 1:
            continue
        tensor, between = node.outputs[0], []
        while id(tensor) not in outputs and len(consumers[id(tensor)]) == 1:
            following = consumers[id(tensor)][0]
            nxt = following.operation
            if not usable(nxt) or len(following.input_tensors) != 1:
                break
            if _is_transparent(nxt) and len(following.outputs) == 1:
                between.append(nxt.name)
                tensor = following.outputs[0]
                continue
            kind = _consumer_kind(nxt)
            if kind is not None:
                pairs.append(Pair(layer.name, nxt.name, kind, tuple(between)))
            break
    return pairs


def _select(pairs, selection, seed, model_name):
    if selection is None:
        return list(pairs)
    if isinstance(selection, (int, np.integer)) and not isinstance(selection, bool):
        if not 1 <= int(selection) <= len(pairs):
            raise UserError(f"pairs must be between 1 and {len(pairs)} (the rescalable pairs "
                            f"of model {model_name}), got {selection}")
        chosen = np.random.default_rng(seed).choice(len(pairs), size=int(selection),
                                                    replace=False)
        return [pairs[i] for i in sorted(chosen)]
    names = [str(s) for s in selection]
    known = {p.producer: p for p in pairs}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"pairs names no rescalable producer layer of model {model_name}: "
                        f"{', '.join(unknown) or '(empty list)'}; producers are "
                        f"{', '.join(known) or 'none'}")
    return [known[n] for n in dict.fromkeys(names)]


def _factors(model, selected, alpha):
    """{id(variable): factor} and {consumer BN name: epsilon factor}."""
    layers = {layer.name: layer for layer in _functional(model).layers}
    factors = collections.defaultdict(lambda: 1.0)
    epsilon = {}

    def scale(variable, factor):
        if variable is not None:
            factors[id(variable)] *= factor

    for pair in selected:
        producer, consumer = layers[pair.producer], layers[pair.consumer]
        if _producer_kind(producer) == "batchnorm":
            scale(producer.gamma, alpha)
            scale(producer.beta, alpha)
        else:
            scale(producer.kernel, alpha)
            scale(producer.bias, alpha)
        if pair.consumer_kind == "batchnorm":
            scale(consumer.moving_mean, alpha)
            scale(consumer.moving_variance, alpha ** 2)
            epsilon[consumer.name] = alpha ** 2
        else:
            scale(consumer.kernel, 1.0 / alpha)
    return factors, epsilon


def _probe_outputs(model, x, bn_eval):
    """Logits of `model` on x as `TrainingLoss` computes them (BN as asked)."""
    from keras_sharpness.objective import evaluation_model

    clone, _ = evaluation_model(model, bn_eval)
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]
    outputs, _ = clone.stateless_call(trainable, fixed, x, training=False)
    return np.asarray(outputs, np.float64)


def rescale(model, alpha=10.0, *, seed=0, pairs=None, rtol=PROBE_RTOL):
    """A twin of `model` with rescaled weights that computes the same function.

    Dinh et al. (2017); see the module doc for the pairs and what each does.

    Example::

        twin = rescale(model, alpha=10.0)       # twin(x) == model(x), weights differ
        ks.TrainingLoss(twin, x, y).value(...)  # same f at the twin's weights

    Args:
        model: a functional or Sequential `keras.Model`. Not modified.
        alpha: the positive factor of every selected pair.
        seed: seed of the random subset of pairs (``pairs`` an int) and of the
            probe batch of the output check.
        pairs: None (every rescalable pair), an int (a seeded random subset of
            that many), or a list of producer layer names (`rescalable_pairs`).
        rtol: tolerance of the output check (module constant `PROBE_RTOL`).

    Returns:
        A new `keras.Model`, same architecture (`keras.models.clone_model`;
        only the epsilon of BN consumers differs, times alpha^2), with the
        rescaled weights and BN moving statistics. After building it, the
        logits of both on a seeded Gaussian probe batch are compared in every
        BN evaluation mode (``"batch"`` and ``"moving"`` when the model has
        BN): max deviation <= rtol * max |logit|.

    Raises:
        UserError: alpha not positive, a model with no rescalable pair or
            several inputs, a bad ``pairs``, or a twin whose outputs differ (a layer that is not what
            its class says, e.g. a subclass of Dense with another call).
    """
    import keras

    from keras_sharpness.layers import batchnorm_layers

    alpha = float(alpha)
    if not (np.isfinite(alpha) and alpha > 0):
        raise UserError(f"alpha must be a positive number, got {alpha}")
    found = rescalable_pairs(model)
    if not found:
        raise UserError(f"model {model.name} has no rescalable layer pair (Dense/Conv or "
                        f"BatchNorm followed, through ReLU/pooling only, by Dense/Conv or "
                        f"BatchNorm)")
    selected = _select(found, pairs, seed, model.name)
    factors, epsilon = _factors(model, selected, alpha)

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in epsilon:
            config["epsilon"] = float(config["epsilon"]) * epsilon[layer.name]
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone_layer)
    old, new = list(model.weights), list(twin.weights)
    if [tuple(v.shape) for v in old] != [tuple(v.shape) for v in new]:
        raise UserError(f"model {model.name} cannot be cloned faithfully "
                        f"(its weights differ from its clone's)")
    values = []
    for v in old:
        value = v.numpy()
        if id(v) in factors:  # scaled in float64, stored in the variable's dtype
            value = (value.astype(np.float64) * factors[id(v)]).astype(value.dtype)
        values.append(value)
    twin.set_weights(values)

    if len(model.inputs) != 1:
        raise UserError(f"model {model.name} has {len(model.inputs)} inputs; rescale checks "
                        f"single-input models")
    # Unknown sizes (None) get PROBE_UNKNOWN_SIZE.
    shape = [PROBE_UNKNOWN_SIZE if d is None else int(d) for d in model.inputs[0].shape[1:]]
    x = np.random.default_rng(seed).standard_normal(
        (PROBE_SAMPLES, *shape)).astype(np.float32)
    modes = ("batch", "moving") if batchnorm_layers(model) else (None,)
    for mode in modes:
        before, after = _probe_outputs(model, x, mode), _probe_outputs(twin, x, mode)
        deviation = float(np.max(np.abs(after - before)))
        scale = max(float(np.max(np.abs(before))), np.finfo(np.float32).tiny)
        if not deviation <= rtol * scale:
            raise UserError(f"rescaled model {model.name} computes another function "
                            f"(BN {mode or 'none'}: max logit deviation {deviation:.3g} > "
                            f"{rtol:g} x {scale:.3g}); a layer is not what its class says")
    return twin


def invariance(model, make_objective, measures, *, alpha=10.0, seed=0, pairs=None,
               rtol=INVARIANCE_RTOL):
    """Each measure before and after a function-preserving rescaling.

    Example::

        rows = invariance(model, lambda m: ks.TrainingLoss(m, x, y),
                          {"f": lambda f: f.value(f.initial_point()),
                           "lambda_max": lambda f: ks.top_eigenvalues(f).eigenvalues[0]})

    Args:
        model: a functional or Sequential `keras.Model` (not modified).
        make_objective: callable(model) -> objective (a `TrainingLoss`); called
            once for `model` and once for its rescaled twin.
        measures: dict name -> callable(objective) -> float, evaluated at the
            objective's own point (``objective.initial_point()``).
        alpha, seed, pairs: passed to `rescale`.
        rtol: a measure is invariant when |relative change| <= rtol
            (default `INVARIANCE_RTOL`).

    Returns:
        One dict per measure, in the order given: ``measure``, ``before``,
        ``after``, ``relative_change`` = (after - before) / |before| (when
        before is 0: 0.0 if after is too, else None, not invariant) and
        ``invariant`` (a bool).
    """
    if not measures:
        raise UserError("measures must name at least one measure")
    rtol = float(rtol)
    if not rtol >= 0:
        raise UserError(f"rtol must be non-negative, got {rtol}")
    twin = rescale(model, alpha, seed=seed, pairs=pairs)
    objective_before, objective_after = make_objective(model), make_objective(twin)
    rows = []
    for name, measure in measures.items():
        before, after = float(measure(objective_before)), float(measure(objective_after))
        if before != 0.0:
            change = (after - before) / abs(before)
        else:
            change = 0.0 if after == 0.0 else None
        rows.append({"measure": str(name), "before": before, "after": after,
                     "relative_change": change,
                     "invariant": change is not None and abs(change) <= rtol})
    return rows
