"""Benchmark of the per-example gradient statistics on F1 (issue 11), one run.

    python benchmarks/bench_noise_scale.py [--data ../shared/data/mnist-t10k-split.npz]

On the same data and fixed batches (``--num_samples`` samples, batches of
``--batch_size``), times

* one batch gradient pass, `TrainingLoss.value_and_gradient`, against
* the statistics pass of the noise scale, `TrainingLoss.gradient_moments`
  (per-example squared norms and per-batch gradient sums), and reports the
  ratio (goal: at most 3);

with BN moving statistics (``--bn_eval moving``: independent samples,
`tf.vectorized_map`, Dense layers by their inputs and output gradients) and,
for comparison,

* the same statistics from materialized per-example gradients (the
  vectorized per-example gradient rows, squared and summed in NumPy), the
  straightforward vectorization that the Dense-layer shortcut replaces;
* with batch-statistics BN the Jacobian rows of the first ``--batch_rows``
  samples, extrapolated to all samples (each row is a backward pass through
  the whole batch, so the full pass costs of the order of ``--batch_size``
  gradient passes).

The network is a freshly initialized F1 (seed 0): the cost does not depend on
the weights. Timings are medians of ``--repeats`` calls after one warm-up
(tracing) call. Skips with a message when the data file is absent.
"""

import pathlib
import sys

from absl import app, flags
from bench_common import SHARED_MNIST, f1_objective, median_seconds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()


flags.DEFINE_string("data", str(SHARED_MNIST), "MNIST-like npz (keras mnist.npz keys).")
flags.DEFINE_integer("num_samples", 2000, "Seeded subset of the training set.")
flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f.")
flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median).")
flags.DEFINE_list("chunks", ["100", "250", "1000"], "Chunk sizes of gradient_moments to time.")
flags.DEFINE_integer("materialized_chunk", 50, "Rows per call of the materialized variant.")
flags.DEFINE_integer("batch_rows", 16, "Jacobian rows timed with batch-statistics BN (0: skip).")
flags.DEFINE_string("output", None, "Also write the figures as JSON here.")
FLAGS = flags.FLAGS



def main(argv):
    del argv
    loaded = f1_objective(FLAGS.data, bn_eval="moving", batch_size=FLAGS.batch_size,
                          num_samples=FLAGS.num_samples)
    if loaded is None:
        return
    data, model, objective = loaded
    import numpy as np
    import tensorflow as tf

    from keras_sharpness import io
    from keras_sharpness.noise_scale import noise_scale_from_moments
    from keras_sharpness.objective import TrainingLoss

    w = objective.initial_point()
    repeats = FLAGS.repeats
    figures = {"device": tf.config.list_logical_devices()[-1].device_type, "network": "F1",
               "num_params": objective.num_params, "num_samples": objective.num_samples,
               "batch_size": FLAGS.batch_size, "repeats": repeats}

    t_gradient = median_seconds(lambda: objective.value_and_gradient(w), repeats)
    figures["value_and_gradient_s"] = t_gradient
    print(f"F1, {objective.num_params} weights, {objective.num_samples} samples in batches of "
          f"{FLAGS.batch_size}, {figures['device']}, median of {repeats}")
    print(f"BN moving statistics: value_and_gradient {t_gradient:.3f} s")
    for chunk in [int(c) for c in FLAGS.chunks]:
        seconds = median_seconds(lambda: objective.gradient_moments(w, chunk=chunk), repeats)
        figures[f"moments_chunk{chunk}_s"] = seconds
        figures[f"moments_chunk{chunk}_over_gradient"] = seconds / t_gradient
        print(f"  gradient_moments chunk {chunk:5d}: {seconds:.3f} s "
              f"({seconds / t_gradient:.2f}x value_and_gradient)")

    # The same statistics from materialized per-example gradient rows.
    rows_fn = objective._compiled("rows")
    trainable, fixed = objective._tensors(w, None)
    chunk = FLAGS.materialized_chunk

    def materialized():
        square_sum, total = 0.0, np.zeros(objective.num_params)
        for xb, yb in objective._batches:
            for start in range(0, int(xb.shape[0]), chunk):
                rows = rows_fn(trainable, fixed, xb, yb, start,
                               min(start + chunk, int(xb.shape[0])))
                square_sum += float(tf.reduce_sum(tf.square(rows)))
                total += tf.reduce_sum(rows, 0).numpy()
        return square_sum, total

    seconds = median_seconds(materialized, 1)
    figures["materialized_s"] = seconds
    figures["materialized_over_gradient"] = seconds / t_gradient
    print(f"  materialized per-example rows (vectorized_map, chunk {chunk}): {seconds:.3f} s "
          f"({seconds / t_gradient:.2f}x value_and_gradient)")
    moments = objective.gradient_moments(w)
    square_sum, total = materialized()
    figures["materialized_vs_moments_rel_diff"] = abs(
        square_sum - moments.square_norm_sums.sum()) / square_sum
    b_simple = noise_scale_from_moments(moments.gradient_sums, moments.square_norm_sums,
                                        moments.counts)[0]
    figures["b_simple_moving"] = b_simple
    print(f"  B_simple {b_simple:.2f}; the two agree on sum |g_i|^2 to "
          f"{figures['materialized_vs_moments_rel_diff']:.1e} relative")

    if FLAGS.batch_rows > 0:
        batch = TrainingLoss(model, data.x_train, data.y_train, bn_eval="batch",
                             batch_size=FLAGS.batch_size, num_samples=FLAGS.num_samples)
        t_batch_gradient = median_seconds(lambda: batch.value_and_gradient(w), repeats)
        function = batch._compiled("batch_moments")
        trainable, fixed = batch._tensors(w, None)
        xb, yb = batch._batches[0]
        rows = FLAGS.batch_rows
        seconds = median_seconds(lambda: function(trainable, fixed, xb, yb, 0, rows)[0].numpy(),
                                 1)
        full = seconds * batch.num_samples / rows
        figures.update(batch_value_and_gradient_s=t_batch_gradient,
                       batch_jacobian_rows=rows, batch_jacobian_rows_s=seconds,
                       batch_moments_extrapolated_s=full,
                       batch_moments_extrapolated_over_gradient=full / t_batch_gradient)
        print(f"BN batch statistics: value_and_gradient {t_batch_gradient:.3f} s; "
              f"{rows} Jacobian rows {seconds:.3f} s, all {batch.num_samples} rows "
              f"~{full:.0f} s ({full / t_batch_gradient:.0f}x, extrapolated)")
    figures["versions"] = io.versions()
    if FLAGS.output:
        io.write_json(FLAGS.output, figures)


if __name__ == "__main__":
    app.run(main)
