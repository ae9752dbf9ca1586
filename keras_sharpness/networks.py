"""The six networks of Keskar et al. (2017), Table 1 and Appendix B.

Every network returns **logits**: the final softmax of the paper is folded
into the loss (`keras.losses.SparseCategoricalCrossentropy(from_logits=True)`),
which is the same function, computed stably. Use `keras.ops.softmax` on the
output for probabilities.

BatchNorm layers are `SwitchableBatchNormalization`; ``bn_eval="batch"`` (the
default) reproduces the original Keras 1 ``mode=2``: batch statistics at
evaluation too. ``bn_eval="moving"`` is standard modern Keras. See
`keras_sharpness.layers` for what each mode means, and `set_bn_eval` there to switch
a built or loaded model.

Image layout is channels-last, ``(height, width, channels)``; the original
Theano code used ``(3, 32, 32)``.
"""


import keras

# The names and their data sets are settings (checked before Keras loads):
# one table, in keras_sharpness.config.
from keras_sharpness.config import DEFAULT_DATASET, NETWORKS, check_network  # noqa: F401
from keras_sharpness.errors import UserError
from keras_sharpness.layers import SwitchableBatchNormalization, check_bn_eval

#: Which architecture each name uses (C3/C4 are C1/C2 with 100 outputs).
ARCHITECTURE = {
    "F1": "fully_connected_5",
    "F2": "fully_connected_7",
    "C1": "shallow_convolutional",
    "C2": "deep_convolutional",
    "C3": "shallow_convolutional",
    "C4": "deep_convolutional",
}


def _bn(bn_eval, synchronized, name=None):
    return SwitchableBatchNormalization(
        bn_eval=bn_eval, synchronized=synchronized, name=name)


def _fully_connected(inputs, depth, bn):
    x = inputs
    if len(inputs.shape) > 2:
        x = keras.layers.Flatten()(x)
    for _ in range(depth):
        x = keras.layers.Dense(512)(x)
        x = bn()(x)
        x = keras.layers.Activation("relu")(x)
    return x


def _conv_block(x, filters, kernel, bn):
    x = keras.layers.Conv2D(filters, kernel, padding="same")(x)
    x = bn()(x)
    return keras.layers.Activation("relu")(x)


def _shallow_convolutional(inputs, bn):
    """C1/C3: the released `shallownet`."""
    x = inputs
    for _ in range(2):
        x = _conv_block(x, 64, 5, bn)
        x = keras.layers.MaxPooling2D(pool_size=3, strides=2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    for units in (384, 192):
        x = keras.layers.Dense(units)(x)
        x = bn()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.Dropout(0.5)(x)
    return x


# (filters, convolutions) per stack of the VGG-like C2/C4 (`deepnet`).
_DEEP_STACKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _deep_convolutional(inputs, bn):
    """C2/C4: the released `deepnet` (VGG-like, dropout as released)."""
    x = inputs
    for stack, (filters, convolutions) in enumerate(_DEEP_STACKS):
        for i in range(convolutions):
            x = _conv_block(x, filters, 3, bn)
            if i < convolutions - 1:
                x = keras.layers.Dropout(0.3 if stack == 0 else 0.4)(x)
        x = keras.layers.MaxPooling2D(pool_size=2, strides=2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(512)(x)
    x = bn()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    return x


def _keras_example_net(inputs, bn):
    """The released, unused `kerasnet` (Keras' CIFAR-10 example with BN)."""
    x = inputs
    for filters in (32, 64):
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="valid")(x)
            x = bn()(x)
            x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D(pool_size=2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(512)(x)
    x = bn()(x)
    return keras.layers.Activation("relu")(x)


def build_network(name, input_shape, num_classes, *, bn_eval="batch",
                  synchronized=False):
    """Builds one of the paper's networks, outputting logits.

    Args:
        name: ``"F1"``, ``"F2"``, ``"C1"``, ``"C2"``, ``"C3"`` or ``"C4"``
            (case-insensitive); also ``"kerasnet"``, the released extra model.
        input_shape: shape of one example, e.g. ``(28, 28, 1)`` or ``(360,)``.
            Fully connected networks flatten their input; convolutional ones
            need ``(height, width, channels)``.
        num_classes: number of output logits.
        bn_eval: ``"batch"`` (Keras 1 ``mode=2``, the default: batch statistics
            at evaluation too) or ``"moving"`` (standard Keras).
        synchronized: all-reduce BatchNorm statistics across the replicas of a
            `tf.distribute` strategy, so a large batch split over devices is
            normalized with the statistics of the whole batch.

    Returns:
        An uncompiled `keras.Model` named after the network. Initial weights
        follow Keras defaults (Glorot-uniform, as Keras 1); call
        `keras.utils.set_random_seed` first for a reproducible start point.

    Raises:
        UserError: unknown name, bad shape or class count.
    """
    check_bn_eval(bn_eval)
    if str(name).lower() == "kerasnet":
        canonical, architecture = "kerasnet", "kerasnet"
    else:
        canonical = check_network(name)
        architecture = ARCHITECTURE[canonical]
    input_shape = tuple(int(d) for d in input_shape)
    if int(num_classes) < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    if architecture not in ("fully_connected_5", "fully_connected_7") and len(input_shape) != 3:
        raise UserError(
            f"network {canonical} is convolutional and needs image inputs "
            f"(height, width, channels); the data has shape {input_shape}")

    def bn():
        return _bn(bn_eval, synchronized)

    inputs = keras.Input(shape=input_shape, name="inputs")
    body = {
        "fully_connected_5": lambda x: _fully_connected(x, 5, bn),
        "fully_connected_7": lambda x: _fully_connected(x, 7, bn),
        "shallow_convolutional": lambda x: _shallow_convolutional(x, bn),
        "deep_convolutional": lambda x: _deep_convolutional(x, bn),
        "kerasnet": lambda x: _keras_example_net(x, bn),
    }[architecture]
    features = body(inputs)
    logits = keras.layers.Dense(int(num_classes), name="logits")(features)
    return keras.Model(inputs, logits, name=canonical)


# Original (released) names. Image networks take CIFAR-sized inputs, as released.
_CIFAR_SHAPE = (32, 32, 3)


def shallownet(nb_classes, input_shape=_CIFAR_SHAPE, **kwargs):
    """The released `shallownet`: C1 (10 classes) or C3 (100 classes)."""
    return build_network("C1" if nb_classes != 100 else "C3", input_shape,
                         nb_classes, **kwargs)


def deepnet(nb_classes, input_shape=_CIFAR_SHAPE, **kwargs):
    """The released `deepnet`: C2 (10 classes) or C4 (100 classes)."""
    return build_network("C2" if nb_classes != 100 else "C4", input_shape,
                         nb_classes, **kwargs)


def kerasnet(nb_classes, input_shape=_CIFAR_SHAPE, **kwargs):
    """The released, unused `kerasnet`."""
    return build_network("kerasnet", input_shape, nb_classes, **kwargs)
