"""What tools/benchmark.py measures, and the performance targets it checks them against.

Timing helpers (warm-up, repetitions, median and spread), the measurements,
the profile breakdown, and `check_targets`.
"""

import statistics
import time

# Training FLOPs per image: three times the forward pass's 724M multiply-adds,
# less conv1's input gradient (nothing needs it): 2 * (3 * 724e6 - 105.4e6).
TRAIN_FLOP_PER_IMAGE = 2 * (3 * 724e6 - 105.4e6)


def ceiling_fraction(images_per_s, ceiling_gflops):
    """The fraction of the matmul ceiling that a training rate uses."""
    return images_per_s * TRAIN_FLOP_PER_IMAGE / 1e9 / ceiling_gflops


def time_call(fn, *, warmup=2, repeats=5):
    """Seconds per call of `fn()`: median, min and max over `repeats` calls after `warmup`.

    `fn` must block until its work is done (return a NumPy value, or call
    `.numpy()` on the result), or the timing measures only dispatch.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


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
    """The real training step for `model` with the paper's optimizer (lr 0.01, momentum 0.9, decay 5e-4),
    on the default strategy. `precision` must be the global policy `model` was built under."""
    import keras
    import tensorflow as tf

    from alexnet_tf import training

    optimizer = training.PaperSGD(0.01, momentum=0.9, l2_decay=5e-4)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return training.make_train_step(model, optimizer, global_batch_size=batch_size,
                                    strategy=tf.distribute.get_strategy(), jit=jit)


def train_step(batch_size, *, precision="float32", jit=False, warmup=2, repeats=5, seed=0, width=1.0,
               image_size=227):
    """Images/s of the real training step (paper model unless `width`/`image_size` say otherwise)
    on one in-memory batch. Sets the global mixed-precision policy; resets it to float32 after."""
    import keras
    import tensorflow as tf

    from alexnet_tf.model import build_alexnet

    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_alexnet(1000, image_size=image_size, width=width, seed=seed)
        step = paper_train_step(model, batch_size, precision=precision, jit=jit)
        images = tf.random.uniform((batch_size, image_size, image_size, 3), -120, 120, seed=seed)
        labels = tf.random.uniform((batch_size,), 0, 1000, dtype=tf.int64, seed=seed)
        result = time_call(lambda: float(step(images, labels)[0]), warmup=warmup, repeats=repeats)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    result.update(images_per_s=batch_size / result["median_s"], batch_size=batch_size, precision=precision,
                  jit=jit)
    return result


def matmul_ceiling(n=4096, *, warmup=2, repeats=5):
    """GFLOP/s of one large float32 tf.matmul: the machine's practical fp32 ceiling."""
    import tensorflow as tf

    a = tf.random.normal((n, n), seed=1)
    b = tf.random.normal((n, n), seed=2)
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    result = time_call(lambda: mm().numpy(), warmup=warmup, repeats=repeats)
    result["gflops"] = 2 * n ** 3 / result["median_s"] / 1e9
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

    from alexnet_tf import data

    source = data.load_folder(str(folder), val_fraction=0.01)
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

    from alexnet_tf import data
    from alexnet_tf.model import build_alexnet

    keras.mixed_precision.set_global_policy(precision)
    try:
        source = data.load_folder(str(folder), val_fraction=0.01)
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
    import subprocess
    import sys

    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork and
    # exec, so a child would report its parent's peak if that was higher.
    code = (f"from alexnet_tf.benchmark import train_step; train_step({batch_size}, warmup=1, repeats={steps});"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"peak_rss_bytes": int(out.stdout.strip().splitlines()[-1]) * 1024, "batch_size": batch_size}


def inference(predict_batch, batch_size, *, warmup=2, repeats=5, image_size=227, seed=0):
    """Latency and throughput of `predict_batch(images)` (must block) on one random batch."""
    import numpy as np

    images = np.random.default_rng(seed).uniform(-120, 120, (batch_size, image_size, image_size, 3)).astype(np.float32)
    result = time_call(lambda: predict_batch(images), warmup=warmup, repeats=repeats)
    result.update(batch_size=batch_size, images_per_s=batch_size / result["median_s"])
    return result


def profile_train_step(logdir, batch_size=128, *, steps=3, precision="float32", width=1.0, image_size=227):
    """Records a TF profiler trace of `steps` train steps into `logdir` (TensorBoard's Profile tab
    reads it) and returns the trace's *.xplane.pb paths.

    Runs in a fresh process with one inter-op thread: ops then run one at a
    time, each on every core, so their self-times add up to the step's wall
    time and can be compared with each other. (Training itself runs the two
    towers' ops concurrently, which measured the same speed within noise.)
    """
    import glob
    import subprocess
    import sys

    code = f"""
import tensorflow as tf
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras
from alexnet_tf.benchmark import paper_train_step
from alexnet_tf.model import build_alexnet
keras.mixed_precision.set_global_policy({precision!r})
model = build_alexnet(1000, image_size={image_size}, width={width}, seed=0)
step = paper_train_step(model, {batch_size}, precision={precision!r})
images = tf.random.uniform(({batch_size}, {image_size}, {image_size}, 3), -120, 120, seed=0)
labels = tf.random.uniform(({batch_size},), 0, 1000, dtype=tf.int64, seed=0)
for _ in range(2):
    float(step(images, labels)[0])
tf.profiler.experimental.start({str(logdir)!r})
for i in range({steps}):
    with tf.profiler.experimental.Trace("train", step_num=i, _r=1):
        float(step(images, labels)[0])
tf.profiler.experimental.stop()
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return sorted(glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb"))


def _async_op_times(xplane_paths):
    """{op name: picoseconds} of the asynchronous kernels in a trace, which xprof's op statistics
    leave out: the calls of XLA-compiled functions (the LRN passes and the optimizer update).
    The executor's "ProcessAsync::Start" event of such an op spans its XLA execution."""
    import collections

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    times = collections.Counter()
    for path in xplane_paths:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            names = {i: m.name for i, m in plane.stat_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    if plane.event_metadata[event.metadata_id].name != "ExecutorState::ProcessAsync::Start":
                        continue
                    # The value is a string, or a reference to one interned in the stat metadata.
                    op = next((s.str_value or names.get(s.ref_value) for s in event.stats
                               if names.get(s.metadata_id) == "name"), None)
                    if op:
                        times[op] += event.duration_ps
    return times


def layer_breakdown(xplane_paths, steps):
    """Milliseconds per step by (layer, pass) from a profile: the TF ops of each named layer,
    forward ("fwd") and backward ("bwd"); the momentum update and the gradient norm as
    "optimizer". Uses xprof (TensorBoard's profile plugin) to read the trace."""
    import collections
    import json
    import re

    from xprof.convert import raw_to_tool_data

    raw, _ = raw_to_tool_data.xspace_to_tool_data(xplane_paths, "framework_op_stats", {})
    table = json.loads(raw)[0]
    columns = [c["id"] for c in table["cols"]]
    op_times = collections.Counter({name: ps / 1e6 for name, ps in _async_op_times(xplane_paths).items()})
    for values in table["rows"]:
        op = dict(zip(columns, (cell.get("v") for cell in values["c"])))
        if op["type"] != "IDLE":
            op_times[op["operation"]] += op["total_self_time"]  # microseconds
    layer = re.compile(r"(?:^|/)alexnet(?:_\d+)?/([a-z]+\d*(?:_[ab])?|fc7_features)(?:_\d+)?/")
    times = collections.Counter()
    for name, us in op_times.items():
        if m := layer.search(name):
            key = (m.group(1), "bwd" if name.startswith("gradients/") else "fwd")
        elif re.search(r"sgd|L2Loss|AddN", name, re.IGNORECASE):
            key = ("optimizer", "")
        else:
            key = ("other", "")
        times[key] += us / 1e3 / steps
    return dict(times)


def layer_flops(model, batch_size):
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


def _train_rate(results, precision, batch_size=128):
    rows = results.get("train", []) + results.get("precision", [])
    return next((r["images_per_s"] for r in rows
                 if r["precision"] == precision and not r["jit"] and r["batch_size"] == batch_size), None)


def check_targets(results):
    """The issue's performance targets (batch 128, paper model) against `results` as alexnet-benchmark
    collects them: a list of {target, measured, met}; a target whose sections did not run is left out."""
    targets = []

    def add(target, measured, met):
        targets.append({"target": target, "measured": measured, "met": bool(met)})

    fp32 = _train_rate(results, "float32")
    ceiling = results.get("matmul", {}).get("gflops")
    if fp32 and ceiling:
        fraction = ceiling_fraction(fp32, ceiling)
        add("fp32 train step >= 90% of the matmul ceiling",
            f"{fraction:.1%} ({fp32:.1f} images/s, ceiling {ceiling:.0f} GFLOP/s)", fraction >= 0.9)
    bf16 = _train_rate(results, "mixed_bfloat16")
    if fp32 and bf16:
        add("mixed_bfloat16 >= 1.7x fp32", f"{bf16 / fp32:.2f}x ({bf16:.1f} images/s)", bf16 / fp32 >= 1.7)
    if fp32 and "e2e" in results:
        e2e = results["e2e"]["images_per_s"]
        add("training from JPEGs >= 90% of the in-memory rate", f"{e2e / fp32:.1%} ({e2e:.1f} images/s)",
            e2e / fp32 >= 0.9)
    if "memory" in results:
        gib = results["memory"]["peak_rss_bytes"] / 2**30
        add("peak resident memory of training <= 3 GiB", f"{gib:.2f} GiB", gib <= 3)
    rows = {r["model"]: r for r in results.get("inference", [])}
    if "tflite_int8" in rows and "savedmodel" in rows:
        int8, saved = rows["tflite_int8"], rows["savedmodel"]
        ratio = int8["batch1"]["median_s"] / saved["batch1"]["median_s"]
        add("TFLite int8 batch-1 latency <= half the SavedModel's, >= 99% top-1 agreement",
            f"{ratio:.2f}x ({int8['batch1']['median_s'] * 1e3:.1f} vs {saved['batch1']['median_s'] * 1e3:.1f} ms), "
            f"{int8['top1_agreement']:.1%} agreement", ratio <= 0.5 and int8["top1_agreement"] >= 0.99)
    return targets
