"""Every command the README and docs show is accepted as written.

Each fenced ``python ...`` command is run with its flags parsed and checked
(unknown flags, bad values, stray arguments, inf/NaN) but no work done
(`keras_sharpness.cli.CHECK_FLAGS_ONLY`): most need data sets or trained runs
that a test cannot have. The README's offline demo, which needs neither, runs
for real at tiny size.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from keras_sharpness.cli import CHECK_FLAGS_ONLY

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands():
    """(page, command words) for every `python` command in a bash block."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == ["python"] and words[1:3] != ["-m", "pytest"]:
                    found.append((page.name, words[1:]))
    return found


COMMANDS = documented_commands()


def test_the_pages_document_commands():
    assert len(COMMANDS) >= 20
    assert {page for page, _ in COMMANDS} >= {"README.md", "sharpness.md", "experiments.md"}


@pytest.mark.parametrize("page, words", COMMANDS, ids=[" ".join(w)[:60] for _, w in COMMANDS])
def test_documented_command_is_accepted_as_written(page, words):
    env = {**os.environ, CHECK_FLAGS_ONLY: "1"}
    done = subprocess.run([sys.executable, *words], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)
    assert done.returncode == 0, f"{page}: python {' '.join(words)}\n{done.stderr[-1500:]}"


def test_readme_offline_demo_runs_at_tiny_size(tmp_path):
    demo = [words for page, words in COMMANDS if page == "README.md"
            and "--dataset=digits" in words or "--workdir=runs/demo" in words]
    assert len(demo) == 2, demo
    tiny = {"plot_parametric_plot.py": ["--max_epochs=2", "--num_points=3",
                                        "--train_size=400", "--test_size=100"],
            "compute_sharpness.py": ["--maxiter=2", "--num_samples=200", "--start=zero"]}
    for words in demo:
        words = [w.replace("runs/demo", str(tmp_path / "demo")) for w in words]
        done = subprocess.run([sys.executable, *words, *tiny[words[0]]], capture_output=True,
                              text=True, cwd=REPO, timeout=600,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert done.returncode == 0, done.stderr[-2000:]
    assert "meaning (full space, eps=0.001)" in done.stdout
    assert (tmp_path / "demo" / "F1.pdf").is_file()
