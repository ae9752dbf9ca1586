"""keras_sharpness: sharp minima and large-batch training in TensorFlow 2 + Keras 3.

A port and extension of the code behind Keskar et al., *On Large-Batch
Training for Deep Learning: Generalization Gap and Sharp Minima* (ICLR 2017).

Data flows one way: `data` -> `networks` -> `training` (SB / LB minimizers)
-> analyses (`objective`, `parametric`, `sharpness`, `hessian`) -> reports.
"""

__version__ = "0.1.0"
