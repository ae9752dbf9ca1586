"""Every data source end to end on tiny files, and one-line errors."""

import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from keras_sharpness import data as data_lib
from keras_sharpness.data import ArrayData, load_arrays
from keras_sharpness.errors import DataError


def write_npz(path, n_train=12, n_test=5, classes=3, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 6, 6), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, 6, 6), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path, arrays


def write_folder(root, classes=("cat", "dog"), per_class=3, size=(5, 4)):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_npz_round_trip(tmp_path):
    path, raw = write_npz(tmp_path / "d.npz")
    data = load_arrays(f"npz:{path}")
    assert data.info.input_shape == (6, 6, 1)
    assert data.info.num_classes == 3
    assert (data.info.train_size, data.info.test_size) == (12, 5)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_allclose(data.x_train[..., 0], raw["x_train"] / 255.0, rtol=1e-6)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


def test_npz_float_features_are_kept(tmp_path):
    # F2's TIMIT features: float vectors, not images; no rescaling.
    feats = np.random.default_rng(2).normal(size=(10, 360)).astype(np.float32)
    path, _ = write_npz(tmp_path / "timit.npz", x_train=feats, x_test=feats[:4],
                        y_train=np.arange(10), y_test=np.arange(4))
    data = load_arrays(f"npz:{path}")
    assert data.info.input_shape == (360,)
    np.testing.assert_array_equal(data.x_train, feats)


def test_folder_and_tar_archive(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=6)
    data = load_arrays(f"folder:{root}")
    assert data.info.input_shape == (5, 4, 3)
    assert data.info.num_classes == 2 and data.class_names == ["cat", "dog"]
    assert (data.info.train_size, data.info.test_size) == (12, 12)
    assert sorted(np.bincount(data.y_train)) == [6, 6]
    # Not grouped by class: fixed batches must not hold a single class.
    assert not (np.all(np.diff(data.y_train) >= 0) and np.all(np.diff(data.y_test) >= 0))
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "train", arcname="train")
        tar.add(root / "test", arcname="test")
    packed = load_arrays(f"folder:{archive}")
    np.testing.assert_array_equal(packed.x_train, data.x_train)
    np.testing.assert_array_equal(packed.y_test, data.y_test)


def test_digits_ships_offline():
    data = load_arrays("digits")
    assert data.info.input_shape == (8, 8, 1)
    assert data.info.num_classes == 10
    assert data.info.train_size + data.info.test_size == 1797
    assert data.x_train.max() == 1.0 and data.x_train.min() == 0.0
    again = load_arrays("digits")
    np.testing.assert_array_equal(again.y_test, data.y_test)


@pytest.mark.parametrize("name, shape, classes", [
    ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)])
def test_tfds_sources_with_mock_data(name, shape, classes, tmp_path):
    with tfds.testing.mock_data(num_examples=7):
        data = load_arrays(name, data_dir=str(tmp_path))
    info = data.info
    assert info.input_shape == shape and info.num_classes == classes
    assert data.x_train.shape == (7, *shape) and data.x_train.dtype.name == "float32"
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    assert data.y_train.dtype.kind == "i" and info.train_size == 7 and info.test_size == 7


def test_subset_is_seeded(tmp_path):
    data = load_arrays("digits", train_size=100, test_size=50, seed=3)
    assert (data.info.train_size, data.info.test_size) == (100, 50)
    again = load_arrays("digits", train_size=100, test_size=50, seed=3)
    np.testing.assert_array_equal(data.x_train, again.x_train)


def one_line_error(match, call):
    with pytest.raises(DataError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_unknown_source():
    one_line_error("unknown data source", lambda: load_arrays("imagenet"))


def test_npz_missing_keys(tmp_path):
    path, _ = write_npz(tmp_path / "d.npz", y_test=None)
    one_line_error("missing keys y_test", lambda: load_arrays(f"npz:{path}"))


def test_npz_mismatched_lengths(tmp_path):
    path, _ = write_npz(tmp_path / "d.npz", y_train=np.zeros(11, int))
    one_line_error("12 examples but y_train has 11", lambda: load_arrays(f"npz:{path}"))


def test_npz_corrupt_and_missing(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    one_line_error("not a readable", lambda: load_arrays(f"npz:{tmp_path / 'bad.npz'}"))
    one_line_error("not found", lambda: load_arrays(f"npz:{tmp_path / 'none.npz'}"))


def test_labels_out_of_range():
    x = np.zeros((4, 3), np.float32)
    one_line_error("out of range", lambda: ArrayData.from_arrays(
        x, np.array([0, 1, 2, 5]), x, np.array([0, 1, 0, 1]), num_classes=3))
    one_line_error("negative label", lambda: ArrayData.from_arrays(
        x, np.array([0, -1, 2, 1]), x, np.array([0, 1, 0, 1])))


def test_empty_folder(tmp_path):
    (tmp_path / "train").mkdir()
    one_line_error("no images in train", lambda: load_arrays(f"folder:{tmp_path}"))


def test_offline_tfds_fails_fast_with_advice(tmp_path, monkeypatch):
    # A closed local port stands in for the unreachable download host.
    monkeypatch.setattr(data_lib, "_DOWNLOAD_HOST", ("127.0.0.1", 9))
    one_line_error("cannot be reached.*digits",
                   lambda: load_arrays("cifar10", data_dir=str(tmp_path)))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(x_train=np.where(np.arange(40)[:, None, None] == 7, np.nan,
                                         d["x_train"].astype(np.float32))),
     r"x_train\[7\] holds NaN"),
    (lambda d: d.update(x_test=np.full((10, 4, 4), 1e36, np.float32)), r"x_test\[0\] .*magnitude"),
    (lambda d: d.update(x_train=d["x_train"].astype(np.int32) + 300), r"x_train\[0\] .*0\.\.255"),
    (lambda d: d.update(y_train=np.where(np.arange(40) == 3, 4000, d["y_train"])),
     "labels reach 4000 but only 4 distinct classes occur"),
    (lambda d: d.update(y_test=np.full((10, 3), 0.5)), "one-hot"),
])
def test_bad_values_are_refused_at_load_naming_the_example(tmp_path, change, message):
    from keras_sharpness.data import load_arrays

    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 4, 4), dtype=np.uint8),
              "y_train": np.arange(40) % 3, "x_test": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
              "y_test": np.arange(10) % 3}
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_arrays(f"npz:{tmp_path / 'bad.npz'}")
    assert "\n" not in str(info.value)


def test_one_hot_labels_load_as_indices(tmp_path):
    from keras_sharpness.data import load_arrays

    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(40) % 3, np.arange(10) % 3
    np.savez(tmp_path / "onehot.npz", x_train=rng.integers(0, 256, (40, 4, 4), dtype=np.uint8),
             y_train=np.eye(3)[y_train], x_test=rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
             y_test=np.eye(3)[y_test])
    data = load_arrays(f"npz:{tmp_path / 'onehot.npz'}")
    np.testing.assert_array_equal(data.y_train, y_train)
    assert data.info.num_classes == 3
