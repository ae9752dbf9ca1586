"""Drop-in for the original repo's `network_zoo.py` (Keras 3 port).

The networks now live in `keras_sharpness.networks`; this module keeps the
original import path and names working.
"""

from keras_sharpness.networks import (  # noqa: F401
    NETWORKS,
    build_network,
    deepnet,
    kerasnet,
    shallownet,
)
