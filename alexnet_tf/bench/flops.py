"""FLOPs of the model that is timed: forward, per layer, and the training step's (whole or fine-tuning)."""

from alexnet_tf.config import WEIGHT_LAYERS


def layer_flops(model, batch_size=1):
    """Forward FLOPs (2 x multiply-adds) of each Conv2D and Dense layer of `model` for one batch."""
    import keras

    flops = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            flops[layer.name] = 2 * h * w * c * kh * kw * layer.kernel.shape[2] * batch_size
        elif isinstance(layer, keras.layers.Dense):
            flops[layer.name] = 2 * layer.kernel.shape[0] * layer.kernel.shape[1] * batch_size
    return flops


def step_flops(layer_flops_, trained_layers=None):
    """Training FLOPs per image of a step that trains `trained_layers` (None: all), from the forward FLOPs of
    each weight layer (`layer_flops` at batch 1): the whole forward pass, each trained layer's weight
    gradient, and the input gradient of every weight layer above the lowest trained one (conv1's input
    gradient is never needed). For the paper model: 2 x (3 x 724M - 105M) = 4.14 GFLOP."""
    trained = [layer for layer in WEIGHT_LAYERS if trained_layers is None or layer in trained_layers]
    lowest = WEIGHT_LAYERS.index(trained[0])

    def of(layer):
        return sum(f for name, f in layer_flops_.items() if name.split("_")[0] == layer)

    return (sum(layer_flops_.values()) + sum(of(layer) for layer in trained)
            + sum(of(layer) for layer in WEIGHT_LAYERS[lowest + 1:]))


def ceiling_fraction(images_per_s, ceiling_gflops, flop_per_image):
    """The fraction of the matmul ceiling that a rate of `flop_per_image` FLOPs per image uses."""
    return images_per_s * flop_per_image / 1e9 / ceiling_gflops
