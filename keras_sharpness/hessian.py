"""The largest Hessian eigenvalues of the training loss, from Hessian-vector products.

The Hessian of f (a `keras_sharpness.objective.TrainingLoss`) is never formed:
SciPy's Lanczos solver (`scipy.sparse.linalg.eigsh`, ARPACK) sees it as a
float64 `LinearOperator` whose products are the objective's forward-over-
reverse Hessian-vector products. For small eps, Keskar et al. relate the
full-space sharpness to the largest eigenvalue.

The HVPs are computed in float32 and summed in float64, so eigenvalues are
accurate to roughly float32 precision relative to the largest one; the
default tolerance asks for no more.
"""

import dataclasses
import time

import numpy as np
import scipy.sparse.linalg

from keras_sharpness.errors import UserError

METHODS = ("lanczos", "power")


@dataclasses.dataclass
class HessianEigenResult:
    """The k largest (algebraic) Hessian eigenvalues, largest first.

    Attributes:
        eigenvalues: list of floats, descending.
        eigenvectors: ``(n, k)`` float64 array of unit vectors (columns), or
            None if not requested.
        products: Hessian-vector products used.
        seconds: wall time.
        method: ``"lanczos"`` or ``"power"``.
        converged: whether the solver met its tolerance.
    """

    eigenvalues: list
    eigenvectors: np.ndarray
    products: int
    seconds: float
    method: str
    converged: bool

    def to_dict(self):
        return {"eigenvalues": [float(e) for e in self.eigenvalues],
                "products": self.products, "seconds": self.seconds,
                "method": self.method, "converged": self.converged}


def hessian_operator(objective, point=None, non_trainable=None, counter=None):
    """H(point) as a float64 `scipy.sparse.linalg.LinearOperator` of HVPs."""
    w = objective.initial_point() if point is None else np.asarray(point, np.float64)
    n = objective.num_params

    def matvec(v):
        if counter is not None:
            counter[0] += 1
        return objective.hessian_vector_product(w, np.ravel(v), non_trainable)

    return scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, rmatvec=matvec,
                                              dtype=np.float64)


def _start_vector(n, seed):
    v = np.random.default_rng(seed).standard_normal(n)
    return v / np.linalg.norm(v)


def top_eigenvalues(objective, k=1, *, point=None, non_trainable=None,
                    method="lanczos", tol=1e-5, maxiter=None, seed=0,
                    return_eigenvectors=False):
    """The k largest eigenvalues of the Hessian of f at a point.

    Example::

        ks.top_eigenvalues(ks.TrainingLoss(model, x, y), k=3).eigenvalues

    Args:
        objective: a `TrainingLoss` (anything with ``num_params``,
            ``initial_point()`` and ``hessian_vector_product(w, v, fixed)``).
        k: how many, ``1 <= k < n`` for Lanczos; power iteration gives k = 1.
        point: weights (None: the model's).
        non_trainable: BatchNorm moving statistics (None: the model's).
        method: ``"lanczos"`` (`eigsh`, largest algebraic, default) or
            ``"power"`` (`power_iteration`: largest in magnitude, k = 1).
        tol: relative tolerance.
        maxiter: iteration limit (None: the solver's default).
        seed: seed of the start vector.
        return_eigenvectors: keep the eigenvectors in the result.

    Returns:
        A `HessianEigenResult`. If Lanczos does not converge within
        ``maxiter`` it returns the eigenvalues that did, with
        ``converged=False``.
    """
    n = objective.num_params
    if method not in METHODS:
        raise UserError(f"unknown eigenvalue method {method!r}; choose one of "
                        f"{', '.join(METHODS)}")
    if method == "power":
        if k != 1:
            raise UserError("power iteration finds one eigenvalue; use k=1 or lanczos")
        return power_iteration(objective, point=point, non_trainable=non_trainable,
                               tol=tol, maxiter=maxiter or 100, seed=seed,
                               return_eigenvector=return_eigenvectors)
    if int(k) != k or not 1 <= k < n:
        raise UserError(f"the number of Hessian eigenvalues must be between 1 and "
                        f"{n - 1} (the weights minus one), got {k!r}")
    counter = [0]
    operator = hessian_operator(objective, point, non_trainable, counter)
    t = time.perf_counter()
    converged = True
    try:
        values, vectors = scipy.sparse.linalg.eigsh(
            operator, k=int(k), which="LA", tol=tol, maxiter=maxiter,
            v0=_start_vector(n, seed))
    except scipy.sparse.linalg.ArpackNoConvergence as e:
        values, vectors, converged = e.eigenvalues, e.eigenvectors, False
    order = np.argsort(values)[::-1]
    return HessianEigenResult(
        eigenvalues=[float(values[i]) for i in order],
        eigenvectors=vectors[:, order] if return_eigenvectors else None,
        products=counter[0], seconds=time.perf_counter() - t, method="lanczos",
        converged=converged)


def power_iteration(objective, *, point=None, non_trainable=None, tol=1e-5,
                    maxiter=100, seed=0, return_eigenvector=False):
    """The Hessian eigenvalue of largest magnitude, by power iteration.

    Stops when the Rayleigh quotient changes by less than ``tol`` relative to
    itself. Cheaper per step than Lanczos but slower to converge when the top
    eigenvalues are close; near a minimizer the largest-magnitude eigenvalue
    is the largest one.

    Returns:
        A `HessianEigenResult` with one eigenvalue.
    """
    t = time.perf_counter()
    w = objective.initial_point() if point is None else np.asarray(point, np.float64)
    v = _start_vector(objective.num_params, seed)
    eigenvalue, converged, products = 0.0, False, 0
    for _ in range(int(maxiter)):
        hv = objective.hessian_vector_product(w, v, non_trainable)
        products += 1
        previous, eigenvalue = eigenvalue, float(v @ hv)
        norm = np.linalg.norm(hv)
        if norm == 0:
            converged = True
            break
        v = hv / norm
        if products > 1 and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
            converged = True
            break
    return HessianEigenResult(
        eigenvalues=[eigenvalue], eigenvectors=v[:, None] if return_eigenvector else None,
        products=products, seconds=time.perf_counter() - t, method="power",
        converged=converged)


@dataclasses.dataclass
class HessianTraceResult:
    """Hutchinson's estimate of tr(H) (Yao et al., PyHessian).

    Attributes:
        trace: the mean of v^T H v over the probes.
        standard_error: its standard error (std of the probes / sqrt(m)).
        probes: m, the number of Rademacher vectors used.
        seconds: wall time.
    """

    trace: float
    standard_error: float
    probes: int
    seconds: float

    def to_dict(self):
        return dataclasses.asdict(self)


def hessian_trace(objective, num_probes=100, *, point=None, non_trainable=None, seed=0):
    """Estimates tr(H) by Hutchinson's method with Rademacher probes.

    Example::

        estimate = ks.hessian_trace(ks.TrainingLoss(model, x, y), num_probes=100)
        estimate.trace, estimate.standard_error

    E[v^T H v] = tr(H) for v with independent +-1 entries; the estimate is
    exact for a diagonal H with any number of probes, and its error for a
    general H shrinks as 1/sqrt(num_probes). The trace is the sum of all
    curvatures, a complement to the top eigenvalue (`top_eigenvalues`) and to
    Metric 2.1; each probe costs one Hessian-vector product.

    Args:
        objective: a `keras_sharpness.objective.TrainingLoss`.
        num_probes: m, the number of probes (>= 1).
        point: the weights (None: the model's).
        non_trainable: BatchNorm moving statistics (None: the model's).
        seed: seed of the probes.

    Returns:
        `HessianTraceResult`.

    Raises:
        UserError: num_probes < 1.
    """
    if int(num_probes) < 1:
        raise UserError(f"num_probes must be at least 1, got {num_probes}")
    started = time.perf_counter()
    w = objective.initial_point() if point is None else np.asarray(point, np.float64)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(int(num_probes)):
        v = rng.choice(np.array([-1.0, 1.0]), size=objective.num_params)
        samples.append(float(v @ objective.hessian_vector_product(w, v, non_trainable)))
    samples = np.asarray(samples)
    error = float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan")
    return HessianTraceResult(trace=float(samples.mean()), standard_error=error,
                              probes=len(samples), seconds=time.perf_counter() - started)
