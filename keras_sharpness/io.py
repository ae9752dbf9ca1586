"""Files: atomic writes, model checkpoints with one-line errors, provenance."""

import contextlib
import json
import os
import pathlib
import platform
import re
import tempfile

from keras_sharpness.errors import CheckpointError

#: Fault injection for the crash tests: with this environment variable set to
#: N, the process kills itself (SIGKILL) inside its N-th `atomic_path` write,
#: after tearing the temporary file to half its length.
KILL_INSIDE_WRITE = "KERAS_SHARPNESS_KILL_INSIDE_WRITE"
_writes = 0

#: Temporary files of `atomic_path` start with this (and end in ``.tmp`` plus
#: the target's suffixes), so leftovers of a killed process can be found.
TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path):
    """Yields a unique temporary path beside `path`; renames it to `path` on success.

    The writer writes the whole file to the temporary path; on leaving the
    block it is flushed to disk (fsync) and moved over `path` with
    `os.replace`, so a kill at any instant leaves either the old file or the
    new one, never a torn one. The temporary file keeps the target's
    suffixes (Keras insists on ``.keras`` / ``.weights.h5``). On an error it
    is removed and the old file is untouched. Torn temporaries of the same
    target, left by a killed writer, are removed first (one writer per
    target: run directories and record files are locked, `keras_sharpness.runs`).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(path.parent, path.name)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.",
                               suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        _maybe_die_inside_write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _maybe_die_inside_write(tmp):
    global _writes
    target = os.environ.get(KILL_INSIDE_WRITE)
    if not target:
        return
    _writes += 1
    if _writes == int(target):
        import signal

        with open(tmp, "r+b") as f:
            f.truncate(os.path.getsize(tmp) // 2)
        os.kill(os.getpid(), signal.SIGKILL)


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process umask, read once (reading it means setting it briefly).
_UMASK = _read_umask()


def remove_temporary_files(folder, target=None):
    """Deletes leftovers of `atomic_path` (a killed writer's) in `folder`.

    With `target` (a file name) only that file's leftovers go, so that an
    owner of some files of a shared folder leaves the others' alone.
    """
    folder = pathlib.Path(folder)
    if folder.is_dir():
        for leftover in folder.glob(f"{TEMP_PREFIX}{target + '.' if target else ''}*"):
            leftover.unlink(missing_ok=True)


#: ``.tmp-<target>.<8 random characters of mkstemp>.tmp<suffixes>``.
_TEMPORARY = re.compile(rf"^{re.escape(TEMP_PREFIX)}(?P<target>.+)\.[a-z0-9_]{{8}}\.tmp")


def temporary_target(name):
    """The file name an `atomic_path` temporary called `name` stands for (None if
    `name` is not one)."""
    match = _TEMPORARY.match(name)
    return match["target"] if match else None


def ensure_writable_dir(path, what="output directory"):
    """Creates `path` if needed and proves it writable, before any work starts.

    Raises:
        UserError: one line naming the directory and why it cannot be used.
    """
    from keras_sharpness.errors import UserError

    path = pathlib.Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a directory")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=TEMP_PREFIX):
            pass
    except OSError as e:
        raise UserError(f"{what} {path} cannot be written ({e.strerror or e})") from None
    return path


def write_text(path, text):
    """Writes `text` to `path` atomically (never a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data):
    """Writes `data` as JSON to `path` atomically (never a half-written file)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_arrays(path, arrays, **scalars):
    """Saves a list of arrays (and scalar fields) to an ``.npz`` atomically.

    `read_arrays` gives them back in order.
    """
    import numpy as np

    fields = {f"a{i:04d}": np.asarray(a) for i, a in enumerate(arrays)}
    fields.update({k: np.asarray(v) for k, v in scalars.items()})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **fields)


def read_arrays(path):
    """``(arrays, scalars)`` from a `write_arrays` file; `CheckpointError` if unusable."""
    import numpy as np

    path = pathlib.Path(path)
    try:
        with np.load(path) as stored:
            arrays = [stored[k] for k in sorted(stored.files) if k.startswith("a")
                      and k[1:].isdigit()]
            scalars = {k: stored[k].item() for k in stored.files
                       if not (k.startswith("a") and k[1:].isdigit())}
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path} is corrupt or unreadable ({e})") from None
    return arrays, scalars


def read_json(path):
    """Reads JSON from `path`, legacy keys upgraded (`keras_sharpness.migrate`).

    Raises:
        CheckpointError: the file is missing or corrupt.
    """
    from keras_sharpness.migrate import upgrade

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return upgrade(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def save_model(model, path):
    """Saves `model` to a `.keras` file atomically (a kill leaves the old one)."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def load_model(path):
    """Loads a `.keras` model (uncompiled); `CheckpointError` if missing or corrupt."""
    import keras

    import keras_sharpness.layers  # noqa: F401  (registers the BatchNorm layer)
    from keras_sharpness import sam, schedules

    # Registers the classes a checkpoint of a remedy run may name: the
    # learning-rate schedule and LARS (an optimizer saved with the model) and
    # SAMModel (a model saved during SAM training).
    schedules.keras_objects()
    sam.sam_model_class()

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix != ".keras":
        raise CheckpointError(f"checkpoint {path} is not a .keras file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # zip, h5, config errors all mean "unusable file"
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "locate class" in message or "custom" in message.lower():
            raise CheckpointError(
                f"checkpoint {path} holds a custom class Keras cannot rebuild here "
                f"({message[:120]}); register it with keras.saving."
                f"register_keras_serializable, or measure the model from Python "
                f"(docs/own_model.md)") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({message[:200]})") from None


def sha256(path):
    """The SHA-256 of a file's bytes, as hex."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions():
    """Library versions for provenance records in every output file."""
    import keras
    import numpy
    import scipy
    import tensorflow as tf

    import keras_sharpness

    return {
        "keras_sharpness": keras_sharpness.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
