"""Appendix E remedies: conservative and FGSM train steps, augmentation, wiring."""

import json

import numpy as np
import pytest

from keras_sharpness import remedies, training
from keras_sharpness.errors import CheckpointError, UserError

import toy_models


def _compiled(model):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _remedy(network, **options):
    return _compiled(remedies.remedy_model_class()(network.inputs, network.outputs, **options))


def _tanh_net(seed=0, inputs=5, classes=3):
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,))
    h = keras.layers.Dense(6, activation="tanh")(x)
    return keras.Model(x, keras.layers.Dense(classes)(h))


def _distance(a, b):
    return float(np.sqrt(sum(np.sum((np.asarray(u) - np.asarray(v)) ** 2)
                             for u, v in zip(a, b))))


# ------------------------------------------------------------ configuration
def test_remedies_check_and_record():
    assert remedies.Remedies().record() == remedies.RECORD_DEFAULTS
    assert not remedies.Remedies().any and remedies.Remedies().describe() == ""
    on = remedies.Remedies(augment=True, conservative_lambda=1e-3, adversarial_eps=0.01)
    assert on.record()["conservative_steps"] == 3 and on.record()["adversarial_clean_weight"] == 0.5
    on.check((32, 32, 3))
    with pytest.raises(UserError, match=r"image inputs .* shape \(360,\)") as info:
        remedies.Remedies(augment=True).check((360,))
    assert "\n" not in str(info.value)
    remedies.Remedies(augment=True).check((28, 28, 1))  # F1 on MNIST images: fine
    for bad, match in ((dict(conservative_lambda=-1.0), "conservative_lambda"),
                       (dict(conservative_steps=0), "conservative_steps"),
                       (dict(adversarial_eps=-0.1), "adversarial_eps"),
                       (dict(adversarial_clean_weight=1.0), "clean_weight")):
        with pytest.raises(UserError, match=match):
            remedies.Remedies(**bad).check()
    with pytest.raises(UserError, match="accumulation"):
        remedies.Remedies(conservative_lambda=1e-3).check(accumulation_steps=4)


# ----------------------------------------------------- conservative training
def test_conservative_step_with_zero_lambda_and_one_inner_step_is_a_plain_adam_step():
    x, y = toy_models.toy_data(samples=32, inputs=4)
    plain = _compiled(toy_models.logistic_regression())
    start = plain.get_weights()
    conservative = _remedy(toy_models.logistic_regression(), conservative_lambda=0.0,
                           conservative_steps=1)
    plain.train_on_batch(x, y)
    conservative.train_on_batch(x, y)
    assert _distance(plain.get_weights(), start) > 1e-4
    for a, b in zip(plain.get_weights(), conservative.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)


def test_large_lambda_keeps_the_iterate_close_to_x_k():
    x, y = toy_models.toy_data(samples=32, inputs=4)
    moved = {}
    for lam in (0.0, 1e4):
        model = _remedy(toy_models.logistic_regression(), conservative_lambda=lam,
                        conservative_steps=3)
        start = model.get_weights()
        model.train_on_batch(x, y)
        moved[lam] = _distance(model.get_weights(), start)
    # Three free Adam steps move ~3 lr per coordinate; the proximal pull
    # turns the later steps around.
    assert moved[0.0] > 1e-3
    assert moved[1e4] < 0.5 * moved[0.0]


def test_proximal_gradient_is_loss_gradient_plus_lambda_times_displacement():
    import keras
    import tensorflow as tf

    x, y = toy_models.toy_data(samples=20, inputs=4)
    model = toy_models.logistic_regression()
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_weights())
    rng = np.random.default_rng(1)
    anchor = [w + rng.normal(scale=0.3, size=w.shape) for w in (kernel, bias)]
    lam = 0.7
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        objective = loss_fn(y, model(x)) + remedies.proximal_term(
            model.trainable_variables, [tf.constant(a, tf.float32) for a in anchor], lam)
    got = [np.asarray(g) for g in tape.gradient(objective, model.trainable_variables)]

    # By hand: mean softmax cross-entropy of x W + b, plus lam (w - anchor).
    logits = x.astype(np.float64) @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = (p - np.eye(3)[y]) / len(x)
    expected = [x.T.astype(np.float64) @ residual + lam * (kernel - anchor[0]),
                residual.sum(0) + lam * (bias - anchor[1])]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------- adversarial training
def test_fgsm_perturbation_is_eps_times_the_sign_of_the_input_gradient():
    import keras
    import tensorflow as tf

    x, y = toy_models.toy_data(samples=16, inputs=5)
    model = _tanh_net()
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(xt))
    expected = 0.05 * np.sign(tape.gradient(value, xt).numpy())
    got = remedies.fgsm_perturbation(model, x, y, 0.05).numpy()
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(np.abs(got))) == {np.float32(0.05)}


def test_fgsm_step_is_a_plain_step_on_the_clean_and_perturbed_batch():
    x, y = toy_models.toy_data(samples=16, inputs=5)
    eps = 0.1
    # alpha = 0.5: the mean over [x; x_adv] is 0.5 J(x) + 0.5 J(x_adv).
    x_adv = x + remedies.fgsm_perturbation(_tanh_net(), x, y, eps).numpy()
    plain = _compiled(_tanh_net())
    plain.train_on_batch(np.concatenate([x, x_adv]), np.concatenate([y, y]))
    robust = _remedy(_tanh_net(), adversarial_eps=eps, adversarial_clean_weight=0.5)
    robust.train_on_batch(x, y)
    assert _distance(plain.get_weights(), _tanh_net().get_weights()) > 1e-4
    for a, b in zip(plain.get_weights(), robust.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------ augmentation
def _images(n=24, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, size, size, 1)).astype(np.float32), rng.integers(0, 3, n)


def test_augmentation_changes_training_batches_as_a_function_of_seed_epoch_batch():
    x, y = _images()
    augment = remedies.ImageAugmentation()
    plain = list(training.SeededBatches(x, y, 8, seed=3).batches(1))
    augmented = training.SeededBatches(x, y, 8, seed=3, augment=augment)
    first = list(augmented.batches(1))
    again = list(training.SeededBatches(x, y, 8, seed=3,
                                        augment=remedies.ImageAugmentation()).batches(1))
    for (xp, yp), (xa, ya), (xb, _) in zip(plain, first, again):
        np.testing.assert_array_equal(yp, ya)  # same samples, same labels
        assert xa.shape == xp.shape and not np.allclose(xa, xp)
        np.testing.assert_array_equal(xa, xb)  # a resumed run sees the same batches
    other_epoch = list(augmented.batches(2))
    assert not np.allclose(other_epoch[0][0], list(training.SeededBatches(
        x, y, 8, seed=3).batches(2))[0][0])
    # Micro-batches are cut from the augmented batch.
    micro = list(training.SeededBatches(x, y, 8, seed=3, accumulation_steps=2,
                                        augment=augment).batches(1))
    np.testing.assert_array_equal(np.concatenate([m[0] for m in micro[:2]]), first[0][0])


# -------------------------------------------------------------- end to end
def _image_data():
    from keras_sharpness.data import ArrayData

    x, y = _images(n=56)
    return ArrayData.from_arrays(x[:40], y[:40], x[40:], y[40:], name="tiny", num_classes=3)


def _settings(**training_settings):
    from keras_sharpness.config import DataSettings, RunSettings, TrainingSettings

    return RunSettings(DataSettings("tiny"), TrainingSettings(
        "F1", **{"sb_batch_size": 20, "lb_batch_size": 40, "epochs": 1, **training_settings}))


def test_train_sb_lb_with_remedies_records_them_and_saves_the_plain_network(tmp_path):
    import keras

    # All three at once (one training run: the suite's time): each is recorded alone.
    options = {"augment": True, "conservative_lambda": 1e-3, "adversarial_eps": 0.01}
    data = _image_data()
    models = training.train_sb_lb(data, _settings(**options), tmp_path, verbose=0)
    run = json.loads((tmp_path / "run.json").read_text())
    for key, value in options.items():
        assert run[key] == value
    assert run["remedies_apply_to"] == "lb"
    lb_history = json.loads((tmp_path / "lb_history.json").read_text())
    sb_history = json.loads((tmp_path / "sb_history.json").read_text())
    for key, value in options.items():
        assert lb_history[key] == value and sb_history[key] == remedies.RECORD_DEFAULTS[key]
    assert lb_history["finished"] and np.isfinite(lb_history["epochs"][0]["loss"])

    saved = keras.models.load_model(tmp_path / "lb.keras", compile=False)
    preprocessing = (keras.layers.RandomFlip, keras.layers.RandomRotation,
                     keras.layers.RandomTranslation)
    assert type(saved) is keras.Model or type(saved).__name__ == "Functional"
    assert not any(isinstance(layer, preprocessing) for layer in saved._flatten_layers())
    np.testing.assert_array_equal(saved(data.x_test, training=False),
                                  models["lb"](data.x_test, training=False))
    moved = _distance(models["lb"].get_weights(), models["x0"].get_weights())
    assert moved > 0

    # A work directory made with a remedy refuses a run without it, and back.
    with pytest.raises(CheckpointError, match="augment"):
        training.train_sb_lb(data, _settings(), tmp_path, verbose=0)


def test_workdir_made_before_remedies_existed_is_refused_with_a_remedy(tmp_path):
    record = {"network": "F1", "dataset": "tiny", "seed": 0, "sb_batch_size": 20}
    (tmp_path / "run.json").write_text(json.dumps(record))
    (tmp_path / "sb.keras").write_bytes(b"")
    training.check_workdir(tmp_path, {**record, **remedies.RECORD_DEFAULTS})
    with pytest.raises(CheckpointError, match="augment=False"):
        training.check_workdir(tmp_path, {**record, **remedies.Remedies(augment=True).record(),
                                          "remedies_apply_to": "lb"})


def test_augment_on_feature_vectors_is_refused_before_training(tmp_path):
    from keras_sharpness.data import ArrayData

    rng = np.random.default_rng(0)
    data = ArrayData.from_arrays(rng.normal(size=(20, 6)), rng.integers(0, 2, 20),
                                 rng.normal(size=(4, 6)), rng.integers(0, 2, 4))
    with pytest.raises(UserError, match="image inputs"):
        training.train_sb_lb(data, _settings(sb_batch_size=4, lb_batch_size=20, augment=True),
                             tmp_path, verbose=0)
    assert not (tmp_path / "x0.keras").exists()


def test_resume_with_all_remedies_equals_an_uninterrupted_run(tmp_path):
    import keras

    data = _image_data()

    def builder(synchronized):
        inputs = keras.Input(shape=data.info.input_shape)
        h = keras.layers.Dense(8, activation="tanh")(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, keras.layers.Dense(data.info.num_classes)(h))

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 0:
                raise KeyboardInterrupt

    def train(directory, callbacks=()):
        keras.utils.set_random_seed(7)
        return training.train_minimizer(
            builder(False), "F1", data.info, data.x_train, data.y_train, batch_size=16,
            out_path=directory / "out.keras", history_path=directory / "history.json",
            backup_dir=directory / "backup", epochs=2, verbose=0, builder=builder,
            callbacks=callbacks, augment=True, conservative_lambda=1e-3,
            adversarial_eps=0.01)

    straight = train(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", [Interrupt()])
    resumed = train(tmp_path / "b")
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
