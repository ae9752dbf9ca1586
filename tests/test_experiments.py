"""The paper's experiments end to end on tiny data: files, keys, resume."""

import json
import subprocess
import sys

import numpy as np
import pytest

from keras_sharpness.data import ArrayData
from keras_sharpness.errors import CheckpointError
from keras_sharpness.experiments import batch_sweep, trajectory, trials, warm_start
from keras_sharpness.measure import MeasureSettings


@pytest.fixture(autouse=True)
def small_networks(monkeypatch):
    """Experiments build networks by name; here a name builds a 150-weight net.

    The plumbing (training, resume, measurements, files) is what these tests
    check; the paper's architectures are checked in test_networks.py.
    """
    import keras

    from keras_sharpness.layers import SwitchableBatchNormalization

    def build_network(name, input_shape, num_classes, *, bn_eval="batch", synchronized=False):
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(8)(x)
        x = SwitchableBatchNormalization(bn_eval=bn_eval, synchronized=synchronized)(x)
        x = keras.layers.Activation("relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)

    monkeypatch.setattr("keras_sharpness.networks.build_network", build_network)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.random((96, 4, 4, 1), dtype=np.float32)
    y = (x.reshape(96, -1).sum(axis=1) > 8).astype(np.int64)
    return ArrayData.from_arrays(x[:64], y[:64], x[64:], y[64:], name="tiny")


SETTINGS = MeasureSettings(eps=(1e-3, 5e-4), subspace_dims=(0, 4), maxiter=2,
                           eval_batch_size=32)
TRAINING = dict(sb_batch_size=8, lb_batch_size=32, epochs=1)


def _run_settings(**training):
    from keras_sharpness.config import DataSettings, RunSettings, TrainingSettings

    return RunSettings(DataSettings("tiny"), TrainingSettings("F1", **{**TRAINING, **training}))


def _old_record(record):
    """A sharpness record as versions before one schema kept it in a memo."""
    renamed = {"sharpness": "phi", "best_start": "start", "num_train_samples": "num_samples"}
    dropped = ("model", "checkpoint_sha256", "network", "checkpoint", "dataset", "versions",
               "hessian_top", "hessian_trace")
    return {renamed.get(k, k): v for k, v in record.items() if k not in dropped}


def _old_memo(key, value):
    """``{"key", "value"}`` as earlier versions' ``*measurements.json`` held them."""
    def old(measured):
        if not isinstance(measured, dict) or "train_acc" not in measured:
            return measured
        return {**measured, "sharpness": [_old_record(r) for r in measured.get("sharpness", [])]}

    return {"key": key, "value": old(value) if "train_acc" in value else
            {k: old(v) for k, v in value.items()}}


def _forbid_work(monkeypatch):
    """Training and every measurement raise: what runs must come from the files."""
    def forbidden(*args, **kwargs):
        raise AssertionError("finished work was recomputed")

    monkeypatch.setattr("keras_sharpness.training.train_minimizer", forbidden)
    monkeypatch.setattr("keras_sharpness.metric.sharpness_multistart", forbidden)
    monkeypatch.setattr("keras_sharpness.measure.accuracy_and_loss", forbidden)


def test_trials_tables_and_resume(tiny, tmp_path, monkeypatch):
    data, text = trials.run(tiny, _run_settings(), tmp_path, trials=2, settings=SETTINGS,
                            verbose=0)
    assert (tmp_path / "tables.md").read_text() == text
    stored = json.loads((tmp_path / "tables.json").read_text())
    assert stored["table2"]["test_sb"]["n"] == 2
    assert set(stored["table3"]) == {"0.001", "0.0005"}
    assert set(stored["table4"]["0.001"]) == {"sb", "lb"}
    assert len(stored["per_trial"]) == 2
    # Row formatting: mean ± std of the per-trial values, as numpy computes it.
    values = stored["table3"]["0.001"]["lb"]["values"]
    assert stored["table3"]["0.001"]["lb"]["mean"] == pytest.approx(np.mean(values))
    assert stored["table3"]["0.001"]["lb"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert "| ours |" in text and "| paper | 99.66 ± 0.05" in text
    assert " ± " in text.splitlines()[4]
    # Paired statistics beside every SB/LB pair, from the per-trial values.
    comparison = stored["table3_comparison"]["0.001"]
    assert comparison["lb"]["values"] == values and comparison["n"] == 2
    assert "test_accuracy" not in stored and set(stored["table2_comparison"]) == {"train", "test"}
    assert text.count("Wilcoxon p =") == 2 + 2 + 2  # Table 2 splits, Tables 3-4 eps
    # Why each run stopped, and a warning: 1 epoch is not convergence.
    assert [t["sb"]["stopped_because"] for t in stored["training_runs"]] == ["max_epochs"] * 2
    assert "**Not converged**" in text and "trial 1 LB (max_epochs)" in text
    # maxiter 2 < 10: phi_paper is undefined, tables fall back to sharpness; no extra tables.
    assert "table3_at_maxiter" not in stored
    # The records are the one schema, in the store compute_sharpness.py uses.
    records = stored["per_trial"][0]["sb"]["sharpness"]
    assert [(r["model"], r["subspace_dim"], r["eps"]) for r in records] == [
        ("SB", 0, 1e-3), ("SB", 0, 5e-4), ("SB", 4, 1e-3), ("SB", 4, 5e-4)]
    assert all("phi" not in r and r["checkpoint_sha256"] for r in records)
    store = json.loads((tmp_path / "trial0" / "sharpness.json").read_text())
    assert sorted((r.get("measure", "sharpness"), r["model"]) for r in store) == (
        [("accuracy", "LB"), ("accuracy", "SB")] + [("sharpness", "LB")] * 4
        + [("sharpness", "SB")] * 4)
    assert [r for r in store if r["model"] == "SB" and "measure" not in r] == records
    accuracy = next(r for r in store if r.get("measure") == "accuracy" and r["model"] == "SB")
    assert accuracy["test_acc"] == stored["per_trial"][0]["sb"]["test_acc"]
    assert accuracy["checkpoint_sha256"] == records[0]["checkpoint_sha256"]
    # Every folder is a run directory with its manifest, finished.
    assert json.loads((tmp_path / "run.json").read_text())["kind"] == "trials"
    for folder in (tmp_path, tmp_path / "trial0", tmp_path / "trial1"):
        assert json.loads((folder / "run.json").read_text())["status"] == "finished"

    # A finished trial is not run again: nothing is trained or measured, the
    # records answer; also where an earlier version kept the trial's
    # measurements only in its memo (measurements.json, records under "phi").
    run_json = json.loads((tmp_path / "trial1" / "run.json").read_text())
    (tmp_path / "trial1" / "sharpness.json").unlink()
    key = {"settings": SETTINGS.to_dict(), "run": trials._memo_identity(run_json)}
    (tmp_path / "trial1" / "measurements.json").write_text(json.dumps(_old_memo(
        key, {k: stored["per_trial"][1][k] for k in ("seed", "sb", "lb", "distance_ratio")})))
    _forbid_work(monkeypatch)
    again, _ = trials.run(tiny, _run_settings(), tmp_path, trials=2, settings=SETTINGS,
                          verbose=0)
    assert again["table2"] == stored["table2"]
    assert again["table3"] == stored["table3"] and again["table4"] == stored["table4"]
    adopted = json.loads((tmp_path / "trial1" / "sharpness.json").read_text())
    assert len(adopted) == 10  # the memo's records moved into the store


def _without_timings(record):
    timings = ("seconds", "objective_seconds", "projection_seconds", "solver_seconds")
    return {k: v for k, v in record.items() if k not in timings and k != "dataset"}


def test_compute_sharpness_and_the_experiments_make_the_same_records(tiny, tmp_path,
                                                                    monkeypatch):
    from keras_sharpness import io, metric, sharpness_cli
    from keras_sharpness.objective import TrainingLoss

    settings = MeasureSettings(eps=(1e-3, 5e-4), subspace_dims=(0, 4), maxiter=3,
                               eval_batch_size=32, seed=2)
    tables, _ = trials.run(tiny, _run_settings(), tmp_path, trials=1, settings=settings,
                           verbose=0)
    trial = tmp_path / "trial0"
    measured = tables["per_trial"][0]
    np.savez(tmp_path / "tiny.npz", x_train=tiny.x_train, y_train=tiny.y_train,
             x_test=tiny.x_test, y_test=tiny.y_test)
    models = [("SB", trial / "sb.keras"), ("LB", trial / "lb.keras")]
    common = dict(models=models, data={"source": f"npz:{tmp_path / 'tiny.npz'}"}, network="F1",
                  eps=[1e-3, 5e-4], maxiter=3, seed=2, batch_size=32, echo=lambda line: None)
    # Recomputed by compute_sharpness.py into another file: the same records.
    cli = [r for p in (0, 4) for r in sharpness_cli.compute(
        output=tmp_path / "cli.json", subspace_dim=p, **common)]
    by_cli = {(r["model"], r["subspace_dim"], r["eps"]): r for r in cli}
    for name in ("sb", "lb"):
        for r in measured[name]["sharpness"]:
            assert _without_timings(r) == _without_timings(
                by_cli[(r["model"], r["subspace_dim"], r["eps"])])
    # The numbers are Metric 2.1 of the saved minimizer, as before one schema.
    sb = io.load_model(trial / "sb.keras")
    objective = TrainingLoss(sb, tiny.x_train, tiny.y_train, bn_eval="batch", batch_size=32,
                             seed=2)
    for r in measured["sb"]["sharpness"]:
        direct = metric.sharpness(objective, eps=r["eps"], subspace_dim=r["subspace_dim"],
                                  maxiter=3, seed=2)
        assert r["sharpness"] == direct.phi > 0 and r["ascent"] == direct.ascent
    # compute_sharpness.py --workdir trial0 reads and reuses the trial's records.
    def forbidden(*args, **kwargs):
        raise AssertionError("a stored record was recomputed")

    monkeypatch.setattr("keras_sharpness.metric.sharpness", forbidden)
    reused = sharpness_cli.compute(output=trial / "sharpness.json", subspace_dim=4, **common)
    assert reused == [r for name in ("sb", "lb") for r in measured[name]["sharpness"]
                      if r["subspace_dim"] == 4]


def test_batch_sweep_files(tiny, tmp_path):
    settings = MeasureSettings(eps=(1e-3,), subspace_dims=(0,), maxiter=2, eval_batch_size=32)
    result = batch_sweep.run(tiny, "F1", tmp_path / "w", dataset="tiny", batch_sizes=[8, 32],
                             settings=settings, training_kwargs={"epochs": 1},
                             figures_dir=tmp_path / "fig", verbose=0)
    stored = json.loads((tmp_path / "w" / "batch_sweep.json").read_text())
    assert stored["batch_sizes"] == [8, 32]
    assert len(stored["test_acc"]) == len(stored["sharpness"]) == 2
    assert (tmp_path / "fig" / "F1_batch_sweep.png").stat().st_size > 0
    assert (tmp_path / "fig" / "F1_batch_sweep.pdf").stat().st_size > 0
    assert not (tmp_path / "w" / "backups").exists()  # finished runs leave no backups
    assert result["sharpness"][0] >= 0


def test_an_experiment_directory_of_an_earlier_version_is_reused(tiny, tmp_path,
                                                                 monkeypatch):
    # Earlier versions: experiment.json (no run.json) and a memo per point
    # (no record store).
    settings = MeasureSettings(eps=(1e-3,), subspace_dims=(0,), maxiter=2, eval_batch_size=32)
    kwargs = dict(dataset="tiny", batch_sizes=[32], settings=settings,
                  training_kwargs={"epochs": 1}, figures_dir=tmp_path / "fig", verbose=0)
    first = batch_sweep.run(tiny, "F1", tmp_path / "w", **kwargs)
    folder = tmp_path / "w"
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["kind"] == "batch_sweep" and manifest["status"] == "finished"
    (folder / "experiment.json").write_text(json.dumps(manifest["settings"]))
    (folder / "run.json").unlink()
    (folder / "sharpness.json").unlink()
    point = {k: v for k, v in first["points"][0].items() if k != "batch_size"}
    (folder / "batch32_measurements.json").write_text(json.dumps(_old_memo(
        {"batch": 32, "settings": settings.to_dict()}, point)))

    _forbid_work(monkeypatch)
    again = batch_sweep.run(tiny, "F1", folder, **kwargs)
    assert again["test_acc"] == first["test_acc"] and again["sharpness"] == first["sharpness"]
    assert json.loads((folder / "run.json").read_text())["settings"] == manifest["settings"]
    with pytest.raises(CheckpointError, match="epochs=1 \\(now 2\\)"):
        batch_sweep.run(tiny, "F1", folder, **{**kwargs, "training_kwargs": {"epochs": 2}})


def test_warm_start_files(tiny, tmp_path):
    settings = MeasureSettings(eps=(1e-3,), subspace_dims=(0,), maxiter=2, eval_batch_size=32)
    result = warm_start.run(tiny, "F1", tmp_path / "w", dataset="tiny", sb_epochs=2,
                            lb_epochs=1, every=1, settings=settings, sb_batch_size=8,
                            lb_batch_size=32, figures_dir=tmp_path / "fig", verbose=0)
    assert result["start_epochs"] == [0, 1, 2]
    stored = json.loads((tmp_path / "w" / "warm_start.json").read_text())
    for key in ("sb_test_acc", "lb_test_acc", "lb_sharpness"):
        assert len(stored[key]) == 3
    # The epoch-0 iterate is x0 itself.
    x0 = (tmp_path / "w" / "x0.keras")
    assert x0.is_file() and (tmp_path / "w" / "sb_iterates" / "epoch000.keras").is_file()
    assert (tmp_path / "fig" / "F1_warm_start.png").is_file()


def test_trajectory_files(tiny, tmp_path):
    settings = MeasureSettings(eps=(1e-3,), subspace_dims=(0,), maxiter=2, eval_batch_size=32)
    trajectory.run(tiny, "F1", tmp_path / "w", dataset="tiny", epochs=2, every=1,
                   settings=settings, sb_batch_size=8, lb_batch_size=32,
                   figures_dir=tmp_path / "fig", verbose=0)
    stored = json.loads((tmp_path / "w" / "trajectory.json").read_text())
    for name in ("sb", "lb"):
        assert stored[name]["epochs"] == [1, 2]
        assert len(stored[name]["train_loss"]) == len(stored[name]["sharpness"]) == 2
    # The last saved iterate is the finished solution itself.
    from keras_sharpness import io

    last = io.load_model(tmp_path / "w" / "sb_iterates" / "epoch002.keras")
    final = io.load_model(tmp_path / "w" / "sb.keras")
    for a, b in zip(last.get_weights(), final.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "fig" / "F1_trajectory.pdf").is_file()


def test_workdir_of_other_flags_is_refused(tiny, tmp_path):
    settings = MeasureSettings(eps=(1e-3,), subspace_dims=(0,), maxiter=1, eval_batch_size=32)
    kwargs = dict(dataset="tiny", settings=settings, figures_dir=tmp_path / "fig", verbose=0)
    batch_sweep.run(tiny, "F1", tmp_path, batch_sizes=[32], training_kwargs={"epochs": 1}, **kwargs)
    with pytest.raises(CheckpointError, match="training.epochs=1 \\(now 2\\)"):
        batch_sweep.run(tiny, "F1", tmp_path, batch_sizes=[32], training_kwargs={"epochs": 2},
                        **kwargs)


@pytest.mark.parametrize("module, args, message", [
    ("trials", ["-n", "C9"], "unknown network"),
    ("trials", ["-n", "F1", "--dataset=digits", "--trials=0"], "--trials"),
    ("batch_sweep", ["-n", "F1", "--dataset=digits", "--eps=-1"], "eps"),
    ("warm_start", ["-n", "F1", "--dataset=nowhere"], "unknown data source"),
])
def test_bad_flags_are_one_line_errors(module, args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", f"keras_sharpness.experiments.{module}", *args,
                           f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_sensitivity_report_on_saved_trials_without_retraining(tiny, tmp_path, monkeypatch):
    from keras_sharpness.experiments import sensitivity
    from keras_sharpness.io import save_model, write_json

    trials.run(tiny, _run_settings(epochs=3), tmp_path, trials=2, settings=SETTINGS,
               verbose=0)
    np.savez(tmp_path / "tiny.npz", x_train=tiny.x_train, y_train=tiny.y_train,
             x_test=tiny.x_test, y_test=tiny.y_test)
    for t in (0, 1):  # point the trials at data compute_sharpness can load
        run_json = json.loads((tmp_path / f"trial{t}" / "run.json").read_text())
        write_json(tmp_path / f"trial{t}" / "run.json",
                   {**run_json, "dataset": f"npz:{tmp_path / 'tiny.npz'}"})
    # Trial 0 kept its last epoch (no sb_last.keras); trial 1 has a last iterate.
    for name in ("sb", "lb"):
        (tmp_path / "trial0" / f"{name}_last.keras").unlink(missing_ok=True)
        save_model(trials.io.load_model(tmp_path / "trial0" / f"{name}.keras"),
                   tmp_path / "trial1" / f"{name}_last.keras")

    def forbidden(*args, **kwargs):
        raise AssertionError("the sensitivity report must not train")

    monkeypatch.setattr("keras_sharpness.training.train_minimizer", forbidden)
    grid = dict(bn_evals=("batch", "moving"), starts=("zero",), eps=(1e-3,),
                spaces=("full", "4:normalized"), points=("kept", "last"), batch_size=32)
    rows, text = sensitivity.run(tmp_path, maxiter=12, echo=lambda line: None, **grid)
    assert len(rows) == 2 * 2 * 2  # BN x space x point
    stored = json.loads((tmp_path / "sensitivity.json").read_text())
    assert len(stored["rows"]) == 8 and text.count("\n") == 2 + 2 * 8  # 10 and 12 iterations
    for row in rows:
        assert row["trials"] == [0, 1]
        for label in ("at_10", "at_maxiter"):
            c = row[label]
            assert c["n"] == 2 and len(c["sb"]["values"]) == 2
            assert c["lb"]["mean"] == pytest.approx(np.mean(c["lb"]["values"]))
        # phi only grows along the ascent.
        assert all(a <= b + 1e-12 for a, b in zip(row["at_10"]["lb"]["values"],
                                                   row["at_maxiter"]["lb"]["values"]))
    # Trial 0's last point is its kept point; trial 1's last is trial 0's model.
    kept = {(r["bn_eval"], r["subspace_dim"]): r for r in rows if r["point"] == "kept"}
    for r in rows:
        if r["point"] == "last":
            twin = kept[(r["bn_eval"], r["subspace_dim"])]
            assert r["at_10"]["sb"]["values"][0] == twin["at_10"]["sb"]["values"][0]
            assert r["at_10"]["sb"]["values"][1] == twin["at_10"]["sb"]["values"][0]
    # Run again: every record is reused (the sweep is never called to solve).
    monkeypatch.setattr("keras_sharpness.metric.sharpness", forbidden)
    again, _ = sensitivity.run(tmp_path, maxiter=12, echo=lambda line: None, **grid)
    assert again == rows


def test_tables_use_the_paper_iterations_and_add_the_longer_run():
    def trial(sb, lb):
        def model(phi_paper, sharpness):
            return {"train_acc": 1.0, "test_acc": 0.9, "sharpness": [
                {"subspace_dim": 0, "eps": 1e-3, "phi_paper": phi_paper, "sharpness": sharpness}]}
        return {"sb": model(*sb), "lb": model(*lb), "distance_ratio": 5.0}

    settings = MeasureSettings(eps=(1e-3,), subspace_dims=(0,), maxiter=100)
    data, text = trials.tables([trial((1, 2), (10, 50)), trial((3, 4), (20, 60))], "F1", settings)
    assert data["table3"]["0.001"]["lb"]["values"] == [10, 20]
    assert data["table3_at_maxiter"]["0.001"]["lb"]["values"] == [50, 60]
    assert data["table3_at_maxiter_comparison"]["0.001"]["ratio"] == pytest.approx(110 / 6)
    assert "Table 3 after 100 iterations (not the paper's 10)" in text
    assert "| paper | 1.23 ± 0.83" in text  # the paper's row only beside the 10-iteration table
    assert text.count("| paper |") == 2  # Table 2 and Table 3
