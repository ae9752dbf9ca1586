"""Sharpness (Metric 2.1) and top Hessian eigenvalues of SB and LB minimizers.

``python compute_sharpness.py --help`` lists the flags. The same command is
installed as ``ks-sharpness``: both run `keras_sharpness.commands.sharpness`
(flags), which calls `keras_sharpness.sharpness_cli` (the logic). See
docs/sharpness.md.
"""

from keras_sharpness import commands

if __name__ == "__main__":
    commands.sharpness()
