"""Peak resident memory of training, measured in a fresh process so that nothing else this process did
counts: `python -m alexnet_tf.bench.memory '{"batch_size": ..., "steps": ...}'` is the child."""

import json
import subprocess
import sys


def peak_training_memory(batch_size=128, steps=3, *, width=1.0, image_size=227):
    """Peak resident memory (bytes) of a fresh process running `steps` train steps of the paper model (or of
    `width`/`image_size`) at `batch_size`."""
    spec = {"batch_size": batch_size, "steps": steps, "width": width, "image_size": image_size}
    out = subprocess.run([sys.executable, "-m", "alexnet_tf.bench.memory", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return {"peak_rss_bytes": int(out.stdout.strip().splitlines()[-1]), "batch_size": batch_size}


def _child(batch_size, steps, width, image_size):
    from alexnet_tf.bench.train import train_step
    from alexnet_tf.footprint import resident_bytes

    train_step(batch_size, warmup=1, repeats=steps, width=width, image_size=image_size)
    print(resident_bytes("VmHWM"))


if __name__ == "__main__":
    _child(**json.loads(sys.argv[1]))
