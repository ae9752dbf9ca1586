"""Top Hessian eigenvalues against numpy.linalg.eigvalsh of an explicit Hessian."""

import numpy as np
import pytest

from keras_sharpness.errors import UserError
from keras_sharpness.hessian import hessian_trace, power_iteration, top_eigenvalues
from keras_sharpness.objective import TrainingLoss
from toy_models import DiagonalQuadratic, logistic_hessian, logistic_regression, toy_data


@pytest.fixture(scope="module")
def logistic():
    x, y = toy_data(30, inputs=4)
    objective = TrainingLoss(logistic_regression(), x, y, batch_size=7)
    return objective, np.linalg.eigvalsh(logistic_hessian(objective, x, y))[::-1]


def test_lanczos_top_eigenvalues_match_eigvalsh(logistic):
    objective, exact = logistic
    result = top_eigenvalues(objective, k=3, return_eigenvectors=True)
    assert result.converged and result.method == "lanczos"
    np.testing.assert_allclose(result.eigenvalues, exact[:3], rtol=1e-4, atol=1e-6)
    assert result.eigenvalues == sorted(result.eigenvalues, reverse=True)
    w = objective.initial_point()
    v = result.eigenvectors[:, 0]
    np.testing.assert_allclose(objective.hessian_vector_product(w, v),
                               result.eigenvalues[0] * v, atol=1e-5)


def test_power_iteration_matches_the_largest_eigenvalue(logistic):
    objective, exact = logistic
    # The logistic Hessian is positive semi-definite: largest magnitude = largest.
    result = power_iteration(objective, tol=1e-9, maxiter=500)
    assert result.eigenvalues[0] == pytest.approx(exact[0], rel=1e-3)
    assert top_eigenvalues(objective, 1, method="power", tol=1e-9,
                           maxiter=500).eigenvalues[0] == pytest.approx(exact[0], rel=1e-3)


def test_same_seed_same_eigenvalues_and_bad_k(logistic):
    objective, _ = logistic
    assert (top_eigenvalues(objective, 2, seed=3).eigenvalues
            == top_eigenvalues(objective, 2, seed=3).eigenvalues)
    for k in (0, objective.num_params):
        with pytest.raises(UserError, match="eigenvalues"):
            top_eigenvalues(objective, k)
    with pytest.raises(UserError, match="method"):
        top_eigenvalues(objective, 1, method="qr")



def test_hutchinson_trace_is_exact_for_a_diagonal_hessian():
    d = np.array([3.0, -1.0, 0.5, 10.0])
    result = hessian_trace(DiagonalQuadratic(d), num_probes=3, seed=1)
    assert result.trace == pytest.approx(d.sum(), abs=1e-12)
    assert result.standard_error == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_trace_estimates_the_logistic_trace(logistic):
    objective, exact = logistic
    result = hessian_trace(objective, num_probes=400, seed=0)
    assert result.probes == 400 and result.standard_error > 0
    assert abs(result.trace - exact.sum()) < 4 * result.standard_error
    assert hessian_trace(objective, num_probes=5, seed=3).trace == \
        hessian_trace(objective, num_probes=5, seed=3).trace
    with pytest.raises(UserError, match="num_probes"):
        hessian_trace(objective, num_probes=0)
