"""The rebuild of RESULTS.md's data sets, on small arrays (no download)."""

import numpy as np

from keras_sharpness import io, shared_data
from keras_sharpness.data import load_arrays


def test_mnist_split_is_in_file_order_with_keras_keys(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 50).astype(np.uint8)
    path = shared_data.write_mnist_split(tmp_path / "split.npz", x, y, train=40)
    data = load_arrays(f"npz:{path}")
    np.testing.assert_array_equal(data.y_train, y[:40])
    np.testing.assert_array_equal(data.y_test, y[40:])
    np.testing.assert_allclose(data.x_train.reshape(40, 28, 28), x[:40] / 255.0, atol=1e-6)


def test_image_archive_round_trips_through_the_folder_loader(tmp_path):
    rng = np.random.default_rng(1)
    # Flat colours survive JPEG almost exactly; labels must survive exactly.
    colours = rng.integers(0, 256, (10, 3))
    labels = {"train": np.arange(20) % 10, "test": np.arange(6) % 10}
    splits = {s: (np.broadcast_to(colours[y][:, None, None, :], (len(y), 8, 8, 3))
                  .astype(np.uint8), y) for s, y in labels.items()}
    path = shared_data.write_image_archive(tmp_path / "images.tar.gz", splits)
    data = load_arrays(f"folder:{path}")
    assert data.info.num_classes == 10 and data.x_train.shape == (20, 8, 8, 3)
    names = sorted(shared_data.CIFAR10_CLASSES)  # the loader numbers classes by name
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        expected = colours[[shared_data.CIFAR10_CLASSES.index(names[k]) for k in y]] / 255.0
        np.testing.assert_allclose(x.mean(axis=(1, 2)), expected, atol=3 / 255)


def test_reference_checksums_match_the_shared_copies(shared_data_dir):
    for name, digest in shared_data.REFERENCE_SHA256.items():
        assert io.sha256(shared_data_dir / name) == digest
