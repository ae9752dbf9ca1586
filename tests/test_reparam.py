"""Dinh et al. rescalings: same function, different weights, measures that move."""

import keras
import numpy as np
import pytest

from keras_sharpness.errors import UserError
from keras_sharpness.layers import SwitchableBatchNormalization
from keras_sharpness.networks import build_network
from keras_sharpness.objective import TrainingLoss
from keras_sharpness.reparam import invariance, rescalable_pairs, rescale
from toy_models import logistic_regression, toy_data


def relu_net(seed=0):
    """Dense(relu) -> Dense -> ReLU -> Dropout -> Dense: two ReLU pairs."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((5,)),
        keras.layers.Dense(6, activation="relu", name="a"),
        keras.layers.Dense(4, name="b"),
        keras.layers.ReLU(name="relu"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.Dense(3, name="c"),
    ])


def conv_bn_net(seed=0):
    """Conv - BN - ReLU - MaxPool - Conv(relu) - Flatten - Dense, channels last."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    h = SwitchableBatchNormalization(bn_eval="batch", name="bn")(h)
    h = keras.layers.Activation("relu", name="act")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Conv2D(3, 3, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    return keras.Model(x, keras.layers.Dense(3, name="logits")(h))


def test_relu_pairs_scale_as_written_by_hand_and_keep_the_function():
    model = relu_net()
    assert [(p.producer, p.consumer, p.consumer_kind, p.between)
            for p in rescalable_pairs(model)] == [
        ("a", "b", "linear", ()), ("b", "c", "linear", ("relu", "drop"))]
    alpha = 3.0
    twin = rescale(model, alpha)
    old = {v.path.split("/", 1)[1]: v.numpy() for v in model.weights}
    new = {v.path.split("/", 1)[1]: v.numpy() for v in twin.weights}
    # a: out x alpha; b: in / alpha and out x alpha (kernel net 1, bias x alpha); c: in / alpha.
    expected = {"a/kernel": alpha, "a/bias": alpha, "b/kernel": 1.0, "b/bias": alpha,
                "c/kernel": 1 / alpha, "c/bias": 1.0}
    for name, factor in expected.items():
        np.testing.assert_allclose(new[name], factor * old[name], rtol=1e-6)
    x, _ = toy_data(20)
    np.testing.assert_allclose(twin(x, training=False), model(x, training=False),
                               rtol=1e-5, atol=1e-5)
    # An explicit pair: only the first one.
    only_a = {v.path.split("/", 1)[1]: v.numpy()
              for v in rescale(model, alpha, pairs=["a"]).weights}
    np.testing.assert_allclose(only_a["b/kernel"], old["b/kernel"] / alpha, rtol=1e-6)
    np.testing.assert_allclose(only_a["c/kernel"], old["c/kernel"], rtol=1e-6)


@pytest.fixture(scope="module")
def f1_pair():
    """F1 on 5 inputs with random moving statistics, and its rescaled twin."""
    keras.utils.set_random_seed(1)
    model = build_network("F1", (5,), 3, bn_eval="batch")
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
    return model, rescale(model, 10.0)


@pytest.mark.parametrize("bn_eval", ["batch", "moving"])
def test_f1_twin_has_the_same_loss_in_both_bn_modes_and_larger_weights(f1_pair, bn_eval):
    model, twin = f1_pair
    x, y = toy_data(40)
    before = TrainingLoss(model, x, y, bn_eval=bn_eval, batch_size=20)
    after = TrainingLoss(twin, x, y, bn_eval=bn_eval, batch_size=20)
    w, w_twin = before.initial_point(), after.initial_point()
    assert before.value(w) == pytest.approx(after.value(w_twin), rel=1e-5)
    assert np.linalg.norm(w_twin) > 2 * np.linalg.norm(w)
    # The BN consumers' moving statistics and epsilon moved with the kernels.
    bn, bn_twin = model.layers[2], twin.layers[2]
    np.testing.assert_allclose(bn_twin.moving_mean.numpy(), 10 * bn.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(bn_twin.moving_variance.numpy(),
                               100 * bn.moving_variance.numpy(), rtol=1e-6)
    assert bn_twin.epsilon == pytest.approx(100 * bn.epsilon)


def test_invariance_flags_gradient_norm_and_perturbed_loss_but_not_f():
    model = conv_bn_net()
    assert [(p.producer, p.consumer) for p in rescalable_pairs(model)] == [
        ("conv1", "bn"), ("bn", "conv2"), ("conv2", "logits")]
    x = np.random.default_rng(0).normal(size=(24, 6, 6, 2)).astype(np.float32)
    y = np.arange(24) % 3

    def make_objective(m):
        return TrainingLoss(m, x, y, bn_eval="batch", batch_size=12)

    def perturbed(objective):  # f at a fixed-size random step: not reparameterization-invariant
        u = np.random.default_rng(5).standard_normal(objective.num_params)
        return objective.value(objective.initial_point() + 0.5 * u / np.linalg.norm(u))

    measures = {
        "f": lambda o: o.value(o.initial_point()),
        "grad_norm_sq": lambda o: float(np.sum(o.gradient(o.initial_point()) ** 2)),
        "perturbed_f": perturbed,
    }
    rows = invariance(model, make_objective, measures, alpha=10.0)
    by_name = {row["measure"]: row for row in rows}
    assert [row["measure"] for row in rows] == list(measures)
    assert by_name["f"]["invariant"] and abs(by_name["f"]["relative_change"]) < 1e-5
    for name in ("grad_norm_sq", "perturbed_f"):
        assert not by_name[name]["invariant"]
        assert abs(by_name[name]["relative_change"]) > 1e-2
    assert set(rows[0]) == {"measure", "before", "after", "relative_change", "invariant"}


def test_seeded_subset_bad_arguments_and_models_without_pairs():
    model = relu_net()
    chosen = rescale(model, 2.0, pairs=1, seed=4)
    again = rescale(model, 2.0, pairs=1, seed=4)
    for a, b in zip(chosen.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="no rescalable layer pair"):
        rescale(logistic_regression(), 2.0)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="alpha"):
            rescale(model, alpha)
    with pytest.raises(UserError, match="pairs"):
        rescale(model, 2.0, pairs=3)
    with pytest.raises(UserError, match="pairs names"):
        rescale(model, 2.0, pairs=["nope"])


class SquaredDense(keras.layers.Dense):
    """A Dense subclass that is not homogeneous: the output check must catch it."""

    def call(self, inputs):
        return keras.ops.square(super().call(inputs))


def test_output_check_refuses_a_layer_that_is_not_what_its_class_says():
    keras.utils.set_random_seed(0)
    x = keras.Input((5,))
    h = SquaredDense(4, name="sq")(x)
    model = keras.Model(x, keras.layers.Dense(3)(h))
    with pytest.raises(UserError, match="another function"):
        rescale(model, 10.0)
