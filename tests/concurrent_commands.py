"""Two real commands on one directory, made concurrent for certain.

Started side by side, the second command could reach the lock after the
first has finished (it would then reuse the results and succeed). So the
first is stopped (SIGSTOP) as soon as it holds its lock, the second is
started and must be refused, then the first is let go and must finish
exactly as a solo run does. Used by tests/test_runs.py and
benchmarks/concurrent_runs.py.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
#: JSON keys that differ between two equal runs (timings, versions, paths).
VOLATILE = ("seconds", "versions", "workdir", "figures_dir", "checkpoint")
#: TensorFlow's C++ start-up lines, which TF_CPP_MIN_LOG_LEVEL does not silence.
TF_CHATTER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} )")


def start(*argv):
    """Starts ``python ARGV...`` in the repository, output captured."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def stop(processes):
    """Kills those of `processes` still running (a failed check leaves no orphan)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.communicate()


@contextlib.contextmanager
def stopped_while_holding(process, lock, timeout=300):
    """Waits until `process` holds `lock` (its pid is written there), then keeps
    it stopped for the ``with`` block: it holds the lock and cannot finish."""
    deadline = time.monotonic() + timeout
    while not (lock.is_file() and lock.read_text().strip() == str(process.pid)):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{process.args} never took {lock}"
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


def assert_refused(process, what, holder):
    """`process` exits 2 with one line naming `what` and `holder`'s pid, no traceback."""
    _, err = process.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip() and not TF_CHATTER.match(line)]
    assert process.returncode == 2, err[-2000:]
    assert lines == [f"error: {what} is in use by process {holder.pid}; wait for it to "
                     f"finish or stop it"], lines


def assert_finished(process):
    """`process` exits 0 without a traceback."""
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0 and "Traceback" not in err, err[-2000:]


def records(path):
    """A JSON file without its volatile keys."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if not any(word in k for word in VOLATILE)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(pathlib.Path(path).read_text()))


def weights(path):
    """Every array of a ``.keras`` file's weights, as bytes (the archive's
    metadata, e.g. its save date, left out)."""
    import h5py

    arrays = {}
    with zipfile.ZipFile(path) as archive, h5py.File(
            io.BytesIO(archive.read("model.weights.h5")), "r") as stored:
        stored.visititems(lambda name, item: arrays.__setitem__(name, item[()].tobytes())
                          if isinstance(item, h5py.Dataset) else None)
    assert arrays, path
    return arrays
