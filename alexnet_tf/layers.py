"""Layers AlexNet needs that Keras does not ship."""

import contextlib
import contextvars
import functools

import keras
import numpy as np
import tensorflow as tf


def _inverse_powers(s, beta):
    """(s^-beta, s^-(beta+1)). Exact rewrites of the common exponents avoid pow's
    exp(log()) and a division, which cost more on the CPU than the rest of the layer."""
    if beta == 0.75:
        r = tf.math.rsqrt(s)
        p = r * tf.sqrt(r)
        return p, p * r * r
    if beta == 0.5:
        r = tf.math.rsqrt(s)
        return r, r * r * r
    if beta == 1.0:
        r = tf.math.reciprocal(s)
        return r, r * r
    p = tf.pow(s, -beta)
    return p, p / s


# Off while `plain_ops()` is active: the LRN is then built from ordinary
# TensorFlow ops instead of XLA-compiled functions (see `plain_ops`).
_use_xla = contextvars.ContextVar("alexnet_tf_lrn_xla", default=True)


@contextlib.contextmanager
def plain_ops():
    """Within this block, LRN layers trace to plain TensorFlow ops, not XLA-compiled functions.

    For graphs that leave TensorFlow's own runtime: TF Serving runs
    `jit_compile` functions only behind an experimental flag, and the TFLite
    converter wants ordinary ops. Export traces its graphs inside this block.
    Same function, slower in TensorFlow, fast in TFLite (BUILD_NOTES.md).
    """
    token = _use_xla.set(False)
    try:
        yield
    finally:
        _use_xla.reset(token)


def _window_sum(t, n):
    """Sum over each channel's window of n channels (zeros beyond the edges), as n shifted slices.
    Inside an XLA function the pad, slices and additions fuse into the consumer's loop."""
    channels, r = t.shape[-1], n // 2
    padded = tf.pad(t, [[0, 0]] * (t.shape.rank - 1) + [[r, r]])
    return tf.add_n([padded[..., j:j + channels] for j in range(n)])


@functools.cache
def _xla_lrn(n, k, alpha, beta):
    """The forward and backward passes of one LRN configuration, each compiled by XLA into one fused loop.

    They take and return the caller's dtype and compute in float32 inside, so
    under mixed precision the casts cost no extra pass over memory. The backward
    pass recomputes s from x rather than storing anything, so the layer keeps
    no activations beyond its input. XLA compiles once per input shape (~0.1 s).
    """
    def powers(x):  # s^-beta and s^-(beta+1), s = k + alpha * window sum of x^2
        return _inverse_powers(k + alpha * _window_sum(tf.square(x), n), beta)

    @tf.function(jit_compile=True, autograph=False)
    def forward(x):
        x32 = tf.cast(x, tf.float32)
        return tf.cast(x32 * powers(x32)[0], x.dtype)

    @tf.function(jit_compile=True, autograph=False)
    def backward(x, dy):
        x32, dy32 = tf.cast(x, tf.float32), tf.cast(dy, tf.float32)
        p, q = powers(x32)
        return tf.cast(dy32 * p - (2.0 * alpha * beta) * x32 * _window_sum(dy32 * x32 * q, n), x.dtype)

    return forward, backward


def local_response_normalization(x, *, n, k, alpha, beta):
    """The paper's LRN on an NHWC tensor, float32 arithmetic whatever x's dtype, gradient written out.

    Same function as `tf.nn.local_response_normalization` (tested against it and
    against NumPy), computed differently because TensorFlow's CPU kernels for
    LRN and LRNGrad are slow (BUILD_NOTES.md, "Performance"):

        y_i  = x_i * s_i^-beta,   s_i = k + alpha * sum_{|j-i| <= n//2} x_j^2
        dx_i = dy_i * s_i^-beta - 2 alpha beta x_i * sum_{|j-i| <= n//2} dy_j x_j s_j^(-beta-1)

    Each pass is one XLA-fused loop, or, under `plain_ops()`, the band-matmul
    formulation below.
    """
    if not _use_xla.get():
        return tf.cast(_band_matmul_lrn(tf.cast(x, tf.float32), n=n, k=k, alpha=alpha, beta=beta), x.dtype)
    forward, backward = _xla_lrn(n, float(k), float(alpha), float(beta))

    @tf.custom_gradient
    def lrn(x):
        return forward(x), lambda dy: backward(x, dy)

    # AutoGraph would convert the undecorated function and lose the gradient.
    return tf.autograph.experimental.do_not_convert(lrn)(x)


def _band_matmul_lrn(x, *, n, k, alpha, beta):
    """The same LRN from plain ops, on float32: the windowed sum is a matmul with a
    0/alpha band matrix, which TFLite's XNNPACK runs as a fully connected layer."""
    channels = x.shape[-1]
    in_window = np.abs(np.arange(channels)[:, None] - np.arange(channels)[None, :]) <= n // 2
    # alpha and the gradient's 2 alpha beta are folded into the band matrices.
    band = tf.constant(np.where(in_window, alpha, 0.0), tf.float32)
    band_grad = tf.constant(np.where(in_window, 2.0 * alpha * beta, 0.0), tf.float32)

    def window_sum(t, weights):  # the weighted sum over each channel's window: [.., C] x [C, C]
        return tf.reshape(tf.matmul(tf.reshape(t, (-1, channels)), weights), tf.shape(t))

    @tf.custom_gradient
    def lrn(x):
        y = x * _inverse_powers(k + window_sum(tf.square(x), band), beta)[0]

        def grad(dy):
            # Without the dependency on dy, TensorFlow would run this recomputation
            # as soon as x exists, during the forward pass, and keep s alive until
            # the backward pass: 0.56 GiB more at batch 128 (measured).
            with tf.control_dependencies([dy]):
                p, q = _inverse_powers(k + window_sum(tf.square(x), band), beta)
            return dy * p - x * window_sum(dy * x * q, band_grad)

        return y, grad

    return tf.autograph.experimental.do_not_convert(lrn)(x)


def _check_normalization(layer, window_arg, window, centred_on, **constants):
    """The checks both normalization layers make of their window and constants, each error naming the layer."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"{layer}: {window_arg} must be a positive odd integer (the window is centred on each "
                         f"{centred_on}), got {window_arg}={window!r}")
    for arg, value in constants.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{layer}: {arg} must be a non-negative number, got {arg}={value!r}")


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization across channels, Section 3.3 of the paper.

        b[..., i] = a[..., i] / (k + alpha * sum_{j = i - n//2}^{i + n//2} a[..., j]^2) ** beta

    with the sum clipped at the first and last channel. The defaults are the
    paper's k=2, n=5, alpha=1e-4, beta=0.75.

    Note the alpha convention: this is the paper's alpha, applied to the *sum*
    of squares, as `tf.nn.local_response_normalization` does. Caffe and PyTorch
    apply alpha to the *mean* (alpha / n), so their 5e-4 is this layer's 1e-4.

    The arithmetic always runs in float32: TensorFlow has no float16 LRN kernel
    on GPU, and the squared sum loses too much precision in bfloat16. Under a
    mixed-precision policy the input arrives in the compute dtype and the
    output is cast back to it.
    """

    def __init__(self, n=5, k=2.0, alpha=1e-4, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        _check_normalization("LocalResponseNormalization", "n", n, "channel", k=k, alpha=alpha, beta=beta)
        self.n = n
        self.k = float(k)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        return local_response_normalization(inputs, n=self.n, k=self.k, alpha=self.alpha, beta=self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(),
                "n": self.n, "k": self.k, "alpha": self.alpha, "beta": self.beta}


@tf.custom_gradient
def _matmul(x, kernel):
    """x @ kernel for a 2-D x, with the input gradient computed as (kernel dy^T)^T.

    TensorFlow's own gradient, dy @ kernel^T, ran at half the forward pass's
    rate on this project's oneDNN CPU for fc6's shapes (48 vs 33 ms per tower
    at batch 128, BUILD_NOTES.md); the transpose of the small [batch, inputs]
    result costs little on any device.
    """
    def grad(dy):
        return tf.transpose(tf.matmul(kernel, dy, transpose_b=True)), tf.matmul(x, dy, transpose_a=True)

    return tf.matmul(x, kernel), grad


@keras.saving.register_keras_serializable(package="alexnet_tf")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` with a faster input gradient on the CPU (see `_matmul`); same
    function, weights and config. Inputs of rank other than 2, LoRA and quantized
    kernels take Keras' own path."""

    def call(self, inputs, training=None):
        if inputs.shape.rank != 2 or self.lora_enabled or self.quantization_mode:
            return super().call(inputs, training=training)
        x = tf.autograph.experimental.do_not_convert(_matmul)(inputs, tf.convert_to_tensor(self.kernel))
        if self.bias is not None:
            x = keras.ops.add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


@keras.saving.register_keras_serializable(package="alexnet_tf")
class CrossTowerLRN(LocalResponseNormalization):
    """One tower's channels normalized as if both towers' channels were one layer: Caffe's LRN over all
    96 (or 256) channels of a grouped layer, where the paper normalized each GPU's channels alone.

    Called on [own tower's map, other tower's map]. `tower="a"`: the other
    tower's channels follow this tower's; `"b"`: they precede. Only the n//2
    channels next to the boundary can reach into a window, so only those are
    taken from the other tower: the result equals the LRN of the concatenated
    map, sliced to this tower's channels.
    """

    def __init__(self, tower="a", **kwargs):
        super().__init__(**kwargs)
        if tower not in ("a", "b"):
            raise ValueError(f"CrossTowerLRN: tower must be 'a' or 'b', got tower={tower!r}")
        self.tower = tower
        self.input_spec = None  # two inputs

    def call(self, inputs):
        own, other = inputs
        r, channels = self.n // 2, own.shape[-1]
        if self.tower == "a":
            x = tf.concat([own, other[..., :r]], axis=-1)
            return super().call(x)[..., :channels]
        x = tf.concat([other[..., -r:], own], axis=-1)
        return super().call(x)[..., r:]

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "tower": self.tower}


@keras.saving.register_keras_serializable(package="alexnet_tf")
class SameMapResponseNormalization(keras.layers.Layer):
    """cuda-convnet's `rnorm` layer: each channel normalized by its own neighbourhood in space,

        b[y, x, c] = a[y, x, c] / (k + alpha * sum_{|dy|, |dx| <= size//2} a[y + dy, x + dx, c]^2) ** beta

    with the window clipped at the map's edges. The 2012 code puts one after conv2's
    cross-map LRN (`cnorm2` in layers-145.cfg); the paper does not mention it.
    `alpha` applies to the sum: cuda-convnet's `scale=0.001` is divided by size^2
    (layer.py), so the code's layer is alpha=0.001/25, k=1 (its `1 +` in
    convResponseNorm), beta=0.75. Arithmetic in float32, as in
    `LocalResponseNormalization`.
    """

    def __init__(self, size=5, k=1.0, alpha=0.001 / 25, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        _check_normalization("SameMapResponseNormalization", "size", size, "pixel", k=k, alpha=alpha, beta=beta)
        self.size, self.k, self.alpha, self.beta = size, float(k), float(alpha), float(beta)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        r = self.size // 2
        # The window sum as an average over the zero-padded map: zeros count as the clipped edge.
        squares = tf.pad(tf.square(x), [[0, 0], [r, r], [r, r], [0, 0]])
        total = tf.nn.avg_pool2d(squares, self.size, 1, "VALID") * float(self.size * self.size)
        return tf.cast(x * _inverse_powers(self.k + self.alpha * total, self.beta)[0], inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size, "k": self.k, "alpha": self.alpha, "beta": self.beta}
