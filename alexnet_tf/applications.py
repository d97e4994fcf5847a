"""AlexNet the way Keras applications offer VGG16: a builder with weights, `preprocess_input`
and `decode_predictions` beside it.

    from alexnet_tf import AlexNet, preprocess_input, decode_predictions
    model = AlexNet(weights="bvlcalexnet-12.onnx")          # or a workdir, or None
    probs = keras.ops.softmax(model(preprocess_input(photos)))
    decode_predictions(probs.numpy(), top=5)                # [[(synset, name, probability), ...], ...]

Like every model of this project, it returns logits and takes RGB images,
227x227, minus the mean (preprocess_input does this project's evaluation
preprocessing). Load a .npy only from a source you trust: it is a pickle
(`alexnet_tf.pretrained` refuses any that holds more than arrays).
"""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import checkpoints, config as config_lib, model as model_lib, runs, preprocessing, pretrained
from alexnet_tf.model import POOL5_LAYER, build_alexnet


def AlexNet(weights=None, include_top=True, pooling=None, classes=1000, *, lrn="paper", tower_devices=None,
            name="alexnet"):
    """The two-tower AlexNet, with weights.

    Args:
      weights: None (the paper's initialization), a workdir of alexnet-train or
        alexnet-import (its latest checkpoint), or a bvlc_alexnet file (.onnx
        from the ONNX model zoo, .npy from caffe-tensorflow).
      include_top: with False the model ends at both towers' pool5
        ([N, 6, 6, 256] at 227x227) and has no fully connected layers.
      pooling: with include_top=False, None keeps pool5's map, "avg" or "max"
        pools it to [N, 256].
      classes: fc8's size; must match the weights' class count when they have
        a top (1000 for bvlc_alexnet).
      lrn: the normalization variant ("paper", "caffe" or None) for
        weights=None; weights bring their own.
      tower_devices: as in `build_alexnet`.
    """
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if pooling is not None and include_top:
        raise ValueError(f"pooling={pooling!r} applies only with include_top=False")
    if weights is None:
        model = build_alexnet(classes, lrn=lrn, tower_devices=tower_devices, name=name)
    elif Path(weights).is_dir():
        _, names = runs.read_run(weights, flag="weights")
        if include_top and classes != len(names):
            raise ValueError(f"classes={classes}, but the weights in {weights} have {len(names)} classes")
        model, _, _ = checkpoints.load_model(weights, flag="weights", inference=False, tower_devices=tower_devices,
                                             name=name)
    else:
        if include_top and classes != 1000:
            raise ValueError(f"classes={classes}, but bvlc_alexnet has 1000 classes; use include_top=False")
        bvlc = config_lib.ModelConfig.of_preset(**pretrained.BVLC_MODEL)
        model = pretrained.load_into(model_lib.from_config(bvlc, tower_devices=tower_devices, name=name),
                                     pretrained.read_weights(weights))
    if include_top:
        return model
    names = {layer.name for layer in model.layers}
    features = model.get_layer(POOL5_LAYER if POOL5_LAYER in names else "pool5_a").output  # one tower: its pool5
    if pooling == "avg":
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    elif pooling == "max":
        features = keras.layers.GlobalMaxPooling2D(name="max_pool")(features)
    return keras.Model(model.input, features, name=f"{name}_notop")


def preprocess_input(images, mean=None, image_size=227):
    """This project's evaluation preprocessing on a batch of RGB images (an [N, H, W, 3] array, or a
    list of arrays of any sizes, values 0..255): the central square resized to 256, the central
    `image_size` crop, and `mean` (RGB; default bvlc_alexnet's ILSVRC-2012 mean) subtracted.
    Returns float32 [N, image_size, image_size, 3]."""
    mean = tf.constant(pretrained.imagenet_statistics()["mean"] if mean is None else mean, tf.float32)
    out = [preprocessing.center_crop(preprocessing.center_square(np.asarray(image)) - mean, image_size)
           for image in images]
    return tf.stack(out).numpy()


def decode_predictions(preds, top=5):
    """[[(synset, class name, probability), ...] per image] for [N, 1000] ImageNet probabilities, best first."""
    from alexnet_tf.data import imagenet_class_names

    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(f"decode_predictions expects a batch of ImageNet predictions of shape (N, 1000), "
                         f"got {preds.shape}")
    synsets, names = imagenet_class_names()
    return [[(synsets[i], names[i], float(row[i])) for i in np.argsort(-row)[:top]] for row in preds]
