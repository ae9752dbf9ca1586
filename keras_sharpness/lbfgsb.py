"""SciPy's L-BFGS-B in a box, without its per-weight Python loops.

`scipy.optimize.minimize(method="L-BFGS-B")` converts the bounds to a list of
n Python tuples and back, and fills the solver's bound-type array in a Python
loop over the weights: about 5 s before the first iteration for F1's 1.46 M
weights and ~50 s for C2's 15 M (BENCHMARKS.md), however cheap the
iterations. `minimize_box` drives the same compiled solver
(``scipy.optimize._lbfgsb.setulb``) with the same arguments and the same
loop as SciPy's `_minimize_lbfgsb`, with the bound arrays built by NumPy: the
iterates, evaluations and messages are SciPy's (a test compares them step by
step). Where that private routine is missing or has another signature (a
SciPy other than the ones this was written against), it falls back to
`scipy.optimize.minimize` itself.
"""

import numpy as np
import scipy.optimize


def minimize_box(fun_and_grad, x0, lower, upper, *, maxiter, ftol, gtol, maxcor, maxls,
                 maxfun, callback=None):
    """Minimizes ``fun_and_grad`` (``x -> (f, grad f)``) over ``lower <= x <= upper``.

    Args:
        fun_and_grad: the objective, returning its value and gradient (float64).
        x0: start point (clipped into the box, as SciPy does).
        lower, upper: finite bound arrays of the shape of x0.
        maxiter, ftol, gtol, maxcor, maxls, maxfun: the options of SciPy's
            L-BFGS-B (``ftol`` becomes ``factr = ftol / eps``, as there).
        callback: ``callback(OptimizeResult(x=, fun=))`` after every iteration.

    Returns:
        `scipy.optimize.OptimizeResult` with ``x``, ``fun``, ``jac``, ``nit``,
        ``nfev``, ``status``, ``message`` and ``success``.
    """
    try:
        from scipy.optimize import _lbfgsb
        from scipy.optimize._lbfgsb_py import status_messages, task_messages
    except ImportError:
        return _scipy(fun_and_grad, x0, lower, upper, maxiter, ftol, gtol, maxcor, maxls,
                      maxfun, callback)
    lower = np.asarray(lower, np.float64)
    upper = np.asarray(upper, np.float64)
    n = lower.size
    m = int(maxcor)
    x = np.clip(np.asarray(x0, np.float64), lower, upper)
    nbd = np.full(n, 2, np.int32)  # 2: both bounds (SciPy's bounds_map[(1, 1)])
    f = np.array(0.0, dtype=np.float64)
    g = np.zeros((n,), dtype=np.float64)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
    iwa = np.zeros(3 * n, dtype=np.int32)
    task = np.zeros(2, dtype=np.int32)
    ln_task = np.zeros(2, dtype=np.int32)
    lsave = np.zeros(4, dtype=np.int32)
    isave = np.zeros(44, dtype=np.int32)
    dsave = np.zeros(29, dtype=np.float64)
    factr = float(ftol) / np.finfo(float).eps
    nit = nfev = 0
    first = True
    while True:
        g = g.astype(np.float64)
        try:
            _lbfgsb.setulb(m, x, lower, upper, nbd, f, g, factr, float(gtol), wa, iwa, task,
                           lsave, isave, dsave, int(maxls), ln_task)
        except TypeError:
            if not first:
                raise
            # Another SciPy: its own driver (the slow set-up, the same solver).
            return _scipy(fun_and_grad, x0, lower, upper, maxiter, ftol, gtol, maxcor, maxls,
                          maxfun, callback)
        first = False
        if task[0] == 3:  # the solver wants f and g at x
            f, g = fun_and_grad(x)
            nfev += 1
        elif task[0] == 1:  # a new iteration
            nit += 1
            if callback is not None:
                callback(scipy.optimize.OptimizeResult(x=x, fun=f))
            if nit >= maxiter:
                task[0], task[1] = 5, 504
            elif nfev > maxfun:
                task[0], task[1] = 5, 502
        else:
            break
    status = 0 if task[0] == 4 else 1 if (nfev > maxfun or nit >= maxiter) else 2
    return scipy.optimize.OptimizeResult(
        x=x, fun=f, jac=g, nit=nit, nfev=nfev, status=status, success=status == 0,
        message=status_messages[task[0]] + ": " + task_messages[task[1]])


def _scipy(fun_and_grad, x0, lower, upper, maxiter, ftol, gtol, maxcor, maxls, maxfun,
           callback):
    return scipy.optimize.minimize(
        fun_and_grad, x0, jac=True, method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(lower, upper), callback=callback,
        options={"maxiter": maxiter, "ftol": ftol, "gtol": gtol, "maxcor": maxcor,
                 "maxls": maxls, "maxfun": maxfun})
