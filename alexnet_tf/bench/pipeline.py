"""The input pipeline alone, and training end to end from JPEGs: what feeding the step costs."""

import time

from alexnet_tf.bench import flops as flops_lib


def write_imagenet_like_jpegs(directory, count, *, classes=10, size=(375, 500), seed=0):
    """`count` JPEGs of ImageNet's typical size with natural-image statistics (a 1/f amplitude spectrum), in
    class sub-folders, for pipeline benchmarks. Returns the folder."""
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


def bench_statistics():
    """A fixed mean with ImageNet's PCA basis: the generated JPEGs need no statistics pass."""
    from alexnet_tf.statistics import IMAGENET_STATISTICS

    return {"mean": [120.0, 115.0, 105.0], **{k: IMAGENET_STATISTICS[k] for k in ("eigval", "eigvec")}}


def _folder_pipeline(folder, batch_size, crop=227):
    from alexnet_tf import folders, pipelines

    source = folders.load_folder(str(folder), val_fraction=0.01)
    return source, pipelines.train_pipeline(source.train.cache(), bench_statistics(), batch_size=batch_size,
                                            crop=crop, decode=source.decode, shuffle_buffer=1000)


def pipeline_throughput(folder, batch_size, *, crop=227, batches=20, warmup=3):
    """Images/s of the training input pipeline alone (decode, crop, flip, PCA lighting, batch)."""
    import tensorflow as tf

    source, ds = _folder_pipeline(folder, batch_size, crop)
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
    """Images/s of training that reads and augments JPEGs from `folder` (paper model)."""
    from alexnet_tf import steps as steps_lib
    from alexnet_tf.model import build_alexnet

    with steps_lib.precision_policy(precision):
        source, ds = _folder_pipeline(folder, batch_size)
        model = build_alexnet(source.num_classes, seed=0)
        step = steps_lib.paper_train_step(model, batch_size, precision=precision)
        iterator = iter(ds)
        for _ in range(warmup):
            float(step(*next(iterator))[0])
        start = time.perf_counter()
        for _ in range(steps):
            float(step(*next(iterator))[0])
        seconds = time.perf_counter() - start
    return {"images_per_s": steps * batch_size / seconds, "batch_size": batch_size, "steps": steps,
            "flop_per_image": flops_lib.step_flops(flops_lib.layer_flops(model))}
