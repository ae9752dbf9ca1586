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
