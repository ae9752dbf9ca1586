"""Cross-check of keras_sharpness' Hessian tools against PyHessian (PyTorch).

    pip install torch pyhessian
    python benchmarks/pyhessian_check.py [--data ../shared/data/mnist-t10k-split.npz]

Not part of the test suite (it needs PyTorch). It builds a small F1-like
network (Flatten, ``--widths`` x [Dense, BatchNorm, ReLU], Dense logits),
trains it briefly in Keras so that the point and the BatchNorm moving
statistics are not those of an initialization, copies every weight into the
equivalent `torch.nn.Module`, checks that both give the same logits, then
computes on ``--num_samples`` images (MNIST from the shared split when
present, else synthetic):

* the top Hessian eigenvalue: PyHessian's power iteration (``maxIter``
  1000, ``tol`` 1e-6) against `keras_sharpness.top_eigenvalues` (Lanczos,
  tol 1e-6); asserts a relative difference <= ``--max_rel`` (1 %);
* tr(H): Hutchinson with ``--probes`` Rademacher probes in both (PyHessian's
  stop rule disabled by ``tol=-1``), each with its standard error, and the
  exact trace (the sum of ``e_i^T H e_i`` over all n unit vectors, from
  PyTorch's `torch.func` HVPs) when n <= ``--exact_max``; asserts both
  estimates lie within 3 standard errors of the exact trace (and of each
  other), and reports their relative differences;
* the largest node of SLQ (``--lanczos_steps`` steps, one probe) in both
  (PyHessian's ``density``, `keras_sharpness.spectral_density`) against the
  top eigenvalue (reported; Lanczos' extreme node converges first).

Both losses are the mean cross-entropy over all samples: PyHessian gets the
whole set as one batch (its criterion averages over the batch), and
`TrainingLoss` uses BatchNorm's moving statistics (``bn_eval="moving"``, as
PyTorch's ``eval()`` mode that PyHessian sets).
"""

import os
import pathlib
import sys
import time

from absl import app, flags
from bench_common import SHARED_MNIST

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from keras_sharpness import cli  # noqa: E402

cli.quiet_tensorflow()


flags.DEFINE_string("data", str(SHARED_MNIST), "MNIST-like npz; synthetic data when absent.")
flags.DEFINE_integer("num_samples", 1000, "Samples of f (one PyHessian batch).")
flags.DEFINE_list("widths", ["32", "32"], "Hidden layer widths.")
flags.DEFINE_integer("train_epochs", 3, "Keras training epochs before measuring (Adam).")
flags.DEFINE_integer("probes", 500, "Hutchinson probes in each library.")
flags.DEFINE_integer("lanczos_steps", 90, "SLQ Lanczos steps.")
flags.DEFINE_integer("exact_max", 30000, "Compute the exact trace when n is at most this.")
flags.DEFINE_float("max_rel", 0.01, "Largest relative difference of the top eigenvalues.")
flags.DEFINE_integer("seed", 0, "Seed of data subset, initialization and probes.")
FLAGS = flags.FLAGS

BN_EPSILON = 1e-3  # Keras' default; PyTorch's BatchNorm1d is given the same


def load_data(num_samples, seed):
    import numpy as np

    if os.path.isfile(FLAGS.data):
        from keras_sharpness.data import load_arrays

        data = load_arrays(f"npz:{FLAGS.data}")
        index = np.sort(np.random.default_rng(seed).choice(len(data.x_train), num_samples,
                                                           replace=False))
        return data.x_train[index].astype(np.float32), data.y_train[index].astype(np.int64), "MNIST"
    print(f"{FLAGS.data} is absent: synthetic 28x28 data with 10 classes")
    rng = np.random.default_rng(seed)
    x = rng.random((num_samples, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, num_samples)
    return x, y, "synthetic"


def keras_model(input_shape, widths, classes, seed):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    h = keras.layers.Flatten()(inputs)
    for width in widths:
        h = keras.layers.Dense(width)(h)
        h = keras.layers.BatchNormalization(epsilon=BN_EPSILON)(h)
        h = keras.layers.Activation("relu")(h)
    return keras.Model(inputs, keras.layers.Dense(classes)(h), name="F1_small")


def torch_copy(model, widths, in_features, classes):
    """The same network in PyTorch, with the Keras weights and moving statistics."""
    import numpy as np
    import torch

    layers, previous = [torch.nn.Flatten()], in_features
    for width in widths:
        layers += [torch.nn.Linear(previous, width),
                   torch.nn.BatchNorm1d(width, eps=BN_EPSILON), torch.nn.ReLU()]
        previous = width
    layers.append(torch.nn.Linear(previous, classes))
    net = torch.nn.Sequential(*layers)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    norms = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    batchnorm = [m for m in net if isinstance(m, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        for source, target in zip(dense, linear):
            kernel, bias = (np.asarray(v) for v in source.get_weights())
            target.weight.copy_(torch.from_numpy(kernel.T.copy()))
            target.bias.copy_(torch.from_numpy(bias))
        for source, target in zip(norms, batchnorm):
            gamma, beta, mean, variance = (np.asarray(v) for v in source.get_weights())
            target.weight.copy_(torch.from_numpy(gamma))
            target.bias.copy_(torch.from_numpy(beta))
            target.running_mean.copy_(torch.from_numpy(mean))
            target.running_var.copy_(torch.from_numpy(variance))
    return net.eval()


# Run in a child process: `torch.func` crashes (SIGSEGV) in a process that has
# imported TensorFlow (seen with torch 2.14 and TensorFlow 2.21 on Linux).
EXACT_TRACE_WORKER = """
import sys
import torch
from torch.func import functional_call, grad, jvp, vmap

net, x, y = torch.load(sys.argv[1], weights_only=False)
chunk = int(sys.argv[2])
names = [name for name, _ in net.named_parameters()]
params = [p.detach() for _, p in net.named_parameters()]
buffers = dict(net.named_buffers())
shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
n = sum(sizes)
w = torch.cat([p.reshape(-1) for p in params])

def loss(flat):
    parts = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
    out = functional_call(net, {**dict(zip(names, parts)), **buffers}, (x,))
    return torch.nn.functional.cross_entropy(out, y)

hvp = vmap(lambda t: jvp(grad(loss), (w,), (t,))[1])
total = 0.0
with torch.no_grad():
    for start in range(0, n, chunk):
        index = torch.arange(start, min(start + chunk, n))
        tangents = torch.zeros(len(index), n)
        tangents[torch.arange(len(index)), index] = 1.0
        total += float(hvp(tangents)[torch.arange(len(index)), index].double().sum())
print(repr(total))
"""


def torch_exact_trace(net, x, y, chunk=256):
    """sum_i e_i^T H e_i by PyTorch (`torch.func`, vmapped forward-over-reverse
    HVPs of the same mean cross-entropy), in a child process."""
    import subprocess
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "problem.pt")
        torch.save((net, x, y), path)
        done = subprocess.run([sys.executable, "-c", EXACT_TRACE_WORKER, path, str(chunk)],
                              capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def patch_torch_eig():
    """PyHessian 0.1's ``density`` calls ``torch.eig``, removed in PyTorch 1.9.

    Its T is symmetric, so `torch.linalg.eigh` gives the same values (in the
    old layout: a column of real parts and one of zero imaginary parts).
    """
    import torch

    def eig(matrix, eigenvectors=False):
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], 1), vectors

    torch.eig = eig


def main(argv):
    del argv
    import keras
    import numpy as np
    import torch
    from pyhessian import hessian as pyhessian

    from keras_sharpness.hessian import hessian_trace, spectral_density, top_eigenvalues
    from keras_sharpness.objective import TrainingLoss

    patch_torch_eig()
    torch.manual_seed(FLAGS.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    widths = [int(w) for w in FLAGS.widths]
    x, y, source = load_data(FLAGS.num_samples, FLAGS.seed)
    classes = 10
    model = keras_model(x.shape[1:], widths, classes, FLAGS.seed)
    if FLAGS.train_epochs:
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=100, epochs=FLAGS.train_epochs, verbose=0, shuffle=True)
    net = torch_copy(model, widths, int(np.prod(x.shape[1:])), classes)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)
    with torch.no_grad():
        torch_logits = net(xt).numpy()
    keras_logits = np.asarray(model(x, training=False))
    gap = float(np.abs(torch_logits - keras_logits).max())
    assert gap < 1e-4 * max(1.0, float(np.abs(keras_logits).max())), gap

    objective = TrainingLoss(model, x, y, bn_eval="moving", batch_size=len(x))
    n = objective.num_params
    with torch.no_grad():
        torch_loss = float(torch.nn.functional.cross_entropy(net(xt), yt))
    print(f"{source}, {len(x)} samples, widths {widths}, n = {n} weights, "
          f"f: Keras {objective.value(objective.initial_point()):.6f}, "
          f"PyTorch {torch_loss:.6f}; logits differ by at most {gap:.1e}")
    assert n == sum(p.numel() for p in net.parameters())

    criterion = torch.nn.CrossEntropyLoss()
    reference = pyhessian(net, criterion, data=(xt, yt), cuda=False)

    t = time.perf_counter()
    top_torch = reference.eigenvalues(maxIter=1000, tol=1e-6, top_n=1)[0][0]
    t_top_torch = time.perf_counter() - t
    ours = top_eigenvalues(objective, k=1, tol=1e-6, seed=FLAGS.seed)
    top_ours = ours.eigenvalues[0]
    rel_top = abs(top_ours - top_torch) / abs(top_torch)
    print(f"top eigenvalue: PyHessian {top_torch:.6g} ({t_top_torch:.1f} s), "
          f"keras_sharpness {top_ours:.6g} ({ours.seconds:.1f} s, {ours.products} HVPs); "
          f"relative difference {rel_top:.2e}")

    t = time.perf_counter()
    samples = np.asarray(reference.trace(maxIter=FLAGS.probes, tol=-1.0))
    t_trace_torch = time.perf_counter() - t
    trace_torch = float(samples.mean())
    se_torch = float(samples.std(ddof=1) / np.sqrt(len(samples)))
    trace = hessian_trace(objective, FLAGS.probes, seed=FLAGS.seed)
    combined = float(np.hypot(se_torch, trace.standard_error))
    rel_trace = abs(trace.trace - trace_torch) / abs(trace_torch)
    print(f"trace ({FLAGS.probes} probes each): PyHessian {trace_torch:.6g} +- {se_torch:.2g} "
          f"({t_trace_torch:.1f} s), keras_sharpness {trace.trace:.6g} +- "
          f"{trace.standard_error:.2g} ({trace.seconds:.1f} s); relative difference "
          f"{rel_trace:.2e}, {abs(trace.trace - trace_torch) / combined:.2f} combined "
          f"standard errors")
    assert abs(trace.trace - trace_torch) <= 3 * combined
    if n <= FLAGS.exact_max:
        t = time.perf_counter()
        exact = torch_exact_trace(net, xt, yt)
        print(f"exact trace (PyTorch, {n} unit vectors, {time.perf_counter() - t:.1f} s): "
              f"{exact:.6g}; PyHessian off by {abs(trace_torch - exact) / se_torch:.2f} SE "
              f"({abs(trace_torch - exact) / abs(exact):.2e} relative), keras_sharpness by "
              f"{abs(trace.trace - exact) / trace.standard_error:.2f} SE "
              f"({abs(trace.trace - exact) / abs(exact):.2e} relative)")
        assert abs(trace_torch - exact) <= 3 * se_torch
        assert abs(trace.trace - exact) <= 3 * trace.standard_error

    t = time.perf_counter()
    torch_nodes, _ = reference.density(iter=FLAGS.lanczos_steps, n_v=1)
    t_density_torch = time.perf_counter() - t
    density = spectral_density(objective, lanczos_steps=FLAGS.lanczos_steps, seed=FLAGS.seed)
    print(f"SLQ ({FLAGS.lanczos_steps} steps, 1 probe) largest node: PyHessian "
          f"{max(torch_nodes[0]):.6g} ({t_density_torch:.1f} s), keras_sharpness "
          f"{max(density.nodes[0]):.6g} ({density.seconds:.1f} s, {density.products} HVPs); "
          f"relative to the top eigenvalue {abs(max(density.nodes[0]) - top_ours) / top_ours:.1e}")
    assert rel_top <= FLAGS.max_rel, rel_top
    print("OK")


if __name__ == "__main__":
    app.run(main)
