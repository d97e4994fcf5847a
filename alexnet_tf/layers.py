"""Layers AlexNet needs that Keras does not ship."""

import keras
import tensorflow as tf


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
        y = tf.nn.local_response_normalization(
            tf.cast(inputs, tf.float32),
            depth_radius=self.n // 2, bias=self.k, alpha=self.alpha, beta=self.beta)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(),
                "n": self.n, "k": self.k, "alpha": self.alpha, "beta": self.beta}
