"""alexnet-benchmark: how fast every part of alexnet_tf runs on this machine.

    alexnet-benchmark                      # everything, a readable table (about 6 minutes on 2 cores)
    alexnet-benchmark --sections=train,pipeline --json

Sections: forward (inference of the Keras model), matmul (the fp32 ceiling),
train (train step at --train_batches, fp32), precision (mixed precision and
XLA at batch 128), finetune (steps that train fc6-fc8 or fc8 only, against
the full step and their FLOP ratio), pipeline (input pipeline alone on ImageNet-like JPEGs),
e2e (training that reads those JPEGs), inference (Keras, SavedModel, TFLite
variants; needs a trained --workdir for the agreement figures), serving (batch-1
latency and batch-64 throughput of the 1000-class paper model, untrained, as
SavedModel, each TFLite variant and ONNX Runtime, against the machine's limit:
its matmul ceiling and memory bandwidth, timed in turn with the models), memory (peak
resident memory of training at batch 128), profile (a TF profiler trace of the
fp32 train step at batch 128 in --profile_dir, and the time per layer and pass
read from it). Each figure is a median over --repeats runs after --warmup.
The table ends with the performance targets the measured sections allow
checking, each marked met or NOT MET (also under "targets" in --json).

See the trace in TensorBoard's Profile tab:
    tensorboard --logdir=runs/benchmark_profile
"""

import glob
import json
import os
import platform
import sys
import tempfile

from absl import flags

from tools import cli

SECTIONS = ("forward", "matmul", "train", "precision", "finetune", "pipeline", "e2e", "inference", "serving",
            "memory", "profile")
# The fine-tuning steps timed by the finetune section (--train_layers of alexnet-train).
FINETUNE_LAYERS = (("fc6", "fc7", "fc8"), ("fc8",))
FLAGS = flags.FLAGS
flags.DEFINE_list("sections", list(SECTIONS), f"Which measurements to run, any of {','.join(SECTIONS)}.")
flags.DEFINE_list("forward_batches", ["1", "128"], "Batch sizes for the forward-pass timing.")
flags.DEFINE_list("train_batches", ["32", "128", "256"], "Batch sizes for the fp32 train-step timing.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions per measurement (after warm-up); the median is reported.",
                     lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed calls before each measurement.", lower_bound=0)
flags.DEFINE_integer("jpegs", 512, "ImageNet-like JPEGs (500x375) to generate for the pipeline sections.",
                     lower_bound=64)
flags.DEFINE_string("workdir", "runs/alexnet_shapes-paper",
                    "A trained alexnet-train workdir for the inference section (its model is exported to "
                    "SavedModel and TFLite and compared with Keras on validation images).")
flags.DEFINE_string("profile_dir", "runs/benchmark_profile",
                    "Where the profile section writes its TF profiler trace (a TensorBoard log directory).")
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


def positive_ints(name, values):
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = [0]
    if any(n < 1 for n in numbers):
        raise ValueError(f"--{name} must be positive integers, got {','.join(values)}")
    return numbers


def main(argv):
    if len(argv) > 1:
        cli.error("alexnet-benchmark", f"unexpected arguments: {' '.join(argv[1:])}")
        return 2
    unknown = sorted(set(FLAGS.sections) - set(SECTIONS))
    try:
        if unknown:
            raise ValueError(f"--sections: unknown {','.join(unknown)}; choose from {','.join(SECTIONS)}")
        forward_batches = positive_ints("forward_batches", FLAGS.forward_batches)
        train_batches = positive_ints("train_batches", FLAGS.train_batches)
        if "inference" in FLAGS.sections and not glob.glob(os.path.join(FLAGS.workdir, "checkpoints", "ckpt-*.index")):
            raise ValueError(f"--workdir={FLAGS.workdir}: no trained run with a checkpoint there (run make train "
                             f"first, or drop 'inference' from --sections)")
    except ValueError as e:
        cli.error("alexnet-benchmark", e)
        return 2

    cli.start_tensorflow()
    from alexnet_tf import benchmark as bm, profiling
    from alexnet_tf.model import build_alexnet

    log = (lambda m: print(m, file=sys.stderr)) if FLAGS.json else print
    r, w = FLAGS.repeats, FLAGS.warmup
    results = {"machine": machine()}
    sections = FLAGS.sections
    if "forward" in sections:
        model = build_alexnet(seed=0)
        results["forward"] = [bm.forward_pass(model, b, warmup=w, repeats=r) for b in forward_batches]
    if "matmul" in sections or "train" in sections:
        results["matmul"] = bm.matmul_ceiling(warmup=w, repeats=r)
    if "train" in sections:
        log("timing train steps")
        results["train"] = [bm.train_step(b, warmup=w, repeats=r) for b in train_batches]
    if "precision" in sections:
        log("timing mixed precision and XLA")
        results["precision"] = [bm.train_step(128, precision=p, jit=j, warmup=w, repeats=r)
                                for p, j in (("mixed_bfloat16", False), ("mixed_float16", False),
                                             ("float32", True), ("mixed_bfloat16", True))]
    if "finetune" in sections:
        log("timing fine-tuning steps")
        flops = profiling.layer_flops(build_alexnet(1000), 1)
        full = bm.train_step(128, warmup=w, repeats=r)
        results["finetune"] = [{**bm.train_step(128, train_layers=layers, warmup=w, repeats=r),
                                "flop_ratio": bm.step_flops(flops) / bm.step_flops(flops, layers),
                                "full_images_per_s": full["images_per_s"]} for layers in FINETUNE_LAYERS]
    if "pipeline" in sections or "e2e" in sections:
        jpegs = tempfile.mkdtemp(prefix="alexnet_bench_jpegs_")
        log(f"writing {FLAGS.jpegs} ImageNet-like JPEGs to {jpegs}")
        bm.write_imagenet_like_jpegs(jpegs, FLAGS.jpegs)
        if "pipeline" in sections:
            results["pipeline"] = bm.pipeline_throughput(jpegs, 128)
        if "e2e" in sections:
            log("timing end-to-end training from JPEGs")
            results["e2e"] = bm.end_to_end(jpegs, 128, steps=max(10, r))
    if "inference" in sections:
        results["inference"] = bm.inference_models(FLAGS.workdir, repeats=r, warmup=w, log=log)
    if "serving" in sections:
        served = bm.serving_models(1000, repeats=max(r, 10), warmup=w, log=log)
        results["serving"] = {
            **served,
            "floor": {b: bm.serving_floor(p["gflops"], p["gb_per_s"], served["weight_bytes"], int(b),
                                          fc_flop_per_image=served["fc_flop_per_image"],
                                          fc_weight_bytes=served["fc_weight_bytes"])
                      for b, p in served["probes"].items()}}
    if "memory" in sections:
        log("measuring peak memory of training")
        results["memory"] = bm.peak_training_memory(128)
    if "profile" in sections:
        log(f"profiling the fp32 train step at batch 128 into {FLAGS.profile_dir}")
        results["profile"] = profiling.profile(FLAGS.profile_dir)
    results["targets"] = check_targets(results)
    if FLAGS.json:
        print(json.dumps(results, indent=2))
        return 0
    print_table(results)
    return 0


def print_table(results):
    from alexnet_tf.benchmark import ceiling_fraction

    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['gpus']} GPUs, TensorFlow {m['tensorflow']}")
    ceiling = results.get("matmul", {}).get("gflops")
    if ceiling:
        print(f"fp32 matmul ceiling (4096x4096): {ceiling:.0f} GFLOP/s")
    line = "{:<40}{:>7}{:>12}{:>18}{:>11}  {}"
    print(line.format("measurement", "batch", "median ms", "min..max ms", "images/s", "vs"))

    def row(label, r, versus=""):
        spread = f"{r['min_s'] * 1e3:.1f}..{r['max_s'] * 1e3:.1f}" if "min_s" in r else "-"
        median = f"{r['median_s'] * 1e3:.1f}" if "median_s" in r else "-"
        print(line.format(label, r["batch_size"], median, spread, f"{r['images_per_s']:.1f}", versus))

    fp32 = {r["batch_size"]: r["images_per_s"] for r in results.get("train", []) if r["precision"] == "float32"}
    for r in results.get("forward", []):
        row("forward, paper model, fp32", r)
    for r in results.get("train", []) + results.get("precision", []):
        versus = ""
        if r["precision"] == "float32" and not r["jit"] and ceiling:
            versus = f"{ceiling_fraction(r['images_per_s'], ceiling):.0%} of the ceiling"
        elif fp32.get(r["batch_size"]):
            versus = f"{r['images_per_s'] / fp32[r['batch_size']]:.2f}x fp32"
        row(f"train step, {r['precision']}{' + XLA' if r['jit'] else ''}", r, versus)
    for r in results.get("finetune", []):
        speedup = r["images_per_s"] / r["full_images_per_s"]
        row(f"fine-tune step, --train_layers={r['train_layers']}", r,
            f"{speedup:.2f}x the full step ({speedup / r['flop_ratio']:.0%} of its {r['flop_ratio']:.2f}x FLOP ratio)")
    if "pipeline" in results:
        row("input pipeline alone (JPEG 500x375)", results["pipeline"])
    if "e2e" in results:
        e2e = results["e2e"]
        row("training from JPEGs, fp32", e2e,
            f"{e2e['images_per_s'] / fp32[e2e['batch_size']]:.0%} of in-memory" if fp32.get(e2e["batch_size"]) else "")
    saved = next((r["batch1"]["median_s"] for r in results.get("inference", []) if r["model"] == "savedmodel"), None)
    for r in results.get("inference", []):
        size = f", {r['size_bytes'] / 2**20:.0f} MiB" if r["size_bytes"] else ""
        row(f"{r['model']}{size}", r["batch1"],
            f"{r['batch1']['median_s'] / saved:.2f}x SavedModel latency" if saved and r["model"] != "savedmodel" else "")
        row(f"  top-1 agree {r['top1_agreement']:.1%}, max dp {r['max_prob_diff']:.1e}", r["batch64"])
    if "serving" in results:
        print_serving(results["serving"])
    if "profile" in results:
        p = results["profile"]
        print(f"\nprofile of the fp32 train step at batch {p['batch_size']} (ops one at a time, "
              f"{p['step_ms']:.0f} ms/step; trace in {p['logdir']}):")
        print("{:<14}{:>5}{:>10}{:>8}{:>10}".format("layer", "pass", "ms/step", "share", "GFLOP/s"))
        for r in p["layers"]:
            if r["ms_per_step"] >= 0.005 * p["step_ms"]:
                print("{:<14}{:>5}{:>10.1f}{:>8.1%}{:>10}".format(
                    r["layer"], r["pass"], r["ms_per_step"], r["ms_per_step"] / p["step_ms"],
                    f"{r['gflops']:.0f}" if r["gflops"] else ""))
    if "memory" in results:
        print(f"peak resident memory, training at batch {results['memory']['batch_size']}: "
              f"{results['memory']['peak_rss_bytes'] / 2**30:.2f} GiB")
    if results.get("targets"):
        print("\ntargets (the paper model; training at batch 128):")
        for t in results["targets"]:
            print(f"  [{'met' if t['met'] else 'NOT MET'}] {t['target']}: {t['measured']}")


def print_serving(serving):
    f1, f64 = serving["floor"]["1"], serving["floor"]["64"]
    probes = serving["probes"]["1"]
    print(f"\nserving, paper model, 1000 classes (untrained): {serving['weight_bytes'] / 1e6:.0f} MB of fp32 weights; "
          f"measured in turn with the models: memory bandwidth {probes['gb_per_s']:.1f} GB/s, matmul ceiling "
          f"{probes['gflops']:.0f} GFLOP/s ({serving['probes']['64']['gflops']:.0f} in the batch-64 rounds)")
    print(f"  limit at batch 1: {f1['floor_s'] * 1e3:.1f} ms ({f1['bound']}-bound: compute {f1['compute_s'] * 1e3:.1f} "
          f"ms, reading the weights {f1['memory_s'] * 1e3:.1f} ms); at batch 64: "
          f"{64 / f64['compute_s']:.0f} images/s (compute)")
    if "layer_by_layer_s" in f1:
        print(f"  layer by layer at best (the FC weights are read only after the last convolution): "
              f"{f1['layer_by_layer_s'] * 1e3:.1f} ms at batch 1, {f1['layer_by_layer_s'] / f1['floor_s']:.2f}x the limit")
    line = "  {:<26}{:>11}{:>14}{:>11}{:>13}{:>9}"
    print(line.format("model", "batch-1 ms", "x the limit", "batch-64/s", "of compute", "top-1"))
    for r in serving["models"]:
        b1, b64 = r["batch1"]["median_s"], r["batch64"]["images_per_s"]
        print(line.format(r["model"], f"{b1 * 1e3:.1f}", f"{b1 / f1['floor_s']:.2f}x", f"{b64:.1f}",
                          f"{b64 / (64 / f64['compute_s']):.0%}", f"{r['top1_agreement']:.0%}"))


def _train_rate(results, precision, batch_size=128):
    rows = results.get("train", []) + results.get("precision", [])
    return next((r["images_per_s"] for r in rows
                 if r["precision"] == precision and not r["jit"] and r["batch_size"] == batch_size), None)


def check_targets(results):
    """The issue's performance targets (batch 128, paper model) against `results` as alexnet-benchmark
    collects them: a list of {target, measured, met}; a target whose sections did not run is left out."""
    from alexnet_tf import benchmark as bm

    targets = []

    def add(target, measured, met):
        targets.append({"target": target, "measured": measured, "met": bool(met)})

    fp32 = _train_rate(results, "float32")
    ceiling = results.get("matmul", {}).get("gflops")
    if fp32 and ceiling:
        fraction = bm.ceiling_fraction(fp32, ceiling)
        add("fp32 train step >= 90% of the matmul ceiling",
            f"{fraction:.1%} ({fp32:.1f} images/s, ceiling {ceiling:.0f} GFLOP/s)", fraction >= 0.9)
    bf16 = _train_rate(results, "mixed_bfloat16")
    if fp32 and bf16:
        add("mixed_bfloat16 >= 1.7x fp32", f"{bf16 / fp32:.2f}x ({bf16:.1f} images/s)", bf16 / fp32 >= 1.7)
    if fp32 and "e2e" in results:
        e2e = results["e2e"]["images_per_s"]
        add("training from JPEGs >= 90% of the in-memory rate", f"{e2e / fp32:.1%} ({e2e:.1f} images/s)",
            e2e / fp32 >= 0.9)
    for r in results.get("finetune", []):
        if r["train_layers"] == "fc6,fc7,fc8":
            achieved = r["images_per_s"] / r["full_images_per_s"] / r["flop_ratio"]
            add("fine-tuning fc6-fc8 >= 0.9 of its FLOP ratio to the full step",
                f"{achieved:.0%} ({r['images_per_s']:.1f} vs {r['full_images_per_s']:.1f} images/s, "
                f"FLOP ratio {r['flop_ratio']:.2f}x)", achieved >= 0.9)
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
    serving_targets(results, add)
    return targets


def serving_targets(results, add):
    """Issue 13's targets, from the serving section (and the trained model's int8 agreement, if measured)."""
    if "serving" not in results:
        return
    serving = results["serving"]
    rows = {r["model"].split()[0]: r for r in serving["models"]}
    floor1 = serving["floor"]["1"]["floor_s"]
    saved = rows.get("savedmodel")
    if saved is None:
        return
    latency = saved["batch1"]["median_s"]
    layer_by_layer = serving["floor"]["1"].get("layer_by_layer_s")
    why = f"; layer by layer at best {layer_by_layer * 1e3:.1f} ms = {layer_by_layer / floor1:.2f}x" if layer_by_layer else ""
    add("SavedModel fp32 batch-1 latency <= 1.5x the machine's limit",
        f"{latency / floor1:.2f}x ({latency * 1e3:.1f} ms, limit {floor1 * 1e3:.1f} ms, "
        f"{serving['floor']['1']['bound']}-bound{why})", latency <= 1.5 * floor1)
    if "onnxruntime" in rows:
        ort = rows["onnxruntime"]["batch1"]["median_s"]
        below = (f"; 0.8x ONNX Runtime's is {0.8 * ort * 1e3:.1f} ms, below the layer-by-layer floor"
                 if layer_by_layer and 0.8 * ort < layer_by_layer else "")
        add("SavedModel fp32 batch-1 latency <= 0.8x ONNX Runtime's", f"{latency / ort:.2f}x ({latency * 1e3:.1f} vs "
            f"{ort * 1e3:.1f} ms{below})", latency <= 0.8 * ort)
    if "tflite_int8" in rows:
        int8 = rows["tflite_int8"]["batch1"]["median_s"]
        trained = {r["model"]: r for r in results.get("inference", [])}.get("tflite_int8")
        agreement, where = ((trained["top1_agreement"], "trained model, validation images") if trained else
                            (rows["tflite_int8"]["top1_agreement"], "untrained model, random images: weak evidence"))
        add("TFLite int8 batch-1 latency at 1000 classes <= 1/3 the SavedModel's, >= 99% top-1 agreement",
            f"{int8 / latency:.2f}x ({int8 * 1e3:.1f} vs {latency * 1e3:.1f} ms), {agreement:.1%} agreement ({where})",
            int8 <= latency / 3 and agreement >= 0.99)
    compute64 = 64 / serving["floor"]["64"]["compute_s"]
    b64 = saved["batch64"]["images_per_s"]
    add("SavedModel batch-64 throughput >= 0.9 of the compute limit",
        f"{b64 / compute64:.0%} ({b64:.1f} of {compute64:.0f} images/s)", b64 >= 0.9 * compute64)


def run():
    cli.run(main, "alexnet-benchmark")


if __name__ == "__main__":
    run()
