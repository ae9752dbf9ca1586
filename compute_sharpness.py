"""Sharpness (Metric 2.1) and top Hessian eigenvalues of SB and LB minimizers.

    python compute_sharpness.py --workdir runs/F1 --eps 1e-3,5e-4
    python compute_sharpness.py --workdir runs/F1 --subspace_dim 100 --hessian_topk 3
    python compute_sharpness.py --model m.keras --dataset npz:data.npz

Prints a Table 3/4-style table and writes ``<workdir>/sharpness.json`` (or
``<model>.sharpness.json``). See docs/sharpness.md; the logic lives in
`keras_sharpness.sharpness_cli`.
"""

from absl import flags

from keras_sharpness import cli

flags.DEFINE_string("workdir", None, "Run directory holding sb.keras, lb.keras and run.json.")
flags.DEFINE_string("model", None, "A single .keras checkpoint (instead of --workdir).")
flags.DEFINE_string("dataset", None, "Data source for --model (mnist, cifar10, cifar100, "
                    "npz:PATH, folder:PATH, digits); overrides run.json with --workdir.")
flags.DEFINE_string("data_dir", None, "TensorFlow Datasets directory.")
flags.DEFINE_string("output", None, "Report path (default <workdir>/sharpness.json or "
                    "<model>.sharpness.json).")
flags.DEFINE_multi_string("eps", ["1e-3"], "Box scale(s); repeat the flag or give a "
                          "comma-separated list (paper: 1e-3,5e-4).")
flags.DEFINE_integer("subspace_dim", 0, "0: full space (A = I); p: random n x p Gaussian "
                     "A (paper: 100).")
flags.DEFINE_integer("maxiter", 10, "L-BFGS-B iterations (paper: 10). The record keeps "
                     "phi after every iteration; with more than 10 it also gives the "
                     "paper's value (phi_paper).")
flags.DEFINE_integer("seed", 0, "Seed of A, the random start and the --num_samples subset.")
flags.DEFINE_string("start", "zero", "L-BFGS-B start y0: zero (the paper's reading), "
                    "corner (box corner along the gradient), random (uniform in the box), "
                    "or several separated by commas: phi is then the largest over them.")
flags.DEFINE_enum("subspace_scale", "gaussian", ["gaussian", "normalized"], "Scale of a "
                  "random A: gaussian (N(0,1) entries) or normalized (unit-norm columns).")
flags.DEFINE_enum("bn_eval", "batch", ["batch", "moving", "model"], "BatchNorm at "
                  "evaluation: batch statistics (Keras 1 mode=2, the paper), moving "
                  "statistics, or the mode the model was saved with.")
flags.DEFINE_integer("batch_size", 1000, "Fixed batch size of f (defines f in batch mode).")
flags.DEFINE_integer("num_samples", None, "Evaluate f on a seeded subset of the training "
                     "set (default: all of it).")
flags.DEFINE_integer("hessian_topk", 0, "Top Hessian eigenvalues by Lanczos (0: skip).")
flags.DEFINE_integer("hessian_trace_probes", 0, "Hutchinson probes for the Hessian trace "
                     "(0: skip; ~100 for a few % error).")
flags.DEFINE_bool("overwrite", False, "Recompute records already in the report.")

FLAGS = flags.FLAGS


def main(argv):
    from keras_sharpness import sharpness_cli

    del argv  # cli.run refuses positional arguments
    sharpness_cli.main(
        eps=FLAGS.eps, workdir=FLAGS.workdir, model=FLAGS.model, dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, output=FLAGS.output, subspace_dim=FLAGS.subspace_dim,
        maxiter=FLAGS.maxiter, seed=FLAGS.seed, start=FLAGS.start,
        subspace_scale=FLAGS.subspace_scale, bn_eval=FLAGS.bn_eval,
        batch_size=FLAGS.batch_size, num_samples=FLAGS.num_samples,
        hessian_topk=FLAGS.hessian_topk, hessian_trace_probes=FLAGS.hessian_trace_probes,
        overwrite=FLAGS.overwrite)


if __name__ == "__main__":
    cli.run(main)
