"""alexnet_tf: the paper's two-tower AlexNet in TensorFlow/Keras."""

from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.model import build_alexnet
from alexnet_tf.placement import device_free, resolve_tower_devices

__all__ = ["LocalResponseNormalization", "build_alexnet", "device_free", "resolve_tower_devices"]
__version__ = "0.1.0"
