"""Two plot_parametric_plot.py on one --workdir at once: one refused, the other as a solo run.

The run-directory twin of tests/test_runs.py's compute_sharpness test, too
slow for the suite (three TensorFlow processes that train, ~40 CPU-seconds):
the first run is stopped as soon as it holds the lock of the work directory,
a second run on the same directory must exit 2 at once with one line naming
the first's pid, then the first must finish with the weights of x0, SB and LB
bitwise equal, and every JSON equal (timings, versions and paths left out),
to a solo run's in another directory (`tests/concurrent_commands.py`).

    python benchmarks/concurrent_runs.py

Prints what it checked and the time taken; exits 1 if a check failed.
"""

import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import concurrent_commands as concurrent  # noqa: E402

TINY_PLOT = ["-n", "F1", "--dataset=digits", "--train_size=200", "--test_size=50",
             "--sb_batch_size=32", "--lb_batch_size=100", "--epochs=1", "--num_points=3",
             "--verbose=0"]


def two_plot_runs(root):
    """The check; raises AssertionError naming what differs."""
    shared, solo = root / "shared", root / "solo"
    command = [concurrent.REPO / "plot_parametric_plot.py", *TINY_PLOT]
    started = []
    try:
        first = concurrent.start(*command, f"--workdir={shared}")
        alone = concurrent.start(*command, f"--workdir={solo}")  # meanwhile, elsewhere
        started += [first, alone]
        with concurrent.stopped_while_holding(first, shared / ".lock"):
            second = concurrent.start(*command, f"--workdir={shared}")
            started.append(second)
            concurrent.assert_refused(second, f"--workdir {shared}", first)
        print(f"second run refused while the first (pid {first.pid}) held {shared}")
        concurrent.assert_finished(first)
        concurrent.assert_finished(alone)
    finally:
        concurrent.stop(started)
    for name in ("x0.keras", "sb.keras", "lb.keras"):
        assert concurrent.weights(shared / name) == concurrent.weights(solo / name), name
    for name in ("run.json", "sb_history.json", "lb_history.json", "parametric.json"):
        assert concurrent.records(shared / name) == concurrent.records(solo / name), name
    assert not list(shared.glob(".tmp-*")), "temporary files left"
    print("the first run's weights (x0, SB, LB) and JSON equal a solo run's")


def main():
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="concurrent-runs-") as root:
        try:
            two_plot_runs(pathlib.Path(root))
        except AssertionError as e:
            print(f"FAIL: {e}")
            return 1
    print(f"ok ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
