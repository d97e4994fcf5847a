"""alexnet-benchmark: measure the speed of the paper model on this machine.

    alexnet-benchmark --forward_batches=1,128 --repeats=5 [--json]
"""

import json
import platform
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("forward_batches", ["1", "128"], "Batch sizes for the inference (forward pass) timing.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions per measurement (after warm-up); the median is reported.",
                     lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed calls before each measurement.", lower_bound=0)
flags.DEFINE_boolean("json", False, "Print machine-readable JSON instead of a table.")


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


def main(argv):
    del argv
    try:
        batches = [int(b) for b in FLAGS.forward_batches]
        if any(b < 1 for b in batches):
            raise ValueError
    except ValueError:
        raise app.UsageError(f"--forward_batches must be positive integers, got {','.join(FLAGS.forward_batches)}")

    from alexnet_tf.benchmark import forward_pass
    from alexnet_tf.model import build_alexnet

    model = build_alexnet(seed=0)
    results = {"machine": machine(), "forward": [
        forward_pass(model, b, warmup=FLAGS.warmup, repeats=FLAGS.repeats) for b in batches]}
    if FLAGS.json:
        print(json.dumps(results, indent=2))
        return
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['gpus']} GPUs, TensorFlow {m['tensorflow']}")
    print(f"{'measurement':<32}{'batch':>6}{'median ms':>12}{'min..max ms':>18}{'images/s':>10}")
    for r in results["forward"]:
        spread = f"{r['min_s'] * 1e3:.1f}..{r['max_s'] * 1e3:.1f}"
        print(f"{'forward, paper model, fp32':<32}{r['batch_size']:>6}{r['median_s'] * 1e3:>12.1f}{spread:>18}"
              f"{r['images_per_s']:>10.1f}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
