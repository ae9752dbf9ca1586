"""Sharpness of a minimizer: Metric 2.1 of Keskar et al. (2017).

For a weight vector x, a loss f and an n x p matrix A (A = I_n for the full
space), with A+ the pseudo-inverse of A::

    C_eps = { y in R^p : |y_i| <= eps (|(A+ x)_i| + 1), i = 1..p }
    phi   = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100

The maximum is found inexactly, as in the paper, by SciPy's L-BFGS-B on -f
with the box as bounds and gradient A^T grad f (``maxiter`` iterations, 10 in
the paper). ``fmax`` is the largest f seen at any point the solver evaluated
(all of them lie in the box) or at y = 0, so ``phi >= 0`` always.

**Random subspace.** ``subspace_dim = p > 0`` uses a seeded Gaussian A. The
paper does not state its scale, and the scale decides the number (the box
half-widths scale with |A+ x|, the steps A y with A), so it is an explicit,
recorded choice (`SUBSPACE_SCALES`): ``"gaussian"`` (default), i.i.d.
standard normal entries, columns of norm ~sqrt(n); ``"normalized"``, the same
columns scaled to unit norm (as the one public PyTorch implementation does).
A is a function of ``(n, p, seed)`` only; it is generated in blocks of
`BLOCK_ROWS` rows, each from its own seed, so products A y and A^T g never
materialize it whole (C2/C4 have ~15M weights: a dense 15M x 100 float64 A
is 12 GB). A+ x comes from the p x p normal equations (A^T A) z = A^T x.

**Start point.** The paper names none, so the default is its reading, y0 = 0
(L-BFGS-B starts at the minimizer itself). There the gradient is almost zero
and the solver may hardly move: on a trained F1 the start alone changes phi by
four orders of magnitude (see ``docs/sharpness.md``). Issue 4 asked for a
start that cannot get stuck; that is ``"corner"``, offered as an option
rather than the default so that the default number means what the paper's
does. Every result records the start that made it:

* ``"zero"``: y0 = 0 (default; the paper's reading).
* ``"corner"``: the box corner along the gradient, y0_i = h_i sign((A^T grad
  f(x))_i) with h the half-widths (zero components go to +h_i): the corner
  where the first-order increase of f is largest. It cannot get stuck at a
  stationary x.
* ``"random"``: uniform in the box, seeded.

`sharpness_multistart` runs several starts and reports the largest phi, with
every start's value.

**The solver's whole story.** The paper's number is phi after 10 L-BFGS-B
iterations, but on a sharp minimizer the ascent often takes off only near
iteration 10, so that number sits on the steep part of the curve. Every
result therefore carries ``ascent``: phi after each iteration (from the
largest f seen up to the end of that iteration). A run with ``maxiter=100``
gives the paper's value as ``ascent[9]`` (the first 10 iterations do not
depend on ``maxiter``) and a converged value as its last entry. Every
tolerance is set on purpose: SciPy's defaults (``gtol=1e-5``,
``ftol=2.2e-9``) end a run at iteration 0 where the gradient at x is tiny,
which a minimizer's is; here ``gtol = ftol = 0`` by default, so the solver
stops only at the iteration limit, at an exactly stationary point of the box,
or when its line search fails, and ``message`` says which.
"""

import dataclasses
import math
import time

import numpy as np

from keras_sharpness import lbfgsb
from keras_sharpness.errors import UserError

START_POINTS = ("zero", "corner", "random")
SUBSPACE_SCALES = ("gaussian", "normalized")

#: L-BFGS-B settings (SciPy names), all set explicitly. ``maxfun`` is per
#: iteration allowed: the limit on evaluations is ``maxfun * maxiter``, so
#: that only ``maxiter`` (or convergence) ends a healthy run.
SOLVER_DEFAULTS = {"gtol": 0.0, "ftol": 0.0, "maxcor": 10, "maxls": 20,
                   "maxfun_per_iteration": 50}

#: The paper's number of L-BFGS-B iterations.
PAPER_MAXITER = 10

#: Rows of A generated per block (fixed, so that A depends on (n, p, seed) only).
BLOCK_ROWS = 1 << 16

# Independent random streams derived from the seed.
_STREAM_SUBSPACE, _STREAM_START = 0, 1


class FullSpace:
    """A = I_n: the full weight space (p = n, A+ x = x)."""

    def __init__(self, n):
        self.n = self.p = int(n)

    def matvec(self, y):
        """A y: `y` itself (float64), no copy; callers add it to a point."""
        return np.asarray(y, dtype=np.float64)

    def rmatvec(self, g):
        """A^T g: `g` itself (float64), no copy."""
        return np.asarray(g, dtype=np.float64)

    def pseudo_inverse_times(self, x):
        """A+ x."""
        return np.array(x, dtype=np.float64)


class MatrixSubspace:
    """An explicit n x p matrix A (small problems, tests), used by row blocks.

    Subclasses override `blocks`; products, A^T A and A+ x only use blocks.
    A is ``B D``: the blocks B times a diagonal column scale D (`column_scale`,
    1 unless a subclass normalizes the columns), applied to the p-vectors so
    that the blocks are never rescaled.
    """

    column_scale = None  # None: D = I

    def __init__(self, matrix):
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or not 1 <= matrix.shape[1] <= matrix.shape[0]:
            raise UserError(f"A must be an n x p matrix with 1 <= p <= n, got shape "
                            f"{matrix.shape}")
        self.n, self.p = matrix.shape
        self._matrix = matrix
        self._gram = None

    def blocks(self):
        """Yields ``(start_row, block)`` covering B from top to bottom."""
        yield 0, self._matrix

    def _scaled(self, v):
        return v if self.column_scale is None else v * self.column_scale

    def dense(self):
        """A as one dense float64 ``(n, p)`` array (tests and small n only)."""
        return self._scaled(np.concatenate([block for _, block in self.blocks()])
                            .astype(np.float64))

    def matvec(self, y):
        """A y, a float64 vector of length n."""
        y = self._scaled(np.asarray(y, dtype=np.float64))
        out = np.empty(self.n)
        for start, block in self.blocks():
            out[start:start + len(block)] = block @ y
        return out

    def rmatvec(self, g):
        """A^T g, a float64 vector of length p."""
        g = np.asarray(g, dtype=np.float64)
        out = np.zeros(self.p)
        for start, block in self.blocks():
            out += g[start:start + len(block)] @ block
        return self._scaled(out)

    def _block_gram(self):
        """B^T B (p x p, float64), computed once."""
        if self._gram is None:
            gram = np.zeros((self.p, self.p))
            for _, block in self.blocks():
                block = np.asarray(block, dtype=np.float64)
                gram += block.T @ block
            self._gram = gram
        return self._gram

    def gram(self):
        """A^T A = D B^T B D (p x p, float64)."""
        gram = self._block_gram()
        if self.column_scale is None:
            return gram
        return gram * np.outer(self.column_scale, self.column_scale)

    def pseudo_inverse_times(self, x):
        """A+ x = (A^T A)^{-1} A^T x, for A of full column rank."""
        try:
            return np.linalg.solve(self.gram(), self.rmatvec(x))
        except np.linalg.LinAlgError:
            raise UserError("the subspace matrix A is rank-deficient") from None


class RandomSubspace(MatrixSubspace):
    """A seeded n x p Gaussian matrix A, stored as seeds, used by blocks.

    Entries of B are i.i.d. standard normal; with ``scale="normalized"`` every
    column of A = B D is scaled to unit Euclidean norm (D from B^T B). Block b (rows ``b * BLOCK_ROWS`` up to
    the next block) is drawn, in float32, from ``SeedSequence(seed,
    spawn_key=(0, b))``, so A depends only on ``(n, p, seed)`` and any block
    can be regenerated alone. A is cached whole if its ``4 n p`` bytes fit in
    ``max_cached_bytes``, and regenerated block by block on every product
    otherwise (never materialized whole).

    Args:
        n: rows (number of weights).
        p: columns (subspace dimension), ``1 <= p <= n``.
        seed: the seed that defines A.
        scale: ``"gaussian"`` or ``"normalized"`` (`SUBSPACE_SCALES`).
        max_cached_bytes: memory budget for caching A (default 1 GiB: F1's
            1.46M x 100 A is cached, C2's 15M x 100 is streamed).
    """

    def __init__(self, n, p, seed=0, *, scale="gaussian", max_cached_bytes=1 << 30):
        self.n, self.p, self.seed = int(n), int(p), int(seed)
        if not 1 <= self.p <= self.n:
            raise UserError(f"subspace_dim must be between 1 and the number of "
                            f"weights {self.n}, got {self.p}")
        if scale not in SUBSPACE_SCALES:
            raise UserError(f"unknown subspace scale {scale!r}; choose one of "
                            f"{', '.join(SUBSPACE_SCALES)}")
        self.scale = scale
        self._gram = None
        self._cache = None
        if 4 * self.n * self.p <= max_cached_bytes:
            self._cache = [self.block(b) for b in range(self.num_blocks)]
        if scale == "normalized":
            self.column_scale = 1.0 / np.sqrt(np.diag(self._block_gram()))

    @property
    def num_blocks(self):
        return -(-self.n // BLOCK_ROWS)

    def block(self, b):
        """Rows ``b * BLOCK_ROWS`` to ``(b + 1) * BLOCK_ROWS`` of A, generated afresh."""
        rows = min(BLOCK_ROWS, self.n - b * BLOCK_ROWS)
        sequence = np.random.SeedSequence(self.seed, spawn_key=(_STREAM_SUBSPACE, b))
        return np.random.default_rng(sequence).standard_normal(
            (rows, self.p), dtype=np.float32)

    def blocks(self):
        for b in range(self.num_blocks):
            yield b * BLOCK_ROWS, self._cache[b] if self._cache is not None else self.block(b)


def make_subspace(n, subspace_dim, seed=0, scale="gaussian"):
    """`FullSpace` for ``subspace_dim == 0``, else a `RandomSubspace`."""
    if subspace_dim == 0:
        return FullSpace(n)
    return RandomSubspace(n, subspace_dim, seed, scale=scale)


def subspace_scale_of(subspace):
    """The recorded scale of A: ``"identity"`` for the full space."""
    if isinstance(subspace, FullSpace):
        return "identity"
    return getattr(subspace, "scale", "explicit")


@dataclasses.dataclass
class SharpnessProgress:
    """What the solver reached after one L-BFGS-B iteration."""

    iteration: int
    f: float          # f at the current iterate
    fmax: float       # largest f seen so far
    phi: float        # sharpness so far, from fmax
    evaluations: int  # objective evaluations so far
    seconds: float


@dataclasses.dataclass
class SharpnessResult:
    """Metric 2.1 at one point, with the settings that made it.

    Attributes:
        phi: the sharpness, in percent of 1 + f0 (``sharpness`` in `to_dict`
            and in every record, `keras_sharpness.measure`).
        f0: f(x).
        fmax: the largest f found in the box (>= f0).
        f_final: f at the solver's final iterate.
        eps: the box scale.
        p: columns of A (n for the full space).
        subspace_dim: 0 for the full space, else p.
        num_params: n.
        iterations: L-BFGS-B iterations done.
        evaluations: objective evaluations (value and gradient) by the solver.
        message: the solver's message.
        ascent: phi after each iteration (length `iterations`); the paper's
            10-iteration value is ``ascent[9]`` of any run with maxiter >= 10.
        converged: the solver reported convergence (a stationary point of the
            box, or ``ftol``): SciPy's status 0. False at the iteration limit
            and when its line search failed (see ``message``).
        phi_paper: phi after `PAPER_MAXITER` iterations (None if ``maxiter``
            was below 10; the final phi if the solver stopped earlier).
        solver_options: every L-BFGS-B option used.
        subspace_scale: ``"identity"`` (full space), ``"gaussian"``,
            ``"normalized"`` or ``"explicit"`` (an A given by the caller).
        seconds: wall time of the whole computation.
        objective_seconds: of which in f and grad f.
        projection_seconds: of which in products with A, A^T and A+.
        solver_seconds: of which in L-BFGS-B itself.
        start: the start point rule (`START_POINTS`).
        seed: seed of A and of the random start.
        maxiter: the iteration limit.
        bn_eval, batch_size, num_samples: how f was evaluated.
    """

    phi: float = dataclasses.field(metadata={"record_name": "sharpness"})
    f0: float
    fmax: float
    f_final: float
    eps: float
    p: int
    subspace_dim: int
    num_params: int
    iterations: int
    evaluations: int
    message: str
    seconds: float
    objective_seconds: float
    projection_seconds: float
    solver_seconds: float
    start: str
    seed: int
    maxiter: int
    ascent: list = dataclasses.field(default_factory=list)
    converged: bool = False
    phi_paper: float = None
    solver_options: dict = None
    subspace_scale: str = "identity"
    bn_eval: str = None
    batch_size: int = None
    num_samples: int = None

    def to_dict(self):
        """The fields as a JSON-ready dict, under the record schema's names
        (the value is ``sharpness``, as in `keras_sharpness.measure`)."""
        values = dataclasses.asdict(self)
        return {f.metadata.get("record_name", f.name): values[f.name]
                for f in dataclasses.fields(self)}


def box_half_widths(subspace, x, eps):
    """eps (|(A+ x)_i| + 1), the half-widths of C_eps (float64, length p)."""
    return eps * (np.abs(subspace.pseudo_inverse_times(x)) + 1.0)


def check_settings(eps, subspace_dim, maxiter, start, num_params=None, subspace_scale="gaussian"):
    """Raises `UserError` for settings Metric 2.1 cannot use."""
    try:
        eps_ok = math.isfinite(float(eps)) and float(eps) > 0
    except (TypeError, ValueError):
        eps_ok = False
    if not eps_ok:
        raise UserError(f"eps must be a finite number > 0, got {eps!r}")
    if int(subspace_dim) != subspace_dim or subspace_dim < 0:
        raise UserError(f"subspace_dim must be 0 (full space) or a positive integer, "
                        f"got {subspace_dim!r}")
    if num_params is not None and subspace_dim > num_params:
        raise UserError(f"subspace_dim {subspace_dim} exceeds the number of weights "
                        f"{num_params}")
    if int(maxiter) != maxiter or maxiter < 1:
        raise UserError(f"maxiter must be a positive integer, got {maxiter!r}")
    if start not in START_POINTS:
        raise UserError(f"unknown start {start!r}; choose one of {', '.join(START_POINTS)}")
    if subspace_scale not in SUBSPACE_SCALES:
        raise UserError(f"unknown subspace scale {subspace_scale!r}; choose one of "
                        f"{', '.join(SUBSPACE_SCALES)}")


class SubspaceObjective:
    """y -> f(x + A y), with gradient A^T grad f(x + A y) (float64).

    The function L-BFGS-B maximizes in Metric 2.1. Keeps the seconds spent in
    f (``objective_seconds``) and in products with A (``projection_seconds``).

    Args:
        objective: a `TrainingLoss` (``value``, ``value_and_gradient``).
        point: x, the float64 weight vector at the center of the box.
        subspace: A (`FullSpace`, `MatrixSubspace`, `RandomSubspace`).
        non_trainable: BatchNorm moving statistics (None: the model's).
    """

    def __init__(self, objective, point, subspace, non_trainable=None):
        self.objective = objective
        self.point = np.asarray(point, dtype=np.float64)
        self.subspace = subspace
        self.non_trainable = non_trainable
        self.objective_seconds = 0.0
        self.projection_seconds = 0.0

    def _weights(self, y):
        t = time.perf_counter()
        w = self.point + self.subspace.matvec(y)
        self.projection_seconds += time.perf_counter() - t
        return w

    def value(self, y):
        """f(x + A y)."""
        w = self._weights(y)
        t = time.perf_counter()
        f = self.objective.value(w, self.non_trainable)
        self.objective_seconds += time.perf_counter() - t
        return float(f)

    def value_and_gradient(self, y):
        """(f(x + A y), A^T grad f(x + A y))."""
        w = self._weights(y)
        t = time.perf_counter()
        f, g = self.objective.value_and_gradient(w, self.non_trainable)
        self.objective_seconds += time.perf_counter() - t
        t = time.perf_counter()
        g = self.subspace.rmatvec(g)
        self.projection_seconds += time.perf_counter() - t
        return float(f), g


def sharpness(objective, eps=1e-3, subspace_dim=0, maxiter=10, seed=0, start="zero",
              *, subspace_scale="gaussian", point=None, non_trainable=None, subspace=None,
              progress=None, gtol=SOLVER_DEFAULTS["gtol"], ftol=SOLVER_DEFAULTS["ftol"]):
    """Metric 2.1: how much f can rise in a box of relative size eps around x.

    Example::

        result = ks.sharpness(ks.TrainingLoss(model, x, y), eps=1e-3, maxiter=100)
        result.phi_paper, result.phi   # after the paper's 10 iterations, after 100
        result.ascent                  # phi after every iteration

    Args:
        objective: a `keras_sharpness.objective.TrainingLoss` (or anything with
            ``num_params``, ``initial_point()``, ``value(w, non_trainable)``
            and ``value_and_gradient(w, non_trainable)``).
        eps: box scale (paper: 1e-3 and 5e-4).
        subspace_dim: 0 for the full space (A = I), else p, the columns of a
            seeded random Gaussian A (paper: 100).
        maxiter: L-BFGS-B iterations (paper: 10).
        seed: seed of A and of the ``"random"`` start.
        start: ``"zero"`` (default, the paper's reading), ``"corner"`` or
            ``"random"``; see the module docstring.
        subspace_scale: scale of a random A (`SUBSPACE_SCALES`).
        point: x, the weights to measure at; None for the model's
            (``objective.initial_point()``).
        non_trainable: BatchNorm moving statistics for f (None: the model's).
        subspace: an explicit A (`FullSpace`, `RandomSubspace` or any object
            with ``n``, ``p``, ``matvec``, ``rmatvec``,
            ``pseudo_inverse_times``); overrides ``subspace_dim``.
        progress: optional callable, called with a `SharpnessProgress` after
            every L-BFGS-B iteration.
        gtol, ftol: L-BFGS-B's stopping tolerances (SciPy's ``gtol`` on the
            projected gradient, ``ftol`` on the relative decrease); 0 by
            default, so that a tiny gradient at x cannot end the run early.

    Returns:
        A `SharpnessResult`.

    Raises:
        UserError: eps <= 0 or not finite, subspace_dim < 0 or > n, maxiter < 1,
            or an unknown start.
    """
    n = objective.num_params
    check_settings(eps, subspace_dim, maxiter, start, n, subspace_scale)
    for name, value in (("gtol", gtol), ("ftol", ftol)):
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
    eps, maxiter, seed = float(eps), int(maxiter), int(seed)
    t_begin = time.perf_counter()
    x = objective.initial_point() if point is None else np.asarray(point, np.float64)
    t = time.perf_counter()
    if subspace is None:
        subspace = make_subspace(n, int(subspace_dim), seed, subspace_scale)
    half = box_half_widths(subspace, x, eps)
    restricted = SubspaceObjective(objective, x, subspace, non_trainable)
    restricted.projection_seconds += time.perf_counter() - t

    if start == "corner":
        f0, direction = restricted.value_and_gradient(np.zeros(subspace.p))
        y0 = np.where(direction < 0, -half, half)
    else:
        f0 = restricted.value(np.zeros(subspace.p))
        if start == "zero":
            y0 = np.zeros(subspace.p)
        else:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_START,)))
            y0 = rng.uniform(-half, half)
    f0 = float(f0)
    state = {"fmax": f0, "evaluations": 0}

    def negative_f(y):
        f, g = restricted.value_and_gradient(y)
        state["evaluations"] += 1
        if math.isfinite(f):
            state["fmax"] = max(state["fmax"], float(f))
        return -f, -g

    def phi_of(fmax):
        return (fmax - f0) / (1.0 + f0) * 100.0

    iteration = [0]
    ascent = []

    def callback(intermediate_result):
        iteration[0] += 1
        ascent.append(float(phi_of(state["fmax"])))
        if progress is not None:
            progress(SharpnessProgress(
                iteration=iteration[0], f=float(-intermediate_result.fun),
                fmax=state["fmax"], phi=phi_of(state["fmax"]),
                evaluations=state["evaluations"],
                seconds=time.perf_counter() - t_begin))

    inside_before = restricted.objective_seconds + restricted.projection_seconds
    t_solver = time.perf_counter()
    options = {"maxiter": maxiter, "gtol": float(gtol), "ftol": float(ftol),
               "maxcor": SOLVER_DEFAULTS["maxcor"], "maxls": SOLVER_DEFAULTS["maxls"],
               "maxfun": SOLVER_DEFAULTS["maxfun_per_iteration"] * maxiter}
    # SciPy's L-BFGS-B with its bound handling vectorized: the same iterates
    # without seconds of Python loops over the weights (`keras_sharpness.lbfgsb`).
    solution = lbfgsb.minimize_box(
        negative_f, y0, -half, half, maxiter=options["maxiter"], ftol=options["ftol"],
        gtol=options["gtol"], maxcor=options["maxcor"], maxls=options["maxls"],
        maxfun=options["maxfun"], callback=callback)
    solver_total = time.perf_counter() - t_solver
    # Time in f, grad f and A products during the solve is not solver time.
    inside_solve = (restricted.objective_seconds + restricted.projection_seconds
                    - inside_before)
    fmax = state["fmax"]
    return SharpnessResult(
        phi=float(phi_of(fmax)), f0=f0, fmax=float(fmax),
        f_final=float(-solution.fun), eps=eps, p=int(subspace.p),
        subspace_dim=0 if isinstance(subspace, FullSpace) else int(subspace.p),
        num_params=int(n), iterations=int(solution.nit),
        evaluations=int(solution.nfev), message=str(solution.message),
        seconds=time.perf_counter() - t_begin,
        objective_seconds=restricted.objective_seconds,
        projection_seconds=restricted.projection_seconds,
        solver_seconds=max(0.0, solver_total - inside_solve),
        start=start, seed=seed, maxiter=maxiter, ascent=ascent,
        # SciPy: status 0 = converged (projected gradient or ftol), 1 = a limit,
        # 2 = stopped abnormally (line search failed, rounding errors).
        converged=bool(solution.status == 0),
        phi_paper=_paper_value(ascent, phi_of(fmax), maxiter),
        solver_options=options, subspace_scale=subspace_scale_of(subspace),
        bn_eval=getattr(objective, "bn_eval", None),
        batch_size=getattr(objective, "batch_size", None),
        num_samples=getattr(objective, "num_samples", None))


def _paper_value(ascent, phi, maxiter):
    """phi after `PAPER_MAXITER` iterations, read off a run of `maxiter`.

    A run that stopped earlier on its own ends where a 10-iteration run
    ends too. None when the run was limited to fewer than 10 iterations.
    """
    if maxiter < PAPER_MAXITER:
        return None
    return ascent[PAPER_MAXITER - 1] if len(ascent) >= PAPER_MAXITER else float(phi)


def sharpness_multistart(objective, starts=START_POINTS, **kwargs):
    """Metric 2.1 from several start points: the largest phi, and each start's.

    Args:
        objective: as `sharpness`.
        starts: start rules to run (`START_POINTS`), each once.
        **kwargs: the other arguments of `sharpness` (one A serves all starts).

    Returns:
        ``(best, results)``: the `SharpnessResult` with the largest phi (its
        ``phi_paper`` the largest over the starts), and every start's result
        in the order given.
    """
    starts = list(dict.fromkeys(starts))
    if not starts:
        raise UserError("give at least one start point")
    for start in starts:
        if start not in START_POINTS:
            raise UserError(f"unknown start {start!r}; choose one of {', '.join(START_POINTS)}")
    if kwargs.get("subspace") is None:
        kwargs["subspace"] = make_subspace(objective.num_params, int(kwargs.get("subspace_dim", 0)),
                                           int(kwargs.get("seed", 0)),
                                           kwargs.get("subspace_scale", "gaussian"))
    results = [sharpness(objective, start=start, **kwargs) for start in starts]
    best = max(results, key=lambda r: r.phi)
    # The paper's 10-iteration multi-start value is the largest 10-iteration
    # phi, which may come from another start than the largest final phi.
    paper = [r.phi_paper for r in results if r.phi_paper is not None]
    return dataclasses.replace(best, phi_paper=max(paper) if paper else None), results
