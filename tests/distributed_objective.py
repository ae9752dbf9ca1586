"""Run as a script by tests/test_objective.py: f, grad f, Hv and Metric 2.1 under a
MirroredStrategy over two logical CPU devices against one device (prints JSON)."""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import numpy as np  # noqa: E402

sys.path.insert(0, sys.argv[1])
from toy_models import tanh_bn_model, toy_data  # noqa: E402

from keras_sharpness import metric  # noqa: E402
from keras_sharpness.objective import TrainingLoss  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x, y = toy_data(70)
model = tanh_bn_model()
# 70 samples in batches of 20: batches 1-2 and 3-4 on the two replicas, the last alone.
one = TrainingLoss(model, x, y, batch_size=20)
two = TrainingLoss(model, x, y, batch_size=20, strategy=strategy)
w = one.initial_point() + 0.01
v = np.random.default_rng(0).standard_normal(one.num_params)
out = {"replicas": strategy.num_replicas_in_sync}
for name, a, b in (("value", one.value(w), two.value(w)),
                   ("accuracy", one.loss_and_accuracy(w)[1], two.loss_and_accuracy(w)[1]),
                   ("gradient", one.gradient(w), two.gradient(w)),
                   ("hvp", one.hessian_vector_product(w, v), two.hessian_vector_product(w, v)),
                   ("phi", metric.sharpness(one, eps=1e-2, maxiter=3).phi,
                    metric.sharpness(two, eps=1e-2, maxiter=3).phi)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out[name] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
print(json.dumps(out))
