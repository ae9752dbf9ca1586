"""Smith et al. (2018) as a training flag: the batch grows at given epochs."""

import json

import numpy as np
import pytest
from absl import flags

from keras_sharpness import commands, remedies, schedules, training
from keras_sharpness.config import DataSettings, RunSettings, TrainingSettings
from keras_sharpness.errors import UserError
from toy_models import Interrupted


def _data(n=48, dim=6, classes=3, seed=0):
    from keras_sharpness.data import ArrayData

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 12, dim)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)) % classes
    return ArrayData.from_arrays(x[:n], y[:n], x[n:], y[n:], name="tiny", num_classes=classes)


def _builder(info):
    import keras

    from keras_sharpness.layers import SwitchableBatchNormalization

    def builder(synchronized):
        inputs = keras.Input(shape=info.input_shape)
        h = keras.layers.Dense(8)(inputs)
        h = SwitchableBatchNormalization(synchronized=synchronized)(h)
        h = keras.layers.Activation("tanh")(h)
        return keras.Model(inputs, keras.layers.Dense(info.num_classes)(h))
    return builder


def _train(directory, data, options, *, callbacks=(), epochs=3, k=1):
    import keras

    builder = _builder(data.info)
    keras.utils.set_random_seed(5)
    return training.train_minimizer(
        builder(False), "F1", data.info, data.x_train, data.y_train, batch_size=8,
        out_path=directory / "out.keras", history_path=directory / "history.json",
        backup_dir=directory / "backup", epochs=epochs, verbose=0, accumulation_steps=k,
        builder=builder, callbacks=callbacks, remedies=options)


def _steps_and_rates(steps, rates):
    """Counts the train batches of each epoch and the rate each one used."""
    import keras

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps[epoch] = 0

        def on_train_batch_end(self, batch, logs=None):
            steps[max(steps)] += 1
            rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
    return Count()


def _interrupt_before(epoch):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise Interrupted()
    return Interrupt()


# ------------------------------------------------------------------ batches
@pytest.mark.parametrize("k", [1, 2])
def test_seeded_batches_with_a_schedule_are_the_epoch_batches_of_each_epoch(k):
    n = 37
    x = np.arange(n, dtype=np.float32)[:, None]
    schedule = schedules.BatchSchedule(5, 2, (1, 3))
    data = training.SeededBatches(x, np.arange(n), schedule, seed=3, accumulation_steps=k)
    assert not data.constant
    for epoch in range(5):
        expected = schedules.epoch_batches(n, schedule, epoch, 3, accumulation_steps=k)
        parts = list(data.batches(epoch))
        assert len(parts) == len(expected) * k
        got = [np.concatenate([p[0][:, 0] for p in parts[i * k:(i + 1) * k]])
               for i in range(len(expected))]
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
        data.epoch = epoch
        assert len(data) == k * schedules.steps_in_epoch(n, schedule.batch_size(epoch), k)
    assert training.SeededBatches(x, np.arange(n), 5).constant


# ----------------------------------------------------------------- training
def test_fit_runs_each_epochs_batches_the_cap_lowers_the_rate_and_resume_is_exact(tmp_path):
    """Batch 8 of 48 samples, doubled at epochs 1 and 2, capped at 16: 6, 3, 3 steps;
    epoch 2 would be 32, so its rate is halved (Smith et al.)."""
    data = _data()
    options = remedies.Remedies(batch_increase_epochs=(1, 2), batch_increase_factor=2,
                                batch_increase_max=16)
    steps, rates = {}, []
    straight = _train(tmp_path / "a", data, options, callbacks=[_steps_and_rates(steps, rates)])
    assert steps == {0: 6, 1: 3, 2: 3}
    np.testing.assert_allclose(rates, [0.001] * 9 + [0.0005] * 3, rtol=1e-6)
    header = json.loads((tmp_path / "a" / "history.json").read_text())
    assert header["finished"] and len(header["epochs"]) == 3
    assert header["batch_increase_epochs"] == [1, 2] and header["batch_increase_factor"] == 2
    assert header["batch_increase_max"] == 16
    assert header["batch_schedule"] == {"initial_batch": 8, "factor": 2.0, "epochs": [1, 2],
                                        "max_batch": 16, "batch_sizes": [8, 16, 16]}
    assert header["learning_rate_plan"]["total_steps"] == 12

    # Killed at the start of epoch 2, after the increase: the resumed run runs
    # epoch 2 at batch 16 and the lowered rate, and ends where the straight one did.
    with pytest.raises(Interrupted):
        _train(tmp_path / "b", data, options, callbacks=[_interrupt_before(2)])
    steps, rates = {}, []
    resumed = _train(tmp_path / "b", data, options, callbacks=[_steps_and_rates(steps, rates)])
    assert steps == {2: 3}
    np.testing.assert_allclose(rates, [0.0005] * 3, rtol=1e-6)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_train_sb_lb_gives_the_increase_to_lb_and_records_it(tmp_path):
    data = _data()
    settings = RunSettings(DataSettings("tiny"), TrainingSettings(
        "F1", sb_batch_size=12, lb_batch_size=16, epochs=2, accumulation_steps=2,
        batch_increase_epochs=(1,), batch_increase_factor=3))
    training.train_sb_lb(data, settings, tmp_path, verbose=0)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["batch_increase_epochs"] == [1] and run["batch_increase_factor"] == 3
    assert run["batch_increase_max"] == 0 and run["remedies_apply_to"] == "lb"
    lb = json.loads((tmp_path / "lb_history.json").read_text())
    sb = json.loads((tmp_path / "sb_history.json").read_text())
    assert lb["batch_schedule"]["batch_sizes"] == [16, 48]
    assert lb["learning_rate_plan"]["total_steps"] == 3 + 1
    assert "batch_schedule" not in sb and sb["batch_increase_epochs"] == []
    assert sb["batch_increase_factor"] is None
    # The same settings reuse the run; others are refused.
    assert training.train_sb_lb(data, settings, tmp_path, verbose=0)["record"]["status"] \
        == "finished"
    with pytest.raises(training.CheckpointError, match="batch_increase_factor"):
        training.train_sb_lb(data, RunSettings(settings.data, TrainingSettings(
            "F1", sb_batch_size=12, lb_batch_size=16, epochs=2, accumulation_steps=2,
            batch_increase_epochs=(1,), batch_increase_factor=2)), tmp_path, verbose=0)


# ------------------------------------------------------------- settings
@pytest.mark.parametrize("options, message", [
    ({"batch_increase_epochs": "1", "batch_increase_factor": 1},
     "--batch_increase_factor must be a finite number > 1"),
    ({"batch_increase_epochs": "1", "batch_increase_factor": 0.5},
     "--batch_increase_factor must be a finite number > 1"),
    ({"batch_increase_epochs": "3,2"}, "--batch_increase_epochs must be strictly increasing"),
    ({"batch_increase_epochs": "2,2"}, "--batch_increase_epochs must be strictly increasing"),
    ({"batch_increase_epochs": "-1"}, "--batch_increase_epochs must be whole epochs >= 1"),
    ({"batch_increase_epochs": "0"}, "--batch_increase_epochs must be whole epochs >= 1"),
    ({"batch_increase_epochs": "1.5"}, "--batch_increase_epochs must be a whole number"),
    ({"batch_increase_epochs": "x"}, "--batch_increase_epochs must be a comma-separated"),
    ({"batch_increase_max": -4}, "--batch_increase_max must be at least 0"),
    ({"batch_increase_epochs": "1", "warmup_epochs": 1},
     "--batch_increase_epochs cannot be combined with --warmup_epochs"),
    ({"batch_increase_epochs": "1", "lr_decay": "cosine"},
     "--batch_increase_epochs cannot be combined with --warmup_epochs"),
    ({"batch_increase_epochs": "1", "train_longer": True},
     "--batch_increase_epochs cannot be combined with --warmup_epochs"),
])
def test_bad_batch_increase_settings_are_one_line(options, message):
    with pytest.raises(UserError, match=message) as caught:
        TrainingSettings("F1", **options)
    assert "\n" not in str(caught.value)


def test_flags_set_the_schedule_and_a_batch_the_data_cannot_take_is_refused(tmp_path):
    fv = flags.FlagValues()
    commands.define_remedy_flags(fv)
    fv(["prog", "--batch_increase_epochs=2,5", "--batch_increase_factor=4",
        "--batch_increase_max=4096"])
    settings = TrainingSettings("F1", **{f: fv[f].value for f in (
        "batch_increase_epochs", "batch_increase_factor", "batch_increase_max")})
    assert settings.batch_increase_epochs == (2, 5)
    assert TrainingSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    schedule = settings.remedies.batch_schedule(256)
    assert [schedule.batch_size(e) for e in (0, 2, 5)] == [256, 1024, 4096]
    assert remedies.Remedies().batch_schedule(256) == 256
    assert "batch x4 at epochs 2,5 (max 4096)" in settings.remedies.describe()

    # Batch 16 doubled twice is 64 > 48 samples: refused before training.
    data = _data()
    too_big = RunSettings(DataSettings("tiny"), TrainingSettings(
        "F1", sb_batch_size=12, lb_batch_size=16, epochs=3, batch_increase_epochs=(1, 2)))
    with pytest.raises(UserError, match="batch size 64 is larger than the training set"):
        training.train_sb_lb(data, too_big, tmp_path, verbose=0)
    assert not (tmp_path / "x0.keras").exists()
