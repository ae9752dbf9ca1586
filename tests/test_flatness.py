"""Adaptive sharpness and PAC-Bayes sigma against brute force and closed forms.

The ground truths: quadratics f(v) = 0.5 v^T Q v + b^T v + k, for which the
worst case over a box or ellipse is found by a fine grid, E f(w + delta) -
f(w) = 0.5 sum_i Q_ii s_i^2 for delta_i ~ N(0, s_i^2), and an element-wise
rescaling w -> D w is another quadratic (Q -> D Q D, a -> D^-1 a).
"""

import json
import math

import numpy as np
import pytest

from keras_sharpness.errors import UserError
from keras_sharpness.flatness import adaptive_sharpness, pac_bayes_sigma
from keras_sharpness.objective import TrainingLoss
from toy_models import logistic_regression, toy_data


class Quadratic:
    """f(v) = 0.5 v^T Q v + b^T v + k, at the point `w`."""

    def __init__(self, Q, b, k, w, num_samples=None):
        self.Q, self.b, self.k = np.asarray(Q, float), np.asarray(b, float), float(k)
        self.w = np.asarray(w, float)
        self.num_params = len(self.w)
        if num_samples is not None:
            self.num_samples = num_samples

    @classmethod
    def centered(cls, Q, a, w, **kwargs):
        """0.5 (v - a)^T Q (v - a)."""
        Q, a = np.asarray(Q, float), np.asarray(a, float)
        return cls(Q, -Q @ a, 0.5 * a @ Q @ a, w, **kwargs)

    def initial_point(self):
        return self.w.copy()

    def value(self, v, non_trainable=None):
        return float(0.5 * v @ self.Q @ v + self.b @ v + self.k)

    def values(self, points):
        """f at many points (rows): the brute force."""
        return 0.5 * np.einsum("ki,ij,kj->k", points, self.Q, points) + points @ self.b + self.k

    def value_and_gradient(self, v, non_trainable=None):
        return self.value(v), self.Q @ v + self.b

    def hessian_vector_product(self, v, u, non_trainable=None):
        return self.Q @ u


class ChunkedQuadratic(Quadratic):
    """The mean of per-sample quadratics; `batch_objectives(m)` their chunk means."""

    def __init__(self, Qs, bs, ks, w):
        self.parts = (np.asarray(Qs, float), np.asarray(bs, float), np.asarray(ks, float))
        super().__init__(*(p.mean(axis=0) for p in self.parts), w)

    def batch_objectives(self, size):
        Qs, bs, ks = self.parts
        return [Quadratic(Qs[s:s + size].mean(0), bs[s:s + size].mean(0),
                          ks[s:s + size].mean(), self.w) for s in range(0, len(ks), size)]


Q_PSD = np.array([[3.0, 1.0], [1.0, 2.0]])
Q_INDEFINITE = np.array([[2.0, 0.5], [0.5, -1.0]])
A = np.array([0.3, -0.2])


def brute_force(f, w, c, rho, norm):
    """max f(w + c gamma) - f(w) over ||gamma||_p <= rho, by grids."""
    axis = np.linspace(-rho, rho, 1201)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    if norm == "l2":
        grid = grid[np.linalg.norm(grid, axis=1) <= rho]
        angles = np.linspace(0, 2 * np.pi, 400001)
        grid = np.vstack([grid, rho * np.stack([np.cos(angles), np.sin(angles)], 1)])
    return float(np.max(f.values(w + c * grid)) - f.value(w))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("Q, w, adaptive", [
    (Q_PSD, [1.0, -0.5], True),
    (Q_PSD, A, True),                 # at the minimizer: zero gradient
    (Q_INDEFINITE, [1.0, -0.5], True),
    (Q_INDEFINITE, [0.8, 0.4], False),
    (np.diag([2.0, -1.0]), [0.8, -0.13], False),  # linf maximum inside an edge
])
def test_worst_case_matches_brute_force(Q, w, adaptive, norm):
    f = Quadratic.centered(Q, A, w)
    rho, eta = 0.2, 0.1
    result = adaptive_sharpness(f, rho, kind="worst", norm=norm, adaptive=adaptive, eta=eta,
                                steps=100)
    c = np.abs(f.w) + eta if adaptive else np.ones(2)
    expected = brute_force(f, f.w, c, rho, norm)
    assert result.value == pytest.approx(expected, rel=1e-3)
    assert result.value <= expected * (1 + 1e-6)     # never outside the ball
    assert len(result.ascent) == 100 and result.ascent[-1] == result.value
    assert np.all(np.diff(result.ascent) >= 0)
    assert result.f0 == pytest.approx(f.value(f.w))
    json.dumps(result.to_dict())


def test_random_init_also_finds_the_maximum():
    f = Quadratic.centered(Q_INDEFINITE, A, [1.0, -0.5])
    result = adaptive_sharpness(f, 0.2, norm="l2", steps=100, random_init=True, seed=3)
    assert result.random_init
    assert result.value == pytest.approx(
        brute_force(f, f.w, np.abs(f.w), 0.2, "l2"), rel=1e-3)


@pytest.mark.parametrize("adaptive", [True, False])
def test_average_case_matches_closed_form(adaptive):
    f = Quadratic.centered(Q_PSD, A, [1.0, -0.5])
    rho, eta = 0.3, 0.05
    result = adaptive_sharpness(f, rho, kind="average", adaptive=adaptive, eta=eta,
                                samples=4000, seed=1)
    c = np.abs(f.w) + eta if adaptive else np.ones(2)
    expected = 0.5 * rho ** 2 * np.sum(c ** 2 * np.diag(Q_PSD))
    # the linear term g^T delta has mean 0 and only adds variance
    assert abs(result.value - expected) <= 4 * result.standard_error
    assert result.standard_error < 0.1 * expected
    assert result.ascent is None and result.norm is None and result.samples == 4000


def test_adaptive_sharpness_is_invariant_to_rescaling():
    D = np.array([3.0, 0.2])
    w = np.array([1.0, -0.5])
    f = Quadratic.centered(Q_PSD, A, w)
    # F(v) = f(D v): Q -> D Q D, a -> a / D, w -> w / D
    g = Quadratic.centered(D[:, None] * Q_PSD * D[None, :], A / D, w / D)
    assert g.value(g.w) == pytest.approx(f.value(f.w))
    for kwargs in ({"kind": "worst", "norm": "linf"}, {"kind": "worst", "norm": "l2"},
                   {"kind": "average", "samples": 50}):
        same = [adaptive_sharpness(h, 0.1, steps=30, **kwargs).value for h in (f, g)]
        assert same[1] == pytest.approx(same[0], rel=1e-9)
        plain = [adaptive_sharpness(h, 0.1, adaptive=False, steps=30, **kwargs).value
                 for h in (f, g)]
        assert abs(plain[1] - plain[0]) > 0.1 * abs(plain[0])


def chunked():
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(6, 2, 2))
    Qs = factors @ factors.transpose(0, 2, 1) + np.eye(2)
    return ChunkedQuadratic(Qs, 3 * rng.normal(size=(6, 2)), rng.normal(size=6), [0.7, -1.2])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_m_sharpness_is_the_mean_over_chunks(norm):
    f = chunked()
    result = adaptive_sharpness(f, 0.1, norm=norm, steps=40, batch_size=2)
    each = [adaptive_sharpness(part, 0.1, norm=norm, steps=40).value
            for part in f.batch_objectives(2)]
    assert result.num_batches == 3 and result.batch_size == 2
    assert result.batch_values == pytest.approx(each, rel=1e-12)
    assert result.value == pytest.approx(np.mean(each), rel=1e-12)
    # a mean of maxima exceeds the maximum of the mean (chunks' gradients differ here)
    assert result.value > 1.05 * adaptive_sharpness(f, 0.1, norm=norm, steps=40).value
    capped = adaptive_sharpness(f, 0.1, norm=norm, steps=40, batch_size=2, max_batches=2, seed=5)
    assert capped.num_batches == 2
    assert all(any(v == pytest.approx(e, rel=1e-12) for e in each) for v in capped.batch_values)
    again = adaptive_sharpness(f, 0.1, norm=norm, steps=40, batch_size=2, max_batches=2, seed=5)
    assert again.batch_values == capped.batch_values


def test_average_m_sharpness_matches_closed_form():
    f = chunked()
    rho = 0.2
    result = adaptive_sharpness(f, rho, kind="average", batch_size=2, samples=2000, seed=2)
    c = np.abs(f.w)
    expected = np.mean([0.5 * rho ** 2 * np.sum(c ** 2 * np.diag(part.Q))
                        for part in f.batch_objectives(2)])
    assert abs(result.value - expected) <= 4 * result.standard_error


def test_pac_bayes_sigma_matches_closed_form():
    rng = np.random.default_rng(0)
    n = 20
    factor = rng.normal(size=(n, n)) / math.sqrt(n)
    Q = factor @ factor.T + 0.5 * np.eye(n)
    w = rng.normal(size=n)
    f = Quadratic.centered(Q, w + 0.1 * rng.normal(size=n), w, num_samples=1000)
    target = 0.05
    # antithetic pairs cancel the linear term exactly: increase = 0.5 s^2 mean z^T Q z
    result = pac_bayes_sigma(f, target=target, quantity="loss", samples=1000, tol=1e-7,
                             max_steps=60, sigma_max=1.0)
    assert result.bracketed
    assert result.increase_at_sigma == pytest.approx(target, abs=1e-7)
    # rel: ~4 Monte Carlo standard errors of sigma
    assert result.sigma == pytest.approx(math.sqrt(2 * target / np.trace(Q)), rel=0.02)
    assert result.flatness == pytest.approx(1 / result.sigma ** 2)
    assert result.sigma_low <= result.sigma <= result.sigma_high
    assert result.bound == pytest.approx(
        w @ w / (4 * result.sigma ** 2) + math.log(1000 / result.sigma) + 10)

    # magnitude-aware: u_i ~ N(0, s^2 w_i^2 + eps^2), so the increase is
    # 0.5 sum_i Q_ii (s^2 w_i^2 + eps^2) and s^2 = (2 target - eps^2 tr Q) / sum Q_ii w_i^2
    # eps small against the target: the MC error of sigma grows as
    # 2 target / (2 target - eps^2 tr Q)
    eps = 0.02
    magnitude = pac_bayes_sigma(f, target=target, quantity="loss", magnitude_aware=True,
                                eps=eps, samples=1000, tol=1e-7, max_steps=60, sigma_max=1.0)
    expected = math.sqrt((2 * target - eps ** 2 * np.trace(Q)) / np.sum(np.diag(Q) * w ** 2))
    assert magnitude.sigma == pytest.approx(expected, rel=0.04)  # ~4 MC standard errors
    assert magnitude.eps == eps and magnitude.magnitude_aware
    json.dumps(magnitude.to_dict())


def test_pac_bayes_unbracketed_targets():
    f = Quadratic.centered(Q_PSD, A, A)
    low = pac_bayes_sigma(f, target=10.0, quantity="loss", sigma_max=0.5)
    assert not low.bracketed and low.sigma == 0.5 and low.bisection_steps == 0
    high = pac_bayes_sigma(f, target=1e-3, quantity="loss", magnitude_aware=True, eps=1.0)
    assert not high.bracketed and high.sigma == 0.0 and high.flatness is None
    json.dumps(high.to_dict())


@pytest.mark.parametrize("call, name", [
    (lambda f: adaptive_sharpness(f, 0.0), "rho"),
    (lambda f: adaptive_sharpness(f, -1.0), "rho"),
    (lambda f: adaptive_sharpness(f, float("nan")), "rho"),
    (lambda f: adaptive_sharpness(f, "big"), "rho"),
    (lambda f: adaptive_sharpness(f, 0.1, kind="best"), "kind"),
    (lambda f: adaptive_sharpness(f, 0.1, norm="l1"), "norm"),
    (lambda f: adaptive_sharpness(f, 0.1, eta=-1), "eta"),
    (lambda f: adaptive_sharpness(f, 0.1, steps=0), "steps"),
    (lambda f: adaptive_sharpness(f, 0.1, kind="average", samples=1), "samples"),
    (lambda f: adaptive_sharpness(f, 0.1, batch_size=0), "batch_size"),
    (lambda f: adaptive_sharpness(f, 0.1, batch_size=2), "batch_objectives"),
    (lambda f: adaptive_sharpness(f, 0.1, point=[np.nan, 0.0]), "point"),
    (lambda f: adaptive_sharpness(f, 0.1, point=[0.0]), "point"),
    (lambda f: pac_bayes_sigma(f, target=0, quantity="loss"), "target"),
    (lambda f: pac_bayes_sigma(f, target=float("nan"), quantity="loss"), "target"),
    (lambda f: pac_bayes_sigma(f, quantity="margin"), "quantity"),
    (lambda f: pac_bayes_sigma(f), "loss_and_accuracy"),
    (lambda f: pac_bayes_sigma(f, quantity="loss", sigma_max=-1), "sigma_max"),
])
def test_bad_arguments_raise_one_line(call, name):
    with pytest.raises(UserError) as error:
        call(Quadratic.centered(Q_PSD, A, [1.0, -0.5]))
    message = str(error.value)
    assert name in message and "\n" not in message


def test_keras_model_smoke():
    x, y = toy_data(samples=40, inputs=4)
    f = TrainingLoss(logistic_regression(), x, y)
    worst = adaptive_sharpness(f, 0.05, kind="worst", norm="l2", steps=5)
    average = adaptive_sharpness(f, 0.05, kind="average", samples=8)
    assert all(math.isfinite(v) for v in (worst.value, average.value, average.standard_error))
    assert worst.value >= average.value >= -3 * average.standard_error
    assert worst.f0 == pytest.approx(f.value(f.initial_point()), rel=1e-6)
    sigma = pac_bayes_sigma(f, target=0.1, samples=4, max_steps=8)
    assert sigma.quantity == "error" and 0 < sigma.sigma <= 2.0 and math.isfinite(sigma.flatness)
    assert sigma.bound is not None and math.isfinite(sigma.bound)
    json.dumps(worst.to_dict()), json.dumps(sigma.to_dict())


@pytest.mark.skipif(not hasattr(TrainingLoss, "batch_objectives"),
                    reason="TrainingLoss.batch_objectives not available yet")
def test_keras_m_sharpness_is_the_mean_over_chunk_losses():
    x, y = toy_data(samples=30, inputs=4)
    model = logistic_regression()
    f = TrainingLoss(model, x, y)
    result = adaptive_sharpness(f, 0.05, norm="linf", steps=3, batch_size=10)
    each = [adaptive_sharpness(TrainingLoss(model, x[s:s + 10], y[s:s + 10]), 0.05,
                               norm="linf", steps=3).value for s in range(0, 30, 10)]
    assert result.num_batches == 3
    assert result.batch_values == pytest.approx(each, rel=1e-4, abs=1e-7)
