"""Cost of the Hessian measures on F1, ratios from one run.

    python benchmarks/bench_measures.py [--data ../shared/data/mnist-t10k-split.npz]

On a freshly initialized F1 (seed 0; the cost does not depend on the
weights' values) and ``--num_samples`` MNIST training images (synthetic
28x28 images when the data file is absent), batch-statistics BN, measures
side by side:

* one gradient, `TrainingLoss.value_and_gradient`;
* one Hessian-vector product, `TrainingLoss.hessian_vector_product`, and
  the ratio HVP / gradient (goal <= 2.5: forward-over-reverse is about two
  to three passes);
* stochastic Lanczos quadrature, `spectral_density` with one probe of
  ``--lanczos_steps`` m steps, against m separately timed HVPs: the overhead
  of the Lanczos bookkeeping (reorthogonalization against the basis,
  float64 vectors, the tridiagonal eigenproblem), goal <= 1.10;
* Hutchinson's trace, `hessian_trace` with ``--probes`` probes, against as
  many HVPs.

Timings are medians of ``--repeats`` calls after one warm-up (tracing) call.
"""

import os
import pathlib
import statistics
import sys

from absl import app, flags
from bench_common import SHARED_MNIST, median_seconds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()


flags.DEFINE_string("data", str(SHARED_MNIST), "MNIST-like npz; synthetic data when absent.")
flags.DEFINE_integer("num_samples", 2000, "Samples of f.")
flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f.")
flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median).")
flags.DEFINE_integer("lanczos_steps", 90, "SLQ steps m per probe (the package's default).")
flags.DEFINE_integer("probes", 10, "Hutchinson probes.")
flags.DEFINE_string("output", None, "Also write the figures as JSON here.")
FLAGS = flags.FLAGS



def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_sharpness import io
    from keras_sharpness.hessian import hessian_trace, spectral_density
    from keras_sharpness.networks import build_network
    from keras_sharpness.objective import TrainingLoss

    if os.path.isfile(FLAGS.data):
        from keras_sharpness.data import load_arrays

        data = load_arrays(f"npz:{FLAGS.data}")
        x, y, source = data.x_train, data.y_train, "MNIST"
    else:
        print(f"{FLAGS.data} is absent: synthetic 28x28 images with 10 classes")
        rng = np.random.default_rng(0)
        x = rng.random((FLAGS.num_samples, 28, 28, 1), dtype=np.float32)
        y, source = rng.integers(0, 10, FLAGS.num_samples), "synthetic"
    keras.utils.set_random_seed(0)
    model = build_network("F1", x.shape[1:], 10, bn_eval="batch")
    objective = TrainingLoss(model, x, y, bn_eval="batch", batch_size=FLAGS.batch_size,
                             num_samples=min(FLAGS.num_samples, len(x)))
    w = objective.initial_point()
    v = np.random.default_rng(0).standard_normal(objective.num_params)
    repeats, m = FLAGS.repeats, FLAGS.lanczos_steps

    t_grad = median_seconds(lambda: objective.value_and_gradient(w), repeats)
    t_hvp = median_seconds(lambda: objective.hessian_vector_product(w, v), repeats)

    def m_products():
        for _ in range(m):
            objective.hessian_vector_product(w, v)

    def slq():
        result = spectral_density(objective, lanczos_steps=m, seed=0)
        assert result.products == m, result.steps

    def trace():
        hessian_trace(objective, FLAGS.probes, seed=0)

    def probe_products():
        for _ in range(FLAGS.probes):
            objective.hessian_vector_product(w, v)

    # Interleaved, so that a change in the machine's load hits both sides.
    t_m, t_slq, t_probes, t_trace = [], [], [], []
    for _ in range(repeats):
        t_m.append(median_seconds(m_products, 1, warm_up=False))
        t_slq.append(median_seconds(slq, 1, warm_up=False))
        t_probes.append(median_seconds(probe_products, 1, warm_up=False))
        t_trace.append(median_seconds(trace, 1, warm_up=False))
    t_m, t_slq = statistics.median(t_m), statistics.median(t_slq)
    t_probes, t_trace = statistics.median(t_probes), statistics.median(t_trace)
    figures = {
        "device": tf.config.list_logical_devices()[-1].device_type, "network": "F1",
        "data": source, "num_params": objective.num_params,
        "num_samples": objective.num_samples, "batch_size": FLAGS.batch_size,
        "repeats": repeats, "value_and_gradient_s": t_grad, "hvp_s": t_hvp,
        "hvp_over_gradient": t_hvp / t_grad, "lanczos_steps": m,
        "m_hvps_s": t_m, "slq_s": t_slq, "slq_over_m_hvps": t_slq / t_m,
        "probes": FLAGS.probes, "probe_hvps_s": t_probes, "trace_s": t_trace,
        "trace_over_hvps": t_trace / t_probes, "versions": io.versions(),
    }
    print(f"F1, {objective.num_params} weights, {objective.num_samples} {source} samples in "
          f"batches of {FLAGS.batch_size}, BN batch statistics, {figures['device']}, "
          f"median of {repeats}")
    print(f"value+gradient:          {t_grad:.3f} s")
    print(f"Hessian-vector product:  {t_hvp:.3f} s  ({t_hvp / t_grad:.2f}x value+gradient; "
          f"goal <= 2.5)")
    print(f"SLQ, 1 probe, m = {m}:   {t_slq:.2f} s against {m} HVPs {t_m:.2f} s "
          f"({t_slq / t_m:.3f}x; goal <= 1.10)")
    print(f"trace, {FLAGS.probes} probes:       {t_trace:.2f} s against {FLAGS.probes} HVPs "
          f"{t_probes:.2f} s ({t_trace / t_probes:.3f}x)")
    if FLAGS.output:
        io.write_json(FLAGS.output, figures)


if __name__ == "__main__":
    app.run(main)
