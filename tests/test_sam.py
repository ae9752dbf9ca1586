"""SAM / ASAM train steps against closed forms (linear least squares) and plain steps."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_sharpness import sam
from keras_sharpness.errors import UserError

LR = 0.1


def _linear(kernel, bias=None):
    """Dense(1) on 3 inputs with the given weights."""
    import keras

    x = keras.Input((3,))
    dense = keras.layers.Dense(1, use_bias=bias is not None)
    model = keras.Model(x, dense(x))
    dense.set_weights([np.asarray(kernel, np.float32).reshape(3, 1)]
                      + ([np.asarray(bias, np.float32).reshape(1)] if bias is not None else []))
    return model


def _least_squares(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)).astype(np.float32),
            rng.normal(size=(n, 1)).astype(np.float32))


def _grad(x, y, kernel, bias=0.0):
    """Gradient of mean((x k + b - y)^2) in float64: (dk, db)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)[:, 0]
    residual = x @ kernel + bias - y
    return 2 * x.T @ residual / len(x), 2 * residual.mean()


def _sam_gradient(x, y, kernel, rho):
    """SAM's gradient of the linear least squares by hand."""
    g, _ = _grad(x, y, kernel)
    return _grad(x, y, kernel + rho * g / np.linalg.norm(g))[0]


def _compiled(model, optimizer=None):
    import keras

    model.compile(optimizer=optimizer or keras.optimizers.SGD(LR), loss="mse")
    return model


def _kernel(model):
    return model.get_weights()[0][:, 0].astype(np.float64)


W0 = np.array([0.5, -1.0, 0.25])


# ------------------------------------------------------------ closed forms
def test_sam_step_on_least_squares_is_the_closed_form():
    x, y = _least_squares()
    model = _compiled(sam.sam_model(_linear(W0), rho=0.3))
    model.train_on_batch(x, y)
    expected = W0 - LR * _sam_gradient(x, y, W0, 0.3)
    plain_step = W0 - LR * _grad(x, y, W0)[0]
    assert np.abs(expected - plain_step).max() > 1e-2  # rho matters here
    np.testing.assert_allclose(_kernel(model), expected, rtol=0, atol=1e-6)


def test_asam_step_scales_the_kernel_by_abs_w_plus_eta_and_not_the_bias():
    x, y = _least_squares()
    rho, eta, b0 = 0.5, 0.01, 0.3
    model = _compiled(sam.sam_model(_linear(W0, b0), rho=rho, adaptive=True, eta=eta))
    model.train_on_batch(x, y)
    gk, gb = _grad(x, y, W0, b0)
    t = np.abs(W0) + eta  # Kwon et al.: T = |w| + eta for weights, T = 1 for biases
    norm = np.sqrt(np.sum((t * gk) ** 2) + gb ** 2)
    dk, db = _grad(x, y, W0 + rho * t * t * gk / norm, b0 + rho * gb / norm)
    np.testing.assert_allclose(_kernel(model), W0 - LR * dk, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], [b0 - LR * db], rtol=0, atol=1e-6)


def test_sam_perturbation_has_norm_rho_and_zero_gradient_gives_zero():
    g = [np.array([3.0, 0.0], np.float32), np.array([[4.0]], np.float32)]
    w = [np.ones(2, np.float32), np.ones((1, 1), np.float32)]
    e = sam.sam_perturbation(g, w, 0.5)
    np.testing.assert_allclose(e[0], [0.3, 0.0], atol=1e-7)
    np.testing.assert_allclose(e[1], [[0.4]], atol=1e-7)
    zero = sam.sam_perturbation([np.zeros(2, np.float32), None], w, 0.5, adaptive=True)
    assert all(np.all(np.asarray(z) == 0) for z in zero)


def _dropout_bn_net(seed=0, bn="keras"):
    import keras

    from keras_sharpness.layers import SwitchableBatchNormalization

    keras.utils.set_random_seed(seed)
    x = keras.Input((5,))
    h = keras.layers.Dense(4, activation="tanh")(x)
    h = keras.layers.Dropout(0.3)(h)
    h = (keras.layers.BatchNormalization() if bn == "keras"
         else SwitchableBatchNormalization(bn_eval=bn))(h)
    return keras.Model(x, keras.layers.Dense(3)(h))


def _classifier_data(n=16, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n)


def _compile_ce(model, optimizer=None):
    import keras

    model.compile(optimizer=optimizer or keras.optimizers.Adam(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_rho_zero_is_a_plain_adam_step_same_dropout_masks():
    x, y = _classifier_data()
    plain = _compile_ce(_dropout_bn_net())
    start = plain.get_weights()
    flat = _compile_ce(sam.sam_model(_dropout_bn_net(), rho=0.0))
    plain_logs = plain.train_on_batch(x, y, return_dict=True)
    flat_logs = flat.train_on_batch(x, y, return_dict=True)
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain.get_weights(), start)) > 1e-4
    for a, b in zip(plain.get_weights(), flat.get_weights()):  # moving statistics included
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    assert flat_logs["loss"] == pytest.approx(plain_logs["loss"], abs=1e-6)


def test_moving_statistics_come_from_the_first_pass_only():
    import keras

    from keras_sharpness.layers import SwitchableBatchNormalization

    x, y = _classifier_data()
    for layer_class in (keras.layers.BatchNormalization, SwitchableBatchNormalization):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5,))
        dense = keras.layers.Dense(4)
        norm = layer_class()
        model = _compile_ce(sam.sam_model(
            keras.Model(inputs, keras.layers.Dense(3)(norm(dense(inputs)))), rho=2.0),
            keras.optimizers.SGD(LR))
        kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
        model.train_on_batch(x, y)
        # One update (momentum 0.99) with the batch moments at the initial
        # weights; the second pass, at w + e, must leave no trace.
        h = x.astype(np.float64) @ kernel + bias
        np.testing.assert_allclose(norm.moving_mean, 0.01 * h.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(norm.moving_variance, 0.99 + 0.01 * h.var(0),
                                   rtol=1e-5, atol=1e-7)
        assert np.abs(dense.get_weights()[0] - kernel).max() > 1e-4  # the step did move


# ------------------------------------------------------ gradient accumulation
def test_accumulation_perturbs_each_micro_batch_along_its_own_gradient():
    import keras

    x, y = _least_squares(n=8)
    model = _compiled(sam.sam_model(_linear(W0), rho=0.3),
                      keras.optimizers.SGD(LR, gradient_accumulation_steps=2))
    model.train_on_batch(x[:4], y[:4])
    np.testing.assert_array_equal(_kernel(model), W0.astype(np.float32))  # accumulated only
    model.train_on_batch(x[4:], y[4:])
    m_sharp = 0.5 * (_sam_gradient(x[:4], y[:4], W0, 0.3) + _sam_gradient(x[4:], y[4:], W0, 0.3))
    g = _grad(x, y, W0)[0]
    whole = 0.5 * sum(_grad(x[s], y[s], W0 + 0.3 * g / np.linalg.norm(g))[0]
                      for s in (slice(0, 4), slice(4, 8)))
    assert np.abs(m_sharp - whole).max() > 1e-3  # the two readings differ here
    np.testing.assert_allclose(_kernel(model), W0 - LR * m_sharp, rtol=0, atol=1e-6)


# ------------------------------------------------------ arguments, saving
def test_bad_arguments_are_one_line_user_errors():
    net = _linear(W0)
    for kwargs, name in ((dict(rho=-0.1), "rho"), (dict(rho=float("nan")), "rho"),
                         (dict(rho=float("inf")), "rho"), (dict(rho="big"), "rho"),
                         (dict(rho=0.05, eta=-0.01), "eta"),
                         (dict(rho=0.05, eta=float("nan")), "eta"),
                         (dict(rho=0.05, adaptive="yes"), "adaptive")):
        with pytest.raises(UserError, match=name) as info:
            sam.sam_model(net, **kwargs)
        assert "\n" not in str(info.value)
        with pytest.raises(UserError, match=name):
            sam.SAM(**kwargs).check()
    assert sam.SAM().record() == sam.RECORD_DEFAULTS and sam.SAM().describe() == ""
    assert sam.SAM(0.5, adaptive=True).describe() == "ASAM rho=0.5 eta=0.01"
    assert sam.SAM(0.05).record() == {"sam_rho": 0.05, "sam_adaptive": False, "sam_eta": None}


def test_sam_model_shares_weights_and_round_trips_through_a_keras_file(tmp_path):
    import keras

    net = _linear(W0, 0.1)
    model = _compiled(sam.sam_model(net, rho=0.2, adaptive=True, eta=0.05))
    assert all(a is b for a, b in zip(model.weights, net.weights))
    assert [sam.is_offset(v) for v in model.trainable_variables] == [False, True]
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, sam.sam_model_class())
    assert (loaded.rho, loaded.adaptive, loaded.eta) == (0.2, True, 0.05)
    for a, b in zip(loaded.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ distribution
MIRRORED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras_sharpness import sam
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(cpus)
    assert strategy.num_replicas_in_sync == 2
    x = np.asarray({x!r}, np.float32)
    y = np.asarray({y!r}, np.float32)
    with strategy.scope():
        inputs = keras.Input((3,))
        net = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, kernel_initializer=
            keras.initializers.Constant(np.asarray({w!r}, np.float32).reshape(3, 1)))(inputs))
        model = sam.sam_model(net, rho={rho!r})
        model.compile(optimizer=keras.optimizers.SGD({lr!r}), loss="mse")
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0,
              shuffle=False)
    print("RESULT", *net.get_weights()[0][:, 0].tolist())
""")


MIRRORED_DATA = dict(n=16, seed=3, rho=0.3)


@pytest.fixture(scope="module", autouse=True)
def mirrored_run():
    """Starts the two-replica run in a subprocess (its TF needs 2 logical CPUs
    before it initializes); it runs while the other tests of the module do."""
    x, y = _least_squares(n=MIRRORED_DATA["n"], seed=MIRRORED_DATA["seed"])
    script = MIRRORED_SCRIPT.format(x=x.tolist(), y=y.tolist(), w=W0.tolist(),
                                    rho=MIRRORED_DATA["rho"], lr=LR)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()


def test_mirrored_strategy_perturbs_each_replica_along_its_local_gradient(mirrored_run):
    stdout, stderr = mirrored_run.communicate(timeout=240)
    assert mirrored_run.returncode == 0, stderr[-3000:]
    got = np.array([float(v) for v in
                    [ln for ln in stdout.splitlines() if ln.startswith("RESULT")][-1]
                    .split()[1:]])
    x, y = _least_squares(n=MIRRORED_DATA["n"], seed=MIRRORED_DATA["seed"])
    rho = MIRRORED_DATA["rho"]
    # Two global batches of 8, each split into two replica batches of 4; the
    # optimizer applies the mean of the replicas' SAM gradients.
    w = W0.copy()
    for start in (0, 8):
        w = w - LR * 0.5 * sum(_sam_gradient(x[s:s + 4], y[s:s + 4], w, rho)
                               for s in (start, start + 4))
    np.testing.assert_allclose(got, w, rtol=0, atol=1e-5)
    g = _grad(x[:8], y[:8], W0)[0]  # one perturbation from the global gradient: not this
    whole = W0 - LR * _grad(x[:8], y[:8], W0 + rho * g / np.linalg.norm(g))[0]
    assert np.abs(whole - (W0 - LR * 0.5 * sum(_sam_gradient(x[s:s + 4], y[s:s + 4], W0, rho)
                                                for s in (0, 4)))).max() > 1e-3
