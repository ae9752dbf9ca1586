"""keras_sharpness: sharp minima and large-batch training in TensorFlow 2 + Keras 3.

A port and extension of the code behind Keskar et al., *On Large-Batch
Training for Deep Learning: Generalization Gap and Sharp Minima* (ICLR 2017).

Data flows one way: `data` -> `networks` -> `training` (SB / LB minimizers)
-> analyses (`objective`, `parametric`, `metric`, `hessian`) -> reports.

The calls a researcher needs, on any Keras 3 model (docs/own_model.md)::

    import keras_sharpness as ks

    f = ks.TrainingLoss(model, x_train, y_train, bn_eval="batch")  # f(w), grad, Hv
    result = ks.sharpness(f, eps=1e-3, maxiter=10)                 # Metric 2.1
    result.phi, result.ascent                                      # ... and its ascent
    ks.top_eigenvalues(f, k=3).eigenvalues                         # Hessian spectrum
    ks.hessian_trace(f, num_probes=100).trace                      # Hutchinson
    ks.spectral_density(f, lanczos_steps=90).density()             # SLQ density
    ks.adaptive_sharpness(f, 0.05, kind="worst")                   # adaptive (ASAM)
    ks.pac_bayes_sigma(f).sigma                                    # Jiang et al.
    ks.gradient_noise_scale(f).b_simple                            # McCandlish et al.
    ks.rescale(model, alpha=10.0)                                  # Dinh et al. twin
    curve = ks.parametric_curve(sb_model, lb_model, data)          # Figure 3
    ks.plot_parametric(curve, "figure")                            # figure.pdf, .png

They are imported on first use, so ``import keras_sharpness`` (and every
command's ``--help``) does not wait for TensorFlow.
"""

import importlib

__version__ = "0.1.0"

#: Public name -> module that defines it.
_API = {
    "TrainingLoss": "keras_sharpness.objective",
    "sharpness": "keras_sharpness.metric",
    "sharpness_multistart": "keras_sharpness.metric",
    "top_eigenvalues": "keras_sharpness.hessian",
    "hessian_trace": "keras_sharpness.hessian",
    "spectral_density": "keras_sharpness.hessian",
    "plot_spectral_density": "keras_sharpness.plotting",
    "adaptive_sharpness": "keras_sharpness.flatness",
    "pac_bayes_sigma": "keras_sharpness.flatness",
    "gradient_noise_scale": "keras_sharpness.noise_scale",
    "rescale": "keras_sharpness.reparam",
    "filter_normalized_direction": "keras_sharpness.landscape",
    "landscape_1d": "keras_sharpness.landscape",
    "landscape_2d": "keras_sharpness.landscape",
    "MeasureSettings": "keras_sharpness.measure",
    "parametric_curve": "keras_sharpness.parametric",
    "plot_parametric": "keras_sharpness.plotting",
    "build_network": "keras_sharpness.networks",
    "load_arrays": "keras_sharpness.data",
    "ArrayData": "keras_sharpness.data",
    "paired_comparison": "keras_sharpness.statistics",
    "UserError": "keras_sharpness.errors",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'keras_sharpness' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
