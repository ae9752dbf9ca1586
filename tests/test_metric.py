"""Metric 2.1 against boxes whose maximum is known by hand."""

import math

import numpy as np
import pytest

from keras_sharpness import metric as sharpness_lib
from keras_sharpness.errors import UserError
from keras_sharpness.objective import TrainingLoss
from keras_sharpness.metric import (BLOCK_ROWS, FullSpace, MatrixSubspace,
                                       RandomSubspace, SubspaceObjective, sharpness)
from toy_models import tanh_bn_model, toy_data


class Quadratic:
    """f(w) = 1/2 sum_i h_i w_i^2 + c, with the objective interface."""

    def __init__(self, h, c, x):
        self.h, self.c, self.x = np.asarray(h, float), float(c), np.asarray(x, float)
        self.num_params = len(self.h)

    def initial_point(self):
        return self.x.copy()

    def value(self, w, non_trainable=None):
        return 0.5 * float(np.sum(self.h * w * w)) + self.c

    def value_and_gradient(self, w, non_trainable=None):
        return self.value(w), self.h * w


def quadratic_phi_by_hand(h, c, x, eps):
    # Separable and convex: each coordinate is largest at the end of its
    # interval farthest from 0, |x_i| + eps (|x_i| + 1).
    f0 = 0.5 * np.sum(h * x * x) + c
    far = np.abs(x) + eps * (np.abs(x) + 1)
    fmax = 0.5 * np.sum(h * far * far) + c
    return (fmax - f0) / (1 + f0) * 100


@pytest.mark.parametrize("start", ["zero", "corner", "random"])
def test_quadratic_box_maximum_matches_hand_computation(start):
    h = np.array([1.0, 4.0, 0.5, 2.0])
    x = np.array([1.0, -0.5, 2.0, -1.5])
    objective = Quadratic(h, 0.25, x)
    result = sharpness(objective, eps=0.1, start=start, maxiter=50)
    assert result.phi == pytest.approx(quadratic_phi_by_hand(h, 0.25, x, 0.1), rel=1e-9)
    assert result.f0 == pytest.approx(objective.value(x))
    assert result.start == start and result.p == 4 and result.subspace_dim == 0


def test_zero_start_at_a_stationary_point_does_not_move_but_corner_does():
    # The documented trap of the paper's y0 = 0: grad f(x) = 0 stops L-BFGS-B.
    h = np.array([1.0, 3.0])
    objective = Quadratic(h, 0.0, np.zeros(2))
    assert sharpness(objective, eps=0.1, start="zero").phi == 0.0
    corner = sharpness(objective, eps=0.1, start="corner")
    assert corner.phi == pytest.approx(0.5 * np.sum(h) * 0.1 ** 2 * 100)


def test_subspace_objective_gradient_matches_central_differences():
    x, y = toy_data(40)
    objective = TrainingLoss(tanh_bn_model(), x, y, batch_size=20)
    subspace = RandomSubspace(objective.num_params, 4, seed=5)
    restricted = SubspaceObjective(objective, objective.initial_point(), subspace)
    point = np.array([0.01, -0.02, 0.0, 0.015])
    _, gradient = restricted.value_and_gradient(point)
    step = 1e-3
    for i in range(4):
        e = np.eye(4)[i] * step
        numeric = (restricted.value(point + e) - restricted.value(point - e)) / (2 * step)
        assert gradient[i] == pytest.approx(numeric, abs=5e-4, rel=2e-3)


def test_identity_through_the_subspace_path_equals_full_space():
    x, y = toy_data(40)
    objective = TrainingLoss(tanh_bn_model(), x, y, batch_size=20)
    n = objective.num_params
    full = sharpness(objective, eps=1e-2, maxiter=5)
    through = sharpness(objective, eps=1e-2, maxiter=5, subspace=MatrixSubspace(np.eye(n)))
    assert through.p == full.p == n
    assert through.phi == pytest.approx(full.phi, rel=1e-9)
    assert through.iterations == full.iterations
    assert full.phi > 0


def test_blockwise_random_subspace_equals_the_dense_matrix():
    n, p = 2 * BLOCK_ROWS + 123, 3
    cached = RandomSubspace(n, p, seed=7)
    streamed = RandomSubspace(n, p, seed=7, max_cached_bytes=0)
    assert streamed._cache is None and cached._cache is not None
    dense = streamed.dense()
    np.testing.assert_array_equal(dense, cached.dense())
    # A block regenerated alone is the same rows of A.
    np.testing.assert_array_equal(streamed.block(1), dense[BLOCK_ROWS:2 * BLOCK_ROWS])
    assert abs(dense.mean()) < 0.01 and dense.std() == pytest.approx(1.0, abs=0.01)
    rng = np.random.default_rng(0)
    y, g, x = rng.normal(size=p), rng.normal(size=n), rng.normal(size=n)
    np.testing.assert_allclose(streamed.matvec(y), dense @ y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(streamed.rmatvec(g), dense.T @ g, rtol=1e-10)
    np.testing.assert_allclose(streamed.pseudo_inverse_times(x), np.linalg.pinv(dense) @ x,
                               rtol=1e-8, atol=1e-12)
    assert not np.array_equal(RandomSubspace(n, p, seed=8).block(0), streamed.block(0))


def test_box_half_widths_follow_the_definition():
    x = np.array([1.0, -2.0, 0.0])
    np.testing.assert_allclose(sharpness_lib.box_half_widths(FullSpace(3), x, 0.5),
                               0.5 * (np.abs(x) + 1))
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    # A+ x = (1, -1): half-widths 0.5 * (|A+ x| + 1).
    np.testing.assert_allclose(sharpness_lib.box_half_widths(MatrixSubspace(a), x, 0.5),
                               [1.0, 1.0])


def test_same_seed_same_result_and_progress_per_iteration():
    x, y = toy_data(40)
    objective = TrainingLoss(tanh_bn_model(), x, y, batch_size=20)
    seen = []
    first = sharpness(objective, eps=1e-2, subspace_dim=5, seed=1, start="random",
                      maxiter=4, progress=seen.append)
    second = sharpness(objective, eps=1e-2, subspace_dim=5, seed=1, start="random", maxiter=4)
    other = sharpness(objective, eps=1e-2, subspace_dim=5, seed=2, start="random", maxiter=4)
    for key in ("phi", "f0", "fmax", "iterations", "evaluations"):
        assert getattr(first, key) == getattr(second, key)
    assert first.phi != other.phi
    assert [s.iteration for s in seen] == list(range(1, first.iterations + 1))
    assert 0 < seen[-1].phi <= first.phi
    assert first.fmax >= first.f0 and first.fmax >= first.f_final
    assert first.seconds >= first.objective_seconds


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 0.0}, "eps"),
    ({"eps": -1e-3}, "eps"),
    ({"eps": math.nan}, "eps"),
    ({"eps": math.inf}, "eps"),
    ({"subspace_dim": 5}, "exceeds"),
    ({"subspace_dim": -1}, "subspace_dim"),
    ({"maxiter": 0}, "maxiter"),
    ({"start": "middle"}, "start"),
])
def test_bad_settings_raise_user_error(kwargs, match):
    objective = Quadratic([1.0, 2.0], 0.0, [1.0, 1.0])
    with pytest.raises(UserError, match=match):
        sharpness(objective, **kwargs)


def test_a_tiny_gradient_at_x_does_not_end_the_ascent():
    """SciPy's default gtol (1e-5) stops at iteration 0 where |grad f(x)| ~ 1e-8."""
    import scipy.optimize

    h = np.array([2.0, 1.0, 3.0])
    x = 1e-8 * np.array([1.0, -1.0, 0.5]) / h  # grad f(x) = h x ~ 1e-8
    objective = Quadratic(h, 0.1, x)
    half = sharpness_lib.box_half_widths(FullSpace(3), x, 1e-3)
    with_defaults = scipy.optimize.minimize(
        lambda y: tuple(-v for v in objective.value_and_gradient(x + y)), np.zeros(3),
        jac=True, method="L-BFGS-B", bounds=scipy.optimize.Bounds(-half, half),
        options={"maxiter": 10})
    assert with_defaults.nit == 0  # the trap this test guards against is real
    result = sharpness(objective, eps=1e-3, maxiter=10)
    assert result.iterations >= 1 and result.solver_options["gtol"] == 0.0
    assert result.phi == pytest.approx(quadratic_phi_by_hand(h, 0.1, x, 1e-3), rel=1e-9)
    assert result.ascent[-1] == result.phi and len(result.ascent) == result.iterations


def test_the_ascent_curve_holds_the_paper_value_of_a_longer_run():
    x, y = toy_data(40)
    objective = TrainingLoss(tanh_bn_model(), x, y, batch_size=20)
    paper = sharpness(objective, eps=5e-2, maxiter=10)
    longer = sharpness(objective, eps=5e-2, maxiter=25)
    assert paper.iterations == 10 and not paper.converged
    assert "ITERATIONS" in paper.message.upper()
    assert len(paper.ascent) == 10 and paper.phi_paper == paper.phi == paper.ascent[-1]
    assert longer.ascent[:10] == paper.ascent
    assert longer.phi_paper == paper.phi and longer.phi >= paper.phi
    assert all(a <= b for a, b in zip(longer.ascent, longer.ascent[1:]))  # fmax only grows


def test_normalized_subspace_has_unit_columns_and_its_own_pseudo_inverse():
    n, p = 500, 4
    gaussian = RandomSubspace(n, p, seed=3)
    normalized = RandomSubspace(n, p, seed=3, scale="normalized")
    b, a = gaussian.dense(), normalized.dense()
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(a, b / np.linalg.norm(b, axis=0), rtol=1e-12)
    rng = np.random.default_rng(1)
    y, g, x = rng.normal(size=p), rng.normal(size=n), rng.normal(size=n)
    np.testing.assert_allclose(normalized.matvec(y), a @ y, rtol=1e-10)
    np.testing.assert_allclose(normalized.rmatvec(g), a.T @ g, rtol=1e-10)
    np.testing.assert_allclose(normalized.pseudo_inverse_times(x), np.linalg.pinv(a) @ x,
                               rtol=1e-8)
    objective = Quadratic(np.ones(n), 0.0, np.zeros(n))
    result = sharpness(objective, eps=0.1, subspace_dim=p, subspace_scale="normalized")
    assert result.subspace_scale == "normalized"
    with pytest.raises(UserError, match="subspace scale"):
        sharpness(objective, eps=0.1, subspace_dim=p, subspace_scale="unit")


def test_multistart_reports_the_largest_phi_and_every_start():
    h = np.array([1.0, 3.0])
    objective = Quadratic(h, 0.0, np.zeros(2))  # stationary: the zero start is stuck
    best, results = sharpness_lib.sharpness_multistart(
        objective, starts=("zero", "corner"), eps=0.1)
    assert [r.start for r in results] == ["zero", "corner"]
    assert results[0].phi == 0.0
    assert best.start == "corner" and best.phi == results[1].phi
    assert best.phi == pytest.approx(0.5 * np.sum(h) * 0.1 ** 2 * 100)
    assert best.phi_paper == max(r.phi_paper for r in results)


@pytest.mark.parametrize("maxiter", [3, 40])
def test_the_box_driver_gives_scipys_iterates(maxiter):
    """keras_sharpness.lbfgsb.minimize_box vs scipy.optimize.minimize (L-BFGS-B with
    Bounds): the same iterate after every iteration, evaluations and message."""
    import scipy.optimize

    from keras_sharpness.lbfgsb import minimize_box

    rng = np.random.default_rng(0)
    n = 40
    q = rng.normal(size=(n, n))
    q = q @ q.T / n - 0.5 * np.eye(n)
    b = rng.normal(size=n)

    def fun_and_grad(x):  # non-convex, so the ascent hits the bounds
        return (float(-0.5 * x @ q @ x - b @ x + 0.1 * np.sum(np.cos(3 * x))),
                -(q @ x) - b - 0.3 * np.sin(3 * x))

    half = rng.uniform(0.1, 1.0, n)
    options = dict(maxiter=maxiter, ftol=0.0, gtol=0.0, maxcor=10, maxls=20, maxfun=600)
    theirs, ours = [], []
    reference = scipy.optimize.minimize(
        fun_and_grad, np.zeros(n), jac=True, method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(-half, half), options=options,
        callback=lambda intermediate_result: theirs.append(intermediate_result.x.copy()))
    result = minimize_box(fun_and_grad, np.zeros(n), -half, half, **options,
                          callback=lambda r: ours.append(r.x.copy()))
    assert len(ours) == len(theirs) == reference.nit == result.nit
    for a, b_ in zip(theirs, ours):
        np.testing.assert_array_equal(a, b_)
    assert (result.nfev, result.message, result.status, result.fun) == (
        reference.nfev, reference.message, reference.status, reference.fun)
