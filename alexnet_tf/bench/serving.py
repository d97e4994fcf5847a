"""Serving speed: every exported runtime through `predict.Classifier`, timed in turns, each with its top-1
agreement with Keras; and the machine's limit for the model that was timed (`floor`)."""

import os
import tempfile

from alexnet_tf.bench import flops as flops_lib
from alexnet_tf.bench import probes as probes_lib
from alexnet_tf.bench.timing import time_calls


def inference(runners, batch_size, *, warmup=2, repeats=5, rounds=1, image_size=227, seed=0):
    """Latency and throughput of each `runners[name](images)` (must block) on one random batch, by name,
    the runners taking turns (`time_calls`)."""
    import numpy as np

    images = np.random.default_rng(seed).uniform(-120, 120, (batch_size, image_size, image_size, 3)).astype(np.float32)
    results = time_calls({name: (lambda run=run: run(images)) for name, run in runners.items()},
                         warmup=warmup, repeats=repeats, rounds=rounds)
    for result in results.values():
        result.update(batch_size=batch_size, images_per_s=batch_size / result["median_s"])
    return results


def latency_and_throughput(runners, image_size, *, repeats=10, warmup=2, log=print):
    """(batch-1, batch-64) `inference` results of the runners, timed in five rounds at batch 1 and three
    at batch 64, each turn after at least 10 (batch 1) or 1 (batch 64) untimed calls: the SavedModel took
    about six batch-1 calls (~70 ms) to recover its speed after ONNX Runtime's (BUILD_NOTES.md)."""
    log(f"timing {', '.join(runners)}, taking turns")
    batch1 = inference(runners, 1, image_size=image_size, repeats=max(repeats, 10), rounds=5, warmup=max(warmup, 10))
    batch64 = inference(runners, 64, image_size=image_size, repeats=6, rounds=3, warmup=1)
    return batch1, batch64


def exported_runtimes(model, record, directory, *, kinds, calibration, onnx=False, log=print):
    """Exports `model` (with its Preprocessing `record`) into `directory` as a SavedModel, each TFLite kind
    and, if asked and possible, ONNX; returns ({runtime name: predict.Classifier}, {name: bytes on disk})."""
    from alexnet_tf import export, predict

    saved = export.export_savedmodel(model, record, directory)
    classifiers = {"savedmodel": predict.Classifier(saved)}
    sizes = {"savedmodel": sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())}
    for kind in kinds:
        log(f"converting TFLite {kind} ({len(record.class_names)} classes)")
        path = os.path.join(directory, f"alexnet_{kind}.tflite")
        export.write_tflite(export.export_tflite(model, kind, representative_images=calibration), path, record)
        classifiers[f"tflite_{kind}"] = predict.Classifier(path)
        sizes[f"tflite_{kind}"] = os.path.getsize(path)
    if onnx:
        try:
            import onnxruntime
            log("converting to ONNX (tf2onnx)")
            path = export.export_onnx(saved, os.path.join(directory, "alexnet.onnx"), record)
        except (ImportError, export.ExportError) as e:
            log(f"no ONNX Runtime row: {e} (pip install 'alexnet_tf[onnx]')")
        else:
            classifiers[f"onnxruntime {onnxruntime.__version__}"] = predict.Classifier(path)
            sizes[f"onnxruntime {onnxruntime.__version__}"] = os.path.getsize(path)
    return classifiers, sizes


def _keras_probabilities(model):
    import tensorflow as tf

    from alexnet_tf.placement import device_free

    fn = tf.function(lambda x: tf.nn.softmax(device_free(model)(x, training=False)))
    return lambda x: fn(x).numpy()


def _agreement(run, images, reference):
    import numpy as np

    probs = run(images)
    return {"top1_agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
            "max_prob_diff": float(np.abs(probs - reference).max())}


def inference_models(workdir, *, repeats=5, warmup=2, log=print):
    """Latency (batch 1) and throughput (batch 64) of the workdir's model as Keras, SavedModel and each
    TFLite variant, with each one's top-1 agreement with Keras on 200 validation images."""
    from alexnet_tf import augmentation, data, export, pipelines

    model, run, record = export.load_trained(workdir)
    config = run.config
    source = data.load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction)
    squares = next(iter(pipelines.eval_pipeline(source, batch_size=200, size=record.resize, count=200)))[0]
    held_out = augmentation.eval_images(squares, crop=record.image_size, mean=run.statistics["mean"]).numpy()
    keras_fn = _keras_probabilities(model)
    reference = keras_fn(held_out)
    with tempfile.TemporaryDirectory() as tmp:
        classifiers, sizes = exported_runtimes(model, record, tmp, kinds=export.TFLITE_KINDS,
                                               calibration=export.representative_images(run, 100), log=log)
        runners = {"keras": keras_fn, **{name: c.probabilities for name, c in classifiers.items()}}
        batch1, batch64 = latency_and_throughput(runners, record.image_size, repeats=repeats, warmup=warmup,
                                                 log=log)
        return [{"model": name, "size_bytes": sizes.get(name), **_agreement(run_, held_out, reference),
                 "batch1": batch1[name], "batch64": batch64[name]} for name, run_ in runners.items()]


def floor_inputs(model):
    """What `floor` needs of the timed model: its forward FLOPs per image, its fp32 weight bytes, and the
    FC layers' share of both."""
    layers = flops_lib.layer_flops(model, 1)
    fc = {name: flop for name, flop in layers.items() if name.startswith("fc")}
    return {"flop_per_image": sum(layers.values()), "weight_bytes": 4 * model.count_params(),
            "fc_weight_bytes": 4 * sum(model.get_layer(name).count_params() for name in fc),
            "fc_flop_per_image": sum(fc.values())}


def floor(ceiling_gflops, bandwidth_gb_per_s, timed, batch_size=1):
    """The machine's limit for one forward pass of `batch_size` images of the model `timed` describes
    (`floor_inputs`), in seconds: the compute (its FLOPs at the matmul ceiling) or reading every weight once
    (at the measured bandwidth), whichever is larger.

    Also `layer_by_layer_s`: the best a pass that runs one layer after another can do. The FC weights are
    needed only once the last convolution is done, so such a pass cannot overlap the two: the convolutions
    at the ceiling, then the FC layers at the slower of their compute and reading their weights."""
    compute = batch_size * timed["flop_per_image"] / (ceiling_gflops * 1e9)
    memory = timed["weight_bytes"] / (bandwidth_gb_per_s * 1e9)
    result = {"compute_s": compute, "memory_s": memory, "floor_s": max(compute, memory),
              "bound": "memory" if memory > compute else "compute"}
    if timed.get("fc_weight_bytes"):
        fc_compute = batch_size * timed["fc_flop_per_image"] / (ceiling_gflops * 1e9)
        result["layer_by_layer_s"] = compute - fc_compute + max(
            fc_compute, timed["fc_weight_bytes"] / (bandwidth_gb_per_s * 1e9))
    return result


def serving_models(num_classes=1000, *, repeats=10, warmup=2, kinds=None, width=1.0, image_size=227, matmul_n=4096,
                   read_megabytes=512, log=print):
    """Batch-1 latency and batch-64 throughput of the untrained paper model (`num_classes` outputs; any width
    and size) as the SavedModel, each TFLite variant and, when onnxruntime is installed, ONNX Runtime; each
    with its top-1 agreement with Keras on random images (weak evidence for an untrained model: the
    trained-model agreement is `inference_models`').

    The machine's matmul ceiling and memory bandwidth take turns with the models in the same rounds, so the
    limit they give is measured in the same minutes (on a shared host, the bandwidth alone measured 31-41
    GB/s in separate runs). Returns {"models": rows, "probes": {"1": {"gflops", "gb_per_s"}, "64": ...},
    "timed": floor_inputs(model), "floor": {"1": floor(...), "64": ...}}.
    """
    import numpy as np

    from alexnet_tf import export
    from alexnet_tf.model import build_alexnet
    from alexnet_tf.sidecar import Preprocessing

    model = build_alexnet(num_classes, seed=0, width=width, image_size=image_size)
    size = model.input_shape[1]
    rng = np.random.default_rng(0)
    images = rng.uniform(-120, 120, (64, size, size, 3)).astype(np.float32)
    reference = _keras_probabilities(model)(images)
    record = Preprocessing(image_size=size, resize=256, mean=(0.0, 0.0, 0.0),
                           class_names=tuple(f"class {i}" for i in range(num_classes)))
    with tempfile.TemporaryDirectory() as tmp:
        classifiers, _ = exported_runtimes(
            model, record, tmp, kinds=export.TFLITE_KINDS if kinds is None else kinds, onnx=True, log=log,
            calibration=rng.uniform(-120, 120, (20, size, size, 3)).astype(np.float32))
        runners = {name: c.probabilities for name, c in classifiers.items()}
        (matmul, flop), (read, nbytes) = probes_lib.matmul_probe(matmul_n), probes_lib.read_probe(read_megabytes)
        probes = {"matmul ceiling": lambda _: matmul(), "memory read": lambda _: read()}
        batch1, batch64 = latency_and_throughput({**runners, **probes}, size, repeats=repeats, warmup=warmup, log=log)
        rows = [{"model": name, "num_classes": num_classes,
                 "top1_agreement": _agreement(run, images, reference)["top1_agreement"],
                 "batch1": batch1[name], "batch64": batch64[name]} for name, run in runners.items()]
    rates = {str(b): {"gflops": flop / timed["matmul ceiling"]["median_s"] / 1e9,
                      "gb_per_s": nbytes / timed["memory read"]["median_s"] / 1e9}
             for b, timed in ((1, batch1), (64, batch64))}
    timed = floor_inputs(model)
    return {"models": rows, "probes": rates, "timed": timed,
            "floor": {b: floor(p["gflops"], p["gb_per_s"], timed, int(b)) for b, p in rates.items()}}
