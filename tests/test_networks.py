"""The paper's networks: sizes by hand, output shapes, BatchNorm semantics."""

import keras
import numpy as np
import pytest

import network_zoo
from keras_sharpness import io as ks_io
from keras_sharpness.errors import UserError
from keras_sharpness.layers import batchnorm_layers, model_bn_eval, set_bn_eval, using_bn_eval
from keras_sharpness.networks import DEFAULT_DATASET, NETWORKS, build_network


def dense(n_in, n_out):
    return n_in * n_out + n_out


def conv(kernel, c_in, c_out):
    return kernel * kernel * c_in * c_out + c_out


def bn(units):
    """gamma, beta (trainable) + moving mean, moving variance."""
    return 4 * units


def fully_connected_count(n_in, depth, classes):
    total, width = 0, n_in
    for _ in range(depth):
        total += dense(width, 512) + bn(512)
        width = 512
    return total + dense(512, classes)


def shallow_count(classes):
    # 32x32 -> pool(3, stride 2, same) -> 16 -> 8; 8 * 8 * 64 features.
    return (conv(5, 3, 64) + bn(64) + conv(5, 64, 64) + bn(64)
            + dense(8 * 8 * 64, 384) + bn(384) + dense(384, 192) + bn(192)
            + dense(192, classes))


def deep_count(classes):
    total, c_in = 0, 3
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            total += conv(3, c_in, filters) + bn(filters)
            c_in = filters
    # 32 -> 16 -> 8 -> 4 -> 2 -> 1 after five poolings: 512 features.
    return total + dense(512, 512) + bn(512) + dense(512, classes)


CASES = {
    "F1": ((28, 28, 1), 10, fully_connected_count(784, 5, 10)),
    "F2": ((360,), 1973, fully_connected_count(360, 7, 1973)),
    "C1": ((32, 32, 3), 10, shallow_count(10)),
    "C2": ((32, 32, 3), 10, deep_count(10)),
    "C3": ((32, 32, 3), 100, shallow_count(100)),
    "C4": ((32, 32, 3), 100, deep_count(100)),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_count_and_output_shape(name):
    input_shape, classes, expected = CASES[name]
    model = build_network(name, input_shape, classes)
    assert model.count_params() == expected
    assert model.output_shape == (None, classes)
    n_bn_units = sum(layer.gamma.shape[0] for layer in batchnorm_layers(model))
    moving = sum(int(np.prod(v.shape)) for layer in batchnorm_layers(model)
                 for v in layer.non_trainable_variables)
    assert moving == 2 * n_bn_units  # moving mean and variance
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == expected - moving


def test_paper_sizes_of_the_big_networks():
    # Appendix B / the issue: C2 and C4 have ~15M weights.
    assert 14.9e6 < CASES["C2"][2] < 15.1e6
    assert CASES["F1"][2] == 1467914  # the sum above, written out once


def test_network_zoo_keeps_original_names():
    assert network_zoo.shallownet(10).name == "C1"
    assert network_zoo.deepnet(100).name == "C4"
    assert network_zoo.deepnet(100).output_shape == (None, 100)
    assert network_zoo.kerasnet(10).output_shape == (None, 10)


def test_default_datasets():
    assert DEFAULT_DATASET["F1"] == "mnist"
    assert DEFAULT_DATASET["C2"] == "cifar10"
    assert DEFAULT_DATASET["C4"] == "cifar100"


def test_outputs_are_logits_not_probabilities():
    keras.utils.set_random_seed(0)
    model = build_network("F1", (8, 8, 1), 10)
    out = model(np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32),
                training=False).numpy()
    assert not np.allclose(out.sum(axis=1), 1.0)
    assert (out < 0).any()


def _first_rows(model, batch, rows=4):
    alone = model(batch[:rows], training=False).numpy()
    together = model(batch, training=False).numpy()[:rows]
    return alone, together


def test_batch_statistics_mode_depends_on_the_rest_of_the_batch():
    keras.utils.set_random_seed(1)
    model = build_network("C1", (8, 8, 3), 5, bn_eval="batch")
    batch = np.random.default_rng(1).random((12, 8, 8, 3), dtype=np.float32)
    alone, together = _first_rows(model, batch)
    assert np.abs(alone - together).max() > 1e-3


def test_moving_statistics_mode_is_per_sample():
    keras.utils.set_random_seed(1)
    model = build_network("C1", (8, 8, 3), 5, bn_eval="moving")
    batch = np.random.default_rng(1).random((12, 8, 8, 3), dtype=np.float32)
    alone, together = _first_rows(model, batch)
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)


def test_evaluation_in_batch_mode_does_not_touch_moving_statistics():
    model = build_network("F1", (6,), 3, bn_eval="batch")
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    model(np.random.default_rng(2).random((9, 6), dtype=np.float32), training=False)
    for old, var in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(old, var.numpy())


def test_switching_mode_and_context_manager():
    model = build_network("F1", (6,), 3)
    assert model_bn_eval(model) == "batch"
    with using_bn_eval(model, "moving"):
        assert model_bn_eval(model) == "moving"
    assert model_bn_eval(model) == "batch"
    set_bn_eval(model, "moving")
    assert model_bn_eval(model) == "moving"


def test_mode_and_synchronization_survive_save_and_load(tmp_path):
    model = build_network("F1", (6,), 3, bn_eval="moving", synchronized=True)
    ks_io.save_model(model, tmp_path / "m.keras")
    loaded = ks_io.load_model(tmp_path / "m.keras")
    assert model_bn_eval(loaded) == "moving"
    assert all(layer.synchronized for layer in batchnorm_layers(loaded))
    x = np.random.default_rng(3).random((5, 6), dtype=np.float32)
    np.testing.assert_allclose(model(x, training=False), loaded(x, training=False), rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="C9", input_shape=(32, 32, 3), num_classes=10), "unknown network"),
    (dict(name="C1", input_shape=(360,), num_classes=10), "needs image inputs"),
    (dict(name="F1", input_shape=(8,), num_classes=1), "at least 2"),
    (dict(name="F1", input_shape=(8,), num_classes=3, bn_eval="mode2"), "BatchNorm evaluation mode"),
])
def test_bad_network_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError, match=message) as error:
        build_network(**kwargs)
    assert "\n" not in str(error.value)
