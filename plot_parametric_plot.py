"""Trains SB and LB Adam from one x0 and plots the loss along the path between them.

Figure 3 of Keskar et al. (2017), for any of the paper's six networks:

    python plot_parametric_plot.py -n C1
    python plot_parametric_plot.py -n F1 --dataset=npz:../shared/data/mnist-t10k-split.npz
    python plot_parametric_plot.py -n F1 --dataset=digits      # offline demo
    python plot_parametric_plot.py -n C1 --augment --workdir=runs/C1-augment  # Appendix E

Writes runs/<network>/ (checkpoints, history, run.json, parametric.json and
<network>.{pdf,png}; --figures_dir puts the figures elsewhere). Run the same command again after a kill to
resume. See docs/parametric_plot.md.
"""

from absl import flags

from keras_sharpness import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("network", None, "F1, F2, C1, C2, C3 or C4.", short_name="n")
flags.DEFINE_string("dataset", None,
                    "mnist, cifar10, cifar100, npz:PATH, folder:PATH or digits; "
                    "default: the network's data set in the paper (F2 has none).")
flags.DEFINE_string("data_dir", None, "TensorFlow Datasets directory.")
flags.DEFINE_integer("train_size", None, "Seeded subset of the training set (all if unset).")
flags.DEFINE_integer("test_size", None, "Seeded subset of the test set (all if unset).")
flags.DEFINE_float("sb_batch_size", 256, "Small batch: samples, or a fraction < 1 of the training set.")
flags.DEFINE_float("lb_batch_size", None, "Large batch: samples, or a fraction < 1 "
                   "of the training set (the paper: 0.1). Default: the released 5000, or "
                   "10 % of a training set smaller than 10000.")
cli.define_stop_rule_flags()
flags.adopt_module_key_flags(cli)  # --help lists them with this script's flags
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multiworker"],
                  "default: one device; mirrored: all local devices, synchronized "
                  "BN; multiworker: machines listed in TF_CONFIG.")
flags.DEFINE_integer("accumulation_steps", 1, "LB gradient accumulation: micro-batches "
                     "per Adam step (BN then sees a micro-batch).")
flags.DEFINE_integer("num_points", 25, "Number of alphas.")
flags.DEFINE_float("alpha_min", -1.0, "Smallest alpha.")
flags.DEFINE_float("alpha_max", 2.0, "Largest alpha.")
flags.DEFINE_enum("curve", "linear", ["linear", "sin"], "linear: alpha x_LB + (1-alpha) "
                  "x_SB; sin: sin(alpha pi/2) x_LB + cos(alpha pi/2) x_SB.")
flags.DEFINE_enum("bn_eval", "batch", ["batch", "recompute", "moving"],
                  "BatchNorm along the path: batch statistics (original), statistics "
                  "recomputed at each point, or interpolated moving statistics.")
flags.DEFINE_integer("eval_batch_size", 1000, "Evaluation batch size (defines f with BN batch statistics).")
flags.DEFINE_string("workdir", None, "Checkpoints and JSON; default runs/<network>.")
flags.DEFINE_string("figures_dir", None, "Where <network>.pdf and .png go (default: "
                    "--workdir).")
flags.DEFINE_integer("seed", 0, "Seed of x0, data order, dropout and subsets.")
flags.DEFINE_integer("verbose", None, "0 silent, 1 progress bars, 2 one line per epoch "
                     "(default: 1 on a terminal, 2 when output goes to a file).")
# Appendix E: attempts to fix large-batch training.
flags.DEFINE_bool("augment", False, "Augment training images: horizontal flips, rotations "
                  "up to 10 degrees, translations up to 0.2 (image inputs only).")
flags.DEFINE_float("conservative_lambda", 0.0, "Conservative training (Li et al. 2014) "
                   "with this proximal weight when > 0 (the paper: 1e-3).")
flags.DEFINE_integer("conservative_steps", 3, "Adam iterations per batch of conservative training.")
flags.DEFINE_float("adversarial_eps", 0.0, "FGSM adversarial training (Goodfellow et al. "
                   "2014) with this input step when > 0 (inputs are in [0, 1]).")
flags.DEFINE_float("adversarial_clean_weight", 0.5, "alpha in alpha J(x) + (1 - alpha) "
                   "J(x_adv); 0 trains on adversarial inputs only.")
flags.DEFINE_enum("remedies_apply_to", "lb", ["lb", "sb", "both"],
                  "Which runs get --augment / --conservative_lambda / --adversarial_eps.")
flags.mark_flag_as_required("network")


def main(argv):
    del argv
    from keras_sharpness import parametric_plot

    parametric_plot.run(
        FLAGS.network, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        train_size=FLAGS.train_size, test_size=FLAGS.test_size,
        sb_batch_size=FLAGS.sb_batch_size, lb_batch_size=FLAGS.lb_batch_size,
        epochs=FLAGS.epochs, until_converged=FLAGS.until_converged,
        patience=FLAGS.patience, min_delta=FLAGS.min_delta, max_epochs=FLAGS.max_epochs,
        relative_min_delta=FLAGS.relative_min_delta, strategy=FLAGS.strategy, accumulation_steps=FLAGS.accumulation_steps,
        num_points=FLAGS.num_points, alpha_min=FLAGS.alpha_min, alpha_max=FLAGS.alpha_max,
        curve=FLAGS.curve, bn_eval=FLAGS.bn_eval, eval_batch_size=FLAGS.eval_batch_size,
        workdir=FLAGS.workdir, figures_dir=FLAGS.figures_dir, seed=FLAGS.seed,
        verbose=cli.default_verbosity() if FLAGS.verbose is None else FLAGS.verbose,
        augment=FLAGS.augment,
        conservative_lambda=FLAGS.conservative_lambda,
        conservative_steps=FLAGS.conservative_steps, adversarial_eps=FLAGS.adversarial_eps,
        adversarial_clean_weight=FLAGS.adversarial_clean_weight,
        remedies_apply_to=FLAGS.remedies_apply_to)


if __name__ == "__main__":
    cli.run(main)
