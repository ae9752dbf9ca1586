"""Per-example gradients, views of f and the gradient noise scale, against
answers known without them: a loop of one tape per sample, closed-form
softmax-regression gradients, and TrainingLoss built on a chunk."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sharpness.errors import UserError
from keras_sharpness.noise_scale import gradient_noise_scale, noise_scale_from_group_means
from keras_sharpness.objective import TrainingLoss
from toy_models import cross_entropy, logistic_regression, tanh_bn_model, toy_data


def tanh_model(input_shape=(5,), classes=3, seed=0):
    """No BN; with a (T, d) input the first Dense sees T vectors per sample."""
    keras.utils.set_random_seed(seed)
    x = keras.Input(input_shape)
    h = keras.layers.Dense(4, activation="tanh")(x)
    if len(input_shape) > 1:
        h = keras.layers.Flatten()(h)
    return keras.Model(x, keras.layers.Dense(classes)(h))


def loop_oracle(model, x, y, batch_size=None):
    """Per-example gradients, one tape per sample (test-only ground truth).

    batch_size None: sample i alone; else d l_i(w; its batch)/dw with the
    whole batch in the forward pass (batch-statistics BN).
    """
    rows = []
    for i in range(len(x)):
        first = i if batch_size is None else i - i % batch_size
        last = i + 1 if batch_size is None else min(first + batch_size, len(x))
        with tf.GradientTape() as tape:
            logits = model(x[first:last], training=False)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y[first:last], logits)[i - first]
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([g.numpy().reshape(-1) for g in grads]))
    return np.asarray(rows, dtype=np.float64)


def assert_moments_match(objective, w, rows, chunk=None):
    moments = objective.gradient_moments(w, chunk=chunk)
    np.testing.assert_allclose(moments.square_norms, (rows ** 2).sum(1), rtol=1e-5)
    np.testing.assert_allclose(moments.gradient, rows.mean(0), atol=1e-6)
    assert moments.num_samples == len(rows)


@pytest.mark.parametrize("input_shape", [(5,), (3, 5)])
def test_per_example_gradients_match_a_loop_without_bn(input_shape):
    model = tanh_model(input_shape)
    x, y = toy_data(13, inputs=int(np.prod(input_shape)))
    x = x.reshape((13, *input_shape))
    objective = TrainingLoss(model, x, y, batch_size=5)
    oracle = loop_oracle(model, x, y)
    w = objective.initial_point()
    np.testing.assert_allclose(objective.per_example_gradients(w, chunk=4), oracle, atol=1e-6)
    assert_moments_match(objective, w, oracle, chunk=3)  # Dense shortcut (T = 1 and T = 3)


def test_per_example_gradients_with_moving_statistics_match_a_loop():
    model = tanh_bn_model("moving")
    for v in model.non_trainable_variables:
        v.assign(np.full(v.shape, 0.3 if "mean" in v.path else 2.0, np.float32))
    x, y = toy_data(11)
    objective = TrainingLoss(model, x, y, batch_size=4)
    oracle = loop_oracle(model, x, y)
    w = objective.initial_point()
    np.testing.assert_allclose(objective.per_example_gradients(w), oracle, atol=1e-6)
    assert_moments_match(objective, w, oracle)


def test_batch_statistics_rows_sum_to_the_batch_gradient():
    model = tanh_bn_model("batch")
    x, y = toy_data(13)
    objective = TrainingLoss(model, x, y, batch_size=5)
    w = objective.initial_point()
    rows = objective.per_example_gradients(w, chunk=2)
    np.testing.assert_allclose(rows, loop_oracle(model, x, y, batch_size=5), atol=1e-6)
    np.testing.assert_allclose(rows.sum(0), 13 * objective.gradient(w), atol=1e-5)
    np.testing.assert_allclose(rows[:5].sum(0), 5 * objective.batch_objectives(5)[0].gradient(w),
                               atol=1e-5)
    assert_moments_match(objective, w, rows, chunk=2)


def softmax_regression_gradients(objective, x, y):
    """Closed form: g_i = x_i (p_i - e_{y_i})^T for the kernel, p_i - e_{y_i} for the bias."""
    kernel, bias = objective.unflatten(objective.initial_point())
    logits = x.astype(np.float64) @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(kernel.shape[1])[y]
    return np.hstack([np.einsum("id,ic->idc", x.astype(np.float64), residual).reshape(len(x), -1),
                      residual])


def test_noise_scale_of_softmax_regression_matches_closed_form():
    x, y = toy_data(120, inputs=4)
    objective = TrainingLoss(logistic_regression(), x, y, batch_size=25)
    g = softmax_regression_gradients(objective, x, y)
    np.testing.assert_allclose(objective.per_example_gradients(objective.initial_point()), g,
                               atol=1e-6)
    mean = g.mean(0)
    norm_sq = mean @ mean
    trace = (g ** 2).sum(1).mean() - norm_sq
    result = gradient_noise_scale(objective, bootstrap=200)
    assert result.gradient_norm_sq == pytest.approx(norm_sq, rel=1e-5)
    assert result.trace_sigma == pytest.approx(trace, rel=1e-5)
    assert result.b_simple == pytest.approx(trace / norm_sq, rel=1e-5)
    assert result.critical_batch_size == result.b_simple
    assert (result.num_samples, result.num_batches) == (120, 5)
    assert result.to_dict()["b_simple"] == result.b_simple


def test_bootstrap_interval_contains_estimate_narrows_and_is_seeded():
    x, y = toy_data(1600, inputs=4, seed=1)
    small = TrainingLoss(logistic_regression(), x[:200], y[:200], batch_size=10)
    large = TrainingLoss(logistic_regression(), x, y, batch_size=10)
    a = gradient_noise_scale(small, bootstrap=500, seed=3)
    b = gradient_noise_scale(large, bootstrap=500, seed=3)
    for result in (a, b):
        assert result.ci_low < result.b_simple < result.ci_high
    assert b.ci_high - b.ci_low < 0.6 * (a.ci_high - a.ci_low)  # ~ 1/sqrt(8) expected
    again = gradient_noise_scale(small, bootstrap=500, seed=3)
    other = gradient_noise_scale(small, bootstrap=500, seed=4)
    assert (again.ci_low, again.ci_high) == (a.ci_low, a.ci_high)
    assert (other.ci_low, other.ci_high) != (a.ci_low, a.ci_high)
    grouped = gradient_noise_scale(small, bootstrap=500, group_size=5)
    assert grouped.num_batches == 40 and grouped.b_simple == pytest.approx(a.b_simple, rel=1e-6)
    none = gradient_noise_scale(small, bootstrap=0)
    assert none.ci_low is None and none.ci_high is None


# With batch-statistics BN the views' batches must be f's for their mean to be f.
@pytest.mark.parametrize("bn_eval, size", [("moving", 7), ("batch", 20)])
def test_batch_objectives_are_f_on_chunks(bn_eval, size):
    model = tanh_bn_model()
    x, y = toy_data(23)
    objective = TrainingLoss(model, x, y, bn_eval=bn_eval, batch_size=10)
    w = objective.initial_point() + 0.05
    objective.gradient(w)
    traces = objective._gradient_fn.experimental_get_tracing_count()
    views = objective.batch_objectives(size)
    assert [v.num_samples for v in views] == [min(size, 23 - s) for s in range(0, 23, size)]
    assert all(v.batch_size == min(size, 10) and v.bn_eval == bn_eval for v in views)
    weighted = sum(v.num_samples * v.value(w) for v in views) / 23
    assert weighted == pytest.approx(objective.value(w), rel=1e-6)
    gradients = sum(v.num_samples * v.gradient(w) for v in views) / 23
    np.testing.assert_allclose(gradients, objective.gradient(w), atol=1e-6)
    assert objective._gradient_fn.experimental_get_tracing_count() == traces  # no retrace
    reference = TrainingLoss(model, x[size:2 * size], y[size:2 * size], bn_eval=bn_eval,
                             batch_size=min(size, 10))
    assert views[1].num_samples == reference.num_samples
    assert views[1].value(w) == pytest.approx(reference.value(w), rel=1e-6)
    assert views[1].loss_and_accuracy(w) == pytest.approx(reference.loss_and_accuracy(w),
                                                          rel=1e-6)
    v = np.ones(objective.num_params)
    np.testing.assert_allclose(views[1].hessian_vector_product(w, v),
                               reference.hessian_vector_product(w, v), atol=1e-6)
    assert views[1].num_params == objective.num_params
    np.testing.assert_array_equal(views[1].initial_point(), objective.initial_point())


def test_bad_arguments_raise_user_error():
    x, y = toy_data(20)
    objective = TrainingLoss(tanh_bn_model(), x, y, bn_eval="batch", batch_size=10)
    w = objective.initial_point()
    with pytest.raises(UserError, match="bootstrap"):
        gradient_noise_scale(objective, bootstrap=-1)
    with pytest.raises(UserError, match="confidence"):
        gradient_noise_scale(objective, confidence=1.0)
    with pytest.raises(UserError, match="group_size"):
        gradient_noise_scale(objective, group_size=5, method="per_example")
    with pytest.raises(UserError, match="point"):
        gradient_noise_scale(objective, point=np.zeros(3))
    with pytest.raises(UserError, match="point"):
        gradient_noise_scale(objective, point=np.zeros(3), method="per_example")
    with pytest.raises(UserError, match="groups of 2 to 10 samples"):
        gradient_noise_scale(objective, group_size=11)
    with pytest.raises(UserError, match="unknown noise scale method"):
        gradient_noise_scale(objective, method="exact")
    with pytest.raises(UserError, match="chunk"):
        objective.gradient_moments(w, chunk=0)
    with pytest.raises(UserError, match="group_size"):
        objective.gradient_moments(w, group_size=0)
    with pytest.raises(UserError, match="size"):
        objective.batch_objectives(0)


def test_two_batch_estimator_is_unbiased_over_random_splits():
    # Per-example "gradients" known exactly: the estimator's mean over random
    # splits into groups of b must be the population tr(Sigma) (divisor N).
    rng = np.random.default_rng(0)
    g = rng.normal(size=(60, 5)) + np.array([0.5, 0, 0, -0.2, 0])
    mean = g.mean(0)
    exact = (g ** 2).sum(1).mean() - mean @ mean
    estimates = []
    for _ in range(4000):
        groups = g[rng.permutation(60)].reshape(10, 6, 5).mean(axis=1)
        _, trace, norm_sq, _ = noise_scale_from_group_means(groups, 60)
        assert norm_sq == pytest.approx(mean @ mean)  # G itself is exact
        estimates.append(trace)
    error = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact) < 4 * error
    assert error < 0.01 * exact


def test_two_batch_is_the_default_under_batch_statistics():
    model = tanh_bn_model()
    x, y = toy_data(40)
    objective = TrainingLoss(model, x, y, bn_eval="batch", batch_size=20)
    result = gradient_noise_scale(objective, group_size=8, bootstrap=300)
    assert (result.method, result.group_size, result.num_batches) == ("two_batch", 8, 5)
    # Each group is one batch of its own samples (its own BN statistics).
    means = [TrainingLoss(model, x[k:k + 8], y[k:k + 8], bn_eval="batch", batch_size=8)
             .gradient(objective.initial_point()) for k in range(0, 40, 8)]
    b_simple, trace, _, _ = noise_scale_from_group_means(np.stack(means), 40)
    assert result.b_simple == pytest.approx(b_simple, rel=1e-5)
    assert result.trace_sigma == pytest.approx(trace, rel=1e-5)
    assert result.ci_low < result.b_simple < result.ci_high
    moving = TrainingLoss(model, x, y, bn_eval="moving", batch_size=20)
    assert gradient_noise_scale(moving, bootstrap=0).method == "per_example"
