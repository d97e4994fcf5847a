"""alexnet_tf: the paper's two-tower AlexNet in TensorFlow/Keras.

The names below load on first use, so that light modules (`alexnet_tf.config`)
and `--help` of the tools do not pay for importing TensorFlow.
"""

import importlib

_EXPORTS = {
    "AlexNet": "alexnet_tf.applications",
    "decode_predictions": "alexnet_tf.applications",
    "preprocess_input": "alexnet_tf.applications",
    "LocalResponseNormalization": "alexnet_tf.layers",
    "build_alexnet": "alexnet_tf.model",
    "device_free": "alexnet_tf.placement",
    "resolve_tower_devices": "alexnet_tf.placement",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alexnet_tf' has no attribute {name!r}")
