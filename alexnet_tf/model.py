"""AlexNet as in Figure 2 of Krizhevsky, Sutskever and Hinton (2012): two towers.

Tower a ("GPU a") and tower b ("GPU b") each hold half of every layer. They see
each other's feature maps only at conv3, fc6, fc7 and fc8; everywhere else a
layer reads its own tower only. With 1000 classes that is 60,965,224 trainable
parameters (a single-tower AlexNet has 62,378,344).

Every weight layer has a stable name, `conv1_a ... conv5_b, fc6_a ... fc7_b,
fc8`. Where towers merge, tower a's channels come first. Each tower's layers,
including the merges that feed it, are built and run on that tower's device
(see `alexnet_tf.placement`); fc8 runs on tower a's device.
"""

import itertools
import math

import keras

from alexnet_tf import placement
from alexnet_tf.config import LRN_CHOICES, POOLS, RECIPES, WEIGHT_LAYERS

PAPER_IMAGE_SIZE = 227
# The smallest input that still leaves a 1x1 map after pool5.
MIN_IMAGE_SIZE = 67
TOWERS = ("a", "b")
CONV_LAYERS = WEIGHT_LAYERS[:5]
FC_LAYERS = ("fc6", "fc7")
# The 4096-d fc7 activations of both towers (the paper's Figure 4 features).
FEATURES_LAYER = "fc7_features"
# Both towers' pool5, 6x6x256 at 227: where include_top=False ends.
POOL5_LAYER = "merge6_a"
# The normalization after conv1 and conv2 (`lrn=`, one of config.LRN_CHOICES):
# - "paper": the paper's constants (k=2, n=5, alpha=1e-4, beta=0.75), each
#   tower normalizing its own channels, as each GPU did;
# - "caffe": Caffe's bvlc_alexnet (k=1, alpha 1e-4 over n=5, i.e. TensorFlow's
#   alpha=2e-5), over all channels of the layer: the windows next to the towers'
#   boundary see two channels of the other tower;
# - None: no normalization layers.
LRN_CONSTANTS = {"paper": dict(n=5, k=2.0, alpha=1e-4, beta=0.75),
                 "caffe": dict(n=5, k=1.0, alpha=1e-4 / 5, beta=0.75)}
# `recipe="original_code"`: the net as the 2012 code built it, where it differs from the paper's text
# (computerhistory/AlexNet-Source-Code, layers/layers-145.cfg and layer-params-145.cfg; BUILD_NOTES.md):
# - conv3-conv5 start with 3x the init std (`initW=0.03`, layers-145.cfg lines 143, 157, 172, 186, 200, 214);
# - conv1 is normalized before its ReLU (conv1 has no `neuron`, pool1 has `neuron=relu`: lines 9-54);
# - the cross-map LRN takes alpha over n (layer.py divides `scale=0.0001` by `size`, line 1183), k=2;
# - a same-map response normalization follows conv2's (`cnorm2`, lines 107-117; params lines 157-163).
ORIGINAL_CODE_LRN = dict(n=5, k=2.0, alpha=1e-4 / 5, beta=0.75)
ORIGINAL_CODE_SAME_MAP = dict(size=5, k=1.0, alpha=0.001 / 25, beta=0.75)
ORIGINAL_CODE_INIT_SCALE = {"conv3": 3.0, "conv4": 3.0, "conv5": 3.0}


def conv1_padding(image_size):
    """Zero rows/columns to add at the bottom and right before conv1.

    cuda-convnet sizes a convolution's output as 1 + ceil((image - 11) / 4),
    letting the last filter column hang over the right edge into zeros. That is
    how the paper's 224x224 input gives a 55x55 conv1 output: 224 is padded to
    227 = 54 * 4 + 11 on the bottom and right. A 227 input needs no padding.
    """
    out = 1 + math.ceil((image_size - 11) / 4)
    return (out - 1) * 4 + 11 - image_size


def _check_args(num_classes, image_size, width, dropout, seed, init_std, lrn, pool, towers, recipe, name):
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not is_int(image_size) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE} (smaller inputs vanish "
                         f"before pool5), got {image_size!r}; the paper uses 224 or 227")
    if not is_number(width) or not 0 < width <= 16:
        raise ValueError(f"width must be a number in (0, 16] scaling every layer's filters and units, "
                         f"got {width!r}; 1.0 is the paper's model")
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}; the paper uses 0.5")
    if seed is not None and not is_int(seed):
        raise ValueError(f"seed must be None or an integer, got {seed!r}")
    if not is_number(init_std) or not init_std > 0:
        raise ValueError(f"init_std must be a positive number, got {init_std!r}; the paper uses 0.01")
    if lrn not in LRN_CHOICES:
        raise ValueError(f"lrn must be one of 'paper', 'caffe' or None, got {lrn!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be 'overlapping' or 'non_overlapping', got {pool!r}")
    if towers not in (1, 2) or isinstance(towers, bool):
        raise ValueError(f"towers must be 2 (the paper's net) or 1 (its one-GPU comparison net), got {towers!r}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be 'paper' or 'original_code', got {recipe!r}")
    if recipe == "original_code" and lrn == "caffe":
        raise ValueError("lrn='caffe' cannot be combined with recipe='original_code', which has its own LRN "
                         "(the 2012 code's constants); use lrn='paper' or None")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")


class _Layers:
    """Makes the model's layers: each named, initialized as the paper says, and placed on its tower's device."""

    def __init__(self, devices, width, init_std, dropout, lrn, pool, recipe, seed):
        self.devices, self.width, self.init_std, self.dropout, self.lrn = devices, width, init_std, dropout, lrn
        self.original_code = recipe == "original_code"
        self.pool_size, self.pool_stride = POOLS[pool]
        # One seed per initializer and dropout layer, all derived from `seed`.
        self._seeds = itertools.count(seed) if seed is not None else None

    def seed(self):
        return next(self._seeds) if self._seeds is not None else None

    def units(self, n):
        return max(1, round(n * self.width))

    def init(self, bias, layer=None):
        # Paper, Section 5: weights ~ N(0, 0.01^2); biases 1 in conv2, conv4,
        # conv5 and the hidden FC layers (so their ReLUs start with positive
        # input), 0 elsewhere.
        std = self.init_std * (ORIGINAL_CODE_INIT_SCALE.get(layer, 1.0) if self.original_code else 1.0)
        return {"kernel_initializer": keras.initializers.RandomNormal(0.0, std, seed=self.seed()),
                "bias_initializer": keras.initializers.Constant(bias)}

    def conv(self, t, layer, x, filters, size, bias, strides=1, padding="same", activation="relu"):
        return placement.Conv2D(self.units(filters), size, strides=strides, padding=padding, activation=activation,
                                name=f"{layer}_{t}", device=self.devices[t], **self.init(bias, layer))(x)

    def conv1(self, towers, x):
        """conv1 and its normalization: LRN after the ReLU (the paper), or before it (the 2012 code)."""
        if not self.original_code:
            h = {u: self.conv(u, "conv1", x, 48, 11, bias=0.0, strides=4, padding="valid") for u in towers}
            return {u: self.norm(u, 1, h) for u in towers}
        h = {u: self.conv(u, "conv1", x, 48, 11, bias=0.0, strides=4, padding="valid", activation=None) for u in towers}
        return {u: placement.ReLU(name=f"relu1_{u}", device=self.devices[u])(self.norm(u, 1, h)) for u in towers}

    def norm(self, t, stage, towers):
        """Tower t's normalized channels (Section 3.3), in the variant `lrn` (and `recipe`) names."""
        if self.lrn is None:
            return towers[t]
        name, device = f"norm{stage}_{t}", self.devices[t]
        if self.original_code:
            x = placement.LocalResponseNormalization(**ORIGINAL_CODE_LRN, name=name, device=device)(towers[t])
            if stage == 2:
                x = placement.SameMapResponseNormalization(**ORIGINAL_CODE_SAME_MAP, name=f"cnorm{stage}_{t}",
                                                           device=device)(x)
            return x
        constants = LRN_CONSTANTS[self.lrn]
        if self.lrn == "paper" or len(towers) == 1:
            return placement.LocalResponseNormalization(**constants, name=name, device=device)(towers[t])
        other = towers["b" if t == "a" else "a"]
        return placement.CrossTowerLRN(tower=t, **constants, name=name, device=device)([towers[t], other])

    def pool(self, t, stage, x):
        return placement.MaxPooling2D(self.pool_size, strides=self.pool_stride, name=f"pool{stage}_{t}",
                                      device=self.devices[t])(x)

    def merge(self, t, layer, towers):
        """Both towers' outputs, a then b, gathered on tower t's device."""
        return placement.Concatenate(axis=-1, name=f"{layer}_{t}", device=self.devices[t])(
            [towers["a"], towers["b"]])

    def fc(self, t, layer, x, n, bias):
        x = placement.Dense(self.units(n), activation="relu", name=f"{layer}_{t}", device=self.devices[t],
                            **self.init(bias))(x)
        return placement.Dropout(self.dropout, seed=self.seed(), name=f"drop{layer[2:]}_{t}",
                                 device=self.devices[t])(x)


def build_alexnet(num_classes=1000, *, image_size=PAPER_IMAGE_SIZE, tower_devices=None, width=1.0,
                  dropout=0.5, seed=None, init_std=0.01, lrn="paper", pool="overlapping", towers=2,
                  recipe="paper", name="alexnet"):
    """The paper's two-tower AlexNet as a Keras functional model returning logits.

    Args:
      num_classes: size of fc8, the logits.
      image_size: side of the square RGB input; 227 (Caffe) or the paper's 224
        (padded as cuda-convnet did, see `conv1_padding`); smaller sizes down to
        67 make quick test models.
      tower_devices: None for automatic placement, or a pair of device names
        (tower a, tower b) such as ("/GPU:0", "/GPU:1"); see
        `alexnet_tf.placement.resolve_tower_devices`.
      width: multiplies every layer's filter and unit count (1.0 is the paper;
        0.125 gives a tiny model for tests).
      dropout: rate of the dropout after fc6 and fc7.
      seed: makes initialization and dropout reproducible.
      init_std: standard deviation of the Gaussian weight initialization; the
        paper's 0.01 by default. (A narrow model passes on less signal at the
        same std; the tiny training preset uses 0.01 / sqrt(width).)
      lrn: "paper" (the default), "caffe" (the constants and cross-tower window
        of Caffe's bvlc_alexnet, which imported weights need) or None; see
        `LRN_CONSTANTS`.
      pool: "overlapping" (3x3 windows every 2 pixels, the paper's) or
        "non_overlapping" (2x2 every 2), its ablation.
      towers: 2, or 1 for the paper's one-GPU comparison net (footnote to
        Section 3.2): one tower with conv1-conv4 of one tower's size (48, 128,
        192, 192 kernels) and conv5 and the FC layers of the whole net's (256;
        4096, 4096), layers named like tower a's.
      recipe: "paper" (the text), or "original_code": the net as the 2012
        code built it (conv3-5 init 3x init_std, conv1 normalized before its
        ReLU, the code's LRN constants, an extra same-map normalization after
        conv2's; see `ORIGINAL_CODE_LRN` and the lines above it). Same weights,
        same names.
      name: the model's name.
    """
    _check_args(num_classes, image_size, width, dropout, seed, init_std, lrn, pool, towers, recipe, name)
    devices = dict(zip(TOWERS, placement.resolve_tower_devices(tower_devices)))
    make = _Layers(devices, width, init_std, dropout, lrn, pool, recipe, seed)
    if towers == 1:
        return _one_tower(make, num_classes, image_size, name)

    images = keras.Input((image_size, image_size, 3), name="images")
    x = images
    if pad := conv1_padding(image_size):
        x = keras.layers.ZeroPadding2D(((0, pad), (0, pad)), name="conv1_pad")(x)
    h = {t: make.pool(t, 1, n) for t, n in make.conv1(TOWERS, x).items()}
    h = {t: make.conv(t, "conv2", h[t], 128, 5, bias=1.0) for t in TOWERS}
    h = {t: make.pool(t, 2, make.norm(t, 2, h)) for t in TOWERS}
    h = {t: make.conv(t, "conv3", make.merge(t, "merge3", h), 192, 3, bias=0.0) for t in TOWERS}
    h = {t: make.conv(t, "conv4", h[t], 192, 3, bias=1.0) for t in TOWERS}
    h = {t: make.pool(t, 5, make.conv(t, "conv5", h[t], 128, 3, bias=1.0)) for t in TOWERS}
    # fc6 sees both towers' pool5 as one 6x6x256 map, flattened row-major (NHWC).
    h = {t: placement.Flatten(name=f"flatten6_{t}", device=devices[t])(make.merge(t, "merge6", h)) for t in TOWERS}
    h = {t: make.fc(t, "fc6", h[t], 2048, bias=1.0) for t in TOWERS}
    h = {t: make.fc(t, "fc7", make.merge(t, "merge7", h), 2048, bias=1.0) for t in TOWERS}
    features = placement.Concatenate(axis=-1, name=FEATURES_LAYER, device=devices["a"])([h["a"], h["b"]])
    logits = placement.Dense(num_classes, name="fc8", device=devices["a"], **make.init(0.0))(features)
    # Logits in float32 whatever the mixed-precision policy, so losses and
    # softmax downstream never run in half precision.
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(images, logits, name=name)


def _one_tower(make, num_classes, image_size, name):
    """The paper's one-GPU net: the two-tower net's layers with no split, conv1-conv4 at one tower's size."""
    images = keras.Input((image_size, image_size, 3), name="images")
    x = images
    if pad := conv1_padding(image_size):
        x = keras.layers.ZeroPadding2D(((0, pad), (0, pad)), name="conv1_pad")(x)
    h = {"a": make.pool("a", 1, make.conv1(("a",), x)["a"])}
    h = {"a": make.pool("a", 2, make.norm("a", 2, {"a": make.conv("a", "conv2", h["a"], 128, 5, bias=1.0)}))}
    x = make.conv("a", "conv4", make.conv("a", "conv3", h["a"], 192, 3, bias=0.0), 192, 3, bias=1.0)
    x = make.pool("a", 5, make.conv("a", "conv5", x, 256, 3, bias=1.0))
    x = placement.Flatten(name="flatten6_a", device=make.devices["a"])(x)
    x = make.fc("a", "fc7", make.fc("a", "fc6", x, 4096, bias=1.0), 4096, bias=1.0)
    features = keras.layers.Identity(name=FEATURES_LAYER)(x)
    logits = placement.Dense(num_classes, name="fc8", device=make.devices["a"], **make.init(0.0))(features)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(images, logits, name=name)


def from_config(config, *, tower_devices=None, seed=None, inference=False, name="alexnet"):
    """The network a `config.ModelConfig` describes (its `num_classes` set): the one place a model is built
    from a configuration. `inference=True` leaves out dropout, which also leaves the model without the
    seed-generator state that the TFLite converter cannot freeze."""
    return build_alexnet(config.num_classes, image_size=config.image_size, width=config.width,
                         init_std=config.init_std, dropout=0.0 if inference else config.dropout, lrn=config.lrn,
                         pool=config.pool, towers=config.towers, recipe=config.recipe, tower_devices=tower_devices,
                         seed=seed, name=name)


def weight_layer_names():
    """Names of the layers that hold weights, in forward order."""
    return [f"{layer}_{t}" for layer in CONV_LAYERS + FC_LAYERS for t in TOWERS] + ["fc8"]
