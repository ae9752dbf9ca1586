"""What the benchmark scripts share: where the real data is, and how they time.

Imported as ``bench_common`` (Python puts a script's own folder first on
its path).
"""

import os
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


def f1_objective(data_path, *, bn_eval, batch_size, num_samples=None):
    """``(data, model, objective)``: a fresh F1 (seed 0, batch-statistics BN)
    and its f on the MNIST-like npz at `data_path`; None, after saying so,
    where that file is absent (a user's clone has no shared data)."""
    if not os.path.isfile(data_path):
        print(f"skipped: {data_path} is absent (the shared MNIST split lives beside "
              "the dev checkout)")
        return None
    import keras

    from keras_sharpness.data import load_arrays
    from keras_sharpness.networks import build_network
    from keras_sharpness.objective import TrainingLoss

    data = load_arrays(f"npz:{data_path}")
    keras.utils.set_random_seed(0)
    model = build_network("F1", data.info.input_shape, data.info.num_classes, bn_eval="batch")
    objective = TrainingLoss(model, data.x_train, data.y_train, bn_eval=bn_eval,
                             batch_size=batch_size, num_samples=num_samples)
    return data, model, objective
