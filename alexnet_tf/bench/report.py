"""The benchmark's results as a readable table (the tool's default output; --json prints them as they are)."""

from alexnet_tf.bench import pipeline
from alexnet_tf.bench.flops import ceiling_fraction

_LINE = "{:<40}{:>7}{:>12}{:>18}{:>11}  {}"


def _row(label, r, versus=""):
    spread = f"{r['min_s'] * 1e3:.1f}..{r['max_s'] * 1e3:.1f}" if "min_s" in r else "-"
    median = f"{r['median_s'] * 1e3:.1f}" if "median_s" in r else "-"
    print(_LINE.format(label, r["batch_size"], median, spread, f"{r['images_per_s']:.1f}", versus))


def print_table(results):
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['gpus']} GPUs, TensorFlow {m['tensorflow']}")
    ceiling = results.get("matmul", {}).get("gflops")
    if ceiling:
        print(f"fp32 matmul ceiling (4096x4096): {ceiling:.0f} GFLOP/s")
    print(_LINE.format("measurement", "batch", "median ms", "min..max ms", "images/s", "vs"))
    fp32 = _print_training(results, ceiling)
    _print_input(results)
    _print_inference(results)
    if "serving" in results:
        print_serving(results["serving"])
    if "profile" in results:
        print_profile(results["profile"])
    if "memory" in results:
        print(f"peak resident memory, training at batch {results['memory']['batch_size']}: "
              f"{results['memory']['peak_rss_bytes'] / 2**30:.2f} GiB")
        for row in results["memory"].get("estimates", []):
            print(f"alexnet-train at batch {row['batch_size']}{' (ten crops)' if row['ten_crop'] else ''}: estimated "
                  f"{row['estimated_peak_bytes'] / 2**30:.2f} GiB, peak {row['peak_rss_bytes'] / 2**30:.2f} GiB")
    for row in results.get("skipped", []):
        print(f"skipped: {row['measurement']}: {row['why']}")
    if results.get("targets"):
        print("\ntargets (the paper model; training at batch 128):")
        for t in results["targets"]:
            print(f"  [{'met' if t['met'] else 'NOT MET'}] {t['target']}: {t['measured']}")


def _print_training(results, ceiling):
    """The forward, train, precision and fine-tuning rows; returns {batch size: fp32 images/s}."""
    fp32 = {r["batch_size"]: r["images_per_s"] for r in results.get("train", []) if r["precision"] == "float32"}
    for r in results.get("forward", []):
        _row("forward, paper model, fp32", r)
    for r in results.get("train", []) + results.get("precision", []):
        versus = ""
        if r["precision"] == "float32" and not r["jit"] and ceiling:
            versus = f"{ceiling_fraction(r['images_per_s'], ceiling, r['flop_per_image']):.0%} of the ceiling"
        elif fp32.get(r["batch_size"]):
            versus = f"{r['images_per_s'] / fp32[r['batch_size']]:.2f}x fp32"
        _row(f"train step, {r['precision']}{' + XLA' if r['jit'] else ''}", r, versus)
    for r in results.get("finetune", []):
        speedup = r["images_per_s"] / r["full_images_per_s"]
        _row(f"fine-tune step, --train_layers={r['train_layers']}", r,
             f"{speedup:.2f}x the full step ({speedup / r['flop_ratio']:.0%} of its {r['flop_ratio']:.2f}x FLOP ratio)")
    return fp32


def _print_input(results):
    if "pipeline" in results:
        rows = results["pipeline"]
        for fmt in pipeline.FORMATS:
            r = rows[fmt]
            _row(f"host side, {fmt} ({r['bytes_per_image'] / 1e3:.0f} KB/image)", r,
                 f"{r['images_per_s_per_core']:.0f} images/s a core, {r['cores_for_gpu']:.1f} cores to feed "
                 f"{pipeline.GPU_IMAGES_PER_S} images/s")
        for name, what in (("records_only", "raw256 records alone (read, shuffled)"),
                           ("jpeg_decode_only", "jpeg256 decode alone (from memory)")):
            if name in rows:
                _row(f"  {what}", rows[name], f"{rows[name]['images_per_s_per_core']:.0f} images/s a core: a floor")
        if aug := rows.get("augmentation"):
            print(f"augmentation on the device, batch {aug['batch_size']}: {aug['augment_ms']:.1f} ms alone "
                  f"({aug['augment_ms'] / aug['step_ms']:.1%} of the step); the train step {aug['step_ms']:.0f} ms "
                  f"with it, {aug['plain_step_ms']:.0f} ms fed its float images ({aug['ratio']:.1%})")
        local = rows["service"][0]["images_per_s"]
        for r in rows["service"][1:]:
            _row(f"  jpeg256 via service, {r['workers']} worker(s)", {**r, "batch_size": 128},
                 f"{r['images_per_s'] / local:.2f}x local (same {rows['source']['cores']} cores: overhead, not scaling)")
    for fmt, e2e in results.get("e2e", {}).items():
        _row(f"training from {fmt}, fp32", e2e,
             f"{e2e['images_per_s'] / e2e['in_memory_images_per_s']:.0%} of in-memory "
             f"({e2e['in_memory_images_per_s']:.1f} images/s)")


def _print_inference(results):
    saved = next((r["batch1"]["median_s"] for r in results.get("inference", []) if r["model"] == "savedmodel"), None)
    for r in results.get("inference", []):
        size = f", {r['size_bytes'] / 2**20:.0f} MiB" if r["size_bytes"] else ""
        _row(f"{r['model']}{size}", r["batch1"],
             f"{r['batch1']['median_s'] / saved:.2f}x SavedModel latency" if saved and r["model"] != "savedmodel" else "")
        _row(f"  top-1 agree {r['top1_agreement']:.1%}, max dp {r['max_prob_diff']:.1e}", r["batch64"])


def print_profile(p):
    print(f"\nprofile of the fp32 train step at batch {p['batch_size']} (ops one at a time, "
          f"{p['step_ms']:.0f} ms/step; trace in {p['logdir']}):")
    print("{:<14}{:>5}{:>10}{:>8}{:>10}".format("layer", "pass", "ms/step", "share", "GFLOP/s"))
    for r in p["layers"]:
        if r["ms_per_step"] >= 0.005 * p["step_ms"]:
            print("{:<14}{:>5}{:>10.1f}{:>8.1%}{:>10}".format(
                r["layer"], r["pass"], r["ms_per_step"], r["ms_per_step"] / p["step_ms"],
                f"{r['gflops']:.0f}" if r["gflops"] else ""))


def print_serving(serving):
    f1, f64 = serving["floor"]["1"], serving["floor"]["64"]
    probes = serving["probes"]["1"]
    print(f"\nserving, 1000 classes (untrained): {serving['timed']['weight_bytes'] / 1e6:.0f} MB of fp32 weights, "
          f"{serving['timed']['flop_per_image'] / 1e9:.2f} GFLOP per image; measured in turn with the models: "
          f"memory bandwidth {probes['gb_per_s']:.1f} GB/s, matmul ceiling "
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
