"""Dinh et al. (2017): which registry measures survive a function-preserving rescaling.

The adaptive measures perturb each weight relative to |w|, so they see the
same loss surface in the rescaled network; Metric 2.1's box is relative to
|x| + 1, and the Hessian is not invariant at all. Measured through the
registry (`keras_sharpness.measure.MEASURES`), as compute_sharpness takes them.
"""

import keras
import numpy as np
import pytest

from keras_sharpness import measure, metric
from keras_sharpness.measure import MeasureSettings
from keras_sharpness.objective import TrainingLoss
from keras_sharpness.reparam import invariance
from toy_models import toy_data


def relu_net(seed=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(6, activation="relu"), keras.layers.Dense(3)])


def registry(name, settings):
    def take(objective):
        value, _, _ = measure.MEASURES[name].take(objective, settings, None, print)
        return value
    return take


def test_adaptive_measures_are_invariant_and_metric_21_is_not():
    x, y = toy_data(60)
    settings = MeasureSettings(adaptive_rho=0.05, adaptive_steps=5, adaptive_samples=8,
                               hessian_topk=1, seed=2)
    measures = {name: registry(name, settings)
                for name in ("adaptive_worst", "adaptive_average", "hessian_top")}
    measures["sharpness"] = lambda f: metric.sharpness(f, eps=1e-2, maxiter=5).phi
    rows = invariance(relu_net(), lambda m: TrainingLoss(m, x, y, batch_size=60), measures,
                      alpha=8.0, rtol=1e-3)
    by_name = {row["measure"]: row for row in rows}
    assert by_name["adaptive_worst"]["invariant"] and by_name["adaptive_average"]["invariant"]
    assert by_name["adaptive_worst"]["before"] > 0
    assert not by_name["hessian_top"]["invariant"]
    assert not by_name["sharpness"]["invariant"]
    assert abs(by_name["hessian_top"]["relative_change"]) > 0.5
    assert np.isfinite(by_name["sharpness"]["after"])
