"""What the benchmark scripts share: where the real data is, and how they time.

Imported as ``bench_common`` (Python puts a script's own folder first on
its path).
"""

import pathlib
import statistics
import time

#: The official 10k MNIST test images split 8,000 / 2,000 (`../shared/data`,
#: beside the developers' checkout; absent from a user's clone).
SHARED_MNIST = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
                / "mnist-t10k-split.npz")


def median_seconds(fn, repeats, *, warm_up=True):
    """Median wall time of ``repeats`` calls of `fn`, after one untimed call
    (tracing) unless ``warm_up`` is False."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def alternating_medians(fns, repeats):
    """Median wall time of each of `fns`, timed in turn (one call of each per
    round, after one untimed call of each): a change in the machine's load
    during the run then falls on all of them alike, which sequential blocks
    of repeats do not give on a shared machine."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            t = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - t)
    return [statistics.median(spent) for spent in times]
