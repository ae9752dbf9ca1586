"""SB/LB training: data order, convergence rule, resume, NaN, accumulation, mirrored."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_sharpness import runs, training
from keras_sharpness.errors import CheckpointError, UserError
from toy_models import Interrupted, interrupt_at

REPO = pathlib.Path(__file__).resolve().parents[1]


def _data(n=120, dim=8, classes=4, seed=0):
    from keras_sharpness.data import ArrayData

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 40, dim)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0).astype(np.int64)
    y = y % classes
    return ArrayData.from_arrays(x[:n], y[:n], x[n:], y[n:], name="random")


def _small_net(info, hidden=16):
    """A tiny BN network built like the paper's (logits out)."""
    import keras

    from keras_sharpness.layers import SwitchableBatchNormalization

    def builder(synchronized):
        inputs = keras.Input(shape=info.input_shape)
        h = keras.layers.Dense(hidden)(inputs)
        h = SwitchableBatchNormalization(synchronized=synchronized)(h)
        h = keras.layers.Activation("relu")(h)
        return keras.Model(inputs, keras.layers.Dense(info.num_classes)(h))
    return builder


def _train(tmp, data, builder, *, batch_size=32, epochs=3, callbacks=(), k=1, seed=0):
    import keras

    keras.utils.set_random_seed(123)
    x0 = builder(False)
    return training.train_minimizer(
        x0, "F1", data.info, data.x_train, data.y_train, batch_size=batch_size,
        out_path=tmp / "out.keras", history_path=tmp / "history.json",
        backup_dir=tmp / "backup", epochs=epochs, seed=seed, verbose=0,
        accumulation_steps=k, callbacks=callbacks, builder=builder)


def test_resolve_batch_size():
    assert training.resolve_batch_size(256, 1000) == 256
    assert training.resolve_batch_size(0.1, 50000) == 5000
    assert training.resolve_batch_size(0.0001, 100) == 1
    with pytest.raises(UserError, match="larger than the training set"):
        training.resolve_batch_size(5000, 1000)
    for bad in (0, float("nan"), float("inf"), "many"):
        with pytest.raises(UserError, match="number"):
            training.resolve_batch_size(bad, 1000)
    with pytest.raises(UserError, match="whole number"):
        training.resolve_batch_size(2.5, 1000)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = training.epoch_permutation(50, 3, 7)
    np.testing.assert_array_equal(a, training.epoch_permutation(50, 3, 7))
    assert sorted(a) == list(range(50))
    assert not np.array_equal(a, training.epoch_permutation(50, 3, 8))
    assert not np.array_equal(a, training.epoch_permutation(50, 4, 7))


def test_seeded_batches_cover_each_epoch_and_weights_average_to_the_batch_mean():
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100)
    whole = training.SeededBatches(x, y, 40, seed=1)
    micro = training.SeededBatches(x, y, 40, seed=1, accumulation_steps=3)
    assert len(whole) == 3 and len(micro) == 9
    big = list(whole.batches(2))
    small = list(micro.batches(2))
    assert sorted(np.concatenate([b[1] for b in big])) == list(range(100))
    for i, (xb, yb) in enumerate(big):
        parts = small[3 * i:3 * i + 3]
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), yb)
        # Mean over micro-batches of (weighted sum / micro size) = batch mean.
        values = [np.sum(p[2] * p[0][:, 0]) / len(p[0]) for p in parts]
        np.testing.assert_allclose(np.mean(values), xb.mean(), rtol=1e-6)


def test_shards_are_the_replicas_parts_of_each_batch_and_average_to_its_mean():
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50)
    whole = list(training.SeededBatches(x, y, 16, seed=3).batches(1))
    shards = [list(training.SeededBatches(x, y, 16, seed=3).shard(3, [r]).batches(1))
              for r in range(3)]
    # 50 = 3 x 16 + 2: the last batch has fewer samples than the 3 replicas.
    assert len(whole) == 4 and all(len(s) == 3 for s in shards)
    for i in range(3):
        parts = [s[i] for s in shards]
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[i][1])
        # Keras: each replica's weighted mean loss, summed over replicas / 3.
        values = [np.sum(p[2] * p[0][:, 0]) / len(p[0]) for p in parts]
        np.testing.assert_allclose(np.sum(values) / 3, whole[i][0].mean(), rtol=1e-6)
    # A worker of two replicas yields both parts of each batch, in order.
    two = training.SeededBatches(x, y, 16, seed=3).shard(3, [1, 2])
    assert len(two) == 6
    assert [b[1].tolist() for b in two.batches(1)] == [
        shards[r][i][1].tolist() for i in range(3) for r in (1, 2)]


def test_elements_are_the_epoch_permutation_cut_into_batches_and_parts():
    x, y = np.zeros((23, 1), np.float32), np.arange(23)
    order = training.epoch_permutation(23, 5, 4)
    plain = list(training.SeededBatches(x, y, 10, seed=5).elements(4))
    assert [(b, w.tolist(), p, s) for b, w, p, s in plain] == [
        (0, order[:10].tolist(), None, None), (1, order[10:20].tolist(), None, None),
        (2, order[20:].tolist(), None, None)]
    # Two replicas: parts 5 + 5, 5 + 5 and 2 + 1 of the same batches.
    sharded = training.SeededBatches(x, y, 10, seed=5).shard(2, [0, 1])
    got = [(b, w[p].tolist(), s.tolist()) for b, w, p, s in sharded.elements(4)]
    assert got == [(0, order[:5].tolist(), [1.0] * 5), (0, order[5:10].tolist(), [1.0] * 5),
                   (1, order[10:15].tolist(), [1.0] * 5), (1, order[15:20].tolist(), [1.0] * 5),
                   (2, order[20:22].tolist(), [float(np.float32(4 / 3))] * 2),
                   (2, order[22:].tolist(), [float(np.float32(2 / 3))])]


@pytest.mark.parametrize("options", [{}, {"accumulation_steps": 3}, {"replicas": 2}])
def test_the_dataset_gathers_the_batches_of_the_generator(options):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 3, 2)).astype(np.float32)
    y = rng.integers(0, 5, 70)
    replicas = options.pop("replicas", 1)
    batches = training.SeededBatches(x, y, 20, seed=4, **options)
    if replicas > 1:
        batches.shard(replicas, [1])
    batches.epoch = 2
    expected = list(batches.batches(2))
    got = list(batches.as_dataset().as_numpy_iterator())
    assert len(got) == len(expected) == len(batches)
    for a, b in zip(got, expected):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_converged_pins_the_patience_rule():
    from keras_sharpness.convergence import converged

    assert not converged([3, 2, 1], patience=2, min_delta=0)
    assert converged([3, 1, 1, 1], patience=2, min_delta=0)
    # Improvements smaller than min_delta do not count.
    assert converged([1.0, 0.99, 0.98], patience=2, min_delta=0.05)
    assert not converged([1.0, 0.99, 0.9], patience=2, min_delta=0.05)
    assert not converged([1.0], patience=1, min_delta=0)
    # Relative: 1 % of the best f (0.01 here) is needed; the larger rule wins.
    assert converged([1e-2, 9.95e-3, 9.92e-3], patience=2, min_delta=0, relative_min_delta=0.01)
    assert not converged([1e-2, 9.8e-3, 9.9e-3], patience=2, min_delta=0, relative_min_delta=0.01)
    assert converged([1e-2, 9.8e-3, 9.9e-3], patience=2, min_delta=1e-3, relative_min_delta=0.01)
    # A NaN never counts as an improvement.
    assert converged([1.0, float("nan"), float("nan")], patience=2, min_delta=0)


def test_the_rule_on_a_loss_spike_stops_late_and_keeps_the_lowest_epoch():
    """The first landing's failure: 0.008, 0.010, 0.012, 0.050 stopped at the spike."""
    from keras_sharpness.convergence import best_epoch, converged

    f = [0.5, 0.05, 0.008, 0.010, 0.012, 0.050, 0.009, 0.0085, 0.011]
    stops = [n for n in range(1, len(f) + 1) if converged(f[:n], patience=5, min_delta=1e-4)]
    assert stops[0] == 8  # five epochs (4..8) without beating 0.008 by 1e-4
    entries = [{"epoch": e + 1, "train_f": v} for e, v in enumerate(f[:8])]
    assert best_epoch(entries) == 3
    assert best_epoch([{"epoch": 1, "train_f": float("nan")}]) is None
    assert best_epoch([{"epoch": 1, "train_f": 0.2}, {"epoch": 2, "train_f": 0.2}]) == 1


def _weights_recorder(store):
    import keras

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            store[epoch + 1] = [np.array(v) for v in self.model.get_weights()]
    return Record()


def _spike_at(epoch, factor=30.0):
    """Scales every kernel at the start of `epoch` (0-based): a loss spike."""
    import keras

    class Spike(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                for v in self.model.trainable_variables:
                    if len(v.shape) == 2:
                        v.assign(v * factor)
    return Spike()


def test_a_spike_is_not_kept_the_best_epoch_is(tmp_path):
    from keras_sharpness.objective import TrainingLoss

    data = _data()
    builder = _small_net(data.info)
    snapshots = {}
    model = _train(tmp_path, data, builder, epochs=5,
                   callbacks=[_spike_at(4), _weights_recorder(snapshots)])
    history = json.loads((tmp_path / "history.json").read_text())
    f = [e["train_f"] for e in history["epochs"]]
    assert len(f) == 5 and f[4] > min(f[:4]), "the spike must raise f at epoch 5"
    kept = int(np.argmin(f)) + 1
    assert history["kept_epoch"] == kept != 5
    assert history["stopped_because"] == "max_epochs" and history["epochs_run"] == 5
    for a, b in zip(model.get_weights(), snapshots[kept]):
        np.testing.assert_array_equal(a, b)
    # The recorded f is f of the kept weights, evaluated as the metric does.
    objective = TrainingLoss(model, data.x_train, data.y_train, bn_eval="batch",
                             batch_size=1000)
    f_kept, g = objective.value_and_gradient(objective.initial_point())
    np.testing.assert_allclose(history["kept"]["f"], f_kept, rtol=1e-6)
    np.testing.assert_allclose(f[kept - 1], f_kept, rtol=1e-6)
    np.testing.assert_allclose(history["kept"]["gradient_norm"], np.linalg.norm(g), rtol=1e-5)
    last = training.io.load_model(tmp_path / "out_last.keras")
    for a, b in zip(last.get_weights(), snapshots[5]):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "backup").exists()


def test_until_converged_stops_on_the_training_set_f(tmp_path):
    import keras

    data = _data()
    builder = _small_net(data.info)
    keras.utils.set_random_seed(123)
    training.train_minimizer(
        builder(False), "F1", data.info, data.x_train, data.y_train, batch_size=32,
        out_path=tmp_path / "out.keras", history_path=tmp_path / "h.json",
        backup_dir=tmp_path / "b", until_converged=True, patience=2, min_delta=10.0,
        max_epochs=50, verbose=0, builder=builder)
    history = json.loads((tmp_path / "h.json").read_text())
    # No decrease can beat min_delta = 10: stop after 1 + patience epochs,
    # keeping the lowest f even though its decrease did not count.
    assert history["stopped_because"] == "converged" and history["epochs_run"] == 3
    f = [e["train_f"] for e in history["epochs"]]
    assert history["kept_epoch"] == int(np.argmin(f)) + 1
    assert history["stop_rule"]["monitor"] == "train_f"


def _epoch_recorder(seen):
    import keras

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)
    return Record()


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    data = _data()
    builder = _small_net(data.info)
    straight = _train(tmp_path / "a", data, builder, epochs=3)

    with pytest.raises(Interrupted):
        _train(tmp_path / "b", data, builder, epochs=3, callbacks=[interrupt_at(1, 1)])
    assert (tmp_path / "b" / "backup").is_dir()
    assert not (tmp_path / "b" / "out.keras").exists()
    seen = []
    resumed = _train(tmp_path / "b", data, builder, epochs=3, callbacks=[_epoch_recorder(seen)])
    assert seen == [1, 2], "the finished epoch 1 must not be redone"

    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history["finished"] and [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert not (tmp_path / "b" / "backup").exists()


def _poison_after(epoch):
    import keras

    class Poison(keras.callbacks.Callback):
        def on_epoch_end(self, e, logs=None):
            if e == epoch:  # after this epoch's f and backup were written
                kernel = self.model.trainable_variables[0]
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    return Poison()


def test_divergence_stops_the_run_and_keeps_the_best_finished_epoch(tmp_path):
    data = _data()
    snapshots = {}
    model = _train(tmp_path, data, _small_net(data.info), epochs=4,
                   callbacks=[_weights_recorder(snapshots), _poison_after(1)])
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["stopped_because"] == "diverged"
    assert history["diverged_at"]["epoch"] == 3
    assert history["kept_epoch"] in (1, 2) and history["epochs_run"] == 3
    for a, b in zip(model.get_weights(), snapshots[history["kept_epoch"]]):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "out_last.keras").exists()


def test_divergence_before_any_epoch_finished_is_one_line(tmp_path):
    import keras

    class PoisonFirst(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                kernel = self.model.trainable_variables[0]
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    data = _data()
    with pytest.raises(training.TrainingDivergedError) as info:
        _train(tmp_path, data, _small_net(data.info), epochs=3, callbacks=[PoisonFirst()])
    message = str(info.value)
    assert "\n" not in message and "diverged" in message and "epoch 1" in message
    assert isinstance(info.value, UserError)
    assert not (tmp_path / "out.keras").exists()


def test_gradient_accumulation_equals_one_large_batch_without_bn(tmp_path):
    import keras

    data = _data(n=100)

    def builder(synchronized):
        inputs = keras.Input(shape=data.info.input_shape)
        h = keras.layers.Dense(16, activation="tanh")(inputs)
        return keras.Model(inputs, keras.layers.Dense(data.info.num_classes)(h))

    # 100 samples in batches of 40: the last batch (20) is cut unevenly too.
    large = _train(tmp_path / "large", data, builder, batch_size=40, epochs=2)
    accumulated = _train(tmp_path / "acc", data, builder, batch_size=40, epochs=2, k=3)
    moved = max(np.abs(a - b).max() for a, b in
                zip(large.get_weights(), builder(False).get_weights()))
    assert moved > 1e-3
    for a, b in zip(large.get_weights(), accumulated.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


def test_workdir_of_another_network_or_flags_is_refused(tmp_path):
    record = {"network": "F1", "dataset": "digits", "seed": 0, "sb_batch_size": 256}
    training.check_workdir(tmp_path, record)  # empty: fine
    (tmp_path / "x0.keras").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no run.json"):
        training.check_workdir(tmp_path, record)
    (tmp_path / "run.json").write_text(json.dumps({**record, "network": "C1"}))
    with pytest.raises(CheckpointError, match="network='C1' \\(now 'F1'\\)"):
        training.check_workdir(tmp_path, record)
    (tmp_path / "run.json").write_text(json.dumps({**record, "seed": 1}))
    with pytest.raises(CheckpointError, match="seed=1"):
        training.check_workdir(tmp_path, record)
    (tmp_path / "run.json").write_text(json.dumps(record))
    training.check_workdir(tmp_path, record)


def _run_settings(**training_settings):
    from keras_sharpness.config import DataSettings, RunSettings, TrainingSettings

    return RunSettings(DataSettings("random"),
                       TrainingSettings("F1", **{"sb_batch_size": 30, "lb_batch_size": 60,
                                                 "epochs": 2, **training_settings}))


def _manifest(settings, info):
    return training.run_manifest(settings, info, lb_batch_size_requested=0.5, status="training")


def test_a_resumed_run_is_compared_with_the_settings_its_manifest_records(tmp_path):
    import dataclasses

    data = _data()
    settings = _run_settings()
    manifest = _manifest(settings, data.info)
    assert manifest["settings"] == settings.to_dict() and manifest["status"] == "training"
    (tmp_path / "run.json").write_text(json.dumps(manifest))
    (tmp_path / "x0.keras").write_bytes(b"")
    training.check_workdir(tmp_path, manifest)
    # Settings that do not define the models may change (here: the strategy).
    training.check_workdir(tmp_path, _manifest(_run_settings(strategy="mirrored"), data.info))
    with pytest.raises(CheckpointError) as info:
        training.check_workdir(tmp_path, _manifest(_run_settings(epochs=3, seed=1), data.info))
    message = str(info.value)
    assert "seed=0 (now 1), epochs=2 (now 3)" in message and "\n" not in message
    # The identity is read from the recorded settings, not from the flat keys.
    (tmp_path / "run.json").write_text(json.dumps({**manifest, "epochs": 99}))
    training.check_workdir(tmp_path, manifest)
    other = dataclasses.replace(settings, data=dataclasses.replace(settings.data, train_size=50))
    with pytest.raises(CheckpointError, match="train_size=None \\(now 50\\)"):
        training.check_workdir(tmp_path, _manifest(other, data.info))
    # A run.json of an earlier version (flat keys, no settings) is still compared.
    old = {k: v for k, v in manifest.items() if k not in ("settings", "status")}
    (tmp_path / "run.json").write_text(json.dumps(old))
    training.check_workdir(tmp_path, manifest)
    with pytest.raises(CheckpointError, match="epochs=2 \\(now 3\\)"):
        training.check_workdir(tmp_path, _manifest(_run_settings(epochs=3), data.info))
    # Recorded settings this version cannot read: one line, not a traceback.
    broken = {**manifest, "settings": {**manifest["settings"], "optimizer": "sgd"}}
    (tmp_path / "run.json").write_text(json.dumps(broken))
    with pytest.raises(CheckpointError, match="settings this version cannot read"):
        training.check_workdir(tmp_path, manifest)


def test_train_sb_lb_records_its_settings_and_trains_the_same_in_a_held_run_dir(
        tmp_path, monkeypatch):
    import dataclasses

    import tensorflow as tf

    from keras_sharpness.config import RunSettings

    tf.config.experimental.enable_op_determinism()
    data = _data()

    def build_network(name, input_shape, num_classes, *, bn_eval="batch", synchronized=False):
        model = _small_net(data.info)(synchronized)
        model.name = name  # x0.keras is checked to hold the network asked for
        return model

    monkeypatch.setattr("keras_sharpness.networks.build_network", build_network)
    settings = _run_settings(lb_batch_size=0.5, epochs=1)
    models = training.train_sb_lb(data, settings, tmp_path / "a", verbose=0)
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["status"] == "finished" and models["record"]["status"] == "finished"
    recorded = RunSettings.from_dict(run["settings"])
    assert recorded.training == dataclasses.replace(settings.training, lb_batch_size=60)
    assert recorded.data == settings.data
    assert run["lb_batch_size_requested"] == 0.5 and run["seed"] == run["data_seed"] == 0
    assert "tensorflow" in run["versions"]

    assert run["kind"] == training.KIND
    assert not (tmp_path / "a" / "backups").exists()
    assert (tmp_path / "a" / runs.LOCK_NAME).read_text() == ""  # held, then released

    # A caller holding the directory (parametric_plot.run, a trial) passes its RunDir.
    with runs.RunDir(tmp_path / "b").open() as held:
        again = training.train_sb_lb(data, settings, held, verbose=0)
        assert held.is_open
    for name in ("sb", "lb"):
        for a, b in zip(models[name].get_weights(), again[name].get_weights()):
            np.testing.assert_array_equal(a, b)
    assert {k: v for k, v in again["record"].items() if k != "versions"} == {
        k: v for k, v in run.items() if k != "versions"}

    with pytest.raises(CheckpointError, match="epochs=1 \\(now 2\\)"):
        training.train_sb_lb(data, _run_settings(lb_batch_size=0.5, epochs=2), tmp_path / "a",
                             verbose=0)


MIRRORED_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {tests!r})
    import pathlib
    from keras_sharpness import training
    import test_training as t

    tmp = pathlib.Path({tmp!r})
    data = t._data(n=128)
    builder = t._small_net(data.info)
    strategy = training.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    single = t._train(tmp / "single", data, builder, batch_size=32, epochs=2)
    import keras
    keras.utils.set_random_seed(123)
    x0 = builder(False)
    mirrored = training.train_minimizer(
        x0, "F1", data.info, data.x_train, data.y_train, batch_size=32,
        out_path=tmp / "m.keras", history_path=tmp / "m.json", backup_dir=tmp / "mb",
        epochs=2, seed=0, verbose=0, strategy=strategy, builder=builder)
    worst = max(float(np.abs(a - b).max())
                for a, b in zip(single.get_weights(), mirrored.get_weights()))
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(single.get_weights(), x0.get_weights()))
    print("RESULT", worst, moved)

""")


def test_mirrored_on_two_logical_cpus_equals_single_device(tmp_path):
    script = MIRRORED_SCRIPT.format(tests=str(REPO / "tests"), tmp=str(tmp_path))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")][-1]
    worst, moved = map(float, line.split()[1:])
    assert moved > 1e-2  # training did change the weights
    assert worst < 1e-4, f"mirrored and single-device weights differ by {worst}"


KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.path.insert(0, {tests!r})
    import pathlib
    import tensorflow as tf
    import test_training as t

    tf.config.experimental.enable_op_determinism()
    data = t._data()
    t._train(pathlib.Path({tmp!r}), data, t._small_net(data.info), epochs=3)
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    import tensorflow as tf

    # Bitwise comparisons need op determinism on both sides of the kill (other
    # tests may or may not have switched it on in this process already).
    tf.config.experimental.enable_op_determinism()
    data = _data()
    folder = tmp_path_factory.mktemp("straight")
    return _train(folder, data, _small_net(data.info), epochs=3), folder


# Writes of epoch 1: best.npz, history, backup weights, backup.json; then the
# same for epoch 2 (best.npz only when f improved). Kills at writes 1, 2, 3,
# 4, 7 and 10 all passed once; the
# suite keeps one of each kind to stay fast.
@pytest.mark.parametrize("write", [2, 3, 5])
def test_a_kill_inside_any_file_write_resumes_to_the_uninterrupted_result(
        tmp_path, write, uninterrupted):
    from keras_sharpness.io import KILL_INSIDE_WRITE, TEMP_PREFIX

    data = _data()
    builder = _small_net(data.info)
    straight, straight_dir = uninterrupted
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(REPO / "tests"), tmp=str(killed))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, KILL_INSIDE_WRITE: str(write)}, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]  # died inside the write
    assert list(killed.rglob(f"{TEMP_PREFIX}*")), "the torn temporary file is there"
    seen = []
    resumed = _train(killed, data, builder, epochs=3, callbacks=[_epoch_recorder(seen)])
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    history = json.loads((killed / "history.json").read_text())
    reference = json.loads((straight_dir / "history.json").read_text())
    assert [e["train_f"] for e in history["epochs"]] == [e["train_f"] for e in reference["epochs"]]
    assert history["kept_epoch"] == reference["kept_epoch"]
    assert len(seen) <= 3 - (write - 1) // 4 + 1  # finished epochs are not redone
    assert not list(killed.rglob(f"{TEMP_PREFIX}*")) and not (killed / "backup").exists()


def test_a_diverged_run_is_recognized_from_its_saved_history():
    from keras_sharpness.convergence import diverged_entry

    entries = [{"epoch": 1, "loss": 0.5, "train_f": 0.4},
               {"epoch": 2, "loss": 0.3, "train_f": float("inf")},
               {"epoch": 3, "loss": float("nan"), "train_f": float("nan")}]
    assert diverged_entry(entries)["epoch"] == 2
    assert diverged_entry(entries[:1]) is None
    assert diverged_entry([{"epoch": 1, "loss": float("nan")}])["epoch"] == 1
