"""Timing helpers for tools/benchmark.py: warm-up, repetitions, median and spread."""

import statistics
import time


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
