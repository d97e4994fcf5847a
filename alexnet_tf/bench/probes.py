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


def too_slow_here(precision):
    """Why a train step in `precision` cannot be timed in reasonable time on this machine, or None. float16
    on a CPU without native float16 arithmetic (AVX512-FP16 or AMX-FP16) is emulated: 11.2 s a step of the
    paper model at batch 128 on host F (Zen 5) against 1.3 s in float32, over a minute and a half for one
    measurement's seven calls."""
    import tensorflow as tf

    if precision != "mixed_float16" or tf.config.list_physical_devices("GPU"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if {"avx512_fp16", "amx_fp16"} & set(flags):
        return None
    return "this CPU has no native float16 arithmetic (AVX512-FP16 or AMX-FP16), so float16 is emulated (about 9x " \
           "slower than float32 on host F)"


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
