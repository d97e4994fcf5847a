"""The performance targets (the paper model, training at batch 128), judged from the measurements as
`alexnet-benchmark` collects them: each a {target, measured, met}; a target whose sections did not run is
left out. FLOP-based targets use the FLOPs of the model that was timed (each row's `flop_per_image`)."""

from alexnet_tf.bench.flops import ceiling_fraction


def _train_row(results, precision, batch_size=128):
    rows = results.get("train", []) + results.get("precision", [])
    return next((r for r in rows if r["precision"] == precision and not r["jit"] and r["batch_size"] == batch_size),
                None)


def check_targets(results):
    """Every target the measured sections allow checking, in the order the table prints them."""
    targets = []

    def add(target, measured, met):
        targets.append({"target": target, "measured": measured, "met": bool(met)})

    _training_targets(results, add)
    _inference_targets(results, add)
    _serving_targets(results, add)
    return targets


def _training_targets(results, add):
    fp32_row = _train_row(results, "float32")
    fp32 = fp32_row and fp32_row["images_per_s"]
    ceiling = results.get("matmul", {}).get("gflops")
    if fp32 and ceiling:
        fraction = ceiling_fraction(fp32, ceiling, fp32_row["flop_per_image"])
        add("fp32 train step >= 90% of the matmul ceiling",
            f"{fraction:.1%} ({fp32:.1f} images/s, ceiling {ceiling:.0f} GFLOP/s)", fraction >= 0.9)
    bf16 = (_train_row(results, "mixed_bfloat16") or {}).get("images_per_s")
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


def _inference_targets(results, add):
    rows = {r["model"]: r for r in results.get("inference", [])}
    if "tflite_int8" in rows and "savedmodel" in rows:
        int8, saved = rows["tflite_int8"], rows["savedmodel"]
        ratio = int8["batch1"]["median_s"] / saved["batch1"]["median_s"]
        add("TFLite int8 batch-1 latency <= half the SavedModel's, >= 99% top-1 agreement",
            f"{ratio:.2f}x ({int8['batch1']['median_s'] * 1e3:.1f} vs {saved['batch1']['median_s'] * 1e3:.1f} ms), "
            f"{int8['top1_agreement']:.1%} agreement", ratio <= 0.5 and int8["top1_agreement"] >= 0.99)


def _serving_targets(results, add):
    """From the serving section (and the trained model's int8 agreement, if the inference section ran)."""
    serving = results.get("serving")
    rows = {r["model"].split()[0]: r for r in serving["models"]} if serving else {}
    saved = rows.get("savedmodel")
    if saved is None:
        return
    floor1 = serving["floor"]["1"]["floor_s"]
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
