"""Hutchinson's trace with its stop rule and the SLQ spectral density, against
the eigenvalues of an explicit Hessian (a float64 TensorFlow oracle written
without `TrainingLoss`) and closed forms for diagonal Hessians."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sharpness.errors import UserError
from keras_sharpness.hessian import (SpectralDensityResult, hessian_trace,
                                     spectral_density)
from keras_sharpness.objective import TrainingLoss
from keras_sharpness.plotting import plot_spectral_density
from toy_models import DiagonalQuadratic

INPUTS, HIDDEN, CLASSES = 8, 16, 4


def tanh_net():
    """Dense(16, tanh) -> Dense(4) logits: 212 weights, an indefinite Hessian."""
    keras.utils.set_random_seed(0)
    x = keras.Input((INPUTS,))
    h = keras.layers.Dense(HIDDEN, activation="tanh")(x)
    return keras.Model(x, keras.layers.Dense(CLASSES)(h))


def oracle_hessian(w, x, y):
    """The Hessian of the mean cross-entropy of tanh_net, in float64.

    Written out by hand (kernel, bias, kernel, bias in C order: the order of
    `TrainingLoss.flatten`) and differentiated twice by `tf.GradientTape`.
    """
    sizes = [INPUTS * HIDDEN, HIDDEN, HIDDEN * CLASSES, CLASSES]
    shapes = [(INPUTS, HIDDEN), (HIDDEN,), (HIDDEN, CLASSES), (CLASSES,)]
    w = tf.constant(w, tf.float64)
    inputs = tf.constant(x, tf.float64)
    with tf.GradientTape() as outer:
        outer.watch(w)
        with tf.GradientTape() as inner:
            inner.watch(w)
            k1, b1, k2, b2 = [tf.reshape(p, s) for p, s in zip(tf.split(w, sizes), shapes)]
            logits = tf.tanh(inputs @ k1 + b1) @ k2 + b2
            log_probs = tf.nn.log_softmax(logits)
            loss = -tf.reduce_mean(tf.gather(log_probs, y, axis=1, batch_dims=1))
        gradient = inner.gradient(loss, w)
    hessian = outer.jacobian(gradient, w).numpy()
    return (hessian + hessian.T) / 2


@pytest.fixture(scope="module")
def tanh_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, INPUTS)).astype(np.float32)
    y = rng.integers(0, CLASSES, 64)
    objective = TrainingLoss(tanh_net(), x, y, batch_size=32)  # two fixed batches
    hessian = oracle_hessian(objective.initial_point(), x, y)
    return objective, hessian, np.linalg.eigvalsh(hessian)


def test_hessian_vector_products_match_the_oracle(tanh_problem):
    objective, hessian, _ = tanh_problem
    w = objective.initial_point()
    vectors = np.random.default_rng(0).standard_normal((objective.num_params, 6))
    vectors[:, :3] = np.eye(objective.num_params)[:, [0, 150, 211]]  # three columns
    products = np.stack([objective.hessian_vector_product(w, v) for v in vectors.T], axis=1)
    # float32 products against a float64 oracle: round-off ~1e-7 relative to |H v|.
    np.testing.assert_allclose(products, hessian @ vectors,
                               atol=1e-6 * np.abs(hessian @ vectors).max())


def test_hutchinson_trace_within_three_standard_errors(tanh_problem):
    objective, _, eigenvalues = tanh_problem
    result = hessian_trace(objective, num_probes=200, seed=0)
    assert result.converged and result.probes == 200
    assert abs(result.trace - eigenvalues.sum()) <= 3 * result.standard_error
    assert result.to_dict()["converged"] is True


def test_trace_stop_rule(tanh_problem):
    objective, _, eigenvalues = tanh_problem
    loose = hessian_trace(objective, num_probes=200, seed=1, rtol=0.5, min_probes=10)
    assert loose.converged and loose.probes == 10
    assert loose.standard_error <= 0.5 * abs(loose.trace)
    # Stopping early keeps the probe sequence: the first 10 of a full run.
    assert loose.trace == hessian_trace(objective, num_probes=10, seed=1).trace
    tight = hessian_trace(objective, num_probes=30, seed=1, rtol=1e-6)
    assert not tight.converged and tight.probes == 30
    assert tight.to_dict()["converged"] is False
    # Between the two: stops at the first probe whose error is within 5 %.
    middle = hessian_trace(objective, num_probes=400, seed=1, rtol=0.05)
    assert middle.converged and 10 < middle.probes < 400
    assert middle.standard_error <= 0.05 * abs(middle.trace)
    shorter = hessian_trace(objective, num_probes=middle.probes - 1, seed=1)
    assert shorter.standard_error > 0.05 * abs(shorter.trace)
    assert abs(middle.trace - eigenvalues.sum()) <= 4 * middle.standard_error
    for kwargs, name in (({"rtol": 0.0}, "rtol"), ({"rtol": 0.1, "min_probes": 1}, "min_probes"),
                         ({"rtol": 0.1, "min_probes": 300}, "min_probes")):
        with pytest.raises(UserError, match=name):
            hessian_trace(objective, num_probes=200, **kwargs)


def test_full_lanczos_finds_the_exact_extreme_eigenvalues(tanh_problem):
    objective, _, eigenvalues = tanh_problem
    n = objective.num_params
    result = spectral_density(objective, lanczos_steps=n + 50, seed=0)
    # Softmax is invariant to a shift of all logits: H has a null space of
    # dimension HIDDEN + 1, so the Krylov space, and Lanczos, ends early.
    assert result.steps[0] < n and result.products == result.steps[0]
    nodes = result.nodes[0]
    scale = np.abs(eigenvalues).max()
    assert abs(nodes[-1] - eigenvalues[-1]) <= 1e-6 * scale
    assert abs(nodes[0] - eigenvalues[0]) <= 1e-6 * scale
    assert abs(nodes[-2] - eigenvalues[-2]) <= 1e-6 * scale
    assert sum(result.weights[0]) == pytest.approx(1.0, abs=1e-12)


def test_moments_estimate_the_trace_of_powers(tanh_problem):
    objective, _, eigenvalues = tanh_problem
    n = objective.num_params
    result = spectral_density(objective, num_probes=30, lanczos_steps=10, seed=2)
    assert result.products == 30 * 10 and result.steps == [10] * 30
    assert result.moments(0) == pytest.approx(1.0, abs=1e-12)
    for k in (1, 2, 3, 4):
        exact = np.mean(eigenvalues ** k)
        samples = result.probe_moments(k)
        error = np.std(samples, ddof=1) / np.sqrt(len(samples))
        assert abs(result.moments(k) - exact) <= 3 * error, k
    # Gauss quadrature with 10 nodes is exact up to degree 19: the same probes
    # with n steps give the same moments.
    full = spectral_density(objective, num_probes=1, lanczos_steps=n, seed=2)
    for k in (1, 2, 3, 4):
        assert full.probe_moments(k)[0] == pytest.approx(result.probe_moments(k)[0], rel=1e-5)


def test_density_is_normalized_and_centred(tanh_problem):
    objective, _, _ = tanh_problem
    result = spectral_density(objective, num_probes=4, lanczos_steps=12, seed=3)
    grid, values = result.density()
    assert len(grid) == 10000 and np.all(values >= 0)
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-9)
    assert grid[0] == pytest.approx(np.mean([x[0] for x in result.nodes]) - 0.01)
    low, high = np.mean([x[0] for x in result.nodes]), np.mean([x[-1] for x in result.nodes])
    assert result.default_sigma() == pytest.approx(np.sqrt(1e-5 * max(1.0, high - low)))
    # Gaussian broadening keeps the mean: on a grid wide enough to hold all
    # the mass, the density's mean is the first moment.
    wide_grid, wide = result.density(np.linspace(-3, 3, 3001), sigma=0.2)
    assert np.trapezoid(wide, wide_grid) == pytest.approx(1.0, abs=1e-9)
    assert np.trapezoid(wide_grid * wide, wide_grid) == pytest.approx(result.moments(1), abs=1e-6)
    with pytest.raises(UserError, match="sigma"):
        result.density(grid, sigma=0.0)
    record = json.loads(json.dumps(result.to_dict()))
    assert SpectralDensityResult.from_dict(record).moments(2) == pytest.approx(result.moments(2))



def test_breakdown_gives_exact_nodes_and_weights():
    # Three distinct eigenvalues: the Krylov space of any probe has dimension
    # 3; with v = Rademacher / sqrt(n) each eigenvalue weighs count / n.
    d = np.array([2.0] * 5 + [-1.0] * 3 + [0.5] * 12)
    result = spectral_density(DiagonalQuadratic(d), num_probes=2, lanczos_steps=15, seed=0)
    assert result.steps == [3, 3] and result.products == 6
    for nodes, weights in zip(result.nodes, result.weights):
        np.testing.assert_allclose(nodes, [-1.0, 0.5, 2.0], atol=1e-12)
        np.testing.assert_allclose(weights, [3 / 20, 12 / 20, 5 / 20], atol=1e-12)
    for k in range(5):
        assert result.moments(k) == pytest.approx(np.mean(d ** k), abs=1e-12)
    assert spectral_density(DiagonalQuadratic(d), lanczos_steps=1).nodes == [[np.mean(d)]]
    for kwargs, name in (({"num_probes": 0}, "num_probes"),
                         ({"lanczos_steps": 0}, "lanczos_steps")):
        with pytest.raises(UserError, match=name):
            spectral_density(DiagonalQuadratic(d), **kwargs)


def test_plot_spectral_density_writes_pdf_and_png(tmp_path):
    d = np.linspace(-0.5, 3.0, 40)
    result = spectral_density(DiagonalQuadratic(d), num_probes=2, lanczos_steps=8, seed=0)
    pdf, png = plot_spectral_density(result, tmp_path / "density")
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0
    pdf, png = plot_spectral_density(result.to_dict(), tmp_path / "from_dict", title="t")
    assert pdf.suffix == ".pdf" and png.suffix == ".png" and png.exists()
