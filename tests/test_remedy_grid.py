"""The remedy grid on tiny data: files, one row per arm, resume, one-line refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest

from keras_sharpness.errors import UserError
from keras_sharpness.experiments import remedy_grid
from keras_sharpness.measure import MeasureSettings
from keras_sharpness.remedies import Remedies
from keras_sharpness.statistics import mean_interval

# The tiny data and 150-weight network of the experiment tests.
from test_experiments import _forbid_work, _run_settings, small_networks, tiny  # noqa: F401

SETTINGS = MeasureSettings(eps=(1e-3,), subspace_dims=(0,), maxiter=2, eval_batch_size=32)


def test_grid_files_rows_and_a_rerun_that_trains_nothing(tiny, tmp_path, monkeypatch):
    arms = ["sam", "linear_warmup+ghost_bn"]
    data, text = remedy_grid.run(tiny, _run_settings(epochs=2), tmp_path / "grid", arms=arms,
                                 trials=1, settings=SETTINGS, verbose=0)
    grid, trial = tmp_path / "grid", tmp_path / "grid" / "trial0"
    assert (grid / "remedy_grid.md").read_text() == text
    stored = json.loads((grid / "remedy_grid.json").read_text())
    assert all((grid / f"remedy_grid.{ext}").stat().st_size > 0 for ext in ("pdf", "png"))
    # One row per run; arms canonical (presets in table order); the remedies recorded.
    labels = ["SB", "LB", "LB+sam", "LB+ghost_bn+linear_warmup"]
    assert stored["labels"] == labels
    assert [line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| run")] == labels
    assert stored["arm_remedies"]["sam"]["sam_rho"] == 0.05
    mixed = stored["arm_remedies"]["ghost_bn+linear_warmup"]
    assert (mixed["ghost_batch_size"], mixed["lr_scaling"], mixed["warmup_epochs"]) == (
        8, "linear", 0.5)  # the SB batch; a quarter of 2 epochs
    assert mixed["lr_reference_batch"] == 8
    assert set(stored["rows"]["LB+sam"]) == {"test_acc", "train_acc", "train_loss",
                                             "sharpness[eps=0.001,p=0]"}
    for name in labels[2:]:
        c = stored["versus_lb"][name]["test_acc"]
        assert c["n"] == 1 and c["lb"]["values"] == stored["rows"]["LB"]["test_acc"]["values"]
        assert set(stored["gap_closed"][name]) >= {"value", "interval", "per_trial"}
    # Each arm's LB is its own run of the trial directory, from the trial's x0.
    for name in ("sb", "lb", "lb_sam", "lb_ghost_bn+linear_warmup"):
        assert (trial / f"{name}.keras").is_file() and (trial / f"{name}_history.json").is_file()
    history = json.loads((trial / "lb_sam_history.json").read_text())
    assert history["sam_rho"] == 0.05 and history["batch_size"] == 32
    assert json.loads((trial / "lb_history.json").read_text())["sam_rho"] == 0.0
    assert not (trial / "backups").exists()
    store = json.loads((trial / "sharpness.json").read_text())
    assert {r["model"] for r in store} == {"SB", "LB", *labels[2:]}
    assert json.loads((grid / "run.json").read_text())["status"] == "finished"

    # Everything is reused: no training, no measurement.
    _forbid_work(monkeypatch)
    again, again_text = remedy_grid.run(tiny, _run_settings(epochs=2), tmp_path / "grid",
                                        arms=arms, trials=1, settings=SETTINGS, verbose=0)
    assert again["rows"] == stored["rows"] and again_text == text


def test_a_changed_preset_is_refused_not_reused(tiny, tmp_path, monkeypatch):
    history = tmp_path / "lb_sam_history.json"
    history.write_text(json.dumps({**Remedies(sam_rho=0.1).record(), "batch_size": 32}))
    with pytest.raises(Exception, match="sam_rho=0.1 \\(now 0.05\\)"):
        remedy_grid._check_history(history, remedy_grid.arm_remedies(
            "sam", Remedies(), sb_batch=8, epoch_cap=2), 32)


def test_arms_parse_to_canonical_names_and_refuse_in_one_line():
    assert remedy_grid.parse_arms("sam, ghost_bn+sam,sam+ghost_bn") == ["sam", "ghost_bn+sam"]
    assert remedy_grid.parse_arms("all") == list(remedy_grid.ARMS)
    with pytest.raises(UserError, match="unknown arm 'samm'"):
        remedy_grid.parse_arms("sam,samm")
    with pytest.raises(UserError, match="sam and asam both set sam_rho"):
        remedy_grid.parse_arms("sam+asam")
    overrides = remedy_grid.arm_overrides("linear_warmup", sb_batch=64, epoch_cap=40)
    assert overrides == {"lr_scaling": "linear", "warmup_epochs": 5.0}  # Goyal et al.


def test_gap_closed_and_mean_interval_pin_their_math():
    closed = remedy_grid.gap_closed([90, 92], [80, 82], [85, 87])
    assert closed["value"] == pytest.approx(0.5) and closed["per_trial"] == [0.5, 0.5]
    assert closed["interval"] == pytest.approx([0.5, 0.5])
    assert remedy_grid.gap_closed([80], [80], [85])["value"] is None  # no gap to close
    # t interval of the mean: 2 -+ t_{0.975, 2} * 1 / sqrt(3).
    assert mean_interval([1, 2, 3]) == pytest.approx(
        [2 - 4.302652729911275 / np.sqrt(3), 2 + 4.302652729911275 / np.sqrt(3)])
    assert mean_interval([1.0]) is None


@pytest.mark.parametrize("args, message", [
    (["--arms=sam,bogus"], "unknown arm 'bogus'"),
    (["--sam_rho=0.1"], "--remedies_apply_to=both"),
])
def test_bad_flags_are_one_line_errors_before_tensorflow(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m",
                           "keras_sharpness.experiments.remedy_grid", "-n", "F1",
                           "--dataset=digits", f"--workdir={tmp_path}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith("import time:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "| tensorflow" not in proc.stderr
