"""Metric 2.1 against boxes whose maximum is known by hand."""

import math

import numpy as np
import pytest

from keras_sharpness import sharpness as sharpness_lib
from keras_sharpness.errors import UserError
from keras_sharpness.objective import TrainingLoss
from keras_sharpness.sharpness import (BLOCK_ROWS, FullSpace, MatrixSubspace,
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
