"""The input pipeline's host side alone (from stored JPEGs, jpeg256 and raw256: read, decode, batch; locally and
through the tf.data service), the augmentation the step does on the device, and training end to end from
each format against the same step fed in-memory float batches: what feeding the step costs."""

import dataclasses
import time
from pathlib import Path

from alexnet_tf.bench import flops as flops_lib


def write_imagenet_like_jpegs(directory, count, *, classes=10, size=(375, 500), seed=0):
    """`count` JPEGs of ImageNet's typical size with natural-image statistics (a 1/f amplitude spectrum), in
    class sub-folders, for pipeline benchmarks. Returns the folder."""
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


def bench_statistics():
    """A fixed mean with ImageNet's PCA basis: the generated JPEGs need no statistics pass."""
    from alexnet_tf.statistics import IMAGENET_STATISTICS

    return {"mean": [120.0, 115.0, 105.0], **{k: IMAGENET_STATISTICS[k] for k in ("eigval", "eigvec")}}


# The formats the pipeline section compares: the stored JPEGs as today, and alexnet-prepare's two.
FORMATS = ("source", "jpeg256", "raw256")
# The GPU rate the cores-needed column is for (BUILD_NOTES' one-A100 plan for the paper model).
GPU_IMAGES_PER_S = 8000


def benchmark_source(folder=None, dataset=None, data_dir=None, count=512):
    """The images the pipeline sections read: the generated JPEGs in `folder`, or the first `count` training
    images of `dataset` (any name alexnet-train takes)."""
    from alexnet_tf import data

    if dataset is None:
        return data.load_dataset(f"folder:{folder}", val_fraction=0.05, ordered=True)
    source = data.load_dataset(dataset, data_dir, ordered=True)
    return dataclasses.replace(source, train=source.train.take(count), num_train=min(count, source.num_train),
                               validation=source.validation.take(16), num_validation=min(16, source.num_validation))


# Images a shard of the benchmark's prepared copies: a few hundred images would otherwise fit in one shard,
# read by one thread, where a real dataset (ImageNet: 2,500 raw256 shards) is read from several at once.
SHARD_SIZE = 64


def in_formats(source, root):
    """{format: Source}: `source`, and its jpeg256 and raw256 copies prepared under `root`."""
    from alexnet_tf import prepared

    sources = {"source": source}
    for fmt in prepared.FORMATS:
        prepared.prepare(source, Path(root) / fmt, fmt, statistics=bench_statistics(), log=lambda *_: None,
                         progress=False, shard_size=SHARD_SIZE)
        sources[fmt] = prepared.load(Path(root) / fmt)
    return sources


def bytes_per_image(fmt, source, root, sample=512):
    """Bytes on disk per image: the stored files of the source (a sample), the shards of a prepared copy."""
    import tensorflow as tf

    from alexnet_tf import prepared

    if fmt != "source":
        return prepared.disk_size(Path(root) / fmt) / (source.num_train + source.num_validation)
    lengths = source.train.take(sample).map(lambda image, label: tf.strings.length(image))
    sizes = list(lengths.as_numpy_iterator())
    return sum(sizes) / max(1, len(sizes))


def _train_ds(source, batch_size, crop=227, distribute=None):
    from alexnet_tf import pipelines

    return pipelines.train_pipeline(source, batch_size=batch_size, size=256, crop=crop, shuffle_buffer=1000,
                                    distribute=distribute)


def throughput(ds, batch_size, *, batches=20, warmup=3):
    """Images/s of reading `ds` (batches of images, or an iterator over them) to the host."""
    import tensorflow as tf

    iterator = ds if hasattr(ds, "__next__") else iter(ds)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
    return batches * batch_size / (time.perf_counter() - start)


def format_rows(sources, root, batch_size, *, batches=20, cores=None):
    """{format: {images_per_s, images_per_s_per_core, bytes_per_image, cores_for_gpu}} of the training
    pipeline's host side (read, decode, batch the uint8 squares, draw each image's augmentation) on every core
    of this machine, and two floors: `records_only`, raw256's records read and shuffled as the pipeline does
    with nothing parsed; `jpeg_decode_only`, jpeg256's JPEGs decoded from memory and batched."""
    import os

    import tensorflow as tf

    cores = cores or len(os.sched_getaffinity(0))
    rows = {}
    for fmt, source in sources.items():
        rate = throughput(_train_ds(source, batch_size), batch_size, batches=batches)
        rows[fmt] = {"images_per_s": rate, "images_per_s_per_core": rate / cores,
                     "bytes_per_image": bytes_per_image(fmt, source, root),
                     "cores_for_gpu": GPU_IMAGES_PER_S / (rate / cores), "batch_size": batch_size, "cores": cores}
    files = sources["raw256"].records["train"]
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE)
    floors = {"records_only": records.shuffle(1000).repeat().batch(batch_size),
              "jpeg_decode_only": tf.data.Dataset.from_tensor_slices(
                  [jpeg for jpeg, _ in sources["jpeg256"].train.take(256).as_numpy_iterator()]).repeat().map(
                  lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), num_parallel_calls=tf.data.AUTOTUNE).batch(
                  batch_size)}
    for name, ds in floors.items():
        rate = throughput(ds.prefetch(4), batch_size, batches=batches)
        rows[name] = {"images_per_s": rate, "images_per_s_per_core": rate / cores, "batch_size": batch_size}
    return rows


def augmentation_cost(batch_size=128, *, repeats=10, warmup=2, rounds=5):
    """The augmentation on the device: ms for a batch of `batch_size` 256x256 squares alone, and the paper
    model's fp32 train step with it (fed uint8 squares) against the same step fed the float32 227x227 images
    it would make (no augmentation), timed in turns."""
    import numpy as np
    import tensorflow as tf

    from alexnet_tf import augmentation, steps
    from alexnet_tf.bench.timing import time_calls
    from alexnet_tf.model import build_alexnet

    stats = bench_statistics()
    squares = tf.constant(np.random.default_rng(0).integers(0, 256, (batch_size, 256, 256, 3), np.uint8))
    labels = tf.constant(np.arange(batch_size) % 1000, tf.int64)
    draws = augmentation.draw(tf.constant([0, 0], tf.int64), batch_size, size=256, crop=227)
    augment = augmentation.for_training(stats, crop=227)
    images = augment(squares, draws)
    model = build_alexnet(1000, seed=0)
    with_it = steps.paper_train_step(model, batch_size, augment=augment)
    without = steps.paper_train_step(model, batch_size)
    alone = tf.function(augment)
    times = time_calls({"alone": lambda: alone(squares, draws).numpy(),
                        "with": lambda: float(with_it(squares, labels, draws)[0]),
                        "without": lambda: float(without(images, labels)[0])},
                       warmup=warmup, repeats=repeats, rounds=rounds)
    return {"batch_size": batch_size, "augment_ms": times["alone"]["median_s"] * 1e3,
            "step_ms": times["with"]["median_s"] * 1e3, "plain_step_ms": times["without"]["median_s"] * 1e3,
            "ratio": times["without"]["median_s"] / times["with"]["median_s"]}


def service_rows(source, batch_size, *, batches=20, worker_counts=(1, 2)):
    """Images/s of the trainer's pipeline read here and through a tf.data service on loopback with each of
    `worker_counts` workers (alexnet-data-service processes on this machine, sharing its cores: on a small
    machine this shows the service's overhead, not its scaling)."""
    from alexnet_tf import service

    rows = [{"workers": 0, "images_per_s": throughput(_train_ds(source, batch_size), batch_size, batches=batches)}]
    for count in worker_counts:
        # Servers in their own processes: an in-process WorkerServer.stop() was measured to hang after a job.
        dispatcher, port = _service_process("--dispatcher", "--port=0")
        workers = [_service_process("--worker", f"--dispatcher_address=localhost:{port}")[0] for _ in range(count)]
        try:
            ds = _train_ds(source, batch_size, distribute=lambda batches: service.distribute(
                batches, f"grpc://localhost:{port}", job_name=f"bench{count}"))
            rows.append({"workers": count, "images_per_s": throughput(ds, batch_size, batches=batches)})
        finally:
            for proc in [*workers, dispatcher]:
                proc.kill()
                proc.wait()
    return rows


def _service_process(*args):
    """(an alexnet-data-service child process, the port it listens on), once it says it is listening."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "tools.data_service", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[2])
    line = proc.stdout.readline()
    found = re.search(r"port (\d+)", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"alexnet-data-service {' '.join(args)} did not start: {line!r}")
    return proc, int(found.group(1))


def end_to_end(source, batch_size, *, steps=10, warmup=2, precision="float32"):
    """Images/s of training the paper model on batches from `source`'s training pipeline (augmented in the
    step), and of the same model's step fed one in-memory float32 batch with no augmentation at all, one
    after the other, so their ratio sees the same machine. (Taking turns in rounds would flatter the pipeline:
    it fills its prefetch buffer while the other step runs.)"""
    import tensorflow as tf

    from alexnet_tf import augmentation, steps as steps_lib
    from alexnet_tf.bench.timing import time_calls
    from alexnet_tf.model import build_alexnet

    with steps_lib.precision_policy(precision):
        model = build_alexnet(source.num_classes, seed=0)
        augment = augmentation.for_training(bench_statistics(), crop=227)
        fed = steps_lib.paper_train_step(model, batch_size, precision=precision, augment=augment)
        in_memory = steps_lib.paper_train_step(model, batch_size, precision=precision)
        iterator = iter(_train_ds(source, batch_size))
        images = tf.random.uniform((batch_size, 227, 227, 3), -120, 120, seed=0)
        labels = tf.random.uniform((batch_size,), 0, source.num_classes, dtype=tf.int64, seed=0)
        times = time_calls({"fed": lambda: float(fed(*next(iterator))[0]),
                            "in_memory": lambda: float(in_memory(images, labels)[0])},
                           warmup=warmup, repeats=steps)
    return {"images_per_s": batch_size / times["fed"]["median_s"],
            "in_memory_images_per_s": batch_size / times["in_memory"]["median_s"], "batch_size": batch_size,
            "steps": steps, "flop_per_image": flops_lib.step_flops(flops_lib.layer_flops(model))}
