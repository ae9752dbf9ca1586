"""Glue shared by the absl entry points: one-line errors, quiet logs."""

import os
import sys


def quiet_tensorflow():
    """Imports TensorFlow without its C++ start-up chatter on stderr.

    TensorFlow >= 2.18 prints oneDNN notices through absl's C++ logging at
    import, which `TF_CPP_MIN_LOG_LEVEL` no longer silences (and turning
    oneDNN off to hide them halves convolution speed on CPUs). So the import
    runs with file descriptor 2 pointed at a temporary file, which is replayed
    if the import fails. Entry points call this first, so that their only
    output on bad input is the one-line error.
    """
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


#: Environment variable: when set, a command parses and checks its flags and
#: exits 0 without doing anything (tests/test_documented_commands.py).
CHECK_FLAGS_ONLY = "KERAS_SHARPNESS_CHECK_FLAGS_ONLY"


def define_stop_rule_flags(flag_values=None):
    """The training length flags every training command shares (one definition).

    They set the fields of the same name of `keras_sharpness.config.TrainingSettings`.
    """
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_integer("epochs", 20, "Epochs of each run without --until_converged "
                         "(20, as released).", flag_values=fv)
    flags.DEFINE_bool("until_converged", False, "Train until f over the training set stops "
                      "improving (--patience, --min_delta, --relative_min_delta), at most "
                      "--max_epochs; the epoch with the lowest f is kept either way.",
                      flag_values=fv)
    flags.DEFINE_integer("patience", 10, "Epochs without improvement of f before stopping "
                         "(Adam's f is noisy from epoch to epoch at small batches).",
                         flag_values=fv)
    flags.DEFINE_float("min_delta", 1e-4, "Smallest decrease of the training-set f that "
                       "counts.", flag_values=fv)
    flags.DEFINE_float("relative_min_delta", 0.0, "Smallest decrease of f, relative to the "
                       "best f, that counts (the larger of the two applies).", flag_values=fv)
    flags.DEFINE_integer("max_epochs", 500, "Epoch cap with --until_converged.",
                         flag_values=fv)


def default_verbosity():
    """Keras progress bars on a terminal, one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


def quiet_library_logs():
    """Hides TFDS / TensorFlow Python log lines unless ``--verbosity`` asks.

    The commands print their own progress; library INFO/WARNING lines (TFDS
    looking for a data set, AutoGraph notices) would bury a one-line error.
    absl's own ``--verbosity`` (e.g. ``--verbosity=0`` for INFO) still shows
    them.
    """
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)


def check_finite_flags():
    """Every float flag must be a finite number (commands without a settings object).

    Commands that build settings (`keras_sharpness.config`) check every value
    there instead.

    Raises:
        UserError: naming the first flag set to inf or NaN.
    """
    import math

    from absl import flags

    from keras_sharpness.errors import UserError

    for name in flags.FLAGS:
        value = flags.FLAGS[name].value
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name} must be a finite number, got {value}")


def list_package_flags_in_help():
    """Makes ``--help`` list the flags the package defined for this command.

    absl's ``--help`` shows the key flags of the main module only; flags
    defined by package functions (`define_stop_rule_flags`, the commands of
    `keras_sharpness.commands`, the experiments' common flags) are made key
    flags of it.
    """
    from absl import flags

    fv = flags.FLAGS
    for module, defined in list(fv.flags_by_module_dict().items()):
        if module.split(".")[0] == "keras_sharpness":
            for flag in defined:
                fv.register_key_flag_for_module(sys.argv[0], flag)


def lost_worker(error):
    """Whether `error` is TensorFlow's way of saying a peer worker is gone
    (its collectives abort with ``UnavailableError`` or ``AbortedError``)."""
    return (type(error).__name__ in ("UnavailableError", "AbortedError")
            and type(error).__module__.startswith("tensorflow."))


def run(main, settings_from_flags=None, *, doc=None, tensorflow=True):
    """Run an absl `main`, turning known bad input into one line and exit 2.

    Flags are parsed (``--flagfile=FILE`` reads them from a file) and checked
    before TensorFlow is imported (`quiet_tensorflow` runs between checking
    and `main`), so ``--help`` and bad flags answer at once. With
    `settings_from_flags` (e.g. `keras_sharpness.config.PlotCommand.from_flags`)
    the command's settings object is built from the parsed flags, which checks
    every value, and `main` is called with it instead of the leftover
    arguments; without it, float flags are checked to be finite. Positional
    arguments are refused.

    `UserError` (unknown network, bad flag value, missing or corrupt file,
    unreachable data) prints ``error: <message>`` to stderr; so do absl flag
    errors, which absl already reports in one line. Anything else is a bug and
    keeps its traceback.

    Args:
        main: ``main(settings)`` with `settings_from_flags`, else ``main(argv)``.
        settings_from_flags: ``settings_from_flags(absl.flags.FLAGS)`` builds
            the command's settings or raises `UserError`.
        doc: the usage text ``--help`` prints (instead of the main module's
            docstring; a console script's main module has none).
        tensorflow: import TensorFlow (quietly) before `main`; False for a
            command that needs none (``ks-report`` reads JSON).
    """
    from absl import app

    from keras_sharpness.errors import UserError

    def guarded(argv):
        from absl import flags

        try:
            if len(argv) > 1:
                raise UserError(f"unexpected arguments: {' '.join(argv[1:])} (flags are "
                                f"written --name=value)")
            if settings_from_flags is None:
                check_finite_flags()
            else:
                settings = settings_from_flags(flags.FLAGS)
            if os.environ.get(CHECK_FLAGS_ONLY):
                return 0  # flags parsed and checked: the documentation test stops here
            quiet_library_logs()
            if tensorflow:
                quiet_tensorflow()
                if getattr(flags.FLAGS, "strategy", None) == "multiworker":
                    from keras_sharpness.training import make_strategy

                    make_strategy("multiworker")  # before TensorFlow runs anything
            return main(argv) if settings_from_flags is None else main(settings)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: finished work is saved; run the same command "
                  "again to resume", file=sys.stderr)
            sys.exit(130)
        except Exception as e:
            if not lost_worker(e):
                raise
            print(f"error: a worker of --strategy=multiworker stopped or cannot be reached "
                  f"({type(e).__name__}); finished work is saved: start the same command on "
                  f"every worker again to resume", file=sys.stderr)
            sys.exit(1)

    def parse_flags(argv):
        # absl's own parser prints two lines and exits 1; keep to one line, exit 2.
        from absl import flags

        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    if doc:
        sys.modules["__main__"].__doc__ = doc  # what absl's usage prints
    list_package_flags_in_help()
    app.run(guarded, flags_parser=parse_flags)
