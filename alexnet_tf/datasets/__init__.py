"""TFDS dataset builders shipped with alexnet_tf. Importing this package registers them."""

from alexnet_tf.datasets.shapes import AlexnetShapes

__all__ = ["AlexnetShapes"]
