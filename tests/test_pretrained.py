"""Importing Caffe's bvlc_alexnet from files of both real layouts, written here with random weights
that carry signal through all eight layers, checked against onnxruntime running the same file."""

import json
import pickle
import re

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import applications, checkpoints, pretrained
from alexnet_tf.model import FEATURES_LAYER, build_alexnet
from helpers import cli

GROUPS = {"conv2": 2, "conv4": 2, "conv5": 2}


def random_caffe_weights(seed=0):
    """bvlc_alexnet-shaped weights in Caffe's layout, He-scaled so that every layer passes signal on
    (under N(0, 0.01) the logits would be the biases alone)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for layer, (w_shape, b_shape) in pretrained.CAFFE_SHAPES.items():
        fan_in = int(np.prod(w_shape[1:]))
        weights[layer] = (rng.normal(0, np.sqrt(2 / fan_in), w_shape).astype(np.float32),
                          rng.normal(0, 0.05, b_shape).astype(np.float32))
    return weights


def write_onnx(path, weights, image_size=227, names=None):
    """A file laid out like the ONNX model zoo's bvlcalexnet-12: initializers conv1_w_0 ... fc8_b_0,
    grouped Conv nodes, Caffe's LRN, Gemm with transB=1, input data_0 (BGR, NCHW). Outputs the
    logits (fc8_1) and fc7's activations (fc7_2) too, for comparisons."""
    from onnx import TensorProto, helper, numpy_helper, save

    names = names or {}
    nodes, x = [], "data_0"

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    for layer, pads, stride, kernel in (("conv1", 0, 4, 11), ("conv2", 2, 1, 5), ("conv3", 1, 1, 3),
                                        ("conv4", 1, 1, 3), ("conv5", 1, 1, 3)):
        x = node("Conv", [x, f"{layer}_w_0", f"{layer}_b_0"], f"{layer}_1", kernel_shape=[kernel, kernel],
                 strides=[stride, stride], pads=[pads] * 4, group=GROUPS.get(layer, 1))
        x = node("Relu", [x], f"{layer}_2")
        if layer in ("conv1", "conv2"):
            x = node("LRN", [x], f"norm{layer[-1]}_1", size=5, alpha=1e-4, beta=0.75, bias=1.0)
        if layer in ("conv1", "conv2", "conv5"):
            x = node("MaxPool", [x], f"pool{layer[-1]}_1", kernel_shape=[3, 3], strides=[2, 2])
    x = node("Flatten", [x], "pool5_flat", axis=1)
    for layer in ("fc6", "fc7", "fc8"):
        x = node("Gemm", [x, f"{layer}_w_0", f"{layer}_b_0"], f"{layer}_1", transB=1)
        if layer != "fc8":
            x = node("Relu", [x], f"{layer}_2")
    node("Softmax", [x], "prob_1", axis=1)
    initializers = [numpy_helper.from_array(t, names.get(f"{layer}_{s}_0", f"{layer}_{s}_0"))
                    for layer, pair in weights.items() for s, t in zip("wb", pair)]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("prob_1", "fc8_1", "fc7_2")]
    graph = helper.make_graph(nodes, "bvlcalexnet", [helper.make_tensor_value_info(
        "data_0", TensorProto.FLOAT, ["N", 3, image_size, image_size])], outputs, initializers)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), str(path))
    return path


def write_npy(path, weights):
    """caffe-tensorflow's bvlc_alexnet.npy: {layer: [W, b]}, conv W in HWIO, fc W as (in, out) with fc6's
    rows in pool5's HWC order, pickled with protocol 2 under numpy.core's names as Python 2 wrote it."""
    converted = {}
    for layer, (w, b) in weights.items():
        if w.ndim == 4:
            w = w.transpose(2, 3, 1, 0)
        elif layer == "fc6":
            w = w.reshape(4096, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, 4096)
        else:
            w = w.T
        converted[layer] = [np.ascontiguousarray(w), b]
    write_pickled_npy(path, converted)
    return path


def write_pickled_npy(path, obj):
    """An object .npy (numpy's header, then a protocol-2 pickle naming numpy.core as Python 2 did)."""
    body = pickle.dumps(np.array(obj, dtype=object) if not isinstance(obj, np.ndarray) else obj, protocol=2)
    body = body.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(body)


@pytest.fixture(scope="module")
def bvlc(tmp_path_factory):
    """Both files of the same random weights, and the ONNX one imported with alexnet-import."""
    root = tmp_path_factory.mktemp("bvlc")
    weights = random_caffe_weights()
    onnx_path, npy_path = write_onnx(root / "bvlcalexnet-12.onnx", weights), write_npy(root / "bvlc_alexnet.npy", weights)
    proc = cli("import_weights", f"--weights={onnx_path}", f"--workdir={root}/imported", timeout=600)
    assert proc.returncode == 0, proc.stderr
    return dict(root=root, weights=weights, onnx=onnx_path, npy=npy_path, workdir=root / "imported")


def test_layer_flops_and_shapes_of_bvlc_are_this_projects_model():
    # bvlc_alexnet's parameters are this project's model's, tensor for tensor.
    assert sum(int(np.prod(w)) + int(np.prod(b)) for w, b in pretrained.CAFFE_SHAPES.values()) == 60_965_224


@pytest.mark.heavy
def test_onnx_import_agrees_with_onnxruntime_at_fc7_and_the_logits(bvlc):
    import onnxruntime

    model, record, names = checkpoints.load_model(bvlc["workdir"])
    assert record.model.lrn == "caffe" and len(names) == 1000 and names[0] == "tench, Tinca tinca"  # sorted synsets
    images = np.random.default_rng(1).uniform(-120, 120, (2, 227, 227, 3)).astype(np.float32)  # RGB, mean removed
    session = onnxruntime.InferenceSession(str(bvlc["onnx"]), providers=["CPUExecutionProvider"])
    logits_ort, fc7_ort = session.run(["fc8_1", "fc7_2"], {"data_0": images[..., ::-1].transpose(0, 3, 1, 2)})
    extractor = tf.keras.Model(model.input, [model.output, model.get_layer(FEATURES_LAYER).output])
    logits, fc7 = (t.numpy() for t in extractor(images, training=False))
    assert np.abs(fc7_ort).max() > 1 and np.std(logits_ort) > 1  # the signal reached the top
    for ours, theirs in ((fc7, fc7_ort), (logits, logits_ort)):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())

    # The same weights with each tower normalizing only its own channels (the paper's windows, Caffe's
    # constants) are measurably off: the test above would see a wrong LRN.
    per_tower = build_alexnet(1000, lrn="paper", dropout=0.0)
    for layer in per_tower.layers:
        if layer.name.startswith("norm"):
            layer.k, layer.alpha = 1.0, 2e-5
    pretrained.load_into(per_tower, pretrained.read_weights(bvlc["onnx"]))
    wrong = tf.keras.Model(per_tower.input, per_tower.get_layer(FEATURES_LAYER).output)(images).numpy()
    assert np.abs(wrong - fc7_ort).max() > 20 * 1e-4 * np.abs(fc7_ort).max()


@pytest.mark.heavy
def test_npy_import_equals_the_onnx_import(bvlc, tmp_path):
    proc = cli("import_weights", f"--weights={bvlc['npy']}", f"--workdir={tmp_path}/from_npy", timeout=600)
    assert proc.returncode == 0, proc.stderr
    imported = {path: checkpoints.load_model(path)[0] for path in (bvlc["workdir"], tmp_path / "from_npy")}
    for a, b in zip(*(m.get_weights() for m in imported.values())):
        np.testing.assert_array_equal(a, b)
    from_onnx, from_npy = pretrained.read_weights(bvlc["onnx"]), pretrained.read_weights(bvlc["npy"])
    assert set(from_npy) == set(from_onnx) == set(pretrained.CAFFE_SHAPES)
    for layer in from_onnx:
        for a, b in zip(from_onnx[layer], from_npy[layer]):
            np.testing.assert_array_equal(a, b, err_msg=layer)
    towers = pretrained.tower_weights(from_npy)
    # Tower a is group 0: conv2_a's kernel is the first 128 filters of conv2, in HWIO.
    np.testing.assert_array_equal(towers["conv2_a"][0], bvlc["weights"]["conv2"][0][:128].transpose(2, 3, 1, 0))
    # conv1's input channels are reversed: the imported model takes RGB.
    np.testing.assert_array_equal(towers["conv1_b"][0][..., 0, :],
                                  bvlc["weights"]["conv1"][0][48:, 2].transpose(1, 2, 0))


@pytest.mark.heavy
def test_exported_import_classifies_jpeg_bytes_like_the_keras_model(bvlc, tmp_path):
    proc = cli("export", f"--workdir={bvlc['workdir']}", f"--export_dir={tmp_path}/export", timeout=600)
    assert proc.returncode == 0, proc.stderr
    rng = np.random.default_rng(2)
    photos = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)]
    jpegs = [tf.io.encode_jpeg(p, quality=95).numpy() for p in photos]
    loaded = tf.saved_model.load(str(tmp_path / "export" / "1"))
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(jpegs))
    model, record, _ = checkpoints.load_model(bvlc["workdir"])
    decoded = [tf.io.decode_jpeg(j).numpy() for j in jpegs]
    probs = tf.nn.softmax(model(applications.preprocess_input(decoded, mean=record.statistics["mean"]))).numpy()
    # The bound the other exports are held to (SavedModel vs Keras, BUILD_NOTES.md): on an AMX host oneDNN
    # accumulates this full-size net's sums in another order than the serving graph's and differs by 1.8e-5.
    np.testing.assert_allclose(served["probabilities"].numpy(), probs, atol=1e-4)
    assert served["top5_names"].numpy()[0, 0].decode() in open(bvlc["workdir"] / "classes.json").read()
    meta = (tmp_path / "export" / "1" / "assets" / "alexnet_tf.json").read_text()
    assert "122.67" in meta  # Caffe's mean, red first: the SavedModel takes RGB
    # alexnet-predict on the export: each photo's top-5 ImageNet names.
    (tmp_path / "photo.jpg").write_bytes(jpegs[0])
    proc = cli("predict", f"--model={tmp_path}/export/1", "--json", tmp_path / "photo.jpg")
    assert proc.returncode == 0, proc.stderr
    top5 = json.loads(proc.stdout.splitlines()[-1])["top5"]
    assert top5[0]["class"] == served["top5_names"].numpy()[0, 0].decode()
    # Its preprocessing runs eagerly, then the `preprocessed` signature: float32 rounding apart (measured 2e-5).
    assert top5[0]["probability"] == pytest.approx(float(served["probabilities"].numpy()[0].max()), abs=2e-4)


@pytest.mark.heavy
def test_keras_applications_entry_point(bvlc):
    from_file = applications.AlexNet(weights=str(bvlc["onnx"]))
    from_workdir = applications.AlexNet(weights=str(bvlc["workdir"]))
    x = np.random.default_rng(3).uniform(-100, 100, (1, 227, 227, 3)).astype(np.float32)
    np.testing.assert_allclose(from_file(x).numpy(), from_workdir(x).numpy(), rtol=1e-5, atol=1e-4)
    assert applications.AlexNet(weights=str(bvlc["npy"]), include_top=False).output.shape == (None, 6, 6, 256)
    assert applications.AlexNet(weights=str(bvlc["npy"]), include_top=False, pooling="avg").output.shape == (None, 256)
    with pytest.raises(ValueError, match="classes=10, but bvlc_alexnet has 1000 classes"):
        applications.AlexNet(weights=str(bvlc["onnx"]), classes=10)


def test_preprocess_input_is_the_evaluation_preprocessing_and_decode_predictions_names_classes():
    from alexnet_tf import preprocessing

    image = np.random.default_rng(4).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    png = tf.io.encode_png(image).numpy()  # lossless, so both paths see the same pixels
    want = preprocessing.eval_view(preprocessing.decode_center_256(tf.constant(png)), crop=227,
                                    mean=[122.68, 116.67, 104.01]).numpy()
    got = applications.preprocess_input([image], mean=[122.68, 116.67, 104.01])
    assert got.shape == (1, 227, 227, 3)
    np.testing.assert_allclose(got[0], want, atol=1e-4)
    preds = np.zeros((2, 1000))
    preds[0, 1], preds[0, 0], preds[1, 999] = 0.7, 0.2, 0.9
    decoded = applications.decode_predictions(preds, top=2)
    assert decoded[0] == [("n01443537", "goldfish, Carassius auratus", 0.7), ("n01440764", "tench, Tinca tinca", 0.2)]
    assert decoded[1][0][0] == "n15075141" and len(decoded[1]) == 2
    with pytest.raises(ValueError, match=r"shape \(N, 1000\)"):
        applications.decode_predictions(np.zeros((1, 10)))
    tiny = applications.AlexNet(classes=10, lrn=None)
    assert tiny.output.shape == (None, 10) and not [l for l in tiny.layers if l.name.startswith("norm")]


def small_weights(**changes):
    """A few tensors in a real layout but wrong: enough for the checks, small enough to write fast."""
    weights = {"conv1": (np.zeros((64, 3, 11, 11), np.float32), np.zeros(64, np.float32))}
    weights.update(changes)
    return weights


@pytest.mark.parametrize("kind, expected", [
    ("torchvision_onnx", r"no initializer conv1_w_0 \(the conv1 kernel of the ONNX model zoo's bvlcalexnet"),
    ("wrong_shape_npy", r"conv1 kernel has shape \(64, 3, 11, 11\), expected \(96, 3, 11, 11\)"),
    ("missing_layer_npy", r"no tensor for fc8"),
    ("not_a_model", r"not a readable ONNX model"),
    ("unsafe_pickle", r"refused: the pickle is not a dict of numpy arrays \(it asks for (posix|os)\.system\)"),
])
def test_a_file_of_the_wrong_layout_is_one_line_and_writes_nothing(tmp_path, kind, expected):
    marker = tmp_path / "pwned"
    if kind == "torchvision_onnx":
        path = tmp_path / "alexnet.onnx"
        write_onnx(path, small_weights(), names={"conv1_w_0": "features.0.weight", "conv1_b_0": "features.0.bias"})
    elif kind == "wrong_shape_npy":
        path = write_npy(tmp_path / "x.npy", small_weights())
    elif kind == "missing_layer_npy":
        good = random_caffe_weights()
        path = write_npy(tmp_path / "x.npy", {k: v for k, v in good.items() if k != "fc8"})
    elif kind == "not_a_model":
        path = tmp_path / "x.onnx"
        path.write_bytes(b"\x00\x01 not protobuf at all" * 10)
    else:
        class Payload:
            def __reduce__(self):
                import os
                return os.system, (f"touch {marker}",)
        path = tmp_path / "evil.npy"
        write_pickled_npy(path, np.array({"conv1": Payload()}, dtype=object))
    proc = cli("import_weights", f"--weights={path}", f"--workdir={tmp_path}/out", timeout=300)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"alexnet-import: error: --weights={path}: "), proc.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() and not marker.exists()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_an_empty_file_or_a_folder_as_weights_says_so(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(pretrained.WeightsError, match=r"weights=.*empty\.onnx: is an empty file"):
        pretrained.read_weights(tmp_path / "empty.onnx")
    (tmp_path / "zoo.onnx").mkdir()
    with pytest.raises(pretrained.WeightsError, match=r"weights=.*zoo\.onnx: is a folder"):
        pretrained.read_weights(tmp_path / "zoo.onnx")


def test_import_never_writes_over_a_workdir(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(pretrained.WeightsError, match=r"workdir=.*run: exists and is not empty"):
        pretrained.import_weights(tmp_path / "nothing.onnx", tmp_path / "run")


@pytest.mark.heavy
def test_fine_tune_the_import_on_a_folder_of_ones_own_images(bvlc, shapes_folder, tmp_path):
    proc = cli("train", f"--init_from={bvlc['workdir']}", f"--dataset=folder:{shapes_folder}",
               f"--data_dir={tmp_path}/data", f"--workdir={tmp_path}/ft", "--train_layers=fc8", "--batch_size=4",
               "--steps=2", f"--export_dir={tmp_path}/export", timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "fc8 initialized anew (10 classes, the source has 1000)" in proc.stdout
    imported, _, _ = checkpoints.load_model(bvlc["workdir"])
    tuned, record, names = checkpoints.load_model(tmp_path / "ft")
    assert record.model.lrn == "caffe" and record.model.preset == "paper" and len(names) == 10
    assert record.statistics["mean"] == pretrained.imagenet_statistics()["mean"]  # what the weights expect
    for name in ("conv1_a", "conv5_b", "fc7_b"):
        np.testing.assert_array_equal(imported.get_layer(name).get_weights()[0], tuned.get_layer(name).get_weights()[0])
    assert tuned.get_layer("fc8").get_weights()[0].shape == (4096, 10)
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()
    # Training in the imported workdir itself would write over the import: refused.
    proc = cli("train", f"--workdir={bvlc['workdir']}", f"--dataset=folder:{shapes_folder}", "--steps=1",
               f"--data_dir={tmp_path}/data", timeout=300)
    assert proc.returncode == 2 and "holds weights imported by alexnet-import" in proc.stderr


@pytest.mark.heavy
def test_non_finite_weights_are_refused_naming_each_tensor(bvlc, tmp_path):
    weights = {layer: (w.copy(), b.copy()) for layer, (w, b) in bvlc["weights"].items()}
    weights["conv1"][0][0, 0, 0, 0] = np.nan
    weights["fc7"][1][3] = np.inf
    path = write_npy(tmp_path / "broken.npy", weights)
    with pytest.raises(pretrained.WeightsError, match=r"weights=.*broken\.npy: non-finite values \(NaN or inf\) in "
                                                      r"conv1\[0\], fc7\[1\] .*nothing imported"):
        pretrained.import_weights(path, tmp_path / "imported")
    assert not (tmp_path / "imported").exists() and not list(tmp_path.glob(".imported.*"))


@pytest.mark.heavy
def test_an_import_is_as_readable_as_a_trained_workdir(bvlc):
    """mkdtemp's 0700 made imports private where trained workdirs follow the umask (0755 with 022)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert bvlc["workdir"].stat().st_mode & 0o777 == 0o777 & ~umask
