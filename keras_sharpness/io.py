"""Files: atomic JSON, model checkpoints with one-line errors, provenance."""

import json
import os
import pathlib
import platform
import tempfile

from keras_sharpness.errors import CheckpointError


def write_json(path, data):
    """Writes `data` as JSON to `path` atomically (never a half-written file)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_jsonable)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path):
    """Reads JSON from `path`; `CheckpointError` if missing or corrupt."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
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
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def load_model(path):
    """Loads a `.keras` model (uncompiled); `CheckpointError` if missing or corrupt."""
    import keras

    import keras_sharpness.layers  # noqa: F401  (registers the BatchNorm layer)

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix != ".keras":
        raise CheckpointError(f"checkpoint {path} is not a .keras file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # zip, h5, config errors all mean "unusable file"
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({message[:200]})") from None


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
