"""Caffe's trained `bvlc_alexnet`, imported from the two files people have.

- `bvlcalexnet-*.onnx` (the ONNX model zoo; Caffe -> Caffe2 -> ONNX): initializers
  `conv1_w_0` [96, 3, 11, 11] ... `fc8_w_0` [1000, 4096] and `*_b_0`, grouped
  Conv nodes (group=2 in conv2, conv4, conv5), Caffe's layouts: OIHW kernels,
  fc weights as (out, in), fc6's inputs in pool5's CHW order. Read with `onnx`.
- `bvlc_alexnet.npy` (caffe-tensorflow's conversion): a pickled dict
  `{layer: [W, b]}` with conv W in HWIO, fc W as (in, out) and fc6's rows in
  HWC order (caffe-tensorflow's DataReshaper). A Python 2 pickle, read with
  `encoding="latin1"` through an unpickler that accepts numpy arrays only.

Both become one dict in Caffe's layout (`read_weights`), checked tensor by
tensor against bvlc_alexnet's shapes, and are then split into this project's
towers (`tower_weights`): group 0 of each layer to tower a, group 1 to tower
b; conv1, conv3, fc6 and fc7 split by output units the same way (first half
to tower a); fc8 stays one layer. conv1's input channels are reversed, so the
imported model takes RGB like every model here. The weights expect Caffe's LRN
(`lrn="caffe"`) and the ILSVRC-2012 mean, BGR (104.0, 116.7, 122.7).
"""

import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

# bvlc_alexnet in Caffe's layout: (kernel shape OIHW or (out, in), bias shape).
CAFFE_SHAPES = {
    "conv1": ((96, 3, 11, 11), (96,)),
    "conv2": ((256, 48, 5, 5), (256,)),
    "conv3": ((384, 256, 3, 3), (384,)),
    "conv4": ((384, 192, 3, 3), (384,)),
    "conv5": ((256, 192, 3, 3), (256,)),
    "fc6": ((4096, 9216), (4096,)),
    "fc7": ((4096, 4096), (4096,)),
    "fc8": ((1000, 4096), (1000,)),
}
GROUPED = ("conv2", "conv4", "conv5")
POOL5 = (256, 6, 6)  # fc6's input, (C, H, W)
# The per-channel ILSVRC-2012 training mean Caffe's models subtract (BGR, 0..255),
# the channel means of Caffe's ilsvrc_2012_mean.npy.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
CAFFE_LRN_ONNX = {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}


class WeightsError(ValueError):
    """A weights file that is not bvlc_alexnet in one of the two layouts; the message names the first mismatch."""


def _check(params, path):
    """Every layer of bvlc_alexnet, each with the expected shapes, in Caffe's layout."""
    for layer, shapes in CAFFE_SHAPES.items():
        if layer not in params:
            raise WeightsError(f"weights={path}: no tensor for {layer} (expected {layer} kernel {shapes[0]} and "
                               f"bias {shapes[1]}, as in bvlc_alexnet)")
        for what, tensor, want in zip(("kernel", "bias"), params[layer], shapes):
            if tuple(tensor.shape) != want:
                raise WeightsError(f"weights={path}: {layer} {what} has shape {tuple(tensor.shape)}, expected "
                                   f"{want} (bvlc_alexnet's two-group layout in Caffe's order)")
    return {layer: tuple(np.asarray(t, np.float32) for t in params[layer]) for layer in CAFFE_SHAPES}


def read_onnx(path):
    """{layer: (kernel, bias)} in Caffe's layout from the ONNX model zoo's bvlcalexnet."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsError("reading .onnx files needs the onnx package: pip install onnx") from None
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # onnx raises DecodeError and others for a file that is not ONNX
        raise WeightsError(f"weights={path}: not a readable ONNX model ({type(e).__name__})") from None
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    params = {}
    for layer in CAFFE_SHAPES:
        for suffix, name in (("w", "kernel"), ("b", "bias")):
            key = f"{layer}_{suffix}_0"
            if key not in tensors:
                raise WeightsError(f"weights={path}: no initializer {key} (the {layer} {name} of the ONNX model "
                                   f"zoo's bvlcalexnet, shape {CAFFE_SHAPES[layer][suffix == 'b']})")
        params[layer] = (tensors[f"{layer}_w_0"], tensors[f"{layer}_b_0"])
    _check_onnx_nodes(graph, path)
    return _check(params, path)


def _check_onnx_nodes(graph, path):
    """The grouped convolutions and Caffe's LRN constants, where the graph states them."""
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv" and len(node.input) > 1:
            layer = node.input[1].rsplit("_w_0", 1)[0]
            group = attrs["group"].i if "group" in attrs else 1
            want = 2 if layer in GROUPED else 1
            if layer in CAFFE_SHAPES and group != want:
                raise WeightsError(f"weights={path}: the {layer} Conv node has group={group}, expected {want}")
        if node.op_type == "LRN":
            for key, want in CAFFE_LRN_ONNX.items():
                got = attrs[key].i if key == "size" else attrs[key].f if key in attrs else want
                if not np.isclose(got, want):
                    raise WeightsError(f"weights={path}: LRN node {node.name or node.output[0]} has {key}={got}, "
                                       f"expected Caffe's {want}")


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dicts, lists and strings, and refuses any other global:
    a pickle can run arbitrary code, and a weights file needs none."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               # How protocol 2 stores bytes when Python 3 writes it: a string encoded back to bytes.
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def read_npy(path):
    """{layer: (kernel, bias)} in Caffe's layout from caffe-tensorflow's bvlc_alexnet.npy."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
        except ValueError as e:
            raise WeightsError(f"weights={path}: not a .npy file ({e})") from None
        if dtype != object or shape != ():
            raise WeightsError(f"weights={path}: holds a {dtype} array of shape {shape}, not the pickled dict "
                               f"{{layer: [W, b]}} of bvlc_alexnet.npy")
        try:
            content = _ArraysOnly(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise WeightsError(f"weights={path}: refused: the pickle is not a dict of numpy arrays ({e})") from None
    params = content.item() if isinstance(content, np.ndarray) else content
    if not isinstance(params, dict):
        raise WeightsError(f"weights={path}: the pickle holds a {type(params).__name__}, not a dict of layers")
    caffe = {}
    for layer, value in params.items():
        layer = layer.decode() if isinstance(layer, bytes) else layer
        if isinstance(value, dict):  # newer caffe-tensorflow: {"weights": W, "biases": b}
            value = [value.get(k, value.get(k.encode())) for k in ("weights", "biases")]
        if layer in CAFFE_SHAPES and isinstance(value, (list, tuple)) and len(value) == 2:
            caffe[layer] = _npy_to_caffe(layer, *value)
    return _check(caffe, path)


def _npy_to_caffe(layer, w, b):
    """caffe-tensorflow's layout back to Caffe's: HWIO -> OIHW; (in, out) -> (out, in), fc6's rows HWC -> CHW."""
    w, b = np.asarray(w), np.asarray(b)
    if w.ndim == 4:
        return w.transpose(3, 2, 0, 1), b
    if w.ndim != 2:
        return w, b
    if layer == "fc6" and w.shape[0] == np.prod(POOL5):
        c, h, wd = POOL5
        return w.reshape(h, wd, c, -1).transpose(3, 2, 0, 1).reshape(w.shape[1], -1), b
    return w.T, b


def read_weights(path):
    """{layer: (kernel, bias)} in Caffe's layout from a .onnx or .npy file."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"weights={path}: is a folder; give the .onnx or .npy file in it")
    if not path.is_file():
        raise WeightsError(f"weights={path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights={path}: is an empty file (an interrupted download?)")
    if path.suffix.lower() == ".onnx":
        return read_onnx(path)
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    raise WeightsError(f"weights={path}: expected a .onnx (ONNX model zoo) or .npy (caffe-tensorflow) file")


def tower_weights(caffe):
    """{Keras layer name: [kernel, bias]} of this project's two-tower model from Caffe-layout weights."""
    out = {}
    for layer, (w, b) in caffe.items():
        if w.ndim == 4:
            if layer == "conv1":
                w = w[:, ::-1]  # BGR -> RGB input channels
            kernel = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif layer == "fc6":
            c, h, wd = POOL5  # inputs CHW -> this project's NHWC flattening
            kernel = w.reshape(-1, c, h, wd).transpose(2, 3, 1, 0).reshape(h * wd * c, -1)
        else:
            kernel = w.T
        if layer == "fc8":
            out["fc8"] = [kernel, b]
            continue
        half = kernel.shape[-1] // 2
        out[f"{layer}_a"] = [kernel[..., :half], b[:half]]
        out[f"{layer}_b"] = [kernel[..., half:], b[half:]]
    return {name: [np.ascontiguousarray(t, np.float32) for t in pair] for name, pair in out.items()}


def load_into(model, caffe):
    """Sets every weight layer of a 1000-class `build_alexnet(lrn="caffe")` model from Caffe-layout weights."""
    for name, values in tower_weights(caffe).items():
        model.get_layer(name).set_weights(values)
    return model


def imagenet_statistics():
    """The workdir statistics of an imported model: Caffe's mean (as RGB) and ImageNet's PCA basis."""
    from alexnet_tf.statistics import IMAGENET_STATISTICS

    return {**IMAGENET_STATISTICS, "mean": list(CAFFE_MEAN_BGR[::-1])}


# The network bvlc_alexnet's weights are: the paper's two-tower net with Caffe's LRN, 1000 ImageNet classes.
BVLC_MODEL = dict(preset="paper", lrn="caffe", num_classes=1000)


def import_weights(weights, workdir, log=print):
    """Writes a workdir holding bvlc_alexnet from `weights` (.onnx or .npy) that alexnet-export,
    alexnet-predict and `alexnet-train --init_from` use like a trained one. Nothing is written
    unless the whole import succeeds; an existing workdir is never written over."""
    import tensorflow as tf

    from alexnet_tf import config as config_lib, runs
    from alexnet_tf.data import imagenet_class_names
    from alexnet_tf.model import from_config

    workdir = Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise WeightsError(f"workdir={workdir}: exists and is not empty; import into a new workdir")
    caffe = read_weights(weights)
    broken = [f"{layer}[{i}]" for layer, tensors in caffe.items() for i, t in enumerate(tensors)
              if not np.isfinite(t).all()]
    if broken:
        raise WeightsError(f"weights={weights}: non-finite values (NaN or inf) in {', '.join(broken)} "
                           f"([0] the weights, [1] the bias); nothing imported")
    model_config = config_lib.ModelConfig.of_preset(**BVLC_MODEL)
    model = load_into(from_config(model_config, inference=True), caffe)
    workdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.", dir=workdir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make an import private, unlike a trained workdir
    try:
        record = runs.RunRecord(
            config=config_lib.TrainConfig(dataset="imagenet2012", workdir=str(workdir), model=model_config),
            statistics=imagenet_statistics(), imported_from=str(Path(weights).resolve()),
            weights_format=Path(weights).suffix.lower().lstrip("."))
        runs.write_run(staging, record, imagenet_class_names()[1])
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(staging / "checkpoints"), 1)
        manager.save(checkpoint_number=0)  # the state file names it relative to its folder
        if workdir.exists():
            workdir.rmdir()
        staging.rename(workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"imported bvlc_alexnet from {weights} into {workdir} (lrn=caffe, 1000 classes)")
    return workdir
