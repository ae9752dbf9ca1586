"""Rebuilds the two real data sets of RESULTS.md from the public MNIST and CIFAR-10.

    python scripts/rebuild_shared_data.py --out=data

Needs the network once (`keras.datasets` downloads the public sets). Writes
``<out>/mnist-t10k-split.npz`` and ``<out>/cifar10-jpeg.tar.gz`` and prints
each file's SHA-256 beside that of the copy RESULTS.md used. The MNIST split
is made in file order (first 8,000 train); the JPEG encoder settings of the
archive RESULTS.md used are not known, so its rebuild holds the same images
and labels but may differ byte for byte. See keras_sharpness/shared_data.py.
"""

import pathlib
import sys

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

flags.DEFINE_string("out", "data", "Output directory.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras

    from keras_sharpness import io, shared_data
    from keras_sharpness.errors import UserError

    out = io.ensure_writable_dir(FLAGS.out, "--out")
    try:
        (_, _), (x_test, y_test) = keras.datasets.mnist.load_data()
        cifar_train, cifar_test = keras.datasets.cifar10.load_data()
    except Exception as e:  # noqa: BLE001 (no network, blocked host, ...)
        raise UserError(f"cannot download MNIST / CIFAR-10 through keras.datasets "
                        f"({str(e).splitlines()[0][:120]}); run this where the network is "
                        f"reachable") from None
    written = [
        shared_data.write_mnist_split(out / "mnist-t10k-split.npz", x_test, y_test),
        shared_data.write_image_archive(out / "cifar10-jpeg.tar.gz",
                                        {"train": cifar_train, "test": cifar_test}),
    ]
    for path in written:
        digest = io.sha256(path)
        reference = shared_data.REFERENCE_SHA256[path.name]
        print(f"{path}  sha256 {digest}  "
              + ("(same as RESULTS.md's copy)" if digest == reference
                 else f"(RESULTS.md's copy: {reference})"))


if __name__ == "__main__":
    cli.run(main)
