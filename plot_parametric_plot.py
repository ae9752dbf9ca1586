"""Trains SB and LB Adam from one x0 and plots the loss along the path between them.

Figure 3 of Keskar et al. (2017); ``python plot_parametric_plot.py --help``
lists the flags. The same command is installed as ``ks-plot``: both run
`keras_sharpness.commands.plot`. See docs/parametric_plot.md.
"""

from keras_sharpness import commands

if __name__ == "__main__":
    commands.plot()
