"""Kill harness: SIGKILL a command at many points, rerun it, compare with a clean run.

For each command (tiny offline settings) it makes one uninterrupted reference
run, traced (`benchmarks/write_trace.py`: the target of every file write, in
order), then for every kill point a fresh run that is killed there, reruns
the same command to completion and checks that

* the trained weights (every ``.keras``) are bitwise equal to the reference's,
* every JSON result equals the reference's once timings, versions and paths
  are left out,
* no temporary file of `keras_sharpness.io.atomic_path` is left anywhere,
* the rerun did not redo an epoch that had finished before the kill.

Kill points:

* inside the N-th file write (`KERAS_SHARPNESS_KILL_INSIDE_WRITE=N`: the
  temporary file is torn to half its length, then the process kills itself),
  for every write of the reference run; with ``--write_points`` a command
  with more writes gets a subset: the first write of every kind of file (the
  target path with trial and epoch numbers left out), then writes evenly
  spread over the rest. The file actually torn is read back from the
  temporary file the kill leaves, and reported;
* wall-clock kills at evenly spaced instants of the command's work: from the
  moment it holds its lock (after start-up and imports) to the instant of
  the reference run's last write, so that short commands are killed inside
  their measurement and not during their imports. ``--timed`` of them, or
  more where needed to reach ``--min_points`` kill points per command.

    python benchmarks/kill_harness.py --min_points=20 --write_points=trials=18

Prints one line per kill point and a summary table (kill points, kinds of
file torn, failures per command); exits 1 if any check failed. Subprocesses
run in this checkout (cwd and PYTHONPATH), so a snapshot of the code
(``git worktree add``) can be tested while the main tree is being edited.
"""

import collections
import json
import os
import pathlib
import re
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
flags.DEFINE_integer("min_points", 20, "Kill points per command at least: wall-clock kills "
                     "are added to the write kills to reach it.")
flags.DEFINE_integer("timed", 4, "Wall-clock kills per command at least.")
flags.DEFINE_list("write_points", [], "Most write kills per command, as NAME=N (e.g. "
                  "trials=20) or N for all; a command with more writes gets a subset "
                  "covering every kind of file. Default: every write.")
flags.DEFINE_string("workdir", None, "Where runs go (default: a temporary folder).")
FLAGS = flags.FLAGS

TINY_PLOT = ["--dataset=digits", "--train_size=300", "--test_size=100", "--sb_batch_size=32",
             "--lb_batch_size=100", "--epochs=3", "--num_points=3", "--verbose=2"]
TINY_TRIALS = ["-n", "F1", "--dataset=digits", "--train_size=300", "--test_size=100",
               "--sb_batch_size=32", "--lb_batch_size=100", "--epochs=2", "--trials=2",
               "--maxiter=3", "--subspace_dims=0,5", "--verbose=2"]
#: Keys whose values legitimately differ between runs.
VOLATILE = ("seconds", "versions", "checkpoint", "workdir", "figures_dir", "path")
# Unbuffered output: the last line a killed run printed says where it was killed.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO)] + [
           p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
ENV.pop("KERAS_SHARPNESS_KILL_INSIDE_WRITE", None)


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


def lock_file(name, folder):
    """The lock the command takes once started (`keras_sharpness.runs`)."""
    return pathlib.Path(folder) / (".sharpness.json.lock" if name == "sharpness" else ".lock")


def prepare(name, folder, trained):
    """compute_sharpness needs trained minimizers: copy the plot reference's."""
    shutil.rmtree(folder, ignore_errors=True)
    if name == "sharpness":
        shutil.copytree(trained, folder)
        for leftover in pathlib.Path(folder).glob("sharpness*.json"):
            leftover.unlink()


def run(argv, env=None, timeout=1800):
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**ENV, **(env or {})})


def run_timed(argv, lock, delay=None, timeout=1800):
    """Runs `argv`; once it holds `lock`, SIGKILLs it after `delay` seconds (None: never).

    Returns:
        (CompletedProcess, seconds from start to holding the lock or None,
        seconds from start to the end).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, text=True, cwd=REPO, env=ENV)
        locked = None
        while locked is None and process.poll() is None:
            try:
                if lock.read_text().strip() == str(process.pid):
                    locked = time.perf_counter() - started
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        if locked is not None and delay is not None:
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        process.wait(timeout=timeout)
        ended = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(argv, process.returncode, out.read(), err.read())
        return done, locked, ended


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


def kind(relative):
    """The kind of a written file: its path with trial and epoch numbers left out."""
    return re.sub(r"(trial|epoch-)\d+", r"\1*", str(relative))


def torn(folder):
    """Targets (relative paths) of the temporary files a killed writer left."""
    from keras_sharpness import io

    folder = pathlib.Path(folder)
    found = []
    for leftover in sorted(folder.rglob(f"{io.TEMP_PREFIX}*")):
        target = io.temporary_target(leftover.name)
        found.append(str((leftover.parent / target if target else leftover).relative_to(folder)))
    return found


def epochs_run(stdout):
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("Epoch ")]


def check(folder, reference, reference_epochs, first_stdout, rerun):
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
    # "Epoch k/N" lines: the killed run's finished epochs must not come back
    # (the epoch a kill interrupts is run again, hence the slack).
    before, after = epochs_run(first_stdout), epochs_run(rerun.stdout)
    if len(before) + len(after) > len(reference_epochs) + 2:
        problems.append(f"epochs redone: {len(before)} before + {len(after)} after the kill, "
                        f"{len(reference_epochs)} uninterrupted")
    return problems


def write_budget(name):
    """``--write_points`` for command `name` (None: every write)."""
    budget = None
    for entry in FLAGS.write_points:
        key, _, value = entry.rpartition("=")
        if key in ("", name):
            budget = int(value) or None
    return budget


def choose_writes(targets, budget):
    """1-based write indices to kill inside: every kind's first write, then evenly spread."""
    if budget is None or budget >= len(targets):
        return list(range(1, len(targets) + 1))
    first = {}
    for i, target in enumerate(targets):
        first.setdefault(kind(target), i)
    chosen = set(first.values())
    rest = [i for i in range(len(targets)) if i not in chosen]
    extra = min(len(rest), max(0, budget - len(chosen)))
    if extra:
        step = len(rest) / extra
        chosen |= {rest[int(step * j + step / 2)] for j in range(extra)}
    return sorted(i + 1 for i in chosen)


def reference_run(name, folder, log):
    """The uninterrupted run, traced.

    Returns:
        (seconds to the end, to holding the lock, to the last write; the
        written targets in order; the CompletedProcess).
    """
    log.unlink(missing_ok=True)
    argv = command(name, folder)
    traced = [argv[0], str(REPO / "benchmarks" / "write_trace.py"), str(log), *argv[1:]]
    started, clock = time.time(), time.perf_counter()
    done, locked, _ = run_timed(traced, lock_file(name, folder))
    duration = time.perf_counter() - clock
    lines = [line.split(" ", 1) for line in log.read_text().splitlines()] if log.exists() else []
    targets = [str(pathlib.Path(path).relative_to(folder)) for _, path in lines]
    last_write = max([float(t) - started for t, _ in lines], default=duration)
    return (duration, locked, last_write), targets, done


def main(argv):
    del argv
    root = pathlib.Path(FLAGS.workdir or tempfile.mkdtemp(prefix="kill-harness-"))
    root.mkdir(parents=True, exist_ok=True)
    where = run([sys.executable, "-c", "import keras_sharpness; print(keras_sharpness.__file__)"])
    print(f"code under test: {where.stdout.strip()} (runs in {root})", flush=True)
    if not where.stdout.strip().startswith(str(REPO)):
        print(f"the commands would not import {REPO}'s keras_sharpness")
        return 1
    summary = []
    plot_reference = None
    for name in FLAGS.commands:
        ref_dir = root / f"{name}-reference"
        if name == "sharpness" and plot_reference is None:
            plot_reference = root / "plot-reference"
            shutil.rmtree(plot_reference, ignore_errors=True)
            run(command("plot", plot_reference))
        prepare(name, ref_dir, plot_reference)
        (duration, locked, last_write), targets, clean = reference_run(
            name, ref_dir, root / f"{name}.writes")
        if clean.returncode != 0 or locked is None:
            print(f"{name}: reference run failed: {clean.stderr[-500:]}")
            return 1
        if name == "plot":
            plot_reference = ref_dir
        reference = snapshot(ref_dir)
        reference_epochs = epochs_run(clean.stdout)
        writes = choose_writes(targets, write_budget(name))
        timed = max(FLAGS.timed, FLAGS.min_points - len(writes))
        window = last_write - locked
        print(f"{name}: reference {duration:.1f}s (lock held after {locked:.1f}s, last "
              f"write after {last_write:.1f}s), "
              f"{len(targets)} writes of {len(set(map(kind, targets)))} kinds; killing inside "
              f"{len(writes)} writes and at {timed} instants", flush=True)
        # Kill instants: evenly spaced in the work, from holding the lock to
        # the last write (after it only the exit is left).
        kills = [("write", n) for n in writes]
        kills += [("time", window * (i + 1) / (timed + 1)) for i in range(timed)]
        tally = collections.Counter()
        covered = collections.Counter()
        for how, at in kills:
            folder = root / f"{name}-{how}-{at:.1f}"
            prepare(name, folder, plot_reference)
            if how == "write":
                first = run(command(name, folder), {"KERAS_SHARPNESS_KILL_INSIDE_WRITE": str(at)})
                label = f"inside write {at}"
            else:
                first, held, ended = run_timed(command(name, folder), lock_file(name, folder),
                                               delay=at)
                if first.returncode == 0 and held is not None:
                    # This run was faster than the reference (the machine's load
                    # varies): try once more at the same fraction of its work.
                    at *= (ended - held) / (duration - locked)
                    prepare(name, folder, plot_reference)
                    first, _, _ = run_timed(command(name, folder), lock_file(name, folder),
                                            delay=at)
                label = f"{at:.2f}s after the lock"
            if first.returncode != -signal.SIGKILL:
                print(f"{name}: {label}: not killed (rc {first.returncode}), not counted",
                      flush=True)
                tally["missed"] += 1
                shutil.rmtree(folder, ignore_errors=True)
                continue
            tearing = torn(folder)
            if how == "write":
                planned = targets[at - 1]
                covered.update(kind(t) for t in tearing)
                label += f" ({', '.join(tearing) or 'nothing torn'}"
                label += ")" if tearing == [planned] else f"; planned {planned})"
            else:
                last = (first.stdout.strip().splitlines() or ["(no output)"])[-1][:60]
                label += f" (last output: {last!r}; torn: {', '.join(tearing) or 'none'})"
            rerun = run(command(name, folder))
            problems = check(folder, reference, reference_epochs, first.stdout, rerun)
            tally[how] += 1
            tally["failed"] += bool(problems)
            print(f"{name}: kill {label}: " + ("ok" if not problems else
                                                "FAIL " + "; ".join(problems)), flush=True)
            if not problems:
                shutil.rmtree(folder, ignore_errors=True)
        kinds = sorted(set(map(kind, targets)))
        summary.append((name, tally, len(targets), kinds, covered))

    print("\n| command | kill points | inside writes | timed | kinds of file torn | failed |")
    print("|---|---|---|---|---|---|")
    failures = 0
    for name, tally, total, kinds, covered in summary:
        failures += tally["failed"]
        print(f"| {name} | {tally['write'] + tally['time']} | {tally['write']} of {total} | "
              f"{tally['time']} | {sum(k in covered for k in kinds)} of {len(kinds)} | "
              f"{tally['failed']} |")
    print()
    for name, tally, total, kinds, covered in summary:
        print(f"{name}: torn " + ", ".join(f"{k} x{covered[k]}" for k in kinds)
              + "".join(f"; NOT torn: {k}" for k in kinds if not covered[k])
              + (f"; {tally['missed']} timed kill(s) came after the end" if tally["missed"]
                 else ""))
    print(f"\n{sum(t['write'] + t['time'] for _, t, *_ in summary)} kill points, "
          f"{failures} failed ({root})")
    return 1 if failures else 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
