"""The machine's limits, measured: the fp32 matmul ceiling and the bandwidth of one large read; and what
machine this is."""

import os
import platform


def machine():
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__}


def matmul_probe(n=4096):
    """(a blocking call of one n x n x n float32 tf.matmul, its FLOPs)."""
    import tensorflow as tf

    a = tf.random.normal((n, n), seed=1)
    b = tf.random.normal((n, n), seed=2)
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    return (lambda: mm().numpy()), 2 * n ** 3


def read_probe(megabytes=512):
    """(a blocking call that reads one float32 tensor of `megabytes` once (a sum over it), its bytes)."""
    import tensorflow as tf

    x = tf.random.uniform((megabytes * 2**20 // 4,), seed=3)
    total = tf.function(lambda: tf.reduce_sum(x))
    return (lambda: total().numpy()), megabytes * 2**20


def matmul_ceiling(n=4096, *, warmup=2, repeats=5):
    """GFLOP/s of one large float32 tf.matmul: the machine's practical fp32 ceiling."""
    from alexnet_tf.bench.timing import time_call

    call, flop = matmul_probe(n)
    result = time_call(call, warmup=warmup, repeats=repeats)
    result["gflops"] = flop / result["median_s"] / 1e9
    return result
