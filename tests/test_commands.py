"""The console scripts of setup.py: they resolve, answer --help without TensorFlow,
and run what the scripts and modules of the same command run; every command
reads --flagfile and refuses positional arguments."""

import ast
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from keras_sharpness.cli import CHECK_FLAGS_ONLY

REPO = pathlib.Path(__file__).resolve().parents[1]


def console_scripts():
    """``{name: (module, function)}`` from ``CONSOLE_SCRIPTS`` in setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    listed = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "CONSOLE_SCRIPTS" for t in node.targets))
    found = {}
    for line in listed:
        name, _, target = (part.strip() for part in line.partition("="))
        module, _, function = target.partition(":")
        found[name] = (module, function)
    return found


SCRIPTS = console_scripts()

#: How each command is run without the console script.
SAME_AS = {
    "ks-plot": [str(REPO / "plot_parametric_plot.py")],
    "ks-sharpness": [str(REPO / "compute_sharpness.py")],
    "ks-trials": ["-m", "keras_sharpness.experiments.trials"],
    "ks-remedy-grid": ["-m", "keras_sharpness.experiments.remedy_grid"],
    "ks-batch-sweep": ["-m", "keras_sharpness.experiments.batch_sweep"],
    "ks-warm-start": ["-m", "keras_sharpness.experiments.warm_start"],
    "ks-trajectory": ["-m", "keras_sharpness.experiments.trajectory"],
    "ks-sensitivity": ["-m", "keras_sharpness.experiments.sensitivity"],
    "ks-report": ["-m", "keras_sharpness.gap_report"],
    "ks-landscape": ["-m", "keras_sharpness.landscape"],
}

#: Valid flags of each command (nothing is run: `CHECK_FLAGS_ONLY`).
VALID_FLAGS = {
    "ks-plot": ["--network=F1", "--dataset=digits", "--epochs=2", "--num_points=3"],
    "ks-sharpness": ["--workdir=runs/F1", "--eps=1e-3", "--maxiter=3"],
    "ks-trials": ["--network=F1", "--dataset=digits", "--trials=2"],
    "ks-remedy-grid": ["--network=F1", "--dataset=digits", "--arms=sam,ghost_bn+sam"],
    "ks-batch-sweep": ["--network=F1", "--dataset=digits", "--batch_sizes=32,64"],
    "ks-warm-start": ["--network=F1", "--dataset=digits", "--sb_epochs=2"],
    "ks-trajectory": ["--network=F1", "--dataset=digits", "--every=2"],
    "ks-sensitivity": ["--workdir=runs/F1_trials", "--maxiter=12"],
    "ks-report": ["--runs=runs/F1_trials", "--bootstrap=500"],
    "ks-landscape": ["--workdir=runs/F1", "--dims=2", "--direction=sb_lb"],
}


def _console_script(name, *args):
    """The command line a console script `name` amounts to."""
    module, function = SCRIPTS[name]
    code = (f"import sys; sys.argv[0] = {name!r}; "
            f"from {module} import {function}; sys.exit({function}())")
    return ["-c", code, *args]


def _run(words, env=None, importtime=False):
    return subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []),
                           *words], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, **(env or {})})


def _listed_flags(help_text):
    return sorted(line.split(":")[0].strip() for line in help_text.splitlines()
                  if line.startswith("  --"))


def test_setup_lists_every_command():
    assert set(SCRIPTS) == set(SAME_AS) == set(VALID_FLAGS)
    for name, (module, function) in SCRIPTS.items():
        assert callable(getattr(importlib.import_module(module), function)), name


@pytest.mark.parametrize("name", sorted(SAME_AS))
def test_console_script_answers_help_without_tensorflow_like_its_script(name):
    done = _run(_console_script(name, "--help"), importtime=True)
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert imported and not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]
    listed = _listed_flags(done.stdout)
    assert "--flagfile" not in listed and len(listed) >= 5, done.stdout[-2000:]
    # The same command: the same flags and usage as the script or module.
    script = _run([*SAME_AS[name], "--help"])
    assert listed == _listed_flags(script.stdout)
    assert done.stdout.split("flags:")[0] == script.stdout.split("flags:")[0]


@pytest.mark.parametrize("name", sorted(VALID_FLAGS))
def test_every_command_reads_a_flagfile_and_refuses_positional_arguments(tmp_path, name):
    flagfile = tmp_path / "command.flags"
    flagfile.write_text("\n".join(VALID_FLAGS[name]) + "\n")
    done = _run([*SAME_AS[name], f"--flagfile={flagfile}"], env={CHECK_FLAGS_ONLY: "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    done = _run(_console_script(name, f"--flagfile={flagfile}", "stray"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unexpected arguments: stray (flags are written --name=value)"]
