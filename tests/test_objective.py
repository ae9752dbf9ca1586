"""TrainingLoss: f, grad f and H v against answers known without it."""

import numpy as np
import pytest

from keras_sharpness.errors import UserError
from keras_sharpness.layers import model_bn_eval
from keras_sharpness.objective import TrainingLoss
from toy_models import (cross_entropy, logistic_hessian, logistic_regression, tanh_bn_model,
                        toy_data)


@pytest.mark.parametrize("bn_eval", ["batch", "moving"])
def test_value_is_keras_cross_entropy_over_fixed_batches(bn_eval):
    model = tanh_bn_model(bn_eval)
    # Non-trivial moving statistics, so the two modes differ.
    for v in model.non_trainable_variables:
        v.assign(np.full(v.shape, 0.3 if "mean" in v.path else 2.0, np.float32))
    x, y = toy_data(53)
    objective = TrainingLoss(model, x, y, batch_size=20)
    expected = np.concatenate([
        cross_entropy(model(x[i:i + 20], training=False), y[i:i + 20])
        for i in range(0, 53, 20)])
    loss, accuracy = objective.loss_and_accuracy(objective.initial_point())
    assert loss == pytest.approx(expected.mean(), rel=1e-6)
    logits = np.concatenate([model(x[i:i + 20], training=False) for i in range(0, 53, 20)])
    assert accuracy == pytest.approx(np.mean(logits.argmax(1) == y))


def test_bn_modes_differ_and_default_is_the_models_own():
    model = tanh_bn_model("batch")
    for v in model.non_trainable_variables:
        v.assign(np.full(v.shape, 0.3 if "mean" in v.path else 2.0, np.float32))
    x, y = toy_data()
    own = TrainingLoss(model, x, y, batch_size=20)
    batch = TrainingLoss(model, x, y, bn_eval="batch", batch_size=20)
    moving = TrainingLoss(model, x, y, bn_eval="moving", batch_size=20)
    w = own.initial_point()
    assert own.bn_eval == "batch"
    assert own.value(w) == batch.value(w)
    assert moving.value(w) != batch.value(w)


@pytest.mark.parametrize("bn_eval", ["batch", "moving"])
def test_deterministic_and_model_untouched(bn_eval):
    model = tanh_bn_model("batch")
    before = [v.numpy().copy() for v in model.variables]
    x, y = toy_data(45)
    objective = TrainingLoss(model, x, y, bn_eval=bn_eval, batch_size=20)
    w = objective.initial_point() + 0.1
    assert objective.value(w) == objective.value(w)
    f1, g1 = objective.value_and_gradient(w)
    f2, g2 = objective.value_and_gradient(w)
    assert f1 == f2 and np.array_equal(g1, g2)
    v = np.ones(objective.num_params)
    assert np.array_equal(objective.hessian_vector_product(w, v),
                          objective.hessian_vector_product(w, v))
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.variables))
    assert model_bn_eval(model) == "batch"


@pytest.mark.parametrize("bn_eval", ["batch", "moving"])
def test_gradient_matches_central_differences(bn_eval):
    x, y = toy_data(40)
    objective = TrainingLoss(tanh_bn_model(), x, y, bn_eval=bn_eval, batch_size=16)
    w = objective.initial_point()
    _, gradient = objective.value_and_gradient(w)
    rng = np.random.default_rng(1)
    h = 1e-3
    for _ in range(3):
        d = rng.normal(size=objective.num_params)
        d /= np.linalg.norm(d)
        numeric = (objective.value(w + h * d) - objective.value(w - h * d)) / (2 * h)
        assert gradient @ d == pytest.approx(numeric, abs=2e-4, rel=1e-3)


def test_hessian_vector_product_matches_explicit_logistic_hessian():
    x, y = toy_data(30, inputs=4)
    objective = TrainingLoss(logistic_regression(), x, y, batch_size=7)
    hessian = logistic_hessian(objective, x, y)
    w = objective.initial_point()
    columns = np.stack([objective.hessian_vector_product(w, e)
                        for e in np.eye(objective.num_params)], axis=1)
    np.testing.assert_allclose(columns, hessian, atol=1e-6)


def test_hessian_vector_product_through_batch_statistics_matches_differences():
    # Batch-statistics BN needs second derivatives through the batch moments.
    x, y = toy_data(40)
    objective = TrainingLoss(tanh_bn_model(), x, y, bn_eval="batch", batch_size=20)
    w = objective.initial_point()
    v = np.random.default_rng(2).normal(size=objective.num_params)
    v /= np.linalg.norm(v)
    h = 1e-2
    numeric = (objective.gradient(w + h * v) - objective.gradient(w - h * v)) / (2 * h)
    np.testing.assert_allclose(objective.hessian_vector_product(w, v), numeric,
                               atol=3e-4 * np.abs(numeric).max() + 1e-5)


def test_flatten_unflatten_and_subset():
    model = tanh_bn_model()
    x, y = toy_data(50)
    objective = TrainingLoss(model, x, y, num_samples=17, seed=3)
    assert objective.num_params == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    w = objective.initial_point()
    assert w.dtype == np.float64
    parts = objective.unflatten(w)
    assert [p.shape for p in parts] == [tuple(v.shape) for v in model.trainable_variables]
    np.testing.assert_array_equal(objective.flatten(parts), w)
    assert objective.num_samples == 17
    again = TrainingLoss(model, x, y, num_samples=17, seed=3)
    other = TrainingLoss(model, x, y, num_samples=17, seed=4)
    assert again.value(w) == objective.value(w) != other.value(w)
    fixed = objective.non_trainable_values()
    assert [f.shape for f in fixed] == [tuple(v.shape) for v in model.non_trainable_variables]


def test_bad_inputs_raise_user_error():
    model = tanh_bn_model()
    x, y = toy_data(10)
    with pytest.raises(UserError, match="shape"):
        TrainingLoss(model, np.zeros((10, 6), np.float32), y)
    with pytest.raises(UserError, match="outputs"):
        TrainingLoss(model, x, np.full(10, 3))
    with pytest.raises(UserError, match="num_samples"):
        TrainingLoss(model, x, y, num_samples=11)
    with pytest.raises(UserError, match="BatchNorm"):
        TrainingLoss(model, x, y, bn_eval="other")


def test_values_under_a_mirrored_strategy_equal_one_device():
    """Two logical CPU devices (a fresh process: devices are configured before
    TensorFlow starts), one fixed batch per replica: same f, gradient, HVP and phi."""
    import json
    import pathlib
    import subprocess
    import sys

    here = pathlib.Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, str(here / "distributed_objective.py"), str(here)],
                          capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("replicas") == 2
    for name, relative in result.items():
        assert relative <= 1e-6, (name, relative)
