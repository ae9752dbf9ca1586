"""How the real data sets that RESULTS.md uses are made from the public ones.

* ``mnist-t10k-split.npz``: the official MNIST test set (10,000 images),
  split in file order into 8,000 training and 2,000 test images, with the
  keys of Keras' ``mnist.npz`` (``x_train, y_train, x_test, y_test``, uint8).
* ``cifar10-jpeg.tar.gz``: all of CIFAR-10 as JPEG files,
  ``train/<class>/<index>.jpg`` (50,000) and ``test/<class>/<index>.jpg``
  (10,000), class names as in CIFAR-10's ``batches.meta``.

`scripts/rebuild_shared_data.py` downloads the public sets through
`keras.datasets` and writes both files with these functions, then prints
their SHA-256 beside the ones of the copies RESULTS.md used (`REFERENCE_SHA256`).
"""

import io as _io
import pathlib
import tarfile

import numpy as np

from keras_sharpness import io

#: SHA-256 of the files in ../shared/data that RESULTS.md used.
REFERENCE_SHA256 = {
    "mnist-t10k-split.npz": "dec4f128eba980a5faa1b4af845d58d9ef09d96bb08c0bf10e7c37ba46c56b1c",
    "cifar10-jpeg.tar.gz": "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965",
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def write_mnist_split(path, x_test, y_test, train=8000):
    """The MNIST test set split in file order: the first `train` images train."""
    x_test, y_test = np.asarray(x_test, np.uint8), np.asarray(y_test, np.uint8)
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x_train=x_test[:train], y_train=y_test[:train],
                                x_test=x_test[train:], y_test=y_test[train:])
    return pathlib.Path(path)


def write_image_archive(path, splits, class_names=CIFAR10_CLASSES, quality=95):
    """A ``.tar.gz`` of ``<split>/<class>/<index>.jpg`` from uint8 image arrays.

    Args:
        path: the archive to write.
        splits: ``{"train": (x, y), "test": (x, y)}`` with x of shape
            (n, height, width, 3) uint8 and y integer labels.
        class_names: folder name of each label.
        quality: JPEG quality (PIL).
    """
    from PIL import Image

    with io.atomic_path(path) as tmp:
        with tarfile.open(tmp, "w:gz") as archive:
            for split, (x, y) in splits.items():
                for index, (image, label) in enumerate(zip(np.asarray(x, np.uint8),
                                                           np.asarray(y).reshape(-1))):
                    buffer = _io.BytesIO()
                    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
                    info = tarfile.TarInfo(f"{split}/{class_names[int(label)]}/{index:05d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(info, buffer)
    return pathlib.Path(path)
