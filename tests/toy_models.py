"""Tiny models and data shared by the analysis tests (ground truth by hand)."""

import keras
import numpy as np

from keras_sharpness.layers import SwitchableBatchNormalization


def tanh_bn_model(bn_eval="batch", inputs=5, classes=3, seed=0):
    """Dense-tanh-BN-Dense: smooth, so finite differences are meaningful."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,))
    h = keras.layers.Dense(4, activation="tanh")(x)
    h = SwitchableBatchNormalization(bn_eval=bn_eval)(h)
    return keras.Model(x, keras.layers.Dense(classes)(h))


def logistic_regression(inputs=4, classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,))
    return keras.Model(x, keras.layers.Dense(classes)(x))


def toy_data(samples=50, inputs=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(samples, inputs)).astype(np.float32),
            rng.integers(0, classes, samples))


def cross_entropy(logits, labels):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def logistic_hessian(objective, x, y):
    """The exact Hessian of mean softmax cross-entropy of x W + b.

    Parameters are ordered kernel (d x c, C order) then bias (c), which is
    (j, k) -> j * c + k with a constant feature j = d for the bias.
    """
    kernel, bias = objective.unflatten(objective.initial_point())
    logits = x.astype(np.float64) @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    features = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    return np.mean([np.kron(np.outer(f, f), np.diag(q) - np.outer(q, q))
                    for f, q in zip(features, p)], axis=0)


class DiagonalQuadratic:
    """f(w) = 1/2 w^T diag(d) w: the Hessian-vector interface with a known
    spectrum (Hutchinson's trace estimate is exact for it)."""

    def __init__(self, d):
        self.d = np.asarray(d, np.float64)
        self.num_params = len(self.d)

    def initial_point(self):
        return np.zeros(self.num_params)

    def hessian_vector_product(self, w, v, non_trainable=None):
        return self.d * v


class Interrupted(Exception):
    """Raised by `interrupt_at` to stop a `fit` as a kill would."""


def interrupt_at(epoch, batch):
    """A Keras callback raising `Interrupted` after batch `batch` of epoch `epoch`."""

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_end(self, b, logs=None):
            if self.epoch == epoch and b == batch:
                raise Interrupted()
    return Interrupt()
