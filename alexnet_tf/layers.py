"""Layers AlexNet needs that Keras does not ship."""

import keras
import numpy as np
import tensorflow as tf


def _inverse_power(s, beta):
    """s ** -beta. Exact rewrites of the common exponents avoid pow's exp(log()),
    which costs more on the CPU than the whole rest of the layer."""
    if beta == 0.75:
        return tf.math.rsqrt(s) * tf.math.rsqrt(tf.sqrt(s))
    if beta == 0.5:
        return tf.math.rsqrt(s)
    if beta == 1.0:
        return tf.math.reciprocal(s)
    return tf.pow(s, -beta)


def local_response_normalization(x, *, n, k, alpha, beta):
    """The paper's LRN on a float32 NHWC tensor, with its gradient written out.

    Same function as `tf.nn.local_response_normalization` (tested against it and
    against NumPy), computed differently because TensorFlow's CPU kernels for
    LRN and LRNGrad took 18% of a paper-model training step (BUILD_NOTES.md,
    "Performance"). The windowed sum over channels is a matmul with a 0/alpha
    band matrix, which oneDNN runs at close to the machine's peak, and the rest
    is elementwise. The backward pass recomputes the sum from x rather than
    storing it, so the layer keeps no more activations than TF's kernel does:

        y_i  = x_i * s_i^-beta,   s_i = k + alpha * sum_{|j-i| <= n//2} x_j^2
        dx_i = dy_i * s_i^-beta - 2 alpha beta x_i * sum_{|j-i| <= n//2} dy_j x_j s_j^(-beta-1)
    """
    channels = x.shape[-1]
    in_window = np.abs(np.arange(channels)[:, None] - np.arange(channels)[None, :]) <= n // 2
    # alpha and the gradient's 2 alpha beta are folded into the band matrices.
    band = tf.constant(np.where(in_window, alpha, 0.0), tf.float32)
    band_grad = tf.constant(np.where(in_window, 2.0 * alpha * beta, 0.0), tf.float32)

    def window_sum(t, weights):  # the weighted sum over each channel's window: [.., C] x [C, C]
        return tf.reshape(tf.matmul(tf.reshape(t, (-1, channels)), weights), tf.shape(t))

    @tf.custom_gradient
    def lrn(x):
        y = x * _inverse_power(k + window_sum(tf.square(x), band), beta)

        def grad(dy):
            # Without the dependency on dy, TensorFlow would run this recomputation
            # as soon as x exists, during the forward pass, and keep s alive until
            # the backward pass: 0.56 GiB more at batch 128 (measured).
            with tf.control_dependencies([dy]):
                s = k + window_sum(tf.square(x), band)
            # y = x s^-beta (kept for the pooling gradient anyway), so dy x s^(-beta-1) = dy y / s.
            return dy * _inverse_power(s, beta) - x * window_sum(dy * y / s, band_grad)

        return y, grad

    # AutoGraph would convert the undecorated function and lose the gradient.
    return tf.autograph.experimental.do_not_convert(lrn)(x)


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
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n % 2 == 0:
            raise ValueError(f"LocalResponseNormalization: n must be a positive odd integer "
                             f"(the window is centred on each channel), got n={n!r}")
        for arg, value in (("k", k), ("alpha", alpha), ("beta", beta)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LocalResponseNormalization: {arg} must be a non-negative number, "
                                 f"got {arg}={value!r}")
        self.n = n
        self.k = float(k)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        y = local_response_normalization(tf.cast(inputs, tf.float32),
                                         n=self.n, k=self.k, alpha=self.alpha, beta=self.beta)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(),
                "n": self.n, "k": self.k, "alpha": self.alpha, "beta": self.beta}
