"""The model as an ONNX file, for ONNX Runtime: the two towers as grouped convolutions, as in bvlc_alexnet.

`write_onnx(model, path)` writes the device-free classifier (float32 NHWC images in, like every other
export here; softmax probabilities out) with the `onnx` package's graph builder. The towers become one
layer with `group=2` where they do not see each other (conv2, conv4, conv5) and one layer with both
towers' kernels concatenated where they do (conv1, conv3, fc6, fc7); the paper's per-tower LRN is a
Split, two LRNs and a Concat. ONNX's LRN divides alpha by the window size (Caffe's convention), so it
gets this project's alpha (on the sum) times n.

tf2onnx would convert the SavedModel instead, but its releases pin protobuf 3.20 and this project's
TensorFlow needs protobuf 6 or newer, so it cannot be installed beside it (BUILD_NOTES.md).
"""

import numpy as np

from alexnet_tf.model import POOL_CHOICES, conv1_padding

OPSET = 13


class OnnxExportError(ValueError):
    """A model this writer cannot express (the message says which part)."""


def _kernel(model, layer, towers):
    """(OIHW or (in, out) kernel, bias) of `layer`, both towers' concatenated along the outputs."""
    parts = [model.get_layer(f"{layer}_{t}") for t in towers] if layer != "fc8" else [model.get_layer("fc8")]
    kernel = np.concatenate([p.kernel.numpy() for p in parts], axis=-1)
    bias = np.concatenate([p.bias.numpy() for p in parts])
    return (kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel), bias


def check_supported(recipe="paper"):
    """Raises OnnxExportError for a variant this writer cannot express."""
    if recipe != "paper":
        raise OnnxExportError(f"ONNX export: recipe={recipe!r} is not supported (its same-map normalization "
                              f"and pre-ReLU LRN are not written here); use the SavedModel or TFLite")


def write_onnx(model, path, *, lrn="paper", pool="overlapping", recipe="paper"):
    """Writes `model` (a `build_alexnet` model of the given variant) to `path` as ONNX, through a
    `.partial` file renamed when complete; returns `path`."""
    import os

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    check_supported(recipe)
    towers = ("a", "b") if any(layer.name == "conv1_b" for layer in model.layers) else ("a",)
    size = model.input_shape[1]
    nodes, inits = [], []

    def node(op, inputs, **attrs):
        name = f"{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def conv(x, layer, stride=1, pads=None, group=1):
        w, b = _kernel(model, layer, towers)
        k = w.shape[-1]
        pads = pads or [k // 2] * 4
        y = node("Conv", [x, const(f"{layer}_w", w), const(f"{layer}_b", b)], kernel_shape=[k, k],
                 strides=[stride, stride], pads=pads, group=group)
        return node("Relu", [y])

    def norm(x, stage):
        layer = model.get_layer(f"norm{stage}_a") if lrn else None
        if layer is None:
            return x
        attrs = dict(size=layer.n, alpha=layer.alpha * layer.n, beta=layer.beta, bias=layer.k)
        if lrn == "caffe" or len(towers) == 1:
            return node("LRN", [x], **attrs)
        halves = [f"split{stage}_{t}" for t in towers]
        nodes.append(helper.make_node("Split", [x], halves, name=f"split{stage}", axis=1))
        return node("Concat", [node("LRN", [h], **attrs) for h in halves], axis=1)

    def max_pool(x):
        k, s = POOL_CHOICES[pool]
        return node("MaxPool", [x], kernel_shape=[k, k], strides=[s, s])

    def dense(x, layer, relu=True):
        w, b = _kernel(model, layer, towers)
        y = node("Gemm", [x, const(f"{layer}_w", w), const(f"{layer}_b", b)])
        return node("Relu", [y]) if relu else y

    grouped = 2 if len(towers) == 2 else 1
    pad = conv1_padding(size)
    x = node("Transpose", ["images"], perm=[0, 3, 1, 2])  # NHWC in, as the other exports take
    x = max_pool(norm(conv(x, "conv1", stride=4, pads=[0, 0, pad, pad]), 1))
    x = max_pool(norm(conv(x, "conv2", group=grouped), 2))
    x = conv(conv(x, "conv3"), "conv4", group=grouped)
    x = max_pool(conv(x, "conv5", group=grouped))
    # fc6's rows are in NHWC order (this project's Flatten).
    x = node("Flatten", [node("Transpose", [x], perm=[0, 2, 3, 1])], axis=1)
    x = dense(dense(dense(x, "fc6"), "fc7"), "fc8", relu=False)
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="probabilities", axis=1))
    graph = helper.make_graph(
        nodes, model.name, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, size, size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, model.output_shape[-1]])],
        initializer=inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(onnx_model)
    partial = f"{path}.partial"
    try:
        onnx.save(onnx_model, partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path
