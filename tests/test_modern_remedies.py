"""Issue-12 remedies as training options: settings, flags, records, training, resume."""

import json
import math

import numpy as np
import pytest
from absl import flags

from keras_sharpness import commands, remedies, training
from keras_sharpness.config import DataSettings, PlotCommand, RunSettings, TrainingSettings
from keras_sharpness.errors import CheckpointError, UserError
from keras_sharpness.experiments import flags as experiment_flags
from toy_models import Interrupted, interrupt_at

#: Every issue-12 option switched on (values the tests check against).
MODERN = dict(optimizer="sgd", learning_rate=0.01, momentum=0.5, lr_scaling="linear",
              warmup_epochs=2, lr_decay="cosine", ghost_batch_size=4, sam_rho=0.05)


def _data(n=48, dim=6, classes=3, seed=0):
    from keras_sharpness.data import ArrayData

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 12, dim)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)) % classes
    return ArrayData.from_arrays(x[:n], y[:n], x[n:], y[n:], name="tiny", num_classes=classes)


def _builder(info, *, batch_norm=True):
    import keras

    from keras_sharpness.layers import SwitchableBatchNormalization

    def builder(synchronized):
        inputs = keras.Input(shape=info.input_shape)
        h = keras.layers.Dense(8)(inputs)
        if batch_norm:
            h = SwitchableBatchNormalization(synchronized=synchronized)(h)
        h = keras.layers.Activation("tanh")(h)
        return keras.Model(inputs, keras.layers.Dense(info.num_classes)(h))
    return builder


def _train(directory, data, options, *, callbacks=(), batch_norm=True, batch_size=16, k=2,
           epochs=3):
    import keras

    builder = _builder(data.info, batch_norm=batch_norm)
    keras.utils.set_random_seed(5)
    return training.train_minimizer(
        builder(False), "F1", data.info, data.x_train, data.y_train, batch_size=batch_size,
        out_path=directory / "out.keras", history_path=directory / "history.json",
        backup_dir=directory / "backup", epochs=epochs, verbose=0, accumulation_steps=k,
        builder=builder, callbacks=callbacks, remedies=options)


# ------------------------------------------------------------- settings
@pytest.mark.parametrize("options, message", [
    ({"optimizer": "rmsprop"}, "--optimizer must be one of adam, sgd, lamb, lars"),
    ({"learning_rate": 0}, "--learning_rate must be a finite number > 0"),
    ({"learning_rate": float("inf")}, "--learning_rate must be a finite number"),
    ({"momentum": 1.0}, r"--momentum must be in \[0, 1\)"),
    ({"lr_scaling": "square"}, "--lr_scaling must be one of none, linear, sqrt"),
    ({"lr_reference_batch": -1}, "--lr_reference_batch must be at least 0"),
    ({"warmup_epochs": -1}, "--warmup_epochs must be >= 0"),
    ({"lr_decay": "step"}, "--lr_decay must be one of none, cosine"),
    ({"ghost_batch_size": 2.5}, "--ghost_batch_size must be a whole number"),
    ({"sam_rho": -0.1}, "--sam_rho must be >= 0"),
    ({"sam_eta": float("nan")}, "--sam_eta must be a finite number"),
    ({"sam_rho": 0.05, "conservative_lambda": 1e-3},
     "--sam_rho cannot be combined with conservative or adversarial training"),
    ({"sam_rho": 0.05, "adversarial_eps": 0.01},
     "--sam_rho cannot be combined with conservative or adversarial training"),
])
def test_bad_remedy_settings_are_one_line_naming_the_flag(options, message):
    with pytest.raises(UserError, match=message) as caught:
        TrainingSettings("F1", **options)
    assert "\n" not in str(caught.value)


def _parsed(define, argv):
    values = flags.FlagValues()
    define(values)
    values(["prog", *argv])
    return values


ARGV = ["-n", "C1", "--dataset=digits", "--optimizer=sgd", "--learning_rate=0.01",
        "--momentum=0.5", "--lr_scaling=linear", "--warmup_epochs=2", "--lr_decay=cosine",
        "--ghost_batch_size=4", "--sam_rho=0.05", "--train_longer", "--sam_adaptive",
        "--sam_eta=0.1", "--lr_reference_batch=64"]


def test_plot_and_experiment_flags_set_the_remedy_fields_of_their_name():
    expected = TrainingSettings("C1", **MODERN, train_longer=True, sam_adaptive=True,
                                sam_eta=0.1, lr_reference_batch=64)
    plot = PlotCommand.from_flags(_parsed(commands.define_plot_flags, ARGV))
    assert plot.training == expected
    trials = experiment_flags.settings_from_flags(
        _parsed(experiment_flags.define_common_flags, ARGV))
    assert trials.training == dataclass_replace(expected, lb_batch_size=0.1)
    experiment_flags.check_remedies_apply(trials, "trials")
    with pytest.raises(UserError, match="--optimizer is a training remedy; the batch_sweep"):
        experiment_flags.check_remedies_apply(trials, "batch_sweep")
    # Without a remedy flag every experiment takes its settings.
    plain = experiment_flags.settings_from_flags(
        _parsed(experiment_flags.define_common_flags, ARGV[:3]))
    experiment_flags.check_remedies_apply(plain, "batch_sweep")


def dataclass_replace(settings, **changes):
    import dataclasses

    return dataclasses.replace(settings, **changes)


def test_defaults_record_what_runs_before_the_remedies_were_trained_with():
    record = remedies.RECORD_DEFAULTS
    assert record["optimizer"] == "adam" and record["learning_rate"] == 0.001
    assert record["sam_rho"] == 0.0 and record["ghost_batch_size"] == 0
    assert not remedies.Remedies().any and remedies.Remedies().describe() == ""
    assert set(record) <= set(training.IDENTITY_KEYS) | {"remedies_apply_to"}
    assert {k: training.IDENTITY_DEFAULTS[k] for k in record} == record
    options = remedies.Remedies(**MODERN, lr_reference_batch=8)
    assert options.any and options.record()["momentum"] == 0.5
    assert options.record()["sam_adaptive"] is False and options.record()["sam_eta"] is None


# ------------------------------------------------------ learning rate
def _expected_rate(update, *, start, peak, warmup, total):
    """Goyal et al.'s linear warm-up, then Keras' cosine decay to 0 (by hand)."""
    if update < warmup:
        return start + (peak - start) * update / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (update - warmup) / (total - warmup)))


def test_learning_rate_plan_scales_and_counts_warm_up_in_updates():
    options = remedies.Remedies(learning_rate=0.001, lr_scaling="linear",
                                lr_reference_batch=256, warmup_epochs=5)
    plan = remedies.learning_rate_plan(options, batch_size=2048, num_samples=50000,
                                       epochs=90, accumulation_steps=4)
    assert plan["peak"] == pytest.approx(0.008) and plan["start"] == 0.001
    assert plan["steps_per_epoch"] == 25 and plan["warmup_steps"] == 125
    sqrt = remedies.learning_rate_plan(
        dataclass_replace(options, lr_scaling="sqrt", warmup_epochs=0), batch_size=2048,
        num_samples=50000, epochs=90)
    assert sqrt["peak"] == pytest.approx(0.001 * math.sqrt(8))
    with pytest.raises(UserError, match="--lr_scaling needs --lr_reference_batch"):
        remedies.learning_rate_plan(dataclass_replace(options, lr_reference_batch=0),
                                    batch_size=64, num_samples=640, epochs=1)
    with pytest.raises(UserError, match="--lr_decay=cosine needs more updates"):
        remedies.learning_rate_plan(dataclass_replace(options, lr_decay="cosine"),
                                    batch_size=64, num_samples=640, epochs=2)


def _rates(seen):
    import keras

    class Rates(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
    return Rates()


def test_sam_and_ghost_bn_train_and_the_history_says_so(tmp_path):
    data = _data()
    options = remedies.Remedies(ghost_batch_size=4, sam_rho=0.05)
    model = _train(tmp_path, data, options, k=1, epochs=1)
    header = json.loads((tmp_path / "history.json").read_text())
    assert header["finished"] and np.isfinite(header["epochs"][0]["loss"])
    assert header["ghost_batch_size"] == 4 and header["sam_rho"] == 0.05
    assert header["sam_adaptive"] is False
    # The saved model is the plain network: no ghost batches, no SAM step.
    saved = training.io.load_model(tmp_path / "out.keras")
    assert type(saved).__name__ in ("Functional", "Model")
    assert all(getattr(layer, "virtual_batch_size", None) is None for layer in saved.layers)
    np.testing.assert_array_equal(saved(data.x_test), model(data.x_test))


def test_warm_up_follows_goyal_and_a_resume_mid_warm_up_is_bitwise_identical(tmp_path):
    """SGD, linear scaling from batch 8 to 16, 4/3 warm-up epochs, cosine, 2 micro-batches:
    3 updates per epoch, the warm-up is updates 0-3 of 6."""
    data = _data()
    options = remedies.Remedies(**{**MODERN, "ghost_batch_size": 0, "sam_rho": 0.0,
                                   "warmup_epochs": 4 / 3}, lr_reference_batch=8)
    seen = []
    straight = _train(tmp_path / "a", data, options, callbacks=[_rates(seen)], epochs=2)

    header = json.loads((tmp_path / "a" / "history.json").read_text())
    assert header["finished"] and len(header["epochs"]) == 2
    for key, value in options.record().items():
        assert header[key] == value, key
    assert header["learning_rate_plan"] == {
        "base": 0.01, "peak": 0.02, "start": 0.01, "warmup_steps": 4, "total_steps": 6,
        "decay": "cosine", "steps_per_epoch": 3}
    # Micro-batch i belongs to update i // 2; every update's rate is Goyal's curve.
    expected = [_expected_rate(i // 2, start=0.01, peak=0.02, warmup=4, total=6)
                for i in range(12)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    assert np.all(np.isfinite(straight.get_weights()[0]))

    # Killed at update 3 (epoch 1, micro-batch 1), inside the warm-up.
    with pytest.raises(Interrupted):
        _train(tmp_path / "b", data, options, callbacks=[interrupt_at(1, 1)], epochs=2)
    resumed_rates = []
    resumed = _train(tmp_path / "b", data, options, callbacks=[_rates(resumed_rates)],
                     epochs=2)
    np.testing.assert_allclose(resumed_rates, expected[6:], rtol=1e-6)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_ghost_bn_is_refused_without_batch_norm_or_with_a_ghost_larger_than_the_batch(
        tmp_path):
    data = _data()
    with pytest.raises(UserError, match="--ghost_batch_size needs a network with "
                                        "BatchNormalization"):
        _train(tmp_path / "a", data, remedies.Remedies(ghost_batch_size=4), batch_norm=False)
    with pytest.raises(UserError, match="--ghost_batch_size 12 is larger than the 8 samples"):
        _train(tmp_path / "b", data, remedies.Remedies(ghost_batch_size=12))
    assert not (tmp_path / "a" / "history.json").exists()


# -------------------------------------------------------- SB / LB runs
def _settings(**options):
    return RunSettings(DataSettings("tiny"), TrainingSettings(
        "F1", sb_batch_size=12, lb_batch_size=24, epochs=1, **options))


def test_train_sb_lb_records_the_remedies_and_an_old_run_json_reads_as_without_them(
        tmp_path):
    data = _data()
    options = dict(optimizer="lamb", lr_scaling="sqrt", warmup_epochs=0.5, train_longer=True)
    training.train_sb_lb(data, _settings(**options), tmp_path, verbose=0)
    run = json.loads((tmp_path / "run.json").read_text())
    for key, value in options.items():
        assert run[key] == value, key
    assert run["lr_reference_batch"] == 12  # 0: the SB batch
    assert run["sam_rho"] == 0.0 and run["remedies_apply_to"] == "lb"
    assert run["optimizer_summary"].startswith("LB: lamb lr=0.001 sqrt-scaled")
    lb = json.loads((tmp_path / "lb_history.json").read_text())
    sb = json.loads((tmp_path / "sb_history.json").read_text())
    # Train longer: 2 updates per LB epoch, 4 per SB epoch: 2 LB epochs.
    assert lb["stop_rule"]["epoch_cap"] == 2 and len(lb["epochs"]) == 2
    assert lb["learning_rate_plan"]["peak"] == pytest.approx(0.001 * math.sqrt(2))
    assert lb["optimizer"] == "lamb" and lb["learning_rate_plan"]["warmup_steps"] == 1
    assert sb["optimizer"] == "adam" and sb["lr_scaling"] == "none"
    assert sb["learning_rate_plan"]["warmup_steps"] == 0

    with pytest.raises(CheckpointError, match="sam_rho"):
        training.train_sb_lb(data, _settings(**options, sam_rho=0.1), tmp_path, verbose=0)
    # A run.json written before the remedies existed: no new keys, in the flat
    # identity and in the settings. It reads as a run without them.
    new_keys = set(remedies.RECORD_DEFAULTS) - {
        "augment", "conservative_lambda", "conservative_steps", "adversarial_eps",
        "adversarial_clean_weight"}
    old = {k: v for k, v in run.items() if k not in new_keys}
    old["settings"]["training"] = {k: v for k, v in old["settings"]["training"].items()
                                   if k not in new_keys}
    old["remedies_apply_to"] = None
    old["optimizer"] = training.LEGACY_OPTIMIZER  # what run.json said then
    (tmp_path / "run.json").write_text(json.dumps(old))
    reused = training.train_sb_lb(data, _settings(), tmp_path, verbose=0)
    assert reused["record"]["status"] == "finished"
    with pytest.raises(CheckpointError, match="optimizer"):
        training.train_sb_lb(data, _settings(**options), tmp_path, verbose=0)
