"""compute_sharpness.py end to end on a tiny npz and tiny models; bad input."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import keras

from keras_sharpness import sharpness_cli
from keras_sharpness.io import save_model, write_json
from keras_sharpness.layers import SwitchableBatchNormalization

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "compute_sharpness.py"
# TensorFlow's C++ start-up lines that TF_CPP_MIN_LOG_LEVEL does not silence.
_TF_CHATTER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} )")


def tiny_model(seed, input_shape=(8, 8, 1)):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    h = keras.layers.Dense(16)(keras.layers.Flatten()(inputs))
    h = keras.layers.Activation("relu")(SwitchableBatchNormalization()(h))
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="toy")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A workdir like plot_parametric_plot.py leaves: sb.keras, lb.keras, run.json."""
    root = tmp_path_factory.mktemp("sharpness")
    rng = np.random.default_rng(0)
    np.savez(root / "tiny.npz",
             x_train=rng.integers(0, 256, (60, 8, 8), dtype=np.uint8),
             y_train=rng.integers(0, 10, 60),
             x_test=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
             y_test=rng.integers(0, 10, 20))
    workdir = root / "run"
    save_model(tiny_model(1), workdir / "sb.keras")
    save_model(tiny_model(2), workdir / "lb.keras")
    write_json(workdir / "run.json", {"network": "toy", "dataset": f"npz:{root / 'tiny.npz'}",
                                      "data_dir": None})
    save_model(tiny_model(3, input_shape=(5,)), root / "wrong_input.keras")
    (root / "corrupt.keras").write_bytes(b"not a zip file")
    (root / "empty").mkdir()
    return root


def run_script(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip() and not _TF_CHATTER.match(line)]


def test_workdir_end_to_end(run_dir):
    workdir = run_dir / "run"
    done = run_script("--workdir", workdir, "--eps", "1e-3,5e-4", "--maxiter", "3",
                      "--hessian_topk", "2", "--hessian_trace_probes", "4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(re.match(r"SB eps=0\.001 iter 1/3: ", line) for line in lines)
    header = next(line for line in lines if line.startswith("network"))
    assert header.split()[-2:] == ["SB", "LB"]
    rows = [line.split() for line in lines if line.startswith("toy ")]
    assert [row[2] for row in rows] == ["0.001", "0.0005"]
    stored = json.loads((workdir / "sharpness.json").read_text())
    records = [r for r in stored if "measure" not in r]
    assert len(records) == 4
    required = {"model", "eps", "subspace_dim", "f0", "fmax", "sharpness", "iterations",
                "evaluations", "seconds", "bn_eval", "versions", "seed", "start"}
    for record in records:
        assert required <= set(record)
        assert record["sharpness"] == pytest.approx(
            (record["fmax"] - record["f0"]) / (1 + record["f0"]) * 100)
        assert record["sharpness"] >= 0
        assert record["bn_eval"] == "batch" and record["start"] == "zero"
    by_key = {(r["model"], r["eps"]): r for r in records}
    # One Hessian record of each kind per model, beside its Metric 2.1 records.
    hessian = {(r["model"], r["measure"]): r for r in stored if "measure" in r}
    assert sorted(hessian) == [(m, k) for m in ("LB", "SB")
                               for k in ("hessian_top", "hessian_trace")]
    for label in ("SB", "LB"):
        top = hessian[(label, "hessian_top")]
        assert top["params"] == {"k": 2} and len(top["result"]["eigenvalues"]) == 2
        assert top["value"] == top["result"]["eigenvalues"][0]
        trace = hessian[(label, "hessian_trace")]
        assert trace["result"]["probes"] <= 4 and np.isfinite(trace["value"])
        assert trace["bn_eval"] == "batch"
        assert f"{label} hessian_top: largest eigenvalue = " in done.stdout
    for label in ("SB", "LB"):
        row = rows[0][3 + ["SB", "LB"].index(label)]
        assert float(row) == pytest.approx(by_key[(label, 1e-3)]["sharpness"], rel=1e-3)


def test_rerun_reuses_records_and_adds_new_settings(run_dir):
    workdir = run_dir / "run"
    located = sharpness_cli.locate_models(workdir=workdir)
    echoed = []
    settings = dict(models=located["models"], data=located["data"], network="toy",
                    output=workdir / "again.json", eps=[1e-3], maxiter=2, subspace_dim=3,
                    seed=4, echo=echoed.append)
    first = sharpness_cli.compute(**settings)
    second = sharpness_cli.compute(**settings)
    assert first == second and sum("reusing" in line for line in echoed) == 2
    sharpness_cli.compute(**{**settings, "start": "corner"})
    records = json.loads((workdir / "again.json").read_text())
    assert sorted((r["model"], r["start"]) for r in records) == [
        ("LB", "corner"), ("LB", "zero"), ("SB", "corner"), ("SB", "zero")]
    assert all(r["subspace_dim"] == 3 for r in records)


def test_records_carry_the_ascent_and_every_start(run_dir):
    workdir = run_dir / "run"
    located = sharpness_cli.locate_models(workdir=workdir)
    echoed = []
    records = sharpness_cli.compute(
        models=located["models"], data=located["data"], network="toy",
        output=workdir / "multi.json", eps=[1e-3], maxiter=12, subspace_dim=3,
        subspace_scale="normalized", start="zero,corner", echo=echoed.append)
    for r in records:
        assert len(r["ascent"]) == r["iterations"] and r["ascent"][-1] == r["sharpness"]
        paper = r["ascent"][9] if r["iterations"] >= 10 else r["sharpness"]
        assert r["phi_paper"] == paper and r["solver_options"]["gtol"] == 0.0
        assert r["subspace_scale"] == "normalized" and r["start"] == "zero,corner"
        assert [s["start"] for s in r["per_start"]] == ["zero", "corner"]
        assert r["sharpness"] == max(s["sharpness"] for s in r["per_start"])
        assert r["best_start"] in ("zero", "corner")
    assert sum("ascent (phi after iterations 1.." in line for line in echoed) == 2
    assert any(line.startswith("phi after the paper's 10 iterations") for line in echoed)


@pytest.mark.parametrize("case, args, message", [
    ("eps zero", ["--workdir", "{run}", "--eps", "0"], "eps"),
    ("eps nan", ["--workdir", "{run}", "--eps", "nan"], "eps"),
    ("eps text", ["--workdir", "{run}", "--eps", "big"], "eps"),
    ("subspace too large", ["--workdir", "{run}", "--subspace_dim", "100000"], "subspace_dim"),
    ("missing model", ["--model", "{root}/missing.keras", "--dataset", "npz:{root}/tiny.npz"],
     "does not exist"),
    ("corrupt model", ["--model", "{root}/corrupt.keras", "--dataset", "npz:{root}/tiny.npz"],
     "corrupt"),
    ("workdir without minimizers", ["--workdir", "{root}/empty"], "sb.keras"),
    ("input mismatch", ["--model", "{root}/wrong_input.keras", "--dataset",
                        "npz:{root}/tiny.npz"], "shape"),
    ("neither source", [], "--workdir"),
])
def test_bad_input_is_one_line_and_nonzero_exit(run_dir, case, args, message):
    args = [a.format(run=run_dir / "run", root=run_dir) for a in args]
    done = run_script(*args)
    assert done.returncode != 0, case
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def test_measures_then_report_then_landscape_end_to_end(run_dir, tmp_path):
    workdir = run_dir / "run"
    output = tmp_path / "measures.json"
    done = run_script("--workdir", workdir, "--output", output,
                      "--measures=accuracy,adaptive_worst,noise_scale", "--adaptive_norm=linf",
                      "--adaptive_rho=1e-3", "--adaptive_steps=2", "--noise_bootstrap=100",
                      "--noise_group_size=10")
    assert done.returncode == 0, done.stderr
    records = json.loads(output.read_text())
    assert [(r["model"], r["measure"]) for r in records] == [
        (m, k) for m in ("SB", "LB") for k in ("accuracy", "adaptive_worst", "noise_scale")]
    worst = records[1]
    assert worst["params"] == {"rho": 1e-3, "norm": "linf", "eta": 0.0, "steps": 2, "m": 0}
    assert worst["result"]["norm"] == "linf" and worst["value"] >= 0
    assert records[2]["result"]["method"] == "two_batch"  # batch-statistics BN
    assert "SB accuracy: train " in done.stdout and "LB noise_scale: B_simple = " in done.stdout

    from keras_sharpness import gap_report

    rows = gap_report.build_report([output], bootstrap=100)["rows"]
    assert [r["model"] for r in rows] == ["SB", "LB"]
    assert rows[0]["values"]["adaptive_worst"] == worst["value"]

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    plane = subprocess.run([sys.executable, "-m", "keras_sharpness.landscape",
                            f"--workdir={workdir}", "--direction=sb_lb", "--dims=2",
                            "--landscape_points=5", f"--output_dir={tmp_path / 'land'}"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert plane.returncode == 0, plane.stderr
    result = json.loads((tmp_path / "land" / "landscape_sb_lb_2d.json").read_text())
    grid = np.asarray(result["results"]["SB"]["loss"])
    assert grid.shape == (5, 5)  # alphas -0.5, 0, 0.5, 1, 1.5; betas -1 .. 1
    f = {r["model"]: r["train_loss"] for r in records if r["measure"] == "accuracy"}
    assert grid[1, 2] == pytest.approx(f["SB"], rel=1e-5)  # SB at alpha 0
    assert grid[3, 2] == pytest.approx(f["LB"], rel=1e-4)  # LB at alpha 1
    assert (tmp_path / "land" / "SB_landscape_sb_lb_2d.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "keras_sharpness.landscape",
                          f"--workdir={workdir}", "--dims=3"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert bad.returncode == 2 and error_lines(bad.stderr) == ["error: --dims must be 1 or 2, got 3"]
