"""Metric 2.1 at F1's and C2's scale: where the time goes, L-BFGS-B set-up, memory.

    python benchmarks/bench_metric_scale.py [--networks=F1,C2] [--f1_samples=N]
        [--c2_samples=500] [--maxiter=10] [--c2_maxiter=5] [--batch_size=1000]

For each network, in a child process of its own (this script run again with
``--child=measure``), so that its peak memory is that measurement's alone:

1. One Metric 2.1 run, ``sharpness(TrainingLoss(...), eps=1e-3, maxiter=...,
   start="zero")`` in the full space, on a freshly initialized network (seed
   0; the cost of an evaluation does not depend on the weights' values) with
   batch-statistics BN. Printed: the run's seconds; of which in f and grad f
   (``objective_seconds``), in the full-space "products" (vector copies,
   ``projection_seconds``), in L-BFGS-B (``solver_seconds``: the compiled
   ``setulb`` timed separately, the rest being `minimize_box`'s Python), and
   the share outside f and grad f, against the goal "L-BFGS-B set-up and
   bookkeeping <= 10 % of a run". f and grad f are traced (two untimed calls)
   before the run, so that tracing is not counted as evaluation time.
2. Memory: ``VmRSS`` just before `sharpness`, the peak during it (``VmHWM``
   after ``/proc/self/clear_refs`` reset it; ``ru_maxrss`` of the process is
   printed too, but it also holds the data loading's peak), their difference,
   and the n-vectors Metric 2.1 keeps, counted from the code (see
   `vector_accounting`); the pages of SciPy's workspace that were actually
   touched are read from ``/proc/self/pagemap``.

Then, in another child (``--child=setup``), the set-up alone for the same n:
`keras_sharpness.lbfgsb.minimize_box` for one iteration of f = 0, grad f = 0
against ``scipy.optimize.minimize(method="L-BFGS-B", bounds=Bounds(...))``
the same way, with their peak memory.

A final Markdown table sums it up for BENCHMARKS.md. Skips a network whose
data file is absent.
"""

import gc
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from bench_common import SHARED_MNIST

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

SHARED_CIFAR = SHARED_MNIST.parent / "cifar10-jpeg.tar.gz"

flags.DEFINE_list("networks", ["F1", "C2"], "Networks to measure (F1, C2).")
flags.DEFINE_integer("f1_samples", None, "F1: training images used (None: all 8,000).")
flags.DEFINE_integer("c2_samples", 500, "C2: CIFAR-10 training images used.")
flags.DEFINE_integer("maxiter", 10, "L-BFGS-B iterations of each Metric 2.1 run.")
flags.DEFINE_integer("c2_maxiter", None, "C2's iterations (None: --maxiter).")
flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f (the package default).")
flags.DEFINE_float("eps", 1e-3, "Box scale of Metric 2.1.")
flags.DEFINE_bool("scipy_setup", True, "Also time scipy.optimize.minimize's set-up "
                  "(about 40 s and several GB at C2's n).")
flags.DEFINE_string("output", None, "Also write every figure as JSON here.")
flags.DEFINE_string("markdown", None, "Also write the Markdown summary here.")
# Internal: the child processes.
flags.DEFINE_enum("child", None, ["measure", "setup"], "(internal) run one measurement.")
flags.DEFINE_string("child_network", None, "(internal) network of a measure child.")
flags.DEFINE_integer("child_n", None, "(internal) n of a setup child.")
flags.DEFINE_string("child_output", None, "(internal) where a child writes its JSON.")
FLAGS = flags.FLAGS

MIB = 1 << 20


# --------------------------------------------------------------- memory probes
def _status_kib(field):
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes():
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def hwm_bytes():
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_hwm():
    """Resets VmHWM to the current RSS (Linux ``clear_refs`` 5); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def resident_bytes(address, size):
    """Bytes of ``[address, address + size)`` present in memory (``/proc/self/pagemap``)."""
    import numpy as np

    if size <= 0:
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    first, last = address // page, (address + size - 1) // page
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            entries = np.frombuffer(f.read((last - first + 1) * 8), dtype=np.uint64)
    except OSError:
        return None
    return int(((entries >> np.uint64(63)) & np.uint64(1)).sum()) * page


class SetulbSpy:
    """Wraps ``scipy.optimize._lbfgsb.setulb`` (which `minimize_box` calls):
    times the compiled calls, and keeps the last workspace arrays so that
    their touched pages can be read after the run."""

    def __init__(self):
        from scipy.optimize import _lbfgsb

        self.module, self.original = _lbfgsb, _lbfgsb.setulb
        self.seconds = self.first_seconds = 0.0
        self.calls = 0
        self.arrays = None
        self.log = []

    def __enter__(self):
        def setulb(m, x, lower, upper, nbd, f, g, factr, pgtol, wa, iwa, *rest):
            t = time.perf_counter()
            try:
                return self.original(m, x, lower, upper, nbd, f, g, factr, pgtol, wa, iwa,
                                     *rest)
            finally:
                elapsed = time.perf_counter() - t
                self.seconds += elapsed
                if self.calls == 0:
                    self.first_seconds = elapsed
                self.calls += 1
                self.arrays = {"m": int(m), "wa": wa, "iwa": iwa, "nbd": nbd}
                # The task it returns (3: wants f, g; 1: new iterate; 4/5/...:
                # stop) and isave[21] (SciPy's C setulb: mainlb's first saved
                # integer, nintol), kept in the JSON only.
                task, isave = rest[0], rest[2]
                self.log.append((elapsed, int(task[0]), int(isave[21])))

        self.module.setulb = setulb
        return self

    def __exit__(self, *exc):
        self.module.setulb = self.original

    def touched(self, n):
        """Resident bytes of SciPy's workspace: S, Y (n x m each), the other
        5 n + O(m^2) doubles, and iwa (3 n int32), from the pagemap."""
        if self.arrays is None:
            return None
        wa, iwa, m = self.arrays["wa"], self.arrays["iwa"], self.arrays["m"]
        base = wa.__array_interface__["data"][0]
        block = 8 * m * n
        return {"ws": resident_bytes(base, block),
                "wy": resident_bytes(base + block, block),
                "wa_rest": resident_bytes(base + 2 * block, wa.nbytes - 2 * block),
                "wa_allocated": int(wa.nbytes),
                "iwa": resident_bytes(iwa.__array_interface__["data"][0], iwa.nbytes),
                "iwa_allocated": int(iwa.nbytes)}


# ------------------------------------------------------ the n-vector accounting
def vector_accounting(m, num_batches):
    """The n-vectors (in float64 units: an int32 n-array is 0.5) that Metric 2.1
    keeps, read off metric.py, lbfgsb.py and objective.py.

    Returns ``(persistent, transient)``: lists of ``(count, what, where)``.
    ``persistent`` lives from the solver's set-up to the end of the run, all
    allocated inside `sharpness`; ``transient`` is the most that one
    evaluation adds at once beyond them (TensorFlow's own buffers, e.g.
    activations, not counted: they are measured).
    """
    wa = 2 * m + 5  # + (11 m^2 + 8 m) / n, negligible
    persistent = [
        (1.0, "x, the point (objective.initial_point() copy; also SubspaceObjective.point)",
         "metric.sharpness"),
        (1.0, "half = eps(|x|+1), the upper bound (np.asarray keeps it, no copy)",
         "metric.box_half_widths"),
        (1.0, "-half, the lower bound", "metric.sharpness"),
        (1.0, "y0 = zeros(p), start point (calloc'd: untouched pages cost no RSS)",
         "metric.sharpness"),
        (1.0, "x of the solver (np.clip(y0) copy)", "lbfgsb.minimize_box"),
        (1.0, "g of the solver (the current gradient, astype copy)", "lbfgsb.minimize_box"),
        (0.5, "nbd (int32)", "lbfgsb.minimize_box"),
        (float(wa), f"wa = 2mn + 5n + 11m^2 + 8m doubles, m = maxcor = {m} "
         "(S, Y: n x m each; z, r, d, t, xp)", "lbfgsb.minimize_box / SciPy setulb"),
        (1.5, "iwa = 3n int32 (index, iwhere, indx2)", "lbfgsb.minimize_box / SciPy setulb"),
    ]
    # One evaluation (negative_f -> SubspaceObjective.value_and_gradient ->
    # TrainingLoss.value_and_gradient): at the per-batch sum, alive at once are
    # w = x + A y, the float32 weight tensors, the running float64 sum, the
    # batch's float64 gradient and the new sum (one batch: no sum, but the
    # division's result instead). Best point: none is kept (only fmax, a float);
    # the ascent record is a list of floats.
    transient = [
        (1.0, "w = x + A y (FullSpace.matvec copies y first: briefly 2)",
         "metric.SubspaceObjective._weights"),
        (0.5, "float32 weight tensors", "objective.TrainingLoss._tensors"),
        (1.0, "float64 gradient of a batch", "objective gradient_fn"),
        (1.0 if num_batches > 1 else 0.0, "running float64 sum (more than one batch)",
         "objective._sum_in_order"),
        (1.0, "new sum / the gradient divided by N",
         "objective._sum_in_order / value_and_gradient"),
    ]
    return persistent, transient


# ---------------------------------------------------------------- measure child
def measure_child():
    from keras_sharpness import cli

    cli.quiet_tensorflow()
    import keras
    import numpy as np

    from keras_sharpness.data import load_arrays
    from keras_sharpness.metric import SOLVER_DEFAULTS, sharpness
    from keras_sharpness.networks import build_network
    from keras_sharpness.objective import TrainingLoss

    name = FLAGS.child_network
    maxiter = FLAGS.c2_maxiter if name == "C2" and FLAGS.c2_maxiter else FLAGS.maxiter
    t = time.perf_counter()
    if name == "F1":
        data = load_arrays(f"npz:{SHARED_MNIST}")
        x, y = data.x_train, data.y_train
        if FLAGS.f1_samples is not None and FLAGS.f1_samples < len(x):
            index = np.sort(np.random.default_rng(0).choice(len(x), FLAGS.f1_samples,
                                                            replace=False))
            x, y = x[index], y[index]
    else:
        data = load_arrays(f"folder:{SHARED_CIFAR}", train_size=FLAGS.c2_samples,
                           test_size=100)
        x, y = data.x_train, data.y_train
    load_seconds = time.perf_counter() - t
    keras.utils.set_random_seed(0)
    model = build_network(name, data.info.input_shape, data.info.num_classes, bn_eval="batch")
    objective = TrainingLoss(model, x, y, bn_eval="batch", batch_size=FLAGS.batch_size)
    del data, x, y
    n = objective.num_params
    num_batches = -(-objective.num_samples // objective.batch_size)
    print(f"[{name}] n = {n:,} weights, {objective.num_samples} samples, "
          f"{num_batches} batch(es) of <= {objective.batch_size}; data loaded in "
          f"{load_seconds:.1f} s", flush=True)

    # Trace f and grad f (untimed), then one timed value+gradient with its peak.
    w = objective.initial_point()
    t = time.perf_counter()
    objective.value(w)
    objective.value_and_gradient(w)
    trace_seconds = time.perf_counter() - t
    gc.collect()
    rss0 = rss_bytes()
    hwm_ok = reset_hwm()
    t = time.perf_counter()
    objective.value_and_gradient(w)
    grad_seconds = time.perf_counter() - t
    eval_peak = hwm_bytes() - rss0 if hwm_ok else None
    del w
    gc.collect()
    print(f"[{name}] tracing {trace_seconds:.1f} s; one value+gradient {grad_seconds:.2f} s, "
          f"peak {eval_peak / MIB if eval_peak is not None else float('nan'):.0f} MiB above "
          f"its baseline", flush=True)

    with SetulbSpy() as spy:
        gc.collect()
        rss_before = rss_bytes()
        maxrss_before = maxrss_bytes()
        hwm_ok = reset_hwm() and hwm_ok
        result = sharpness(objective, eps=FLAGS.eps, maxiter=maxiter, start="zero")
        peak = hwm_bytes() if hwm_ok else None
        maxrss_end = maxrss_bytes()
        touched = spy.touched(n)
        spy.arrays = None  # let the workspace go before reading the RSS after
    gc.collect()
    rss_after = rss_bytes()
    m = SOLVER_DEFAULTS["maxcor"]
    persistent, transient = vector_accounting(m, num_batches)
    figures = {
        "network": name, "n": n, "num_samples": objective.num_samples,
        "batch_size": objective.batch_size, "num_batches": num_batches, "maxiter": maxiter,
        "maxcor": m, "eps": FLAGS.eps,
        "iterations": result.iterations, "evaluations": result.evaluations,
        "message": result.message, "phi": result.phi,
        "seconds": result.seconds, "objective_seconds": result.objective_seconds,
        "projection_seconds": result.projection_seconds,
        "solver_seconds": result.solver_seconds,
        "setulb_seconds": spy.seconds, "setulb_first_call_seconds": spy.first_seconds,
        "setulb_calls": spy.calls, "setulb_log": spy.log,
        "trace_seconds": trace_seconds, "value_and_gradient_seconds": grad_seconds,
        "load_seconds": load_seconds,
        "rss_before": rss_before, "peak_during": peak, "rss_after": rss_after,
        "maxrss_before": maxrss_before, "maxrss_end": maxrss_end,
        "hwm_reset": hwm_ok, "eval_peak": eval_peak, "touched": touched,
        "persistent": persistent, "transient": transient,
    }
    with open(FLAGS.child_output, "w") as f:
        json.dump(figures, f)


# ------------------------------------------------------------------ setup child
def setup_child():
    import numpy as np
    import scipy.optimize

    from keras_sharpness import lbfgsb
    from keras_sharpness.metric import SOLVER_DEFAULTS

    n = FLAGS.child_n
    options = {"maxiter": 1, "ftol": 0.0, "gtol": 0.0, "maxcor": SOLVER_DEFAULTS["maxcor"],
               "maxls": SOLVER_DEFAULTS["maxls"], "maxfun": 50}

    def trivial(y):
        return 0.0, np.zeros(n)

    figures = {"n": n}

    def timed(key, run):
        lower, upper = np.full(n, -1e-3), np.full(n, 1e-3)
        x0 = np.zeros(n)
        gc.collect()
        base = rss_bytes()
        hwm_ok = reset_hwm()
        t = time.perf_counter()
        solution = run(x0, lower, upper)
        figures[key + "_seconds"] = time.perf_counter() - t
        figures[key + "_peak"] = hwm_bytes() - base if hwm_ok else None
        figures[key + "_nfev"] = int(solution.nfev)
        del solution
        gc.collect()

    # minimize_box: the median of three (its peak from the first); SciPy's once.
    box_seconds = []
    for _ in range(3):
        timed("minimize_box", lambda x0, lo, hi: lbfgsb.minimize_box(
            trivial, x0, lo, hi, **options))
        box_seconds.append(figures["minimize_box_seconds"])
        figures.setdefault("minimize_box_first_peak", figures["minimize_box_peak"])
    figures["minimize_box_seconds"] = sorted(box_seconds)[1]
    figures["minimize_box_all_seconds"] = box_seconds
    figures["minimize_box_peak"] = figures["minimize_box_first_peak"]
    print(f"[setup n={n:,}] minimize_box: {figures['minimize_box_seconds']:.3f} s (median of "
          f"{', '.join(f'{s:.3f}' for s in box_seconds)})", flush=True)
    if FLAGS.scipy_setup:
        timed("scipy", lambda x0, lo, hi: scipy.optimize.minimize(
            trivial, x0, jac=True, method="L-BFGS-B",
            bounds=scipy.optimize.Bounds(lo, hi), options=options))
        print(f"[setup n={n:,}] scipy.optimize.minimize: {figures['scipy_seconds']:.2f} s",
              flush=True)
    with open(FLAGS.child_output, "w") as f:
        json.dump(figures, f)


# ----------------------------------------------------------------------- parent
def run_child(args):
    """Runs this script with ``args``; its JSON, or None if it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "child.json")
        command = [sys.executable, os.path.abspath(__file__), *args,
                   f"--child_output={output}"]
        t = time.perf_counter()
        done = subprocess.run(command, check=False)
        if done.returncode != 0 or not os.path.isfile(output):
            print(f"child {' '.join(args)} failed (exit {done.returncode})", flush=True)
            return None
        with open(output) as f:
            figures = json.load(f)
        figures["child_wall_seconds"] = time.perf_counter() - t
        return figures


def machine_facts():
    from keras_sharpness import cli

    cli.quiet_tensorflow()
    import keras  # versions only; the parent runs no model
    import numpy
    import scipy

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        total = None
    try:
        import tensorflow as tf
        tf_version = tf.__version__
    except ImportError:
        tf_version = "absent"
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "memory": total,
            "python": platform.python_version(), "tensorflow": tf_version,
            "keras": keras.__version__, "scipy": scipy.__version__,
            "numpy": numpy.__version__, "load_average": os.getloadavg()}


def _mib(value):
    return "n/a" if value is None else f"{value / MIB:,.0f} MiB"


def _gib(value):
    return "n/a" if value is None else f"{value / (1 << 30):.2f} GiB"


def report(result, setup):
    """Prints one network's figures; returns its Markdown rows."""
    r, n = result, result["n"]
    name = r["network"]
    outside = r["seconds"] - r["objective_seconds"]
    share = outside / r["seconds"]
    other = outside - r["projection_seconds"] - r["solver_seconds"]
    python_solver = r["solver_seconds"] - r["setulb_seconds"]
    print(f"\n== {name}: n = {n:,} weights, {r['num_samples']} samples, batches of "
          f"{r['batch_size']} ({r['num_batches']}), eps {r['eps']}, maxiter {r['maxiter']}, "
          f"start zero, full space")
    print(f"Metric 2.1: {r['iterations']} iterations, {r['evaluations']} solver evaluations "
          f"(+1 for f(x)), phi = {r['phi']:.4g}; {r['message']}")
    print(f"  total                         {r['seconds']:9.2f} s")
    print(f"  in f + grad f                 {r['objective_seconds']:9.2f} s  "
          f"({100 * r['objective_seconds'] / r['seconds']:.1f} %)")
    print(f"  outside f + grad f            {outside:9.2f} s  ({100 * share:.1f} %) "
          f"-> goal <= 10 %: {'met' if share <= 0.10 else 'MISSED'}")
    print(f"    in L-BFGS-B (solver_seconds){r['solver_seconds']:9.2f} s  "
          f"({100 * r['solver_seconds'] / r['seconds']:.1f} %)")
    print(f"      compiled setulb           {r['setulb_seconds']:9.2f} s  "
          f"({r['setulb_calls']} calls, the first, with the set-up: "
          f"{r['setulb_first_call_seconds']:.3f} s)")
    log = r["setulb_log"]
    print("        per call, s (the task it returned: 3 wants f and grad f, 1 a new iterate, "
          "4/5 stop): " + ", ".join(f"{s:.3f} ({t})" for s, t, _ in log))
    # The call after the first one and every call after a new iterate start an
    # iteration (the generalized Cauchy point, the subspace step, the line
    # search's first trial point).
    starts = [s for i, (s, t, _) in enumerate(log)
              if t == 3 and (i == 1 or (i > 1 and log[i - 1][1] == 1))]
    if starts:
        print(f"        calls that start an iteration: {len(starts)}, {sum(starts):.2f} s "
              f"(first {starts[0]:.2f} s, mean of the others "
              f"{sum(starts[1:]) / max(1, len(starts) - 1):.2f} s)")
    print(f"      minimize_box's Python     {python_solver:9.2f} s  (arrays, copies, "
          f"callbacks, -g)")
    print(f"    full-space 'products'       {r['projection_seconds']:9.2f} s  "
          f"({100 * r['projection_seconds'] / r['seconds']:.1f} %; copies y, x + y, g)")
    print(f"    the rest of sharpness()     {other:9.2f} s  ({100 * other / r['seconds']:.1f} "
          f"%; x copy, box, result)")
    print(f"  (one value+gradient alone: {r['value_and_gradient_seconds']:.2f} s; tracing, "
          f"not in the run: {r['trace_seconds']:.1f} s)")

    if setup is not None:
        print(f"Set-up alone, n = {n:,}, one iteration of f = 0, grad = 0 (same options; "
              "minimize_box median of 3):")
        print(f"  minimize_box              {setup['minimize_box_seconds']:9.3f} s, peak "
              f"{_mib(setup['minimize_box_peak'])} above baseline")
        if "scipy_seconds" in setup:
            print(f"  scipy.optimize.minimize   {setup['scipy_seconds']:9.3f} s, peak "
                  f"{_mib(setup['scipy_peak'])} above baseline  "
                  f"({setup['scipy_seconds'] / setup['minimize_box_seconds']:.0f}x)")

    persistent = sum(c for c, _, _ in r["persistent"])
    transient = sum(c for c, _, _ in r["transient"])
    touched = r["touched"]
    print(f"Memory (m = maxcor = {r['maxcor']}); n-vectors Metric 2.1 keeps, from the code "
          f"(float64 units, 1 n-vector = {8 * n / MIB:.1f} MiB):")
    for count, what, where in r["persistent"]:
        print(f"  {count:5.1f}  {what}  [{where}]")
    print(f"  {persistent:5.1f}  persistent, allocated in sharpness() = "
          f"{_mib(8 * n * persistent)}")
    for count, what, where in r["transient"]:
        if count:
            print(f"  {count:5.1f}  transient: {what}  [{where}]")
    print(f"  {transient:5.1f}  transient per evaluation, at once = {_mib(8 * n * transient)}")
    print("  (held before the run, not counted: TrainingLoss._initial 1.0, the model's "
          "and its evaluation copy's float32 weights 0.5 each)")
    touched_persistent = None
    if touched is not None and None not in touched.values():
        ws_cols = touched["ws"] / (8 * n)
        wy_cols = touched["wy"] / (8 * n)
        wa_touched = (touched["ws"] + touched["wy"] + touched["wa_rest"]) / (8 * n)
        iwa_touched = touched["iwa"] / (8 * n)
        # Touched = allocated, less the untouched part of wa and iwa, less y0.
        touched_persistent = (persistent - (2 * r["maxcor"] + 5) - 1.5 - 1.0
                              + wa_touched + iwa_touched)
        print(f"  pagemap after the run: S {ws_cols:.2f} and Y {wy_cols:.2f} of "
              f"{r['maxcor']} columns touched, rest of wa {touched['wa_rest'] / (8 * n):.2f} "
              f"of 5; iwa {iwa_touched:.2f} of 1.5 -> persistent touched "
              f"{touched_persistent:.1f} n-vectors = {_mib(8 * n * touched_persistent)}")
    increase = None if r["peak_during"] is None else r["peak_during"] - r["rss_before"]
    print(f"  VmRSS just before sharpness   {_mib(r['rss_before'])}")
    print(f"  VmHWM during sharpness        {_mib(r['peak_during'])}  (reset before it: "
          f"{r['hwm_reset']})")
    print(f"  measured peak increase        {_mib(increase)}")
    print(f"  ru_maxrss at the end          {_mib(r['maxrss_end'])} (before sharpness "
          f"{_mib(r['maxrss_before'])}); ru_maxrss - VmRSS before = "
          f"{_mib(r['maxrss_end'] - r['rss_before'])}")
    print(f"  VmRSS after (arrays freed)    {_mib(r['rss_after'])}")
    expected_all = 8 * n * (persistent + transient)
    print(f"  expected, all allocated       {_mib(expected_all)} "
          f"({persistent + transient:.1f} n-vectors)")
    expected_touched = None
    if touched_persistent is not None and r["eval_peak"] is not None:
        # One evaluation alone, measured: TF's buffers and the objective's own
        # transients (all but w, which existed before that call) above its baseline.
        expected_touched = 8 * n * (touched_persistent + 1.0) + r["eval_peak"]
        print(f"  expected, touched             {_mib(expected_touched)} "
              f"(persistent touched {touched_persistent:.1f} + w 1.0 n-vectors, + one "
              f"value+gradient's measured peak {_mib(r['eval_peak'])})")
    row = {
        "name": name, "n": n, "samples": r["num_samples"], "maxiter": r["maxiter"],
        "batches": r["num_batches"], "batch_size": r["batch_size"],
        "iterations": r["iterations"], "evaluations": r["evaluations"],
        "seconds": r["seconds"], "objective": r["objective_seconds"],
        "solver": r["solver_seconds"], "setulb": r["setulb_seconds"],
        "projection": r["projection_seconds"], "share": share,
        "box": None if setup is None else setup["minimize_box_seconds"],
        "scipy": None if setup is None else setup.get("scipy_seconds"),
        "rss_before": r["rss_before"], "increase": increase, "maxrss": r["maxrss_end"],
        "vectors": persistent + transient, "expected_all": expected_all,
        "touched_persistent": touched_persistent, "expected_touched": expected_touched,
        "eval_peak": r["eval_peak"], "value_and_gradient": r["value_and_gradient_seconds"],
    }
    return row


def markdown(facts, rows, command):
    lines = [
        f"`{command}`",
        "",
        f"Machine: {facts['nproc']} CPU cores ({facts['cpu']}), "
        f"{_gib(facts['memory'])} memory, load average at start "
        f"{facts['load_average'][0]:.2f} (shared machine); Python {facts['python']}, "
        f"TensorFlow {facts['tensorflow']}, Keras {facts['keras']}, SciPy {facts['scipy']}, "
        f"NumPy {facts['numpy']}. Fresh networks (seed 0), BN batch statistics, "
        "eps 1e-3, start zero, full space, f and grad f traced before the run.",
        "",
        "| | " + " | ".join(r["name"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]

    def line(label, fmt):
        lines.append(f"| {label} | " + " | ".join(fmt(r) for r in rows) + " |")

    line("weights n", lambda r: f"{r['n']:,}")
    line("samples (fixed batches)", lambda r: f"{r['samples']:,} ({r['batches']} of <= "
         f"{r['batch_size']:,})")
    line("L-BFGS-B iterations / evaluations",
         lambda r: f"{r['iterations']} / {r['evaluations']} (+1)")
    line("Metric 2.1 run", lambda r: f"{r['seconds']:.1f} s")
    line("of which f + grad f", lambda r: f"{r['objective']:.1f} s "
         f"({100 * r['objective'] / r['seconds']:.1f} %)")
    line("of which in L-BFGS-B (compiled setulb)",
         lambda r: f"{r['solver']:.2f} s ({r['setulb']:.2f} s)")
    line("of which full-space copies", lambda r: f"{r['projection']:.2f} s")
    line("**set-up + bookkeeping share** (outside f, grad f)",
         lambda r: f"**{100 * r['share']:.1f} %** "
         f"({'met' if r['share'] <= 0.10 else 'missed'})")
    line("set-up alone: `minimize_box`",
         lambda r: "n/a" if r["box"] is None else f"{r['box']:.3f} s")
    line("set-up alone: `scipy.optimize.minimize`",
         lambda r: "n/a" if r["scipy"] is None else f"{r['scipy']:.1f} s "
         f"({r['scipy'] / r['box']:.0f}x)")
    line("VmRSS before `sharpness`", lambda r: _mib(r["rss_before"]))
    line("peak increase during it (VmHWM - VmRSS before)", lambda r: _mib(r["increase"]))
    line("`ru_maxrss` at the end (whole child)", lambda r: _mib(r["maxrss"]))
    line("n-vectors allocated (persistent + one evaluation's)",
         lambda r: f"{r['vectors']:.1f} = {_mib(8 * r['n'] * r['vectors'])}")
    line("persistent n-vectors touched (pagemap)",
         lambda r: "n/a" if r["touched_persistent"] is None
         else f"{r['touched_persistent']:.1f} = {_mib(8 * r['n'] * r['touched_persistent'])}")
    line("one value+gradient alone: time, peak above baseline",
         lambda r: f"{r['value_and_gradient']:.2f} s, {_mib(r['eval_peak'])}")
    line("expected increase (touched + w + one evaluation's peak)",
         lambda r: _mib(r["expected_touched"]))
    return "\n".join(lines)


def parent():
    facts = machine_facts()
    command = "python benchmarks/bench_metric_scale.py " + " ".join(sys.argv[1:])
    print(f"{facts['nproc']} cores, {facts['cpu']}, {_gib(facts['memory'])}; load average "
          f"{' '.join(f'{x:.2f}' for x in facts['load_average'])}; TF {facts['tensorflow']}, "
          f"Keras {facts['keras']}, SciPy {facts['scipy']}", flush=True)
    common = [f"--maxiter={FLAGS.maxiter}", f"--batch_size={FLAGS.batch_size}",
              f"--eps={FLAGS.eps}", f"--c2_samples={FLAGS.c2_samples}",
              f"--scipy_setup={FLAGS.scipy_setup}"]
    if FLAGS.f1_samples is not None:
        common.append(f"--f1_samples={FLAGS.f1_samples}")
    if FLAGS.c2_maxiter is not None:
        common.append(f"--c2_maxiter={FLAGS.c2_maxiter}")
    rows, everything = [], {"machine": facts, "networks": {}}
    for name in [n.strip().upper() for n in FLAGS.networks]:
        path = SHARED_MNIST if name == "F1" else SHARED_CIFAR if name == "C2" else None
        if path is None:
            print(f"skipped {name}: this benchmark knows F1 and C2")
            continue
        if not path.is_file():
            print(f"skipped {name}: {path} is absent (the shared data lives beside the "
                  "dev checkout)")
            continue
        result = run_child(["--child=measure", f"--child_network={name}", *common])
        if result is None:
            continue
        setup = run_child(["--child=setup", f"--child_n={result['n']}", *common])
        rows.append(report(result, setup))
        everything["networks"][name] = {"metric": result, "setup": setup}
    facts["load_average_end"] = os.getloadavg()
    if not rows:
        return
    table = markdown(facts, rows, command)
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in facts['load_average_end'])}")
    print("\n" + table)
    if FLAGS.markdown:
        pathlib.Path(FLAGS.markdown).write_text(table + "\n")
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(everything, f, indent=1)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if FLAGS.child == "measure":
        measure_child()
    elif FLAGS.child == "setup":
        setup_child()
    else:
        parent()


if __name__ == "__main__":
    app.run(main)
