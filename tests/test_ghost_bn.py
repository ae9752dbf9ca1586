"""Ghost Batch Normalization (Hoffer et al. 2017): the math against NumPy."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sharpness.errors import UserError
from keras_sharpness.layers import (SwitchableBatchNormalization, batchnorm_layers,
                                    has_batch_norm, set_virtual_batch_size,
                                    with_ghost_batch_norm)

EPSILON = 1e-3
MOMENTUM = 0.9


def batch(shape, seed=0):
    rng = np.random.default_rng(seed)
    # Per-channel offsets and scales, so that statistics matter.
    return (rng.normal(size=shape) * rng.uniform(0.5, 3, shape[-1])
            + rng.normal(size=shape[-1]) * 2).astype(np.float32)


def layer_for(x, virtual_batch_size=None, seed=1):
    """A built layer with random gamma / beta and moving statistics."""
    layer = SwitchableBatchNormalization(virtual_batch_size=virtual_batch_size,
                                         momentum=MOMENTUM, epsilon=EPSILON)
    layer.build(x.shape)
    rng = np.random.default_rng(seed)
    channels = x.shape[-1]
    layer.set_weights([rng.uniform(0.5, 2, channels), rng.normal(size=channels),
                       rng.normal(size=channels), rng.uniform(0.5, 2, channels)])
    return layer


def ghost_reference(x, g, gamma, beta):
    """NumPy Ghost BN: each run of g samples (the last may be shorter) on its own.

    Returns:
        The outputs and the ghost batches' (size, mean, variance).
    """
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))  # samples and spatial axes
    outputs, ghosts = [], []
    for start in range(0, len(x), g):
        part = x[start:start + g]
        mean, variance = part.mean(axis=axes), part.var(axis=axes)
        outputs.append((part - mean) / np.sqrt(variance + EPSILON) * gamma + beta)
        ghosts.append((len(part), mean, variance))
    return np.concatenate(outputs), ghosts


@pytest.mark.parametrize("shape", [(8, 5), (6, 3, 3, 4)], ids=["dense", "conv"])
@pytest.mark.parametrize("extra", [0, 5], ids=["g==B", "g>B"])
def test_ghost_bn_equals_plain_bn_when_one_ghost_batch(shape, extra):
    x = tf.constant(batch(shape))
    ghost, plain = layer_for(x, shape[0] + extra), layer_for(x, None)
    outputs = []
    for layer in (ghost, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.sin(y))
        gradients = tape.gradient(loss, [x, layer.gamma, layer.beta])
        outputs.append((y.numpy(), [g.numpy() for g in gradients],
                        [w.numpy() for w in layer.weights]))
    (y_ghost, grad_ghost, w_ghost), (y_plain, grad_plain, w_plain) = outputs
    np.testing.assert_array_equal(y_ghost, y_plain)
    for a, b in zip(w_ghost, w_plain):  # gamma, beta, moving mean and variance
        np.testing.assert_array_equal(a, b)
    # Keras stops the gradient through the mean inside the variance (zero in
    # exact arithmetic), so gradients agree to rounding.
    for a, b in zip(grad_ghost, grad_plain):  # inputs, gamma, beta
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("shape, g", [((12, 5), 4), ((10, 5), 4), ((10, 5), 1),
                                      ((8, 3, 3, 4), 2), ((7, 3, 3, 4), 3)],
                         ids=["dense", "dense-remainder", "dense-g1", "conv",
                              "conv-remainder"])
def test_ghost_outputs_and_moving_statistics_match_numpy(shape, g):
    x = batch(shape)
    layer = layer_for(x, g)
    gamma, beta, moving_mean, moving_variance = [w.numpy().astype(np.float64)
                                                 for w in layer.weights]
    y = layer(x, training=True).numpy()
    expected, ghosts = ghost_reference(x, g, gamma, beta)
    np.testing.assert_allclose(y, expected, atol=2e-5)
    # Moving statistics: one update with the ghost statistics averaged over
    # the samples (a short last ghost batch weighs its size).
    sizes = np.array([n for n, _, _ in ghosts], np.float64)[:, None]
    mean = (sizes * [m for _, m, _ in ghosts]).sum(0) / sizes.sum()
    variance = (sizes * [v for _, _, v in ghosts]).sum(0) / sizes.sum()
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               MOMENTUM * moving_mean + (1 - MOMENTUM) * mean, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               MOMENTUM * moving_variance + (1 - MOMENTUM) * variance,
                               atol=1e-6)


def test_equal_ghost_batches_follow_keras2_rule():
    """g divides B: the moving statistics take the plain mean over ghost batches."""
    x = batch((12, 2, 2, 3))
    layer = layer_for(x, 3)
    start = [w.numpy().astype(np.float64) for w in layer.weights[2:]]
    layer(x, training=True)
    ghosts = x.astype(np.float64).reshape(4, 3 * 2 * 2, 3)
    mean = ghosts.mean(axis=1).mean(axis=0)          # == the batch mean
    variance = ghosts.var(axis=1).mean(axis=0)        # within-ghost variance
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0), atol=1e-5)
    assert np.all(variance < x.reshape(-1, 3).var(0))
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               MOMENTUM * start[0] + (1 - MOMENTUM) * mean, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               MOMENTUM * start[1] + (1 - MOMENTUM) * variance, atol=1e-6)


def test_evaluation_is_unchanged_by_ghost_batches():
    x = batch((10, 4))
    for bn_eval in ("batch", "moving"):
        ghost, plain = layer_for(x, 3), layer_for(x, None)
        ghost.bn_eval = plain.bn_eval = bn_eval
        np.testing.assert_array_equal(ghost(x, training=False).numpy(),
                                      plain(x, training=False).numpy())
        np.testing.assert_array_equal(ghost.moving_mean.numpy(), plain.moving_mean.numpy())


def test_compiled_ghost_bn_matches_eager():
    """XLA (static shapes) and a graph with an unknown batch size, as in `fit`."""
    x = tf.constant(batch((7, 2, 2, 3)))  # a short last ghost batch
    eager_layer, xla_layer, graph_layer = layer_for(x, 3), layer_for(x, 3), layer_for(x, 3)

    def value_and_grad(layer, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y ** 3)
        return y, tape.gradient(loss, x)

    eager = value_and_grad(eager_layer, x)
    compiled = tf.function(lambda x: value_and_grad(xla_layer, x), jit_compile=True)(x)
    graph = tf.function(lambda x: value_and_grad(graph_layer, x),
                        input_signature=[tf.TensorSpec([None, 2, 2, 3])])(x)
    for layer, values in ((xla_layer, compiled), (graph_layer, graph)):
        for a, b in zip(eager, values):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.moving_variance.numpy(),
                                   eager_layer.moving_variance.numpy(), atol=1e-6)


def small_model(virtual_batch_size=None, keras_bn=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = (keras.layers.BatchNormalization() if keras_bn
         else SwitchableBatchNormalization(virtual_batch_size=virtual_batch_size))(x)
    x = keras.layers.Flatten()(x)
    head = keras.Sequential([keras.layers.Dense(6),
                             SwitchableBatchNormalization(bn_eval="batch",
                                                          virtual_batch_size=virtual_batch_size),
                             keras.layers.Dense(3)])
    return keras.Model(inputs, head(x), name="small")


def test_training_step_with_ghost_batches_updates_weights():
    model = small_model(virtual_batch_size=4)
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for size in (10, 12):  # ghost batches of 4, 4, 2; of 4, 4, 4 (no short one)
        x, y = batch((size, 4, 4, 2), seed=size), np.arange(size) % 3
        before = [w.numpy() for w in model.weights]
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        after = [w.numpy() for w in model.weights]
        assert np.isfinite(loss.numpy())
        assert all(np.all(np.isfinite(g.numpy())) for g in gradients)
        assert all(np.all(np.isfinite(w)) for w in after)
        assert all(not np.array_equal(a, b) for a, b in zip(before, after))  # and moving stats


def test_config_round_trip_and_keras_file(tmp_path):
    layer = SwitchableBatchNormalization(bn_eval="moving", virtual_batch_size=32)
    config = layer.get_config()
    assert config["virtual_batch_size"] == 32
    again = SwitchableBatchNormalization.from_config(json.loads(json.dumps(config)))
    assert (again.virtual_batch_size, again.bn_eval) == (32, "moving")
    assert again.get_config() == config

    model = small_model(virtual_batch_size=3)
    path = tmp_path / "ghost.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [layer.virtual_batch_size for layer in batchnorm_layers(loaded)] == [3, 3]
    x = batch((5, 4, 4, 2))
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


def test_keras_file_of_earlier_versions_loads_as_plain_bn(tmp_path):
    """A .keras saved before virtual_batch_size existed (no key) loads with None."""
    model = small_model()
    path, old = tmp_path / "new.keras", tmp_path / "old.keras"
    model.save(path)

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "virtual_batch_size"}
        return [strip(v) for v in value] if isinstance(value, list) else value

    with zipfile.ZipFile(path) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                assert b"virtual_batch_size" in data
                data = json.dumps(strip(json.loads(data))).encode()
            target.writestr(item, data)
    loaded = keras.saving.load_model(old)
    assert [layer.virtual_batch_size for layer in batchnorm_layers(loaded)] == [None, None]
    x = batch((5, 4, 4, 2))
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


@pytest.mark.parametrize("keras_bn", [False, True], ids=["switchable", "keras-bn"])
def test_with_ghost_batch_norm_copies_weights_and_evaluation(keras_bn):
    model = small_model(keras_bn=keras_bn)
    x = batch((9, 4, 4, 2))
    model(x, training=True)  # moving statistics away from their initial values
    ghost = with_ghost_batch_norm(model, 4)
    for a, b in zip(model.weights, ghost.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    layers = batchnorm_layers(ghost)
    assert [type(layer) for layer in layers] == [SwitchableBatchNormalization] * 2
    assert [layer.virtual_batch_size for layer in layers] == [4, 4]
    # Keras' BN becomes bn_eval="moving" (what it did at evaluation).
    assert [layer.bn_eval for layer in layers] == [
        getattr(layer, "bn_eval", "moving") for layer in batchnorm_layers(model)]
    np.testing.assert_array_equal(ghost(x, training=False), model(x, training=False))
    assert not np.allclose(ghost(x, training=True), model(x, training=True), atol=1e-3)
    plain_again = with_ghost_batch_norm(ghost, None)
    assert [layer.virtual_batch_size for layer in batchnorm_layers(plain_again)] == [None, None]


def test_set_virtual_batch_size_and_has_batch_norm():
    model = small_model()
    assert has_batch_norm(model)
    set_virtual_batch_size(model, 5)
    assert [layer.virtual_batch_size for layer in batchnorm_layers(model)] == [5, 5]
    with pytest.raises(UserError, match="Keras BatchNormalization"):
        set_virtual_batch_size(small_model(keras_bn=True), 5)
    no_bn = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="no_bn")
    assert not has_batch_norm(no_bn)
    for helper in (set_virtual_batch_size, with_ghost_batch_norm):
        with pytest.raises(UserError, match="no_bn has none"):
            helper(no_bn, 4)


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "8"])
def test_bad_virtual_batch_size_is_a_user_error(value):
    with pytest.raises(UserError, match="virtual_batch_size"):
        SwitchableBatchNormalization(virtual_batch_size=value)


def test_ghost_bn_refuses_renorm_and_masks():
    with pytest.raises(UserError, match="renorm"):
        SwitchableBatchNormalization(virtual_batch_size=2, renorm=True)
    layer = SwitchableBatchNormalization(virtual_batch_size=2)
    with pytest.raises(UserError, match="masks"):
        layer(np.ones((4, 3, 2), np.float32), training=True, mask=np.ones((4, 3), bool))
