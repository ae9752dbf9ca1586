"""Runs a command of this repo with a log of its file writes (for the kill harness).

    python benchmarks/write_trace.py LOG SCRIPT.py [ARGS...]
    python benchmarks/write_trace.py LOG -m MODULE [ARGS...]

Appends one line per `keras_sharpness.io.atomic_path` write to LOG,
``<unix time> <target path>``, at the instant where
``KERAS_SHARPNESS_KILL_INSIDE_WRITE=N`` would kill the N-th write (the body
has written the temporary file; it is not yet renamed). The N-th line of an
uninterrupted run's log is thus the file torn by a kill inside write N. The
command otherwise runs as it would on its own (``__main__``, same argv).
"""

import contextlib
import runpy
import sys
import time


def main():
    log_path, *command = sys.argv[1:]
    from keras_sharpness import io

    atomic_path = io.atomic_path
    log = open(log_path, "a", buffering=1)

    @contextlib.contextmanager
    def traced(path):
        with atomic_path(path) as tmp:
            yield tmp
            log.write(f"{time.time():.3f} {path}\n")

    io.atomic_path = traced
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command
        sys.path.insert(0, str(__import__("pathlib").Path(command[0]).resolve().parent))
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main()
