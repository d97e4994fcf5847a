"""Export a trained AlexNet: a SavedModel for TF Serving, and TFLite variants.

Every exported graph is traced from `placement.device_free(model)` inside
`layers.plain_ops()`: no op is pinned to a device, so it loads on any machine,
soft placement on or off, and the LRN is made of ordinary ops rather than XLA
functions, which TF Serving and the TFLite converter run. The SavedModel (and
the ONNX file converted from it) computes the FC layers with both towers merged
(`inference_model`); TFLite keeps the towers, which is as fast in XNNPACK.
Its signatures (fixed dtypes, any batch size):

- `serving_default`: `image_bytes` (string [N]: JPEG or PNG of any size) ->
  `probabilities` [N, C], `top5_classes` int32 [N, 5], `top5_names`
  string [N, 5]. The paper's evaluation preprocessing (shorter side to 256,
  central crop, mean subtracted) runs inside the graph.
- `preprocessed`: `images` (float32 [N, S, S, 3], already preprocessed) ->
  the same three outputs.
- `features`: `images` (float32 [N, S, S, 3], preprocessed) -> `fc7` [N, 4096],
  the activations the paper's Figure 4 retrieves neighbours with.
"""

import json
import os
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import checkpoints, layers, workdir as workdir_lib
from alexnet_tf.workdir import WorkdirError
from alexnet_tf.model import FC_LAYERS, FEATURES_LAYER, POOL5_LAYER
from alexnet_tf.placement import device_free
from alexnet_tf.sidecar import Preprocessing

TFLITE_KINDS = ("float32", "float16", "dynamic", "int8")


class ExportError(ValueError):
    """A workdir, checkpoint or export option that cannot be used; the message says which."""


def load_trained(workdir, checkpoint=None, log=print):
    """(model, RunRecord, Preprocessing) of a workdir (`checkpoints.load_model`), errors as ExportError."""
    try:
        model, record, class_names = checkpoints.load_model(workdir, checkpoint, log)
    except WorkdirError as e:
        raise ExportError(str(e)) from None
    return model, record, preprocessing_of(record, class_names)


def preprocessing_of(record, class_names):
    """The Preprocessing a model trained as `record` (a runs.RunRecord) expects."""
    return Preprocessing(image_size=record.model.image_size, resize=record.model.resize,
                         mean=tuple(record.statistics["mean"]), class_names=tuple(class_names))


def inference_model(model):
    """`model`'s function as the exported graphs compute it: each FC layer's two towers as one layer.

    fc6_a and fc6_b read the same input (both towers' pool5), and so do fc7_a
    and fc7_b (both towers' fc6), so each pair is one matmul with the towers'
    kernels side by side, a's columns first, as the merges order them. At
    batch 1 the FC layers only stream their weights from memory, and one
    matmul of 151 MB streams them faster than two of 75 MB running
    concurrently (BUILD_NOTES.md, "Serving speed"). The merged layers hold a
    copy of the weights as they are now: export, don't train, through it. The
    convolutions keep their towers (merging those was slower). A one-tower
    model is returned as it is.
    """
    if "fc6_b" not in {layer.name for layer in model.layers}:
        return model
    x = keras.layers.Flatten(name="flatten6")(model.get_layer(POOL5_LAYER).output)
    for name in FC_LAYERS:
        a, b = model.get_layer(f"{name}_a"), model.get_layer(f"{name}_b")
        merged = keras.layers.Dense(a.units + b.units, activation="relu", dtype=a.dtype_policy, name=name)
        x = merged(x)
        merged.set_weights([np.concatenate([a.kernel.numpy(), b.kernel.numpy()], axis=1),
                            np.concatenate([a.bias.numpy(), b.bias.numpy()])])
    features = keras.layers.Identity(name=FEATURES_LAYER)(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(model.get_layer("fc8")(features))
    return keras.Model(model.input, logits, name=model.name)


class _Serving(tf.Module):
    def __init__(self, model, preprocessing_record):
        super().__init__(name="alexnet_serving")
        model = inference_model(model)
        self.classifier = device_free(model)
        self.extractor = device_free(keras.Model(model.input, model.get_layer(FEATURES_LAYER).output,
                                                 name=f"{model.name}_fc7"))
        self.class_names = tf.constant(list(preprocessing_record.class_names))
        self.record = preprocessing_record
        crop = preprocessing_record.image_size
        images = tf.TensorSpec([None, crop, crop, 3], tf.float32, name="images")
        self.serving_default = tf.function(self._from_bytes,
                                           input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        self.preprocessed = tf.function(self._classify, input_signature=[images])
        self.features = tf.function(self._features, input_signature=[images])

    def _classify(self, images):
        with layers.plain_ops():
            probabilities = tf.nn.softmax(self.classifier(images, training=False))
        top = tf.math.top_k(probabilities, k=min(5, int(self.class_names.shape[0])))
        return {"probabilities": probabilities, "top5_classes": top.indices,
                "top5_names": tf.gather(self.class_names, top.indices)}

    def _from_bytes(self, image_bytes):
        crop = self.record.image_size
        images = tf.map_fn(self.record.view, image_bytes, fn_output_signature=tf.TensorSpec([crop, crop, 3],
                                                                                           tf.float32))
        return self._classify(images)

    def _features(self, images):
        with layers.plain_ops():
            return {"fc7": self.extractor(images, training=False)}


def next_version(export_dir):
    """TF Serving's layout: integer version folders; the next is one more than the highest, counting the
    versions other exports are writing (`N.partial`)."""
    existing = [int(p.name.removesuffix(".partial")) for p in Path(export_dir).glob("*")
                if p.is_dir() and p.name.removesuffix(".partial").isdigit()]
    return max(existing, default=0) + 1


def remove_abandoned(export_dir, log=print):
    """Removes the `N.partial` folders of exports that were killed (their process is gone), saying so."""
    for partial in sorted(p for p in Path(export_dir).glob("*.partial") if p.is_dir()):
        owner = (partial / ".owner").read_text().strip() if (partial / ".owner").is_file() else ""
        if not owner.isdigit() or not workdir_lib.alive(int(owner)):
            shutil.rmtree(partial, ignore_errors=True)
            log(f"removed {partial}: left by an export that did not finish")


def _claim(export_dir, version):
    """(the version's path, its `.partial` folder, created here): the folder is the claim (`mkdir` is atomic),
    so two exports at once never share one; without a `version`, a version another export claimed first is
    skipped."""
    number = version or next_version(export_dir)
    while True:
        path = Path(export_dir) / str(number)
        tmp = path.with_name(path.name + ".partial")
        if path.exists():
            if version:
                raise ExportError(f"{path} exists already; TF Serving versions are never overwritten")
        else:
            try:
                tmp.mkdir(parents=True)
            except FileExistsError:
                if version:
                    raise ExportError(f"{path}: another export is writing this version now") from None
            else:
                (tmp / ".owner").write_text(str(os.getpid()))
                return path, tmp
        number += 1


def export_savedmodel(model, preprocessing_record, export_dir, version=None, log=print):
    """Writes the SavedModel of `model`, which expects `preprocessing_record` (a `Preprocessing`), to
    `<export_dir>/<version>/` and returns that path. Folders of killed exports are removed first (`log` says
    which)."""
    module = _Serving(model, preprocessing_record)
    if Path(export_dir).is_dir():
        remove_abandoned(export_dir, log)
    path, tmp = _claim(export_dir, version)
    signatures = {"serving_default": module.serving_default, "preprocessed": module.preprocessed,
                  "features": module.features}
    try:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        (tmp / "assets").mkdir(exist_ok=True)
        meta = preprocessing_record.to_json()
        (tmp / "assets" / "classes.txt").write_text("\n".join(meta.pop("class_names")) + "\n")
        (tmp / "assets" / "alexnet_tf.json").write_text(json.dumps(meta, indent=2))
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        if workdir_lib.no_space(e):
            raise ExportError(f"no space left on device while writing {tmp}") from None
        raise
    (tmp / ".owner").unlink()
    tmp.rename(path)  # a half-written export never looks like a version
    return path


def write_tflite(flatbuffer, path, preprocessing_record):
    """Writes a .tflite and its .json sidecar (`preprocessing_record`, a `Preprocessing`), each under a
    temporary name renamed when complete, so a truncated file never looks like a model."""
    _write_whole(path, flatbuffer)
    write_sidecar(path, preprocessing_record)
    return Path(path)


def write_sidecar(model_path, preprocessing_record):
    """`<model file>.json`: what alexnet-predict needs to preprocess a file model's input and name its classes."""
    _write_whole(f"{model_path}.json", json.dumps(preprocessing_record.to_json()).encode())


def _write_whole(target, content):
    """`content` at `target`, written under a temporary name and renamed when complete."""
    target = Path(target)
    tmp = target.with_name(target.name + ".partial")
    try:
        tmp.write_bytes(content)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if workdir_lib.no_space(e):
            raise ExportError(f"no space left on device while writing {target}") from None
        raise
    tmp.replace(target)


def export_tflite(model, kind, *, representative_images=None):
    """A .tflite flatbuffer (bytes) of the device-free classifier, float32 in, logits out.

    kind: float32; float16 (weights in float16); dynamic (int8 weights,
    float activations); int8 (int8 weights and activations, calibrated on
    `representative_images`, except the LRN layers, which stay float32 with
    dequantize/quantize around them).
    """
    if kind not in TFLITE_KINDS:
        raise ExportError(f"tflite: unknown kind {kind!r}; choose from {', '.join(TFLITE_KINDS)}")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    portable = device_free(model)
    size = model.input_shape[1]
    def classify(images):
        with layers.plain_ops():
            return portable(images, training=False)

    fn = tf.function(classify, input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="images")])
    # Weights as constants: left as variables, the converter keeps them as
    # resource variables, which int8 calibration cannot run.
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())

    def converter():
        return tf.lite.TFLiteConverter.from_concrete_functions([frozen])

    if kind != "int8":
        return _convert(converter(), kind)
    if representative_images is None:
        raise ExportError("int8 TFLite needs representative images from the training split")
    return _int8_with_float_lrn(converter, model, representative_images)


def _convert(converter, kind):
    if kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _int8_with_float_lrn(converter, model, representative_images):
    """Full-integer conversion with the LRN layers' ops left in float32.

    LRN is a square, a small band matmul, rsqrt and multiplies (layers.py).
    Quantized, those ops run on TFLite's int8 reference kernels: measured 55 ms
    per image against 2.6 ms with them in float (BUILD_NOTES.md), and its
    squared sums are what int8 represents worst. TFLite's selective
    quantization (the QuantizationDebugger's deny list) keeps them float.
    """
    lrn_layers = [layer.name for layer in model.layers if isinstance(layer, layers.LocalResponseNormalization)]
    from ai_edge_litert.interpreter import Interpreter

    float_tensors = Interpreter(model_content=converter().convert()).get_tensor_details()
    # Tensor names carry the layer's name scope ("alexnet_1/norm1_a_1/Rsqrt").
    lrn_nodes = [t["name"] for t in float_tensors
                 if any(re.search(rf"(^|/){name}(_\d+)?/", t["name"]) for name in lrn_layers)]
    if lrn_layers and not lrn_nodes:
        raise ExportError("int8 TFLite: found none of the LRN layers' ops in the converted model")
    int8 = converter()
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = lambda: ([img[None]] for img in representative_images)
    int8.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=int8, debug_dataset=int8.representative_dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=lrn_nodes))
    return debugger.get_nondebug_quantized_model()


def representative_images(record, count=100):
    """`count` training images of the run `record` (a runs.RunRecord) describes, preprocessed for
    evaluation (centre crop), as float32 arrays."""
    from alexnet_tf import augmentation, data, pipelines
    from alexnet_tf.sources import DatasetError

    config = record.config
    try:
        source = data.load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                                   seed=config.seed)
    except DatasetError as e:
        raise ExportError(f"tflite=int8 calibrates on training images of the model's dataset, which cannot be "
                          f"read here: {e}") from None
    squares = next(iter(pipelines.eval_pipeline(source, "train", batch_size=count, size=record.model.resize,
                                                count=count)))[0]
    images = augmentation.eval_images(squares, crop=record.model.image_size, mean=record.statistics["mean"]).numpy()
    return [np.asarray(x, np.float32) for x in images]


def export_onnx(savedmodel_path, path, preprocessing_record, *, opset=13):
    """Converts the SavedModel's `preprocessed` signature (float32 NHWC images in; probabilities, top-5
    indices and names out) to ONNX at `path` with tf2onnx (the optional extra `pip install
    alexnet_tf[onnx]`), through a `.partial` file renamed when complete, with the .json sidecar
    (`preprocessing_record`) that alexnet-predict reads. Returns `path`."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("tf2onnx") is None:
        raise ExportError("ONNX export needs tf2onnx: pip install 'alexnet_tf[onnx]' (or pip install tf2onnx)")
    partial = Path(f"{path}.partial")
    # tf2onnx's command line is its supported way to convert a SavedModel signature.
    proc = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(savedmodel_path),
                           "--signature_def", "preprocessed", "--opset", str(opset), "--output", str(partial)],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise ExportError(f"ONNX export of {savedmodel_path} failed: {lines[-1] if lines else 'tf2onnx gave no reason'}")
    partial.replace(path)
    write_sidecar(path, preprocessing_record)
    return Path(path)

