"""Glue shared by the absl entry points: one-line errors, quiet logs."""

import os
import sys


def quiet_tensorflow():
    """Silence TensorFlow's C++ start-up chatter before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def run(main):
    """Run an absl `main`, turning known bad input into one line and exit 2.

    `UserError` (unknown network, bad flag value, missing or corrupt file,
    unreachable data) prints ``error: <message>`` to stderr; so do absl flag
    errors, which absl already reports in one line. Anything else is a bug and
    keeps its traceback.
    """
    from absl import app

    from keras_sharpness.errors import UserError

    def guarded(argv):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: finished work is saved; run the same command "
                  "again to resume", file=sys.stderr)
            sys.exit(130)

    app.run(guarded)
