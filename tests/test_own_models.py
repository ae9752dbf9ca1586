"""Your own Keras model: f is what its label says, or a one-line refusal.

Ground truth is Keras' own loss (`SparseCategoricalCrossentropy`) on the
model's own outputs, over the same fixed batches, under the stated BN evaluation choice:
"moving" = ``model(x, training=False)``; "batch" = ``model(x, training=True)``
on a model without dropout (BN then normalizes with each batch's statistics).
"""

import keras
import numpy as np
import pytest

from keras_sharpness.errors import UserError
from keras_sharpness.objective import TrainingLoss

BATCH = 20


def _data(n=60, d=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, classes, n)


def _moving_then_trained_statistics(model, x, y):
    """Gives Keras BN moving statistics that differ from any batch's."""
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x * 3 + 1, y, batch_size=BATCH, epochs=2, verbose=0)
    return model


def softmax_bn_functional(classes=4):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("tanh")(h)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(h))


def softmax_bn_sequential(classes=4):
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                             keras.layers.BatchNormalization(), keras.layers.Activation("relu"),
                             keras.layers.Dense(classes), keras.layers.Activation("softmax")])


def keras_loss(model, x, y, training, from_logits=False):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, reduction="sum")
    total = sum(float(loss(y[i:i + BATCH], model(x[i:i + BATCH], training=training)))
                for i in range(0, len(x), BATCH))
    return total / len(x)


@pytest.mark.parametrize("build", [softmax_bn_functional, softmax_bn_sequential])
def test_softmax_and_keras_batchnorm_give_keras_loss_under_each_bn_eval(build):
    x, y = _data()
    model = _moving_then_trained_statistics(build(), x, y)
    moving = TrainingLoss(model, x, y, bn_eval="moving", batch_size=BATCH)
    batch = TrainingLoss(model, x, y, bn_eval="batch", batch_size=BATCH)
    own = TrainingLoss(model, x, y, batch_size=BATCH)
    assert moving.softmax_removed and own.bn_eval == "moving" and batch.bn_eval == "batch"
    f_moving = moving.value(moving.initial_point())
    f_batch = batch.value(batch.initial_point())
    assert own.value(own.initial_point()) == pytest.approx(f_moving, rel=1e-6)
    # Ground truth, "moving" first: a training=True call moves the statistics.
    assert f_moving == pytest.approx(keras_loss(model, x, y, training=False), rel=1e-5)
    assert f_batch == pytest.approx(keras_loss(model, x, y, training=True), rel=1e-5)
    assert abs(f_batch - f_moving) > 1e-3  # the two bn_eval choices really differ here


def test_gradient_through_keras_batchnorm_in_batch_mode_matches_finite_differences():
    x, y = _data()
    model = _moving_then_trained_statistics(softmax_bn_functional(), x, y)
    objective = TrainingLoss(model, x, y, bn_eval="batch", batch_size=BATCH)
    w = objective.initial_point()
    _, g = objective.value_and_gradient(w)
    rng = np.random.default_rng(0)
    v = rng.normal(size=w.shape)
    v /= np.linalg.norm(v)
    h = 1e-3
    numeric = (objective.value(w + h * v) - objective.value(w - h * v)) / (2 * h)
    assert g @ v == pytest.approx(numeric, rel=2e-3, abs=1e-5)


def test_one_hot_labels_give_the_same_f_as_indices():
    x, y = _data()
    model = softmax_bn_functional()
    one_hot = np.eye(4)[y]
    a = TrainingLoss(model, x, y, batch_size=BATCH)
    b = TrainingLoss(model, x, one_hot, batch_size=BATCH)
    assert a.value(a.initial_point()) == b.value(b.initial_point())
    with pytest.raises(UserError, match="one-hot"):
        TrainingLoss(model, x, one_hot * 0.5, batch_size=BATCH)


class Subclassed(keras.Model):
    def __init__(self, softmax=False, batchnorm=False):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.norm = keras.layers.BatchNormalization() if batchnorm else None
        self.out = keras.layers.Dense(4, activation="softmax" if softmax else None)

    def call(self, x, training=False):
        h = self.hidden(x)
        if self.norm is not None:
            h = self.norm(h, training=training)
        return self.out(h)


def test_subclassed_model_evaluates_without_cloning():
    x, y = _data()
    keras.utils.set_random_seed(3)
    model = Subclassed()
    model(x[:2])
    objective = TrainingLoss(model, x, y, batch_size=BATCH)
    f = objective.value(objective.initial_point())
    assert f == pytest.approx(keras_loss(model, x, y, training=False, from_logits=True), rel=1e-5)
    # Keras BN with moving statistics is what the subclassed model computes itself.
    keras.utils.set_random_seed(3)
    with_bn = Subclassed(batchnorm=True)
    with_bn(x[:2])
    moving = TrainingLoss(with_bn, x, y, bn_eval="moving", batch_size=BATCH)
    assert moving.value(moving.initial_point()) == pytest.approx(
        keras_loss(with_bn, x, y, training=False, from_logits=True), rel=1e-5)


@pytest.mark.parametrize("case, make, kwargs, message", [
    ("subclassed softmax", lambda: Subclassed(softmax=True), {}, "outputs probabilities"),
    ("subclassed BN, bn_eval batch", lambda: Subclassed(batchnorm=True), {"bn_eval": "batch"},
     "subclassed"),
    ("sigmoid output", lambda: keras.Sequential([keras.Input((6,)),
                                                 keras.layers.Dense(4, activation="sigmoid")]),
     {}, "sigmoid"),
])
def test_models_that_cannot_be_evaluated_as_labelled_are_refused_in_one_line(
        case, make, kwargs, message):
    x, y = _data()
    model = make()
    model(x[:2])
    with pytest.raises(UserError, match=message) as info:
        TrainingLoss(model, x, y, batch_size=BATCH, **kwargs)
    assert "\n" not in str(info.value)


def test_compute_sharpness_on_a_saved_softmax_keras_bn_model_gives_keras_loss(tmp_path):
    """The command-line path (`--model M.keras --dataset npz:D.npz`), in process."""
    from keras_sharpness import sharpness_cli
    from keras_sharpness.io import save_model

    x, y = _data(n=60)
    model = _moving_then_trained_statistics(softmax_bn_functional(), x, y)
    save_model(model, tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.eye(4)[y], x_test=x[:10], y_test=y[:10])
    expected = {"moving": keras_loss(model, x, y, training=False)}
    expected["batch"] = keras_loss(model, x, y, training=True)  # after "moving": it moves stats
    for bn_eval in ("moving", "batch"):
        located = sharpness_cli.locate_models(model=tmp_path / "m.keras",
                                              dataset=f"npz:{tmp_path / 'd.npz'}")
        [record] = sharpness_cli.compute(
            models=located["models"], data=located["data"], network=None,
            output=tmp_path / f"{bn_eval}.json", eps=[1e-3], maxiter=2, bn_eval=bn_eval,
            batch_size=BATCH, echo=lambda line: None)
        assert record["bn_eval"] == bn_eval
        assert record["f0"] == pytest.approx(expected[bn_eval], rel=1e-5)


def test_batchnorm_inside_a_nested_model_is_switched_too():
    x, y = _data()
    keras.utils.set_random_seed(4)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                              keras.layers.BatchNormalization()])
    model = keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(4)])
    _moving_then_trained_statistics(model, x, y)
    batch = TrainingLoss(model, x, y, bn_eval="batch", batch_size=BATCH)
    moving = TrainingLoss(model, x, y, bn_eval="moving", batch_size=BATCH)
    assert moving.value(moving.initial_point()) == pytest.approx(
        keras_loss(model, x, y, training=False, from_logits=True), rel=1e-5)
    assert batch.value(batch.initial_point()) == pytest.approx(
        keras_loss(model, x, y, training=True, from_logits=True), rel=1e-5)


def test_a_saved_subclassed_model_of_an_unregistered_class_is_refused_in_one_line(tmp_path):
    from keras_sharpness import sharpness_cli
    from keras_sharpness.errors import CheckpointError

    x, y = _data()
    model = Subclassed()
    model(x[:2])
    model.save(tmp_path / "sub.keras")
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    located = sharpness_cli.locate_models(model=tmp_path / "sub.keras",
                                          dataset=f"npz:{tmp_path / 'd.npz'}")
    with pytest.raises(CheckpointError, match="custom class .*docs/own_model.md") as info:
        sharpness_cli.compute(models=located["models"], data=located["data"], network=None,
                              output=tmp_path / "o.json", eps=[1e-3], echo=lambda line: None)
    assert "\n" not in str(info.value)
