"""Parametric plot: path math, end points equal direct evaluation, BN recompute."""

import numpy as np
import pytest

from keras_sharpness import parametric
from keras_sharpness.errors import UserError


def _data(n=96, seed=0):
    from keras_sharpness.data import ArrayData

    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n + 48, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=n + 48)
    return ArrayData.from_arrays(x[:n], y[:n], x[n:], y[n:], name="random", num_classes=3)


def _models(info):
    """Two different F1 networks with different, non-trivial moving statistics."""
    import keras

    from keras_sharpness.layers import batchnorm_layers
    from keras_sharpness.networks import build_network

    models = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        model = build_network("F1", info.input_shape, info.num_classes)
        rng = np.random.default_rng(seed)
        for layer in batchnorm_layers(model):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
        models.append(model)
    return models


def _direct(model, x, y, mode, batch_size):
    """Keras' own evaluate (no TrainingLoss) in BN mode `mode`."""
    import keras

    from keras_sharpness.layers import using_bn_eval

    with using_bn_eval(model, mode):
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        loss, acc = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    return loss, acc


def test_path_coefficients():
    assert parametric.path_coefficients(0.0) == (0.0, 1.0)
    assert parametric.path_coefficients(2.0) == (2.0, -1.0)
    lb, sb = parametric.path_coefficients(1.0, "sin")
    assert lb == pytest.approx(1.0) and sb == pytest.approx(0.0, abs=1e-12)
    lb, sb = parametric.path_coefficients(0.5, "sin")
    assert lb == pytest.approx(np.sqrt(0.5)) and sb == pytest.approx(np.sqrt(0.5))


@pytest.mark.parametrize("args, message", [
    ((1, -1, 2, "linear", "batch"), "num_points"),
    ((5, 2, 2, "linear", "batch"), "alpha_min"),
    ((5, -1, 2, "spline", "batch"), "curve"),
    ((5, -1, 2, "linear", "frozen"), "BN semantics"),
])
def test_bad_path_arguments(args, message):
    with pytest.raises(UserError, match=message):
        parametric.check_path_arguments(*args)


@pytest.mark.parametrize("semantics, mode", [("batch", "batch"), ("moving", "moving")])
def test_alpha_zero_and_one_equal_direct_evaluation(semantics, mode):
    data = _data()
    sb, lb = _models(data.info)
    before = [v.numpy().copy() for v in sb.weights + lb.weights]
    result = parametric.parametric_curve(
        sb, lb, data, num_points=4, alpha_min=-1, alpha_max=2, bn_eval=semantics,
        batch_size=32)
    assert result.alphas == pytest.approx([-1, 0, 1, 2])
    for index, model in ((1, sb), (2, lb)):
        train = _direct(model, data.x_train, data.y_train, mode, 32)
        test = _direct(model, data.x_test, data.y_test, mode, 32)
        assert result.train_loss[index] == pytest.approx(train[0], rel=1e-5)
        assert result.train_acc[index] == pytest.approx(train[1], abs=1e-6)
        assert result.test_loss[index] == pytest.approx(test[0], rel=1e-5)
        assert result.test_acc[index] == pytest.approx(test[1], abs=1e-6)
    assert len(set(result.train_loss)) == 4  # the path is not constant
    after = [v.numpy() for v in sb.weights + lb.weights]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # models untouched


def test_sin_curve_passes_through_both_solutions():
    data = _data()
    sb, lb = _models(data.info)
    linear = parametric.parametric_curve(sb, lb, data, num_points=2, alpha_min=0,
                                         alpha_max=1, batch_size=32)
    sin = parametric.parametric_curve(sb, lb, data, num_points=2, alpha_min=0,
                                      alpha_max=1, curve="sin", batch_size=32)
    np.testing.assert_allclose(sin.train_loss, linear.train_loss, rtol=1e-5)


def test_recomputed_statistics_of_the_first_layer_are_population_moments():
    data = _data()
    sb, _ = _models(data.info)
    recompute = parametric._StatisticsRecomputer(sb, data.x_train, batch_size=40)
    trainable = [v.numpy() for v in sb.trainable_variables]
    fixed = recompute(trainable, [v.numpy() for v in sb.non_trainable_variables])
    # First BN input: flatten(x) @ W + b of the first Dense layer.
    dense = [layer for layer in sb.layers if layer.__class__.__name__ == "Dense"][0]
    kernel, bias = (w.numpy().astype(np.float64) for w in dense.weights)
    h = data.x_train.reshape(len(data.x_train), -1).astype(np.float64) @ kernel + bias
    mean_i, var_i, _ = parametric._bn_statistic_slots(sb)[0]
    np.testing.assert_allclose(fixed[mean_i], h.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fixed[var_i], h.var(axis=0), rtol=1e-4, atol=1e-5)


def test_recompute_at_the_ends_uses_fresh_statistics_not_the_stored_ones():
    data = _data()
    sb, lb = _models(data.info)
    result = parametric.parametric_curve(sb, lb, data, num_points=2, alpha_min=0,
                                         alpha_max=1, bn_eval="recompute",
                                         batch_size=32)
    stored = _direct(sb, data.x_train, data.y_train, "moving", 32)[0]
    # The stored statistics were random; recomputed ones fit the data.
    assert result.train_loss[0] != pytest.approx(stored, rel=1e-3)
    assert result.bn_eval == "recompute" and np.all(np.isfinite(result.train_loss))
