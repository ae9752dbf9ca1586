"""Large-batch recipes: lr scaling, warm-up, batch schedules, optimizers (schedules.py)."""

import json
import math

import numpy as np
import pytest

from keras_sharpness import schedules, training
from keras_sharpness.errors import UserError


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def _curve(schedule, steps):
    """The schedule at many steps in one call (the ops are elementwise)."""
    return np.asarray(schedule(np.asarray(steps, np.int64)))


# ----------------------------------------------------------------- scaling
def test_learning_rate_scaling_rules():
    assert schedules.scaled_learning_rate(0.001, 2048, 256, "linear") == pytest.approx(0.008)
    assert schedules.scaled_learning_rate(0.001, 2048, 256, "sqrt") == pytest.approx(
        0.0028284271247461905)  # 0.001 * sqrt(8)
    assert schedules.scaled_learning_rate(0.1, 128, 256, "linear") == pytest.approx(0.05)
    assert schedules.scaled_learning_rate(0.1, 1024, 256, "sqrt") == pytest.approx(0.2)
    assert schedules.scaled_learning_rate(0.001, 5000, 256, "none") == 0.001
    for args in [(0.001, 2048, 256, "cubic"), (0.0, 2048, 256, "linear"),
                 (float("nan"), 8, 4, "sqrt"), (0.001, 0, 256, "linear"),
                 (0.001, 2048, 25.5, "linear"), (0.001, True, 256, "linear")]:
        with pytest.raises(UserError):
            schedules.scaled_learning_rate(*args)


def test_train_longer_gives_lb_as_many_updates_as_sb():
    # Idealized: 10 * 5000 / 256 = 195.3 epochs, rounded up.
    assert schedules.train_longer_epochs(10, 256, 5000) == 196
    assert schedules.train_longer_epochs(3, 100, 300) == 9
    assert schedules.train_longer_epochs(4, 300, 100) == 2  # 4/3 rounded up
    # Counted: 1000 samples are 10 SB batches of 100 and 4 LB batches of 300
    # (the last of 100): 10 * 10 SB updates need 25 LB epochs, not 30.
    assert schedules.train_longer_epochs(10, 100, 300, num_samples=1000) == 25
    assert schedules.train_longer_epochs(10, 256, 5000, num_samples=50000) == 196
    for args in [(0, 256, 5000), (10, 0, 5000), (10, 256, -1)]:
        with pytest.raises(UserError):
            schedules.train_longer_epochs(*args)
    with pytest.raises(UserError):
        schedules.train_longer_epochs(10, 256, 5000, num_samples=1000)


# ----------------------------------------------------------------- warm-up
def test_warmup_then_cosine_values_at_given_steps():
    # Goyal et al.: from eta = 0.001 to k * eta = 0.008 over 10 steps, then a
    # cosine from 0.008 to 0 over the remaining 90.
    s = schedules.make_schedule(0.008, warmup_steps=10, start_lr=0.001, decay="cosine",
                                total_steps=100)
    expected = {0: 0.001, 1: 0.0017, 5: 0.0045, 9: 0.0073, 10: 0.008,
                55: 0.004,                          # 0.008 * (1 + cos(pi / 2)) / 2
                40: 0.006,                          # 0.008 * (1 + cos(pi / 3)) / 2
                100: 0.0, 150: 0.0}
    np.testing.assert_allclose(_values(s, list(expected)), list(expected.values()),
                               rtol=1e-5, atol=1e-9)
    # Goyal's recipe in one call: linear scaling, warm-up from the base rate.
    g = schedules.large_batch_schedule(0.001, 2048, 256, warmup_steps=8)
    np.testing.assert_allclose(_values(g, [0, 4, 8, 9, 1000]),
                               [0.001, 0.0045, 0.008, 0.008, 0.008], rtol=1e-6)
    # From zero by default; no warm-up and no decay is a plain float.
    z = schedules.make_schedule(0.1, warmup_steps=4)
    np.testing.assert_allclose(_values(z, [0, 1, 3, 4, 50]), [0, 0.025, 0.075, 0.1, 0.1],
                               rtol=1e-6)
    assert schedules.make_schedule(0.01) == 0.01


def test_warmup_then_step_and_exponential_decay():
    # Iteration b of each boundary is the first at the new rate.
    s = schedules.make_schedule(0.1, warmup_steps=4, decay="step", boundaries=[10, 20],
                                decay_rate=0.1)
    np.testing.assert_allclose(_values(s, [0, 2, 4, 9, 10, 19, 20, 500]),
                               [0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    e = schedules.make_schedule(1.0, warmup_steps=2, decay="exponential", decay_steps=10,
                                decay_rate=0.5)
    np.testing.assert_allclose(_values(e, [1, 2, 7, 12, 22]),
                               [0.5, 1.0, 0.5 ** 0.5, 0.5, 0.25], rtol=1e-6)
    # No warm-up: the decay from iteration 0.
    c = schedules.make_schedule(2.0, decay="cosine", total_steps=4)
    np.testing.assert_allclose(_values(c, [0, 2, 4]), [2.0, 1.0, 0.0], atol=1e-6)


def test_schedule_counts_updates_under_gradient_accumulation():
    import keras

    # Rate per update: 0.5, 0.75, then 1.0. Two micro-batches of gradient 1 per
    # update: updates 0 and 1 move w by 0.5 + 0.75 (reading the micro-batch
    # counter instead would give 0.75 + 1.0).
    schedule = schedules.make_schedule(1.0, warmup_steps=2, start_lr=0.5, accumulation_steps=2)
    np.testing.assert_allclose(_values(schedule, range(6)), [0.5, 0.5, 0.75, 0.75, 1, 1])
    sgd = schedules.make_optimizer("sgd", schedule, momentum=0.0, gradient_accumulation_steps=2)
    w = keras.Variable(np.zeros(1, np.float32))
    for _ in range(4):
        sgd.apply([np.ones(1, np.float32)], [w])
    np.testing.assert_allclose(np.asarray(w), [-1.25], rtol=1e-6)


def test_bad_schedule_settings_are_user_errors():
    bad = [dict(decay="linear"), dict(decay="cosine"),
           dict(decay="cosine", total_steps=5, warmup_steps=5),
           dict(decay="step"), dict(decay="step", boundaries=[3], warmup_steps=5),
           dict(decay="step", boundaries=[10, 10]), dict(decay="exponential"),
           dict(warmup_steps=-1), dict(warmup_steps=2.5), dict(start_lr=-1.0, warmup_steps=2),
           dict(decay="cosine", total_steps=10, alpha=2.0), dict(accumulation_steps=0)]
    for kwargs in bad:
        with pytest.raises(UserError):
            schedules.make_schedule(0.1, **kwargs)
    with pytest.raises(UserError):
        schedules.make_schedule(0.0)
    with pytest.raises(UserError):
        schedules.WarmupSchedule(0.1, 5, after=lambda step: 0.1)


def test_schedule_serialization_round_trip_gives_identical_values():
    import keras

    steps = np.arange(130)
    for original in [
            schedules.make_schedule(0.008, warmup_steps=10, start_lr=0.001, decay="cosine",
                                    total_steps=100, alpha=0.1),
            schedules.make_schedule(0.1, warmup_steps=4, decay="step", boundaries=[10, 20]),
            schedules.WarmupSchedule(0.3, 7, start_lr=0.01, accumulation_steps=3,
                                     after=schedules.WarmupSchedule(0.3, 5, start_lr=0.1))]:
        text = json.dumps(keras.optimizers.schedules.serialize(original))
        restored = keras.optimizers.schedules.deserialize(json.loads(text))
        assert type(restored) is type(original)
        np.testing.assert_array_equal(_curve(restored, steps), _curve(original, steps))
        optimizer = keras.optimizers.Adam.from_config(
            json.loads(json.dumps(keras.optimizers.Adam(original).get_config())))
        np.testing.assert_array_equal(_curve(optimizer._learning_rate, steps),
                                      _curve(original, steps))
    np.testing.assert_allclose(_curve(original, [0, 5, 7, 9, 11]),
                               _values(original, [0, 5, 7, 9, 11]), rtol=1e-6)


# ------------------------------------------------------------------ resume
def _tiny_model(optimizer_name, run_eagerly=False, **optimizer_kwargs):
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((5,))
    h = keras.layers.Dense(4, activation="tanh")(x)
    model = keras.Model(x, keras.layers.Dense(3)(h))
    # Warm-up over 6 iterations, then cosine: the resume at iteration 3 is mid-warm-up.
    schedule = schedules.make_schedule(0.05, warmup_steps=6, start_lr=0.005, decay="cosine",
                                       total_steps=20)
    model.compile(optimizer=schedules.make_optimizer(optimizer_name, schedule,
                                                     **optimizer_kwargs),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=run_eagerly)
    return model


def _batches(count=8, size=16):
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(size, 5)).astype(np.float32), rng.integers(0, 3, size))
            for _ in range(count)]


@pytest.mark.parametrize("name, kwargs", [("adam", {}),
                                          ("lars", {"trust_coefficient": 0.5,
                                                    "weight_decay": 1e-3})])
def test_resume_mid_warmup_from_a_keras_file_gives_identical_weights(tmp_path, name, kwargs):
    import keras

    batches = _batches()
    # Eager steps (no tracing) keep this fast; fit's compiled step is the next test's.
    straight = _tiny_model(name, run_eagerly=True, **kwargs)
    for x, y in batches:
        straight.train_on_batch(x, y)

    first = _tiny_model(name, run_eagerly=True, **kwargs)
    start = [w.copy() for w in first.get_weights()]
    for x, y in batches[:3]:
        first.train_on_batch(x, y)
    first.save(tmp_path / "mid_warmup.keras")
    resumed = keras.models.load_model(tmp_path / "mid_warmup.keras")
    resumed.run_eagerly = True
    assert int(resumed.optimizer.iterations) == 3
    assert type(resumed.optimizer._learning_rate).__name__ == "WarmupSchedule"
    # Iteration 3 of the ramp 0.005 -> 0.05 over 6: 0.0275, not the start 0.005.
    assert float(resumed.optimizer.learning_rate) == pytest.approx(0.0275, rel=1e-6)
    for x, y in batches[3:]:
        resumed.train_on_batch(x, y)

    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == 8
    for a, b, w0 in zip(straight.get_weights(), resumed.get_weights(), start):
        assert not np.array_equal(a, w0)
        np.testing.assert_array_equal(a, b)


def test_resume_from_a_crash_safe_backup_mid_warmup_gives_identical_weights(tmp_path):
    import keras

    from keras_sharpness.backup import CrashSafeBackup

    x = np.concatenate([b[0] for b in _batches(4, 8)])
    y = np.concatenate([b[1] for b in _batches(4, 8)])

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    def fit(folder, callbacks=()):
        model = _tiny_model("sgd")  # warm-up over 6 of 2 x 4 iterations
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[CrashSafeBackup(folder), *callbacks])
        return model

    straight = fit(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b", [Kill()])  # killed after epoch 1 (iteration 4 of 6)
    seen = []
    resumed = fit(tmp_path / "b", [Record()])
    assert seen == [1], "the resumed run starts at epoch 1, from the backup"
    assert int(resumed.optimizer.iterations) == 8
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ batch schedule
def test_batch_schedule_values_cap_and_round_trip():
    s = schedules.BatchSchedule(128, 5, epochs=(2, 4), max_batch=2000)
    assert [s.batch_size(e) for e in range(6)] == [128, 128, 640, 640, 2000, 2000]
    # Uncapped 3200 at epoch 4: the learning rate takes the rest, 2000 / 3200.
    assert [s.learning_rate_factor(e) for e in (0, 3, 4)] == [1.0, 1.0, 0.625]
    assert schedules.BatchSchedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # A float factor rounds the exact product: 100, 150, 225, 337.5 -> 338, 506.25 -> 506.
    f = schedules.BatchSchedule(100, 1.5, epochs=[1, 2, 3, 4])
    assert [f.batch_size(e) for e in range(5)] == [100, 150, 225, 338, 506]
    assert schedules.BatchSchedule(64, 2).batch_size(100) == 64
    # Iterations per epoch: 10 samples in batches of 4 are 3 batches (the last of 2).
    assert schedules.BatchSchedule(4, 2, (1,)).total_steps(10, 3) == 3 + 2 + 2
    for kwargs in [dict(initial_batch=0, factor=2), dict(initial_batch=8, factor=0.5),
                   dict(initial_batch=8, factor=2, epochs=(3, 2)),
                   dict(initial_batch=8, factor=2, epochs=(0,)),
                   dict(initial_batch=8, factor=2, epochs=5),
                   dict(initial_batch=8, factor=2, max_batch=4)]:
        with pytest.raises(UserError):
            schedules.BatchSchedule(**kwargs)
    for record in [{"initial_batch": 8}, {"initial_batch": 8, "factor": 2, "size": 3}, [8, 2]]:
        with pytest.raises(UserError):
            schedules.BatchSchedule.from_dict(record)
    with pytest.raises(UserError):
        s.batch_size(-1)
    with pytest.raises(UserError):
        s.check(1000)  # 2000 samples do not fit


def test_steps_in_epoch_counts_seeded_batches():
    for n, b, k in [(10, 4, 1), (10, 4, 2), (9, 4, 2), (12, 4, 4), (100, 7, 3)]:
        x = np.zeros((n, 1), np.float32)
        micro = len(training.SeededBatches(x, np.zeros(n), b, accumulation_steps=k))
        assert schedules.steps_in_epoch(n, b, k) * k == micro
    # 10 samples in batches of 4: 3 updates (the last of 2 samples, which k = 2
    # can split); 9 samples: the last batch of 1 is dropped with k = 2.
    assert (schedules.steps_in_epoch(10, 4), schedules.steps_in_epoch(10, 4, 2),
            schedules.steps_in_epoch(9, 4, 2)) == (3, 3, 2)
    for args in [(10, 11), (10, 0), (10, 4, 5), (0, 1)]:
        with pytest.raises(UserError):
            schedules.steps_in_epoch(*args)


def test_epoch_batches_cover_each_sample_once_deterministically():
    n = 103
    s = schedules.BatchSchedule(10, 2, epochs=(1, 2))
    for epoch, size in [(0, 10), (1, 20), (2, 40), (3, 40)]:
        batches = schedules.epoch_batches(n, s, epoch, seed=7)
        assert [len(b) for b in batches[:-1]] == [size] * (len(batches) - 1)
        assert len(batches) == math.ceil(n / size)
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))
        again = schedules.epoch_batches(n, s, epoch, seed=7)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again))
        np.testing.assert_array_equal(np.concatenate(batches),
                                      training.epoch_permutation(n, 7, epoch))
    assert not np.array_equal(np.concatenate(schedules.epoch_batches(n, s, 0, seed=7)),
                              np.concatenate(schedules.epoch_batches(n, s, 0, seed=8)))
    # A constant batch gives exactly the batches of SeededBatches.
    x = np.arange(n, dtype=np.float32)[:, None]
    data = training.SeededBatches(x, np.zeros(n), 16, seed=7)
    for epoch in (0, 3):
        seen = [bx[:, 0].astype(int) for bx, _ in data.batches(epoch)]
        mine = schedules.epoch_batches(n, 16, epoch, seed=7)
        assert len(seen) == len(mine) and all(np.array_equal(a, b) for a, b in zip(seen, mine))
    # With accumulation a final batch of fewer than k samples is dropped, as there.
    assert [len(b) for b in schedules.epoch_batches(9, 4, 0, seed=0, accumulation_steps=2)] \
        == [4, 4]


# --------------------------------------------------------------- optimizers
def test_lars_update_matches_the_rule_computed_with_numpy():
    import keras

    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 4))
    b0 = rng.normal(size=4)
    grads = [(rng.normal(size=(3, 4)), rng.normal(size=4)) for _ in range(2)]
    lr, m, beta, eta = 0.5, 0.9, 0.01, 0.02
    opt = schedules.make_optimizer("lars", lr, momentum=m, weight_decay=beta,
                                   trust_coefficient=eta)
    w = keras.Variable(w0.astype(np.float32))
    b = keras.Variable(b0.astype(np.float32))
    # You et al. (2017), Algorithm 1; the bias (1-D) is plain momentum SGD.
    ew, eb, vw, vb = w0.copy(), b0.copy(), np.zeros_like(w0), np.zeros_like(b0)
    for gw, gb in grads:
        opt.apply([gw.astype(np.float32), gb.astype(np.float32)], [w, b])
        local = eta * np.linalg.norm(ew) / (np.linalg.norm(gw) + beta * np.linalg.norm(ew))
        vw = m * vw + lr * local * (gw + beta * ew)
        vb = m * vb + lr * gb
        ew, eb = ew - vw, eb - vb
    np.testing.assert_allclose(np.asarray(w), ew, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(b), eb, rtol=1e-5, atol=1e-7)
    # A zero weight matrix takes the plain step (trust ratio 1).
    z = keras.Variable(np.zeros((2, 2), np.float32))
    fresh = schedules.make_optimizer("lars", 0.1, momentum=0.0)
    fresh.apply([np.ones((2, 2), np.float32)], [z])
    np.testing.assert_allclose(np.asarray(z), -0.1 * np.ones((2, 2)), rtol=1e-6)
    # Serializable: the config round-trips through JSON.
    config = json.loads(json.dumps(opt.get_config()))
    again = schedules.LARS.from_config(config)
    assert (again.momentum, again.lars_weight_decay, again.trust_coefficient,
            again.exclude_1d) == (m, beta, eta, True)
    assert again.weight_decay is None  # Keras' decoupled decay stays off


def test_optimizers_by_name_with_gradient_accumulation():
    import keras

    adam = schedules.make_optimizer()
    assert type(adam) is keras.optimizers.Adam
    config = {k: v for k, v in adam.get_config().items() if k != "name"}
    assert config == {k: v for k, v in keras.optimizers.Adam().get_config().items()
                      if k != "name"}
    lamb = schedules.make_optimizer("lamb", 0.01, gradient_accumulation_steps=4)
    assert type(lamb) is keras.optimizers.Lamb and lamb.gradient_accumulation_steps == 4
    sgd = schedules.make_optimizer("sgd", 0.1, momentum=0.8, nesterov=True,
                                   gradient_accumulation_steps=2)
    assert type(sgd) is keras.optimizers.SGD
    assert (sgd.momentum, sgd.nesterov, sgd.gradient_accumulation_steps) == (0.8, True, 2)
    assert schedules.make_optimizer("sgd", gradient_accumulation_steps=1) \
        .gradient_accumulation_steps is None
    # Two accumulated micro-batches make one step with their mean gradient.
    plain = schedules.make_optimizer("sgd", 0.1, momentum=0.0, gradient_accumulation_steps=2)
    v = keras.Variable(np.array([1.0, 2.0], np.float32))
    plain.apply([np.array([1.0, 0.0], np.float32)], [v])
    np.testing.assert_array_equal(np.asarray(v), [1.0, 2.0])
    plain.apply([np.array([3.0, 2.0], np.float32)], [v])
    np.testing.assert_allclose(np.asarray(v), [1.0 - 0.1 * 2.0, 2.0 - 0.1 * 1.0], rtol=1e-6)
    for name, kwargs in [("rmsprop", {}), ("sgd", {"momentum": 1.0}),
                         ("adam", {"nesterov": True}), ("adam", {"learning_rate": -1.0}),
                         ("adam", {"weight_decay": -0.1}),
                         ("lamb", {"gradient_accumulation_steps": 0}),
                         ("sgd", {"no_such_argument": 1}), ("lars", {"trust_coefficient": 0})]:
        with pytest.raises(UserError):
            schedules.make_optimizer(name, **kwargs)
