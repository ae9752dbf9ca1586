"""The measures-vs-gap report (keras_sharpness.gap_report) on stores written by hand."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from keras_sharpness import gap_report, io
from keras_sharpness.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def accuracy(model, train_loss, test_loss, train_acc, test_acc):
    return {"measure": "accuracy", "model": model, "checkpoint_sha256": None,
            "bn_eval": "batch", "batch_size": 1000, "train_loss": train_loss,
            "test_loss": test_loss, "train_acc": train_acc, "test_acc": test_acc}


def phi(model, value, eps=1e-3, p=0):
    return {"model": model, "checkpoint_sha256": None, "bn_eval": "batch", "eps": eps,
            "subspace_dim": p, "maxiter": 10, "seed": 0, "start": "zero", "batch_size": 1000,
            "num_samples": None, "subspace_scale": "identity" if p == 0 else "gaussian",
            "sharpness": value}


def other(model, name, value, **params):
    return {"measure": name, "model": model, "checkpoint_sha256": None, "bn_eval": "batch",
            "seed": 0, "batch_size": 1000, "num_samples": None, "params": params,
            "value": value}


#: Six models: gap_loss = 0.1 * i, a measure rising with it, one falling, one noisy.
GAPS = [0.1 * i for i in range(1, 7)]
NOISY = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0]


@pytest.fixture
def stores(tmp_path):
    for run in range(2):
        records = []
        for j in range(3):
            i = 3 * run + j
            label = f"batch{2 ** i}"
            records += [accuracy(label, 0.01, 0.01 + GAPS[i], 1.0, 0.9 - 0.01 * i),
                        phi(label, 10.0 * (i + 1)),
                        other(label, "hessian_trace", -float(i), probes=100, rtol=0.01),
                        other(label, "noise_scale", NOISY[i], bootstrap=1000)]
        io.write_json(tmp_path / f"run{run}" / "sharpness.json", records)
    return tmp_path


def test_rows_gaps_and_columns(stores):
    rows, columns = gap_report.collect(gap_report.find_stores([stores]))
    assert len(rows) == 6
    assert [c["name"] for c in columns] == [
        "sharpness (full eps=0.001 maxiter=10 start=zero samples=all batch=1000 seed=0)", "hessian_trace", "noise_scale"]
    assert [r["gap_loss"] for r in rows] == pytest.approx(GAPS)
    assert [r["gap_acc"] for r in rows] == pytest.approx([100 * (0.1 + 0.01 * i)
                                                          for i in range(6)])
    assert columns[2]["sharper_is_larger"] is False


def test_kendall_tau_and_its_interval(stores):
    report = gap_report.build_report([stores], bootstrap=500)
    tau = {(c["column"], c["gap"]): c for c in report["correlations"]}
    rising = tau[("sharpness (full eps=0.001 maxiter=10 start=zero samples=all batch=1000 seed=0)", "gap_loss")]
    assert rising["tau"] == pytest.approx(1.0)
    assert rising["ci_low"] == pytest.approx(1.0) and rising["ci_high"] == pytest.approx(1.0)
    assert tau[("hessian_trace", "gap_loss")]["tau"] == pytest.approx(-1.0)
    noisy = tau[("noise_scale", "gap_loss")]
    expected = scipy.stats.kendalltau(NOISY, GAPS)
    assert noisy["tau"] == pytest.approx(expected.statistic)
    assert noisy["p_value"] == pytest.approx(expected.pvalue)
    assert noisy["ci_low"] <= noisy["tau"] <= noisy["ci_high"]
    assert noisy["ci_low"] < noisy["ci_high"] and noisy["n"] == 6
    # Deterministic by seed; JSON-ready.
    assert gap_report.dumps(gap_report.build_report([stores], bootstrap=500)) == \
        gap_report.dumps(report)


def test_kendall_needs_three_varying_pairs():
    assert gap_report.kendall([1.0, 2.0], [1.0, 2.0])["tau"] is None
    assert gap_report.kendall([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["tau"] is None


def test_a_model_measured_without_accuracy_is_refused(tmp_path):
    io.write_json(tmp_path / "sharpness.json", [phi("SB", 1.0)])
    with pytest.raises(UserError, match="has measures but no accuracy record") as info:
        gap_report.collect([tmp_path / "sharpness.json"])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="holds no sharpness.json"):
        gap_report.find_stores([tmp_path / "run0"] if (tmp_path / "run0").mkdir() is None
                               else [])


def test_command_writes_the_report(stores, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "keras_sharpness.gap_report",
                           f"--runs={stores / 'run0'},{stores / 'run1'}",
                           f"--output_dir={out}", "--bootstrap=200"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| hessian_trace | test - train mean cross-entropy | 6 | -1.00 |" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 6 and report["bootstrap"] == 200
    for name in ("report.md", "report.pdf", "report.png"):
        assert (out / name).stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "keras_sharpness.gap_report",
                          f"--runs={tmp_path / 'nowhere'}"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere'} does not exist"
    assert np.isfinite(report["correlations"][0]["tau"])


def test_measures_on_other_subsets_are_other_columns(tmp_path):
    subset = {**phi("SB", 2.0), "num_samples": 2000}
    io.write_json(tmp_path / "sharpness.json",
                  [accuracy("SB", 0.01, 0.2, 1.0, 0.9), phi("SB", 1.0), subset])
    rows, columns = gap_report.collect([tmp_path / "sharpness.json"])
    assert [c["details"].split()[-3] for c in columns] == ["samples=2000", "samples=all"]
    assert sorted(rows[0]["values"].values()) == [1.0, 2.0]


def test_a_checkpoint_in_two_stores_is_one_row(stores, tmp_path):
    # A remedy grid reuses the trials' SB and LB: the report must not count them twice.
    shared = [dict(r, checkpoint_sha256="abc") for r in
              (accuracy("SB", 0.01, 0.2, 1.0, 0.9), phi("SB", 1.0))]
    for name in ("a", "b"):
        io.write_json(tmp_path / name / "sharpness.json", shared)
    rows, _ = gap_report.collect(gap_report.find_stores([tmp_path / "a", tmp_path / "b"]))
    assert len(rows) == 1
