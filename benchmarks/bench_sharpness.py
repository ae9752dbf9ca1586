"""Benchmark of the sharpness machinery on F1 (issue 4), ratios from one run.

    python benchmarks/bench_sharpness.py [--data ../shared/data/mnist-t10k-split.npz]

Measures, on the same data and fixed batches, with batch-statistics BN:

* objective value+gradient (`TrainingLoss.value_and_gradient`, float64 at the
  boundary) against one plain forward+backward pass of the model in a
  `tf.function` (float32, gradients left as tensors);
* Hessian-vector product (forward-over-reverse) against value+gradient;
* the fraction of a `sharpness` run (eps 1e-3, 10 L-BFGS-B iterations, full
  space and a random 100-dimensional subspace) spent inside L-BFGS-B itself,
  in the objective, and in products with A; and SciPy's one-off set-up time
  for n bounds, which dominates the L-BFGS-B share in the full space.

The network is a freshly initialized F1 (seed 0): the cost of an evaluation
does not depend on the weights' values.

Timings are medians of ``--repeats`` calls after one warm-up (tracing) call.
Skips with a message when the data file is absent.
"""

import pathlib
import sys
import time

from absl import app, flags
from bench_common import SHARED_MNIST, alternating_medians, f1_objective

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()


flags.DEFINE_string("data", str(SHARED_MNIST), "MNIST-like npz (keras mnist.npz keys).")
flags.DEFINE_integer("num_samples", None, "Use a seeded subset of the training set.")
flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f.")
flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median).")
flags.DEFINE_integer("maxiter", 10, "L-BFGS-B iterations of the sharpness run.")
flags.DEFINE_string("output", None, "Also write the figures as JSON here.")
FLAGS = flags.FLAGS



def main(argv):
    del argv
    loaded = f1_objective(FLAGS.data, bn_eval="batch", batch_size=FLAGS.batch_size,
                          num_samples=FLAGS.num_samples)
    if loaded is None:
        return
    data, model, objective = loaded
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_sharpness import io
    from keras_sharpness.metric import sharpness

    w = objective.initial_point()
    v = np.random.default_rng(0).standard_normal(objective.num_params)
    x, y = data.x_train, data.y_train
    if FLAGS.num_samples is not None:  # the subset TrainingLoss takes (seed 0)
        index = np.sort(np.random.default_rng(0).choice(len(x), FLAGS.num_samples, replace=False))
        x, y = x[index], y[index]
    batches = [(tf.constant(x[i:i + FLAGS.batch_size]), tf.constant(y[i:i + FLAGS.batch_size]))
               for i in range(0, len(x), FLAGS.batch_size)]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function(reduce_retracing=True)
    def plain_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=False))
        return loss, tape.gradient(loss, model.trainable_variables)

    def plain_pass():
        total = 0.0
        for xb, yb in batches:
            loss, _ = plain_step(xb, yb)
            total += float(loss)
        return total

    repeats = FLAGS.repeats
    t_plain, t_value, t_grad, t_hvp = alternating_medians(
        [plain_pass, lambda: objective.value(w), lambda: objective.value_and_gradient(w),
         lambda: objective.hessian_vector_product(w, v)], repeats)
    result = sharpness(objective, eps=1e-3, maxiter=FLAGS.maxiter, start="zero")
    subspace = sharpness(objective, eps=1e-3, subspace_dim=100, maxiter=FLAGS.maxiter,
                         start="zero")
    # The one-off set-up of n bounds and one iteration on a free function:
    # SciPy's (Python loops over n) and `minimize_box`'s (which sharpness uses).
    import scipy.optimize

    from keras_sharpness.lbfgsb import minimize_box

    n = objective.num_params
    t = time.perf_counter()
    scipy.optimize.minimize(lambda y: (0.0, np.zeros(n)), np.zeros(n), jac=True,
                            method="L-BFGS-B", bounds=scipy.optimize.Bounds(-np.ones(n), np.ones(n)),
                            options={"maxiter": 1})
    t_scipy_setup = time.perf_counter() - t
    t = time.perf_counter()
    minimize_box(lambda y: (0.0, np.zeros(n)), np.zeros(n), -np.ones(n), np.ones(n),
                 maxiter=1, ftol=0.0, gtol=0.0, maxcor=10, maxls=20, maxfun=10)
    t_setup = time.perf_counter() - t
    figures = {
        "device": tf.config.list_logical_devices()[-1].device_type,
        "network": "F1", "num_params": objective.num_params,
        "num_samples": objective.num_samples, "batch_size": FLAGS.batch_size,
        "plain_forward_backward_s": t_plain, "value_s": t_value,
        "value_and_gradient_s": t_grad, "hvp_s": t_hvp,
        "gradient_over_plain": t_grad / t_plain, "value_over_plain": t_value / t_plain,
        "hvp_over_gradient": t_hvp / t_grad,
        "sharpness_seconds": result.seconds, "sharpness_evaluations": result.evaluations,
        "sharpness_iterations": result.iterations,
        "fraction_in_lbfgsb": result.solver_seconds / result.seconds,
        "fraction_in_objective": result.objective_seconds / result.seconds,
        "fraction_in_projection": result.projection_seconds / result.seconds,
        "lbfgsb_setup_s": t_setup, "scipy_lbfgsb_setup_s": t_scipy_setup,
        "subspace100_seconds": subspace.seconds,
        "subspace100_evaluations": subspace.evaluations,
        "subspace100_fraction_in_lbfgsb": subspace.solver_seconds / subspace.seconds,
        "subspace100_fraction_in_objective": subspace.objective_seconds / subspace.seconds,
        "subspace100_fraction_in_projection": subspace.projection_seconds / subspace.seconds,
        "versions": io.versions(),
    }
    print(f"F1, {objective.num_params} weights, {objective.num_samples} samples in batches "
          f"of {FLAGS.batch_size}, BN batch statistics, {figures['device']}, "
          f"median of {repeats}")
    print(f"plain forward+backward (tf.function): {t_plain:.3f} s")
    print(f"objective value:          {t_value:.3f} s  ({t_value / t_plain:.2f}x plain)")
    print(f"objective value+gradient: {t_grad:.3f} s  ({t_grad / t_plain:.2f}x plain)")
    print(f"Hessian-vector product:   {t_hvp:.3f} s  ({t_hvp / t_grad:.2f}x value+gradient)")
    print(f"sharpness eps=1e-3 full space, {result.iterations} iterations, "
          f"{result.evaluations} evaluations: {result.seconds:.2f} s; in L-BFGS-B "
          f"{100 * figures['fraction_in_lbfgsb']:.2f} %, in f and grad f "
          f"{100 * figures['fraction_in_objective']:.1f} %, in A products "
          f"{100 * figures['fraction_in_projection']:.2f} %")
    print(f"L-BFGS-B set-up for {n} bounds (and one iteration of a free function): "
          f"{t_setup:.3f} s ({100 * t_setup / result.seconds:.2f} % of the run; goal <= 10 %); "
          f"SciPy's own driver takes {t_scipy_setup:.2f} s")
    print(f"sharpness eps=1e-3 random subspace p=100, {subspace.iterations} iterations, "
          f"{subspace.evaluations} evaluations: {subspace.seconds:.2f} s; in L-BFGS-B "
          f"{100 * figures['subspace100_fraction_in_lbfgsb']:.2f} %, in f and grad f "
          f"{100 * figures['subspace100_fraction_in_objective']:.1f} %, in A products "
          f"(incl. generating A, A^T A, A+ x) "
          f"{100 * figures['subspace100_fraction_in_projection']:.1f} %")
    if FLAGS.output:
        io.write_json(FLAGS.output, figures)


if __name__ == "__main__":
    app.run(main)
