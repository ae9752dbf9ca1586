"""Data sets as arrays, scaled to [0, 1], integer labels.

One call, `load_arrays(source)`,
covers every source the experiments use:

========================  ==================================================
source                    what it is
========================  ==================================================
``mnist``, ``cifar10``,   TensorFlow Datasets names, read from ``data_dir``
``cifar100``              (tfds' default ``~/tensorflow_datasets`` if None);
                          downloaded only when the download host is reachable.
``npz:PATH``              a NumPy ``.npz`` with keras ``mnist.npz`` keys
                          ``x_train, y_train, x_test, y_test``. Integer
                          images are divided by 255; float arrays (e.g. F2's
                          TIMIT features, 360-dim, 1973 classes) are kept as
                          they are.
``folder:PATH``           images in ``PATH/train/<class>/*`` and
                          ``PATH/test/<class>/*``; PATH may also be a
                          ``.tar``/``.tar.gz`` archive of such a folder (read
                          without extracting). Classes are numbered in name
                          order; examples come in a fixed random order, not
                          grouped by class (see `ArrayData.shuffled`).
``digits``                scikit-learn's 8x8 handwritten digits (1797 images,
                          10 classes), shipped inside scikit-learn: the
                          offline demo set. Seeded 80/20 train/test split.
========================  ==================================================

Images have shape ``(height, width, channels)`` (channels-last); flat feature
vectors keep shape ``(features,)``. The data are never silently replaced by
another source: anything unusable raises `DataError` with one line that says
what to do.
"""

import dataclasses
import io
import pathlib
import tarfile
import threading

import numpy as np

from keras_sharpness.errors import DataError

TFDS_SOURCES = ("mnist", "cifar10", "cifar100")
SOURCES_HELP = ("mnist, cifar10, cifar100 (TensorFlow Datasets), npz:PATH, "
                "folder:PATH, digits (offline, ships with scikit-learn)")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

#: Where tfds fetches prepared data from; probed before any download.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a data set is: its name, example shape, classes and sizes."""

    name: str
    input_shape: tuple
    num_classes: int
    train_size: int
    test_size: int

    def to_dict(self):
        return {**dataclasses.asdict(self), "input_shape": list(self.input_shape)}


@dataclasses.dataclass
class ArrayData:
    """Train and test splits as NumPy arrays (float32 inputs, int64 labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: DataInfo

    @classmethod
    def from_arrays(cls, x_train, y_train, x_test, y_test, *, name="arrays",
                    num_classes=None):
        """Validates raw arrays and wraps them (integer inputs are divided by 255).

        Raises:
            DataError: mismatched lengths or shapes, non-integer or
                out-of-range labels.
        """
        x_train, x_test = _scale(x_train, name, "x_train"), _scale(x_test, name, "x_test")
        y_train = labels_as_indices(y_train, name, "y_train")
        y_test = labels_as_indices(y_test, name, "y_test")
        for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
            if len(x) != len(y):
                raise DataError(f"{name}: x_{split} has {len(x)} examples but "
                                f"y_{split} has {len(y)} labels")
            if len(x) == 0:
                raise DataError(f"{name}: the {split} split is empty")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(f"{name}: train examples have shape {x_train.shape[1:]} "
                            f"but test examples {x_test.shape[1:]}")
        if x_train.ndim == 3:  # (n, height, width) grey images: add the channel
            x_train, x_test = x_train[..., None], x_test[..., None]
        largest = int(max(y_train.max(), y_test.max()))
        if num_classes is None:
            num_classes = largest + 1
            present = len(np.union1d(np.unique(y_train), np.unique(y_test)))
            if num_classes > 2 * present:
                raise DataError(f"{name}: labels reach {largest} but only {present} distinct "
                                f"classes occur, so {num_classes} classes would be inferred; "
                                f"labels must be 0..C-1")
        elif largest >= num_classes:
            raise DataError(f"{name}: label {largest} is out of range for "
                            f"{num_classes} classes (labels must be 0..{num_classes - 1})")
        if num_classes < 2:
            raise DataError(f"{name}: needs at least 2 classes, the labels have {num_classes}")
        info = DataInfo(name=name, input_shape=tuple(x_train.shape[1:]),
                        num_classes=int(num_classes), train_size=len(x_train),
                        test_size=len(x_test))
        return cls(x_train, y_train, x_test, y_test, info)

    def shuffled(self, seed=0):
        """Both splits in a seeded random order (the same examples).

        Order matters wherever batches are fixed: with BatchNorm batch
        statistics at evaluation (Keras 1 ``mode=2``) a batch of one class
        normalizes the class away. Folder listings come sorted by class, so
        `load_arrays` returns them shuffled.
        """
        parts = []
        for index, (x, y) in enumerate(((self.x_train, self.y_train), (self.x_test, self.y_test))):
            order = np.random.default_rng([seed, index]).permutation(len(x))
            parts += [x[order], y[order]]
        shuffled = ArrayData.from_arrays(*parts, name=self.info.name,
                                         num_classes=self.info.num_classes)
        if hasattr(self, "class_names"):
            shuffled.class_names = self.class_names
        return shuffled

    def subset(self, train_size=None, test_size=None, seed=0):
        """A seeded random subset of each split (None keeps a split whole)."""
        rng = np.random.default_rng(seed)
        parts = []
        for x, y, size, split in ((self.x_train, self.y_train, train_size, "train"),
                                  (self.x_test, self.y_test, test_size, "test")):
            if size is None or size == len(x):
                parts += [x, y]
                continue
            if not 0 < size <= len(x):
                raise DataError(f"{self.info.name}: asked for {size} {split} examples, "
                                f"the {split} split has {len(x)}")
            keep = np.sort(rng.permutation(len(x))[:size])
            parts += [x[keep], y[keep]]
        return ArrayData.from_arrays(*parts, name=self.info.name,
                                     num_classes=self.info.num_classes)


#: Float inputs beyond this magnitude are refused as a units or file error.
MAX_ABS_FLOAT_INPUT = 1e6


def _first_bad(mask):
    """Index (example number) of the first True entry of `mask`."""
    return int(np.argwhere(mask)[0][0])


def _scale(x, name, key):
    """Inputs as float32: integer pixels 0..255 divided by 255, floats kept.

    Raises:
        DataError: naming the example of the first non-finite value or pixel
            out of range.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise DataError(f"{name}: {key} must hold one example per row, got shape {x.shape}")
    if x.dtype == bool:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        bad = (x < 0) | (x > 255)
        if bad.any():
            i = _first_bad(bad)
            raise DataError(f"{name}: {key}[{i}] has pixel values outside 0..255 "
                            f"({int(x[i].min())}..{int(x[i].max())}); integer inputs are "
                            f"8-bit pixels")
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name}: {key} has non-numeric dtype {x.dtype}")
    finite = np.isfinite(x)
    if not finite.all():
        i = _first_bad(~finite)
        raise DataError(f"{name}: {key}[{i}] holds NaN or infinite values")
    large = np.abs(x) > MAX_ABS_FLOAT_INPUT
    if large.any():
        i = _first_bad(large)
        raise DataError(f"{name}: {key}[{i}] holds values of magnitude "
                        f"{float(np.abs(x[i]).max()):.3g} (above {MAX_ABS_FLOAT_INPUT:g}); scale "
                        f"the inputs")
    return x.astype(np.float32)


def labels_as_indices(y, name="labels", key="y"):
    """Integer class labels from integer, integral-float or one-hot labels.

    Raises:
        DataError: labels that are none of these, or negative.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and y.shape[1] > 1:
        if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
            raise DataError(f"{name}: 2-D {key} must be one-hot rows (one 1 per row, zeros "
                            f"elsewhere)")
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1:
        raise DataError(f"{name}: {key} must be integer class labels of shape (n,) or "
                        f"one-hot rows, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{name}: {key} must hold integer class labels, got {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{name}: {key} has negative label {int(y.min())}; labels must be 0..C-1")
    return y.astype(np.int64)


def load_arrays(source, *, data_dir=None, train_size=None, test_size=None, seed=0):
    """Loads a data set as NumPy arrays.

    Args:
        source: see the module docstring (``mnist``, ``npz:PATH``, ...).
        data_dir: TensorFlow Datasets directory for tfds sources.
        train_size, test_size: keep a seeded random subset of that many
            examples (None: the whole split).
        seed: seed of the subset.

    Returns:
        `ArrayData`.

    Raises:
        DataError: unknown or malformed source, or data that cannot be had
            offline (one line that says what to do).
    """
    source = str(source)
    kind, _, path = source.partition(":")
    if source in TFDS_SOURCES:
        data = _load_tfds(source, data_dir)
    elif kind == "npz" and path:
        data = _load_npz(path)
    elif kind == "folder" and path:
        data = _load_folder(path)
    elif source == "digits":
        data = _load_digits()
    else:
        raise DataError(f"unknown data source {source!r}; use one of {SOURCES_HELP}")
    if train_size is not None or test_size is not None:
        data = data.subset(train_size, test_size, seed=seed)
    if kind == "folder":
        data = data.shuffled(seed=0)  # listings are sorted by class
    return data


# --- TensorFlow Datasets ---------------------------------------------------

def _reachable(host_port, timeout=3.0):
    """Whether a TCP connection to `host_port` opens within `timeout` seconds.

    DNS lookups cannot be given a timeout, so the probe runs in a thread.
    """
    import socket

    result = []

    def probe():
        try:
            with socket.create_connection(host_port, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _offline_message(name, data_dir):
    where = data_dir or "~/tensorflow_datasets"
    return (f"{name} is not prepared in {where} and its download host cannot be "
            f"reached; prepare it where there is network (tfds build {name}) and "
            f"pass data_dir, or use npz:PATH, folder:PATH or the offline set digits")


def _load_tfds(name, data_dir):
    import tensorflow_datasets as tfds

    try:
        splits, info = tfds.load(name, split=["train", "test"], data_dir=data_dir,
                                 as_supervised=True, with_info=True, download=False)
    except (AssertionError, FileNotFoundError) as missing:
        if not _reachable(_DOWNLOAD_HOST):
            raise DataError(_offline_message(name, data_dir)) from None
        try:
            splits, info = tfds.load(name, split=["train", "test"], data_dir=data_dir,
                                     as_supervised=True, with_info=True, download=True)
        except Exception as e:  # network dropped mid-way, disk full, ...
            raise DataError(f"could not download {name} into "
                            f"{data_dir or '~/tensorflow_datasets'}: {str(e)[:200]}") from missing
    arrays = []
    for split in splits:
        xs, ys = [], []
        # Batched iteration: `batch_size=-1` aborts under tfds.testing.mock_data.
        for x, y in tfds.as_numpy(split.batch(4096)):
            xs.append(x)
            ys.append(y)
        arrays += [np.concatenate(xs), np.concatenate(ys)]
    return ArrayData.from_arrays(*arrays, name=name,
                                 num_classes=info.features["label"].num_classes)


# --- npz ---------------------------------------------------------------------

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(path):
    path = pathlib.Path(path).expanduser()
    name = f"npz:{path}"
    if not path.is_file():
        raise DataError(f"{name}: file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{name}: missing keys {', '.join(missing)} "
                                f"(needs {', '.join(NPZ_KEYS)}; has {', '.join(f.files) or 'none'})")
            arrays = [f[k] for k in NPZ_KEYS]
    except DataError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects
        raise DataError(f"{name}: not a readable .npz file ({str(e)[:120]})") from None
    return ArrayData.from_arrays(*arrays, name=name)


# --- image folders -----------------------------------------------------------

def _decode_image(fileobj, label):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fileobj) as image:
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot decode image {label} ({e})") from None


def _folder_entries(root):
    """Yields (split, class, label-for-errors, opener) for a directory tree."""
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    yield split, class_dir.name, str(file), lambda file=file: open(file, "rb")


def _archive_entries(archive):
    """Yields (split, class, label-for-errors, opener) for a tar archive."""
    for member in archive:
        if not member.isfile():
            continue
        parts = pathlib.PurePosixPath(member.name).parts
        parts = [p for p in parts if p not in (".", "")]
        # Accept `train/<class>/<file>` and `<top>/train/<class>/<file>`.
        for offset in (0, 1):
            rest = parts[offset:]
            if len(rest) == 3 and rest[0] in ("train", "test"):
                if pathlib.PurePosixPath(rest[2]).suffix.lower() in IMAGE_SUFFIXES:
                    yield rest[0], rest[1], member.name, lambda m=member: archive.extractfile(m)
                break


def _load_folder(path):
    path = pathlib.Path(path).expanduser()
    name = f"folder:{path}"
    if not path.exists():
        raise DataError(f"{name}: not found")
    if path.is_dir():
        entries, archive = _folder_entries(path), None
    else:
        try:
            archive = tarfile.open(path)
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{name}: neither a folder nor a readable tar archive ({e})") from None
        entries = _archive_entries(archive)
    images = {"train": [], "test": []}
    classes = {"train": [], "test": []}
    try:
        for split, class_name, label, opener in entries:
            with opener() as f:
                data = io.BytesIO(f.read())
            images[split].append(_decode_image(data, label))
            classes[split].append(class_name)
    finally:
        if archive is not None:
            archive.close()
    for split in ("train", "test"):
        if not images[split]:
            raise DataError(f"{name}: no images in {split}/<class>/ (expects "
                            f"train/<class>/*.jpg and test/<class>/*.jpg)")
    class_names = sorted(set(classes["train"]))
    unknown = sorted(set(classes["test"]) - set(class_names))
    if unknown:
        raise DataError(f"{name}: test classes {unknown} do not appear in train/")
    if len(class_names) < 2:
        raise DataError(f"{name}: needs at least 2 classes, found {class_names}")
    index = {c: i for i, c in enumerate(class_names)}
    arrays = []
    for split in ("train", "test"):
        shapes = {im.shape for im in images[split]}
        if len(shapes) > 1:
            raise DataError(f"{name}: images of different sizes in {split}/ "
                            f"({sorted(shapes)[:3]}...); resize them to one size first")
        arrays += [np.stack(images[split]), np.array([index[c] for c in classes[split]])]
    data = ArrayData.from_arrays(*arrays, name=name, num_classes=len(class_names))
    data.class_names = class_names
    return data


# --- the offline demo set ----------------------------------------------------

DIGITS_TEST_FRACTION = 0.2


def _load_digits():
    """scikit-learn's 8x8 digits (pixel values 0-16, scaled by 1/16)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    n_test = int(round(DIGITS_TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    return ArrayData.from_arrays(x[train], y[train], x[test], y[test], name="digits",
                                 num_classes=10)
