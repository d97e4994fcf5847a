"""Peak resident memory of training, measured in a fresh process so that nothing else this process did
counts: `python -m alexnet_tf.bench.memory '{"batch_size": ..., "steps": ...}'` is the child; and the
trainer's own estimate of its peak (`alexnet_tf.footprint`) against the peak it then reached."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_training_memory(batch_size=128, steps=3, *, width=1.0, image_size=227):
    """Peak resident memory (bytes) of a fresh process running `steps` train steps of the paper model (or of
    `width`/`image_size`) at `batch_size`."""
    spec = {"batch_size": batch_size, "steps": steps, "width": width, "image_size": image_size}
    out = subprocess.run([sys.executable, "-m", "alexnet_tf.bench.memory", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return {"peak_rss_bytes": int(out.stdout.strip().splitlines()[-1]), "batch_size": batch_size}


def estimate_against_peak(batch_size=128, *, ten_crop=False, data_dir=None):
    """alexnet-train with the paper model for 3 steps and one evaluation on the embedded dataset, in a child
    process: {"estimated_peak_bytes", "peak_rss_bytes", "batch_size", "ten_crop"} from its result.json."""
    with tempfile.TemporaryDirectory(prefix="alexnet_bench_memory_") as root:
        command = [sys.executable, "-m", "tools.train", "--preset=paper", f"--batch_size={batch_size}", "--steps=3",
                   "--eval_every=3", f"--workdir={root}/run", "--export_dir=", f"--ten_crop={ten_crop}"]
        subprocess.run(command + ([f"--data_dir={data_dir}"] if data_dir else []), capture_output=True, text=True,
                       check=True, cwd=Path(__file__).resolve().parents[2])
        result = json.loads((Path(root) / "run" / "result.json").read_text())
    return {"estimated_peak_bytes": result["estimated_peak_bytes"], "peak_rss_bytes": result["peak_rss_bytes"],
            "batch_size": batch_size, "ten_crop": ten_crop}


def _child(batch_size, steps, width, image_size):
    from alexnet_tf.bench.train import train_step
    from alexnet_tf.footprint import resident_bytes

    train_step(batch_size, warmup=1, repeats=steps, width=width, image_size=image_size)
    print(resident_bytes("VmHWM"))


if __name__ == "__main__":
    _child(**json.loads(sys.argv[1]))
