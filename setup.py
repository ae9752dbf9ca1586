"""keras_sharpness: sharp minima and large-batch training, TensorFlow 2 + Keras 3.

TensorFlow comes in two distributions that provide the same `tensorflow`
module: `tensorflow` (GPU-capable, the default) and `tensorflow-cpu` (smaller,
CPU only). If one of them is installed already it is kept; otherwise
`tensorflow` is required. Set KERAS_SHARPNESS_TENSORFLOW=tensorflow-cpu (or
any requirement string) to choose explicitly.
"""

import os
import subprocess
import sys

from setuptools import find_packages, setup

TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos",
                    "tensorflow-intel")
TF_MINIMUM = "2.16"  # first TensorFlow whose `keras` is Keras 3

#: The commands, installed on PATH; each runs what its script or module runs
#: (`keras_sharpness.commands`). tests/test_commands.py reads this list.
CONSOLE_SCRIPTS = [
    "ks-plot = keras_sharpness.commands:plot",  # plot_parametric_plot.py
    "ks-sharpness = keras_sharpness.commands:sharpness",  # compute_sharpness.py
    "ks-trials = keras_sharpness.commands:trials",
    "ks-remedy-grid = keras_sharpness.commands:remedy_grid",
    "ks-batch-sweep = keras_sharpness.commands:batch_sweep",
    "ks-warm-start = keras_sharpness.commands:warm_start",
    "ks-trajectory = keras_sharpness.commands:trajectory",
    "ks-sensitivity = keras_sharpness.commands:sensitivity",
    "ks-report = keras_sharpness.commands:report",
    "ks-landscape = keras_sharpness.commands:landscape",
]


def _installed(distribution):
    """Whether `distribution` is installed for this interpreter.

    Asks a fresh isolated interpreter, because pip may run this file inside a
    build environment that hides the user's site-packages.
    """
    probe = ("import importlib.metadata as m, sys\n"
             f"try: m.version({distribution!r})\n"
             "except m.PackageNotFoundError: sys.exit(1)\n")
    try:
        return subprocess.run([sys.executable, "-I", "-c", probe],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def tensorflow_requirement():
    chosen = os.environ.get("KERAS_SHARPNESS_TENSORFLOW")
    if chosen:
        return chosen if any(c in chosen for c in "<>=") else f"{chosen}>={TF_MINIMUM}"
    for distribution in TF_DISTRIBUTIONS:
        if _installed(distribution):
            return f"{distribution}>={TF_MINIMUM}"
    return f"tensorflow>={TF_MINIMUM}"


setup(
    name="keras_sharpness",
    version="0.1.0",
    description=("Sharpness of minima and large-batch training for Keras 3 "
                 "(Keskar et al., ICLR 2017)"),
    long_description=open(os.path.join(os.path.dirname(__file__), "README.md"),
                          encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_sharpness", "keras_sharpness.*"]),
    py_modules=["network_zoo"],
    install_requires=[
        tensorflow_requirement(),
        "keras>=3.0",
        "tensorflow-datasets>=4.9",
        "numpy>=1.23",
        "scipy>=1.15",  # scipy.stats.bootstrap(rng=...)
        "matplotlib>=3.6",
        "absl-py>=1.0",
        "scikit-learn>=1.2",  # ships the offline demo set (`digits`)
        "pillow>=9.0",  # decodes `folder:` image data sets
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3"]},  # -n auto: pytest.ini
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
