"""plot_parametric_plot.py: a tiny end-to-end run and one-line errors for bad input."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "plot_parametric_plot.py"
TINY = ["--dataset=digits", "--train_size=200", "--test_size=60", "--sb_batch_size=32",
        "--lb_batch_size=100", "--epochs=1", "--num_points=3", "--verbose=0"]


def test_tiny_end_to_end_writes_figures_and_json_and_reuses_models(tmp_path):
    from keras_sharpness import parametric_plot
    from keras_sharpness.config import (
        DataSettings,
        PlotCommand,
        PlotSettings,
        RunSettings,
        TrainingSettings,
    )

    workdir, figures = tmp_path / "run", tmp_path / "figures"
    settings = PlotCommand(
        data=DataSettings("digits", train_size=200, test_size=60),
        training=TrainingSettings("f1", sb_batch_size=32, lb_batch_size=0.5, epochs=2),
        plot=PlotSettings(num_points=7), workdir=workdir, figures_dir=figures, verbose=0)
    out = parametric_plot.run(settings)

    for name in ("F1.pdf", "F1.png"):
        assert (figures / name).stat().st_size > 1000
    assert (figures / "F1.pdf").read_bytes().startswith(b"%PDF")
    result = json.loads((workdir / "parametric.json").read_text())
    for key in ("alphas", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert len(result[key]) == 7, key
    assert result["alphas"][0] == -1 and result["alphas"][-1] == 2
    assert all(0 <= a <= 1 for a in result["train_acc"] + result["test_acc"])
    assert result["bn_eval"] == "batch" and result["curve"] == "linear"
    assert result["seed"] == 0 and "tensorflow" in result["versions"]
    assert result["flags"]["lb_batch_size"] == 100  # 0.5 of 200 samples
    assert result["flags"]["num_points"] == 7 and result["flags"]["workdir"] == str(workdir)

    run = json.loads((workdir / "run.json").read_text())
    for key in ("network", "dataset", "data_dir", "bn_eval", "seed", "sb_batch_size",
                "lb_batch_size", "epochs", "versions"):
        assert key in run, key
    assert run["network"] == "F1" and run["dataset"] == "digits"
    # The manifest: the settings as the run resolved them, seeds and status.
    recorded = RunSettings.from_dict(run["settings"])
    assert recorded.training.lb_batch_size == 100 and recorded.training.epochs == 2
    assert recorded.data == settings.data
    assert run["status"] == "finished" and run["seed"] == run["data_seed"] == 0
    for name in ("x0.keras", "sb.keras", "lb.keras"):
        assert (workdir / name).is_file()
    for name in ("sb_history.json", "lb_history.json"):
        history = json.loads((workdir / name).read_text())
        assert history["finished"] and len(history["epochs"]) == 2
    assert not (workdir / "backups").exists()

    # A second run with other plot settings reuses the finished models.
    stamps = {n: (workdir / n).stat().st_mtime_ns for n in ("sb.keras", "lb.keras")}
    again = parametric_plot.run(dataclasses.replace(
        settings, plot=PlotSettings(num_points=2, alpha_min=0, alpha_max=1)))
    assert {n: (workdir / n).stat().st_mtime_ns for n in stamps} == stamps
    # alpha = 0 and 1 of the second sweep are points of the first one.
    assert again["result"].train_loss[0] == pytest.approx(out["result"].train_loss[2], rel=1e-6)
    assert again["result"].train_loss[1] == pytest.approx(out["result"].train_loss[4], rel=1e-6)


def _run_cli(args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=180)


def _message_lines(stderr):
    """stderr without TensorFlow's start-up lines, which no flag silences."""
    return [ln for ln in stderr.splitlines() if ln.strip()
            and not ln.startswith(("WARNING: All log messages", "I0000", "W0000"))]


def _foreign_workdir(tmp_path):
    workdir = tmp_path / "foreign"
    workdir.mkdir()
    (workdir / "run.json").write_text(json.dumps({"network": "C1", "dataset": "cifar10"}))
    (workdir / "x0.keras").write_bytes(b"not a model")
    return workdir


@pytest.mark.parametrize("case, args, expected", [
    ("unknown network", ["-n", "F9"], "unknown network"),
    ("alpha range", ["-n", "F1", "--alpha_min=2", "--alpha_max=1"], "alpha_min"),
    ("num_points", ["-n", "F1", "--num_points=1"], "num_points"),
    ("F2 without data", ["-n", "F2"], "npz:"),
    ("lb batch", ["-n", "F1", *TINY, "--lb_batch_size=5000"], "larger than the training set"),
    ("foreign workdir", ["-n", "F1", *TINY, "--workdir={foreign}"],
     "was made with network='C1' (now 'F1')"),
    ("infinite alpha", ["-n", "F1", *TINY, "--alpha_max=inf"], "--alpha_max must be a finite"),
    ("NaN batch", ["-n", "F1", *TINY, "--lb_batch_size=nan"], "--lb_batch_size must be a finite"),
    ("zero epochs", ["-n", "F1", *TINY, "--epochs=0"], "--epochs must be at least 1"),
    ("remedy", ["-n", "F1", *TINY, "--conservative_lambda=-1"], "conservative_lambda"),
    ("flagfile value", ["--flagfile={flagfile}"], "--num_points must be at least 2"),
    ("figures dir is a file", ["-n", "F1", *TINY, "--figures_dir={file}"], "is a file"),
    ("workdir under a file", ["-n", "F1", *TINY, "--workdir={file}/run"], "cannot be written"),
    ("stray argument", ["-n", "F1", *TINY, "extra"], "unexpected arguments: extra"),
])
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, case, args, expected):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "bad.flags").write_text("-n=F1\n--dataset=digits\n--num_points=1\n")
    args = [a.format(foreign=_foreign_workdir(tmp_path)) if "{foreign}" in a else
            a.format(file=tmp_path / "a_file") if "{file}" in a else
            a.format(flagfile=tmp_path / "bad.flags") if "{flagfile}" in a else a
            for a in args]
    done = _run_cli(args, tmp_path)
    lines = _message_lines(done.stderr)
    assert done.returncode != 0, case
    assert len(lines) == 1, f"{case}: {lines}"
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "Figures").exists()


@pytest.mark.parametrize("command", [
    [str(SCRIPT), "--help"],
    [str(REPO / "compute_sharpness.py"), "--help"],
    ["-m", "keras_sharpness.experiments.trials", "--help"],
    ["-m", "keras_sharpness.experiments.sensitivity", "--help"],
    [str(SCRIPT), "-n", "F1", "stray"],
    [str(SCRIPT), "-n", "F9"],
    [str(SCRIPT), "-n", "F1", "--lb_batch_size=0"],
    ["-m", "keras_sharpness.experiments.trials", "-n", "F1", "--sb_batch_size=abc"],
    [str(REPO / "compute_sharpness.py"), "--workdir=.", "--eps=0"],
    [str(REPO / "compute_sharpness.py"), "--workdir=.", "--start=bogus"],
    [str(REPO / "compute_sharpness.py"), "--model=missing.keras", "--dataset=digits"],
    [str(REPO / "compute_sharpness.py"), "--workdir=."],  # no minimizers there
])
def test_help_and_flag_errors_answer_before_tensorflow_is_imported(command):
    """--help and bad flags (settings included) must not wait ~10 s for TensorFlow
    (nor SciPy's stats)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert imported, done.stderr[-2000:]
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]
    assert "scipy.stats" not in imported
    if "--help" in command:
        assert "flags:" in done.stdout  # absl prints the usage and exits 1
    else:
        assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("error: ")
    if "stray" in command:
        assert "error: unexpected arguments: stray" in done.stderr
