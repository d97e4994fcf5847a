"""The measurements behind alexnet-benchmark, each returning a plain dict (or a list of them).

Timing helpers (warm-up, repetitions, median and spread) and the measured
sections: forward pass, matmul ceiling, train step, input pipeline, end to
end, peak memory and inference. The profile is in `alexnet_tf.profiling`;
the table and the performance targets are the tool's (tools/benchmark.py).
Every train step here is built by the functions the trainer uses
(`optim.make_optimizer`, `steps.make_train_step`).
"""

import os
import statistics
import tempfile
import time

# Training FLOPs per image: three times the forward pass's 724M multiply-adds,
# less conv1's input gradient (nothing needs it): 2 * (3 * 724e6 - 105.4e6).
TRAIN_FLOP_PER_IMAGE = 2 * (3 * 724e6 - 105.4e6)


def ceiling_fraction(images_per_s, ceiling_gflops):
    """The fraction of the matmul ceiling that a training rate uses."""
    return images_per_s * TRAIN_FLOP_PER_IMAGE / 1e9 / ceiling_gflops


def step_flops(layer_flops, trained_layers=None):
    """Training FLOPs per image of a step that trains `trained_layers` (None: all), from the forward
    FLOPs of each weight layer (`profiling.layer_flops` at batch 1): the whole forward pass, each trained
    layer's weight gradient, and the input gradient of every weight layer above the lowest trained one
    (conv1's input gradient is never needed)."""
    from alexnet_tf.model import WEIGHT_LAYERS

    trained = [layer for layer in WEIGHT_LAYERS if trained_layers is None or layer in trained_layers]
    lowest = WEIGHT_LAYERS.index(trained[0])

    def of(layer):
        return sum(f for name, f in layer_flops.items() if name.split("_")[0] == layer)

    return (sum(layer_flops.values()) + sum(of(layer) for layer in trained)
            + sum(of(layer) for layer in WEIGHT_LAYERS[lowest + 1:]))


def time_calls(fns, *, warmup=2, repeats=5, rounds=1):
    """Seconds per call of each function of `fns` (name -> function): median, min and max over `repeats`
    timed calls, by name.

    The calls come in `rounds` rounds. In each, every function takes a turn: `warmup` untimed calls,
    then its share of the timed ones. Rounds spread each function's timed calls over the whole
    measurement, so a slow spell of a shared machine falls on all of them alike and their ratios hold;
    the untimed calls let the runtime that went before settle (after a turn of ONNX Runtime, the
    SavedModel's next few calls ran up to 1.5x slower: BUILD_NOTES.md, "Serving speed"). Each function
    must block until its work is done (return a NumPy value, or call `.numpy()` on the result), or the
    timing measures only dispatch.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 1 <= rounds <= repeats:
        raise ValueError(f"rounds must be from 1 to repeats ({repeats}), got {rounds}")
    times = {name: [] for name in fns}
    for turn in range(rounds):
        share = repeats // rounds + (turn < repeats % rounds)
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(share):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": repeats}
            for name, t in times.items()}


def time_call(fn, *, warmup=2, repeats=5):
    """Seconds per call of `fn()`: `time_calls` of one function."""
    return time_calls({"fn": fn}, warmup=warmup, repeats=repeats)["fn"]


def forward_pass(model, batch_size, *, warmup=2, repeats=5, seed=0):
    """Inference time of `model` on one random in-memory batch, as a compiled tf.function."""
    import tensorflow as tf

    images = tf.random.uniform((batch_size, *model.input_shape[1:]), 0, 255, seed=seed)
    step = tf.function(lambda x: model(x, training=False))
    result = time_call(lambda: step(images).numpy(), warmup=warmup, repeats=repeats)
    result["images_per_s"] = batch_size / result["median_s"]
    result["batch_size"] = batch_size
    return result


def paper_train_step(model, batch_size, *, precision="float32", jit=False):
    """The trainer's step for `model` with the paper's optimizer (lr 0.01, momentum 0.9, decay 5e-4),
    on the default strategy. `precision` must be the global policy `model` was built under."""
    import tensorflow as tf

    from alexnet_tf import optim, steps

    optimizer = optim.make_optimizer(model.trainable_variables, precision=precision)
    return steps.make_train_step(model, optimizer, global_batch_size=batch_size,
                                 strategy=tf.distribute.get_strategy(), jit=jit)


def train_step(batch_size, *, precision="float32", jit=False, warmup=2, repeats=5, seed=0, width=1.0,
               image_size=227, train_layers=None):
    """Images/s of the real training step (paper model unless `width`/`image_size` say otherwise)
    on one in-memory batch. Sets the global mixed-precision policy; resets it to float32 after."""
    import keras
    import tensorflow as tf

    from alexnet_tf import optim
    from alexnet_tf.model import build_alexnet

    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_alexnet(1000, image_size=image_size, width=width, seed=seed)
        if train_layers:  # fine-tuning: only these layers train
            optim.freeze_except(model, train_layers)
        step = paper_train_step(model, batch_size, precision=precision, jit=jit)
        images = tf.random.uniform((batch_size, image_size, image_size, 3), -120, 120, seed=seed)
        labels = tf.random.uniform((batch_size,), 0, 1000, dtype=tf.int64, seed=seed)
        result = time_call(lambda: float(step(images, labels)[0]), warmup=warmup, repeats=repeats)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    result.update(images_per_s=batch_size / result["median_s"], batch_size=batch_size, precision=precision,
                  jit=jit, train_layers=",".join(train_layers) if train_layers else "all")
    return result


def _matmul_probe(n=4096):
    """(a blocking call of one n x n x n float32 tf.matmul, its FLOPs)."""
    import tensorflow as tf

    a = tf.random.normal((n, n), seed=1)
    b = tf.random.normal((n, n), seed=2)
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    return (lambda: mm().numpy()), 2 * n ** 3


def matmul_ceiling(n=4096, *, warmup=2, repeats=5):
    """GFLOP/s of one large float32 tf.matmul: the machine's practical fp32 ceiling."""
    call, flop = _matmul_probe(n)
    result = time_call(call, warmup=warmup, repeats=repeats)
    result["gflops"] = flop / result["median_s"] / 1e9
    return result


def write_imagenet_like_jpegs(directory, count, *, classes=10, size=(375, 500), seed=0):
    """`count` JPEGs of ImageNet's typical size with natural-image statistics (a 1/f amplitude
    spectrum), in class sub-folders, for pipeline benchmarks. Returns the folder."""
    from pathlib import Path

    import numpy as np
    import tensorflow as tf

    root = Path(directory)
    rng = np.random.default_rng(seed)
    h, w = size
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    falloff = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    for i in range(count):
        channels = []
        for _ in range(3):
            spectrum = falloff * np.exp(2j * np.pi * rng.uniform(size=(h, w)))
            channels.append(np.real(np.fft.ifft2(spectrum)))
        image = np.stack(channels, -1)
        image = (image - image.mean()) / (image.std() + 1e-8) * 50 + rng.uniform(80, 170, 3)
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        jpeg = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()
        (folder / f"{i:05d}.JPEG").write_bytes(jpeg)
    return root


def _bench_statistics():
    """A fixed mean with ImageNet's PCA basis: the generated JPEGs need no statistics pass."""
    from alexnet_tf import data
    return {"mean": [120.0, 115.0, 105.0], **{k: data.IMAGENET_STATISTICS[k] for k in ("eigval", "eigvec")}}


def pipeline_throughput(folder, batch_size, *, crop=227, batches=20, warmup=3):
    """Images/s of the training input pipeline alone (decode, crop, flip, PCA lighting, batch)."""
    import tensorflow as tf

    from alexnet_tf import data, folders

    source = folders.load_folder(str(folder), val_fraction=0.01)
    stats = _bench_statistics()
    ds = data.train_pipeline(source.train.cache(), stats, batch_size=batch_size, crop=crop,
                             shuffle_buffer=1000)
    iterator = iter(ds)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
    seconds = time.perf_counter() - start
    return {"images_per_s": batches * batch_size / seconds, "batch_size": batch_size, "batches": batches,
            "files": source.num_train}


def end_to_end(folder, batch_size, *, steps=10, warmup=2, precision="float32"):
    """Images/s of training that reads and augments JPEGs from `folder` (paper model, fp32)."""
    import keras

    from alexnet_tf import data, folders
    from alexnet_tf.model import build_alexnet

    keras.mixed_precision.set_global_policy(precision)
    try:
        source = folders.load_folder(str(folder), val_fraction=0.01)
        stats = _bench_statistics()
        ds = data.train_pipeline(source.train.cache(), stats, batch_size=batch_size, shuffle_buffer=1000)
        model = build_alexnet(source.num_classes, seed=0)
        step = paper_train_step(model, batch_size, precision=precision)
        iterator = iter(ds)
        for _ in range(warmup):
            float(step(*next(iterator))[0])
        start = time.perf_counter()
        for _ in range(steps):
            float(step(*next(iterator))[0])
        seconds = time.perf_counter() - start
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"images_per_s": steps * batch_size / seconds, "batch_size": batch_size, "steps": steps}


def peak_training_memory(batch_size=128, steps=3):
    """Peak resident memory (bytes) of a fresh process running `steps` paper-model train steps."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "alexnet_tf.benchmark", json.dumps(
        {"batch_size": batch_size, "steps": steps})], capture_output=True, text=True, check=True)
    return {"peak_rss_bytes": int(out.stdout.strip().splitlines()[-1]), "batch_size": batch_size}


def _peak_memory_child(batch_size, steps):
    train_step(batch_size, warmup=1, repeats=steps)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork and
    # exec, so a child would report its parent's peak if that was higher.
    with open("/proc/self/status") as f:
        print(1024 * int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))))


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


def inference_models(workdir, *, repeats=5, warmup=2, log=print):
    """Latency (batch 1) and throughput (batch 64) of the workdir's model as Keras, SavedModel and each
    TFLite variant, with each one's top-1 agreement with Keras on 200 validation images."""
    import numpy as np
    import tensorflow as tf

    from alexnet_tf import data, export, predict
    from alexnet_tf.placement import device_free

    model, config, names = export.load_trained(workdir)
    size = model.input_shape[1]
    preset = config["preset_values"]
    source = data.load_dataset(config["dataset"], config.get("data_dir"), val_fraction=config["val_fraction"])
    held_out = next(iter(data.eval_pipeline(source.validation.take(200), config["statistics"], batch_size=200,
                                            crop=preset["image_size"], resize=preset["resize"])))[0].numpy()
    keras_fn = tf.function(lambda x: tf.nn.softmax(device_free(model)(x, training=False)))
    reference = keras_fn(held_out).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        saved = export.export_savedmodel(model, names, config, tmp)
        loaded = tf.saved_model.load(str(saved))
        sig = loaded.signatures["preprocessed"]
        runners = {"keras": lambda x: keras_fn(x).numpy(),
                   "savedmodel": lambda x: sig(images=tf.constant(x))["probabilities"].numpy()}
        sizes = {"savedmodel": sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())}
        calibration = export.representative_images(config, 100)
        for kind in export.TFLITE_KINDS:
            log(f"converting TFLite {kind}")
            path = os.path.join(tmp, f"alexnet_{kind}.tflite")
            export.write_tflite(export.export_tflite(model, kind, representative_images=calibration), path, saved)
            sizes[f"tflite_{kind}"] = os.path.getsize(path)
            runners[f"tflite_{kind}"] = predict.Classifier(path).probabilities
        batch1, batch64 = latency_and_throughput(runners, size, repeats=repeats, warmup=warmup, log=log)
        for name, run in runners.items():
            probs = run(held_out)
            rows.append({"model": name, "size_bytes": sizes.get(name),
                         "top1_agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
                         "max_prob_diff": float(np.abs(probs - reference).max()),
                         "batch1": batch1[name], "batch64": batch64[name]})
    return rows


# The paper model's forward pass: 724M multiply-adds per image (profiling.layer_flops at batch 1).
FORWARD_FLOP_PER_IMAGE = 2 * 724e6


def _read_probe(megabytes=512):
    """(a blocking call that reads one float32 tensor of `megabytes` once (a sum over it), its bytes)."""
    import tensorflow as tf

    x = tf.random.uniform((megabytes * 2**20 // 4,), seed=3)
    total = tf.function(lambda: tf.reduce_sum(x))
    return (lambda: total().numpy()), megabytes * 2**20


def serving_floor(ceiling_gflops, bandwidth_gb_per_s, weight_bytes, batch_size=1, *, fc_flop_per_image=0.0,
                  fc_weight_bytes=0):
    """The machine's limit for one forward pass of `batch_size` images, in seconds: the compute
    (FLOPs at the matmul ceiling) or reading every weight once (at the measured bandwidth), whichever
    is larger.

    Given the FC layers' share (their FLOPs per image and weight bytes), also `layer_by_layer_s`: the
    best a pass that runs one layer after another can do. The FC weights are needed only once the last
    convolution is done, so such a pass cannot overlap the two: the convolutions at the ceiling, then
    the FC layers at the slower of their compute and reading their weights."""
    compute = batch_size * FORWARD_FLOP_PER_IMAGE / (ceiling_gflops * 1e9)
    memory = weight_bytes / (bandwidth_gb_per_s * 1e9)
    floor = {"compute_s": compute, "memory_s": memory, "floor_s": max(compute, memory),
             "bound": "memory" if memory > compute else "compute"}
    if fc_weight_bytes:
        fc_compute = batch_size * fc_flop_per_image / (ceiling_gflops * 1e9)
        floor["layer_by_layer_s"] = compute - fc_compute + max(fc_compute, fc_weight_bytes / (bandwidth_gb_per_s * 1e9))
    return floor


def serving_models(num_classes=1000, *, repeats=10, warmup=2, kinds=None, width=1.0, image_size=227, matmul_n=4096,
                   read_megabytes=512, log=print):
    """Batch-1 latency and batch-64 throughput of the untrained paper model (`num_classes` outputs) as
    the SavedModel's `preprocessed` signature, each TFLite variant and, when onnxruntime is installed, the
    same network in ONNX Runtime; each with its top-1 agreement with Keras on random images (weak
    evidence for an untrained model: the trained-model agreement is the `inference` section's).

    The machine's matmul ceiling (`matmul_n`) and memory bandwidth (`read_megabytes`) take turns with
    the models in the same rounds, so the limit they give is measured in the same minutes as the models
    (on a shared host, the bandwidth alone measured 31-41 GB/s in separate runs). Returns {"models":
    rows, "probes": {"1": {"gflops", "gb_per_s"}, "64": {...}}} (the probes of each batch size's rounds)
    and what `serving_floor` needs of the timed model: "weight_bytes", "fc_weight_bytes",
    "fc_flop_per_image".
    """
    import numpy as np
    import tensorflow as tf

    from alexnet_tf import export, predict, profiling
    from alexnet_tf.model import build_alexnet
    from alexnet_tf.placement import device_free

    model = build_alexnet(num_classes, seed=0, width=width, image_size=image_size)
    fc = {name: flop for name, flop in profiling.layer_flops(model, 1).items() if name.startswith("fc")}
    size = model.input_shape[1]
    rng = np.random.default_rng(0)
    images = rng.uniform(-120, 120, (64, size, size, 3)).astype(np.float32)
    reference = tf.function(lambda x: tf.nn.softmax(device_free(model)(x, training=False)))(images).numpy()
    config = {"preset_values": {"image_size": size, "resize": 256}, "statistics": {"mean": [0.0, 0.0, 0.0]}}
    names = [f"class {i}" for i in range(num_classes)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        saved = export.export_savedmodel(model, names, config, tmp)
        sig = tf.saved_model.load(str(saved)).signatures["preprocessed"]
        runners = {"savedmodel": lambda x: sig(images=tf.constant(x))["probabilities"].numpy()}
        calibration = rng.uniform(-120, 120, (20, size, size, 3)).astype(np.float32)
        for kind in kinds or export.TFLITE_KINDS:
            log(f"converting TFLite {kind} ({num_classes} classes)")
            path = os.path.join(tmp, f"alexnet_{kind}.tflite")
            export.write_tflite(export.export_tflite(model, kind, representative_images=calibration), path, saved)
            runners[f"tflite_{kind}"] = predict.Classifier(path).probabilities
        try:
            import onnxruntime
            log("converting to ONNX (tf2onnx)")
            path = export.export_onnx(saved, os.path.join(tmp, "alexnet.onnx"))
        except (ImportError, export.ExportError) as e:
            log(f"no ONNX Runtime row: {e} (pip install 'alexnet_tf[onnx]')")
        else:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            runners[f"onnxruntime {onnxruntime.__version__}"] = (
                lambda x: session.run(["probabilities"], {"images": x})[0])
        (matmul, flop), (read, nbytes) = _matmul_probe(matmul_n), _read_probe(read_megabytes)
        probes = {"matmul ceiling": lambda _: matmul(), "memory read": lambda _: read()}
        batch1, batch64 = latency_and_throughput({**runners, **probes}, size, repeats=repeats, warmup=warmup, log=log)
        for name, run in runners.items():
            probs = run(images)
            rows.append({"model": name, "num_classes": num_classes,
                         "top1_agreement": float(np.mean(probs.argmax(1) == reference.argmax(1))),
                         "batch1": batch1[name], "batch64": batch64[name]})
    rates = {str(b): {"gflops": flop / timed["matmul ceiling"]["median_s"] / 1e9,
                      "gb_per_s": nbytes / timed["memory read"]["median_s"] / 1e9}
             for b, timed in ((1, batch1), (64, batch64))}
    return {"models": rows, "probes": rates, "weight_bytes": 4 * model.count_params(),
            "fc_weight_bytes": 4 * sum(model.get_layer(name).count_params() for name in fc),
            "fc_flop_per_image": sum(fc.values())}


if __name__ == "__main__":
    # The child process of `peak_training_memory`: python -m alexnet_tf.benchmark '{"batch_size": ..., ...}'.
    import json
    import sys

    _peak_memory_child(**json.loads(sys.argv[1]))
