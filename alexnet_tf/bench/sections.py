"""The benchmark's sections, run in order into one results dict (what `alexnet-benchmark --json` prints),
with the targets they allow judging."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from alexnet_tf.bench import memory, pipeline, probes, profile, serving, targets, train

SECTIONS = ("forward", "matmul", "train", "precision", "finetune", "pipeline", "e2e", "inference", "serving",
            "memory", "profile")
# The fine-tuning steps timed by the finetune section (--train_layers of alexnet-train).
FINETUNE_LAYERS = (("fc6", "fc7", "fc8"), ("fc8",))
# Mixed precision and XLA at batch 128: (policy, jit).
PRECISIONS = (("mixed_bfloat16", False), ("mixed_float16", False), ("float32", True), ("mixed_bfloat16", True))


# The sections measured together, each group in a fresh process: the train step needs the matmul ceiling it is
# judged against, and the end-to-end runs the datasets the pipeline section prepares.
GROUPS = (("forward",), ("matmul", "train"), ("precision",), ("finetune",), ("pipeline", "e2e"), ("inference",),
          ("serving",), ("memory",), ("profile",))


def measure(sections, *, log=print, **options):
    """Runs each of `sections` (names from SECTIONS) with `options` (those of `_measure_here`), each group of
    GROUPS in a fresh process; returns {"machine", <section>: ..., "skipped": [...], "targets"}.

    A process of its own for each: a paper-model train step timed in a process keeps 0.5-0.7 GB that TensorFlow
    does not give back when the step is dropped (measured on host F: RSS 1.58, 2.05, 2.76 GiB after three built,
    called and deleted), and the whole benchmark in one process reached 18.4 GB and was OOM-killed on a 24 GiB
    machine during the serving section (host F, issue 32)."""
    results = {"machine": probes.machine()}
    for group in GROUPS:
        wanted = [s for s in group if s in sections]
        if wanted:
            for key, value in _in_a_child(wanted, options, log).items():
                results[key] = results.get(key, []) + value if key == "skipped" else value
    results["targets"] = targets.check_targets(results)
    return results


def _in_a_child(sections, options, log):
    """`_measure_here(sections, **options)` in a fresh process (`python -m alexnet_tf.bench.sections`), its log
    lines passed on as they come; its results. Its stderr goes to a scratch file, not a pipe: the converters'
    warnings would fill a pipe nobody reads while the child's stdout is followed, and stop the child."""
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "alexnet_tf.bench.sections",
                                  json.dumps({"sections": sections, **options})],
                                 stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 cwd=Path(__file__).resolve().parents[2],
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        lines = []
        for line in child.stdout:
            if line.startswith(_LOG):
                log(line[len(_LOG):].rstrip("\n"))
            else:
                lines.append(line)
        child.wait()
        stderr.seek(0)
        err = stderr.read()
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"the {','.join(sections)} section(s) failed (exit {child.returncode}): "
                           f"{err.strip()[-2000:]}")
    return json.loads(lines[-1])


def _measure_here(sections, *, forward_batches=(1, 128), train_batches=(32, 128, 256), repeats=5, warmup=2,
                  jpegs=512, dataset=None, data_dir=None, workdir=None, profile_dir=None, log=print):
    """Runs each of `sections` in this process; returns {<section>: ..., "skipped": [...]}."""
    from alexnet_tf.model import build_alexnet

    r, w = repeats, warmup
    results = {}
    if "forward" in sections:
        model = build_alexnet(seed=0)
        results["forward"] = [train.forward_pass(model, b, warmup=w, repeats=r) for b in forward_batches]
    if "matmul" in sections or "train" in sections:
        log("timing the fp32 matmul ceiling")
        results["matmul"] = probes.matmul_ceiling(warmup=w, repeats=r)
    if "train" in sections:
        results["train"] = []
        for b in train_batches:
            log(f"timing the fp32 train step at batch {b}")
            results["train"].append(train.train_step(b, warmup=w, repeats=r))
    if "precision" in sections:
        results["precision"] = []
        for p, j in PRECISIONS:
            what = f"the train step in {p}{' with XLA' if j else ''} at batch 128"
            if why := probes.too_slow_here(p):
                log(f"skipping {what}: {why}")
                results.setdefault("skipped", []).append({"measurement": what, "why": why})
                continue
            log(f"timing {what}")
            results["precision"].append(train.train_step(128, precision=p, jit=j, warmup=w, repeats=r))
    if "finetune" in sections:
        log("timing fine-tuning steps")
        results["finetune"] = train.fine_tuning(FINETUNE_LAYERS, warmup=w, repeats=r)
    if "pipeline" in sections or "e2e" in sections:
        results.update(_input(sections, jpegs, dataset, data_dir, max(10, r), log))
    if "inference" in sections:
        results["inference"] = serving.inference_models(workdir, repeats=r, warmup=w, log=log)
    if "serving" in sections:
        results["serving"] = serving.serving_models(1000, repeats=max(r, 10), warmup=w, log=log)
    if "memory" in sections:
        log("measuring peak memory of training")
        results["memory"] = memory.peak_training_memory(128)
        log("the trainer's memory estimate against its peak (batch 128; 64 with ten crops)")
        results["memory"]["estimates"] = [memory.estimate_against_peak(128, data_dir=data_dir),
                                          memory.estimate_against_peak(64, ten_crop=True, data_dir=data_dir)]
    if "profile" in sections:
        log(f"profiling the fp32 train step at batch 128 into {profile_dir}")
        results["profile"] = profile.profile(profile_dir)
    return results


_LOG = "log: "  # the child's log lines on its stdout; its last other line is the results


def _input(sections, jpegs, dataset, data_dir, steps, log):
    """The pipeline section ({format: row}, and the service rows) and the e2e one ({format: row}), on
    generated ImageNet-like JPEGs or the first `jpegs` images of `dataset`, prepared in both formats."""
    import shutil

    results = {}
    root = tempfile.mkdtemp(prefix="alexnet_bench_input_")
    try:
        folder = None
        if dataset is None:
            folder = f"{root}/jpegs"
            log(f"writing {jpegs} ImageNet-like JPEGs to {folder}")
            pipeline.write_imagenet_like_jpegs(folder, jpegs)
        source = pipeline.benchmark_source(folder, dataset, data_dir, jpegs)
        log(f"preparing {source.name} as jpeg256 and raw256 in {root}")
        sources = pipeline.in_formats(source, root)
        if "pipeline" in sections:
            log("timing the input pipeline from each format, and through a tf.data service on loopback")
            results["pipeline"] = {**pipeline.format_rows(sources, root, 128), "dataset": source.name,
                                   "service": pipeline.service_rows(sources["jpeg256"], 128)}
            log("timing the augmentation on the device, alone and in the train step")
            results["pipeline"]["augmentation"] = pipeline.augmentation_cost(128)
        if "e2e" in sections:
            log("timing end-to-end training from each format")
            results["e2e"] = {fmt: pipeline.end_to_end(s, 128, steps=steps) for fmt, s in sources.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    print(json.dumps(_measure_here(**json.loads(sys.argv[1]), log=lambda line: print(f"{_LOG}{line}", flush=True))))
