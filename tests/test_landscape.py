"""Filter-normalized landscapes against closed forms and brute-force norms."""

import json

import keras
import numpy as np
import pytest

from keras_sharpness.errors import UserError
from keras_sharpness.landscape import (filter_normalized_direction, landscape_1d,
                                       landscape_2d, plot_landscape_1d, plot_landscape_2d,
                                       sb_lb_direction)
from keras_sharpness.layers import SwitchableBatchNormalization
from keras_sharpness.objective import TrainingLoss
from toy_models import logistic_hessian, logistic_regression, toy_data


@pytest.fixture(scope="module")
def conv_objective():
    keras.utils.set_random_seed(0)
    x = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(3, 3, name="conv")(x)
    h = SwitchableBatchNormalization(bn_eval="batch", name="bn")(h)
    h = keras.layers.Flatten()(keras.layers.Activation("relu")(h))
    model = keras.Model(x, keras.layers.Dense(4, name="logits")(h))
    data = np.random.default_rng(0).normal(size=(12, 5, 5, 2)).astype(np.float32)
    return TrainingLoss(model, data, np.arange(12) % 4, bn_eval="batch", batch_size=6)


@pytest.fixture(scope="module")
def logistic():
    x, y = toy_data(30, inputs=4)
    objective = TrainingLoss(logistic_regression(), x, y, batch_size=10)
    return objective, logistic_hessian(objective, x, y)


def test_each_filter_has_the_norm_of_the_weight_filter_and_bias_bn_are_zero(conv_objective):
    objective = conv_objective
    w = objective.initial_point()
    d = filter_normalized_direction(objective, seed=3)
    parts, weights = objective.unflatten(d), objective.unflatten(w)
    # conv kernel (3, 3, 2, 3), conv bias, BN gamma, BN beta, dense kernel (27, 4), dense bias
    assert [p.shape for p in parts] == [(3, 3, 2, 3), (3,), (3,), (3,), (27, 4), (4,)]
    for part, weight in zip(parts, weights):
        if part.ndim == 1:
            assert np.all(part == 0)
            continue
        for j in range(part.shape[-1]):  # brute force, one output filter at a time
            assert np.linalg.norm(part[..., j]) == pytest.approx(
                np.linalg.norm(weight[..., j]), rel=1e-9)
        assert not np.allclose(part, weight)
    np.testing.assert_array_equal(d, filter_normalized_direction(objective, seed=3))
    assert not np.allclose(d, filter_normalized_direction(objective, seed=4))
    kept = objective.unflatten(filter_normalized_direction(objective, seed=3,
                                                           ignore_bn_and_bias=False))
    for index in (1, 2, 3, 5):
        np.testing.assert_array_equal(kept[index], weights[index])


def test_curvature_of_the_1d_curve_is_the_closed_form_d_h_d(logistic):
    objective, hessian = logistic
    w = objective.initial_point()
    d = filter_normalized_direction(objective, seed=1)
    h = 0.05
    result = landscape_1d(objective, d, [-h, 0.0, h])
    assert result.loss[1] == pytest.approx(objective.value(w), rel=1e-12)
    second_difference = (result.loss[0] - 2 * result.loss[1] + result.loss[2]) / h ** 2
    exact = d @ hessian @ d
    # Error: float32 rounding of f (~1e-7) / h^2 plus an O(h^2) truncation;
    # measured 1.2e-4 relative at h = 0.05, so 2e-3 leaves margin.
    assert second_difference == pytest.approx(exact, rel=2e-3)
    assert d @ objective.hessian_vector_product(w, d) == pytest.approx(exact, rel=1e-4)
    info = result.to_dict()
    assert info["kind"] == "landscape_1d" and info["bn_eval"] is None
    assert info["direction_norm"] == pytest.approx(np.linalg.norm(d))
    json.dumps(info)


def test_2d_grid_shape_origin_and_symmetries(conv_objective):
    objective = conv_objective
    d1 = filter_normalized_direction(objective, seed=1)
    d2 = filter_normalized_direction(objective, seed=2)
    alphas, betas = [-0.5, 0.0, 0.5], [-0.25, 0.0, 0.25, 0.5]
    grid = landscape_2d(objective, d1, d2, alphas, betas)
    loss = np.asarray(grid.loss)
    assert loss.shape == (3, 4) and np.asarray(grid.accuracy).shape == (3, 4)
    assert loss[1, 1] == pytest.approx(objective.value(objective.initial_point()), rel=1e-12)
    # beta = 0 column is the 1-D curve along d1.
    np.testing.assert_allclose(loss[:, 1], landscape_1d(objective, d1, alphas).loss, rtol=1e-12)
    # Swapping the directions (and the axes) transposes the grid.
    swapped = np.asarray(landscape_2d(objective, d2, d1, betas, alphas).loss)
    np.testing.assert_allclose(swapped, loss.T, rtol=1e-6)
    # Along (d, d) the loss depends on alpha + beta only: anti-diagonals agree.
    same = np.asarray(landscape_2d(objective, d1, d1, [0.0, 0.5], [0.0, 0.5]).loss)
    assert same[0, 1] == pytest.approx(same[1, 0], rel=1e-6)
    info = grid.to_dict()
    assert info["bn_eval"] == "batch" and info["kind"] == "landscape_2d"
    json.dumps(info)


def test_sb_lb_direction_normalizations(conv_objective):
    objective = conv_objective
    w_sb = objective.initial_point()
    w_lb = w_sb + 0.1 * np.random.default_rng(0).standard_normal(objective.num_params)
    raw = sb_lb_direction(objective, w_sb, w_lb, normalize="none")
    np.testing.assert_allclose(w_sb + raw, w_lb, rtol=1e-12)
    curve = landscape_1d(objective, raw, [0.0, 1.0], point=w_sb)
    assert curve.loss[1] == pytest.approx(objective.value(w_lb), rel=1e-12)
    assert np.linalg.norm(sb_lb_direction(objective, w_sb, w_lb)) == pytest.approx(1.0)
    filt = objective.unflatten(sb_lb_direction(objective, w_sb, w_lb, normalize="filter"))
    kernel = objective.unflatten(w_sb)[0]
    assert np.linalg.norm(filt[0][..., 2]) == pytest.approx(np.linalg.norm(kernel[..., 2]))
    with pytest.raises(UserError, match="normalize"):
        sb_lb_direction(objective, w_sb, w_lb, normalize="max")
    with pytest.raises(UserError, match="same point"):
        sb_lb_direction(objective, w_sb, w_sb)
    with pytest.raises(UserError, match="direction"):
        landscape_1d(objective, raw[:-1], [0.0])
    with pytest.raises(UserError, match="alphas"):
        landscape_1d(objective, raw, [])


def test_figures_are_written(logistic, tmp_path):
    objective, _ = logistic
    d1 = filter_normalized_direction(objective, seed=1)
    d2 = filter_normalized_direction(objective, seed=2)
    curve = landscape_1d(objective, d1, np.linspace(-1, 1, 5))
    grid = landscape_2d(objective, d1, d2, np.linspace(-1, 1, 4), np.linspace(-1, 1, 3))
    paths = (plot_landscape_1d(curve, tmp_path / "one")
             + plot_landscape_2d(grid.to_dict(), tmp_path / "two"))
    assert [p.name for p in paths] == ["one.pdf", "one.png", "two.pdf", "two.png"]
    assert all(p.stat().st_size > 0 for p in paths)
