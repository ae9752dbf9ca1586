"""Kill harness: SIGKILL a command at many points, rerun it, compare with a clean run.

For each command (tiny offline settings) it makes one uninterrupted reference
run, then for every kill point a fresh run that is killed there, reruns the
same command to completion and checks that

* the trained weights (``sb.keras``, ``lb.keras``) are bitwise equal to the
  reference's,
* every JSON result equals the reference's once timings, versions and paths
  are left out,
* no temporary file of `keras_sharpness.io.atomic_path` is left anywhere,
* the rerun did not redo an epoch that had finished before the kill.

Kill points: inside the N-th file write of the run for N = 1, 2, ... until a
run finishes without reaching N (`KERAS_SHARPNESS_KILL_INSIDE_WRITE`: the
temporary file is torn to half its length, then the process kills itself),
plus ``--timed`` kills at evenly spread wall-clock instants.

    python benchmarks/kill_harness.py --commands=plot,sharpness,trials --timed=5

Prints one line per kill point and a summary; exits 1 if any check failed.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

flags.DEFINE_list("commands", ["plot", "sharpness", "trials"], "Commands to kill.")
flags.DEFINE_integer("max_writes", 200, "Largest write index to kill inside.")
flags.DEFINE_integer("timed", 5, "Wall-clock kills per command, spread over a run.")
flags.DEFINE_string("workdir", None, "Where runs go (default: a temporary folder).")
FLAGS = flags.FLAGS

TINY_PLOT = ["--dataset=digits", "--train_size=300", "--test_size=100", "--sb_batch_size=32",
             "--lb_batch_size=100", "--epochs=3", "--num_points=3", "--verbose=2"]
TINY_TRIALS = ["-n", "F1", "--dataset=digits", "--train_size=300", "--test_size=100",
               "--sb_batch_size=32", "--lb_batch_size=100", "--epochs=2", "--trials=2",
               "--maxiter=3", "--subspace_dims=0,5", "--verbose=2"]
#: Keys whose values legitimately differ between runs.
VOLATILE = ("seconds", "versions", "checkpoint", "workdir", "figures_dir", "path")


def command(name, folder):
    """The argv of command `name` writing into `folder`."""
    python = [sys.executable]
    if name == "plot":
        return python + [str(REPO / "plot_parametric_plot.py"), "-n", "F1", *TINY_PLOT,
                         f"--workdir={folder}"]
    if name == "sharpness":
        return python + [str(REPO / "compute_sharpness.py"), f"--workdir={folder}",
                         "--eps=1e-3,5e-4", "--maxiter=3", "--subspace_dim=5"]
    if name == "trials":
        return python + ["-m", "keras_sharpness.experiments.trials", *TINY_TRIALS,
                         f"--workdir={folder}"]
    raise ValueError(name)


def prepare(name, folder, trained):
    """compute_sharpness needs trained minimizers: copy the plot reference's."""
    if name == "sharpness":
        shutil.copytree(trained, folder)
        for leftover in pathlib.Path(folder).glob("sharpness*.json"):
            leftover.unlink()


def run(argv, env=None, timeout=900):
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items()
                if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def snapshot(folder):
    """Weights of every .keras file and every JSON (volatile keys removed)."""
    from keras_sharpness import io

    folder = pathlib.Path(folder)
    def finished(pattern):
        return sorted(p for p in folder.rglob(pattern) if not p.name.startswith(".tmp-"))

    weights = {str(p.relative_to(folder)): [w.tobytes() for w in io.load_model(p).get_weights()]
               for p in finished("*.keras")}
    records = {str(p.relative_to(folder)): strip(json.loads(p.read_text()))
               for p in finished("*.json")}
    return weights, records


def epochs_run(stdout):
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("Epoch ")]


def check(name, label, folder, reference, reference_epochs, first_stdout, rerun):
    problems = []
    if rerun.returncode != 0:
        return [f"rerun failed: {rerun.stderr.strip().splitlines()[-1:]}"]
    weights, records = snapshot(folder)
    if weights != reference[0]:
        problems.append("weights differ from the uninterrupted run")
    if records != reference[1]:
        differ = sorted(k for k in set(records) | set(reference[1])
                        if records.get(k) != reference[1].get(k))
        problems.append(f"records differ: {differ[:4]}")
    leftovers = [str(p) for p in pathlib.Path(folder).rglob(".tmp-*")]
    if leftovers:
        problems.append(f"temporary files left: {leftovers[:3]}")
    # "Epoch k/N" lines: the killed run's finished epochs must not come back.
    before, after = epochs_run(first_stdout), epochs_run(rerun.stdout)
    if len(before) + len(after) > len(reference_epochs) + 2 * max(1, name == "trials"):
        problems.append(f"epochs redone: {len(before)} before + {len(after)} after the kill, "
                        f"{len(reference_epochs)} uninterrupted")
    return problems


def main(argv):
    del argv
    root = pathlib.Path(FLAGS.workdir or tempfile.mkdtemp(prefix="kill-harness-"))
    failures, points = 0, 0
    plot_reference = None
    for name in FLAGS.commands:
        ref_dir = root / f"{name}-reference"
        shutil.rmtree(ref_dir, ignore_errors=True)
        if name == "sharpness":
            if plot_reference is None:
                plot_reference = root / "plot-reference"
                run(command("plot", plot_reference))
            prepare(name, ref_dir, plot_reference)
        started = time.perf_counter()
        clean = run(command(name, ref_dir))
        duration = time.perf_counter() - started
        if clean.returncode != 0:
            print(f"{name}: reference run failed: {clean.stderr[-500:]}")
            return 1
        if name == "plot":
            plot_reference = ref_dir
        reference = snapshot(ref_dir)
        reference_epochs = epochs_run(clean.stdout)
        kills = [("write", n) for n in range(1, FLAGS.max_writes + 1)]
        kills += [("time", duration * (i + 1) / (FLAGS.timed + 1)) for i in range(FLAGS.timed)]
        writes_done = False
        for kind, where in kills:
            if kind == "write" and writes_done:
                continue
            folder = root / f"{name}-{kind}-{where:.0f}"
            shutil.rmtree(folder, ignore_errors=True)
            if name == "sharpness":
                prepare(name, folder, plot_reference)
            if kind == "write":
                first = run(command(name, folder), {"KERAS_SHARPNESS_KILL_INSIDE_WRITE": str(where)})
                if first.returncode == 0:
                    writes_done = True  # fewer writes than `where`: all have been tried
                    continue
            else:
                process = subprocess.Popen(command(name, folder), stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, cwd=REPO)
                time.sleep(where)
                process.send_signal(signal.SIGKILL)
                out, err = process.communicate()
                first = subprocess.CompletedProcess(process.args, process.returncode, out, err)
            rerun = run(command(name, folder))
            problems = check(name, f"{kind} {where:.0f}", folder, reference, reference_epochs,
                             first.stdout, rerun)
            points += 1
            failures += bool(problems)
            print(f"{name}: kill inside {'write' if kind == 'write' else 'second'} "
                  f"{where:.0f} (rc {first.returncode}): "
                  + ("ok" if not problems else "FAIL " + "; ".join(problems)), flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{points} kill points, {failures} failed ({root})")
    return 1 if failures else 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
