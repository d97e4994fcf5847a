"""Where a train step's time goes: a TF profiler trace, read back per layer and pass.

`profile_train_step` records the trace in a fresh process (`python -m alexnet_tf.bench.profile` is the
child); `layer_breakdown` reads it (with xprof, TensorBoard's profile plugin) into milliseconds per (layer,
pass); `profile` puts both together with each layer's GFLOP/s (`flops.layer_flops` of the profiled model).
"""

import json
import subprocess
import sys


def profile_train_step(logdir, batch_size=128, *, steps=3, precision="float32", width=1.0, image_size=227):
    """Records a TF profiler trace of `steps` train steps into `logdir` (TensorBoard's Profile tab
    reads it) and returns the trace's *.xplane.pb paths.

    Runs in a fresh process with one inter-op thread: ops then run one at a
    time, each on every core, so their self-times add up to the step's wall
    time and can be compared with each other. (Training itself runs the two
    towers' ops concurrently, which measured the same speed within noise.)
    """
    import glob

    spec = dict(logdir=str(logdir), batch_size=batch_size, steps=steps, precision=precision, width=width,
                image_size=image_size)
    subprocess.run([sys.executable, "-m", "alexnet_tf.bench.profile", json.dumps(spec)], check=True,
                   capture_output=True)
    return sorted(glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb"))


def _trace_child(logdir, batch_size, steps, precision, width, image_size):
    """The child process of `profile_train_step` (before TensorFlow runs anything: one inter-op thread)."""
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from alexnet_tf.model import build_alexnet
    from alexnet_tf.steps import paper_train_step

    keras.mixed_precision.set_global_policy(precision)
    model = build_alexnet(1000, image_size=image_size, width=width, seed=0)
    step = paper_train_step(model, batch_size, precision=precision)
    images = tf.random.uniform((batch_size, image_size, image_size, 3), -120, 120, seed=0)
    labels = tf.random.uniform((batch_size,), 0, 1000, dtype=tf.int64, seed=0)
    for _ in range(2):
        float(step(images, labels)[0])
    tf.profiler.experimental.start(logdir)
    for i in range(steps):
        with tf.profiler.experimental.Trace("train", step_num=i, _r=1):
            float(step(images, labels)[0])
    tf.profiler.experimental.stop()


def _async_op_times(xplane_paths):
    """{op name: picoseconds} of the asynchronous kernels in a trace, which xprof's op statistics
    leave out: the calls of XLA-compiled functions (the LRN passes and the optimizer update).
    The executor's "ProcessAsync::Start" event of such an op spans its XLA execution."""
    import collections

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    times = collections.Counter()
    for path in xplane_paths:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            names = {i: m.name for i, m in plane.stat_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    if plane.event_metadata[event.metadata_id].name != "ExecutorState::ProcessAsync::Start":
                        continue
                    # The value is a string, or a reference to one interned in the stat metadata.
                    op = next((s.str_value or names.get(s.ref_value) for s in event.stats
                               if names.get(s.metadata_id) == "name"), None)
                    if op:
                        times[op] += event.duration_ps
    return times


def layer_breakdown(xplane_paths, steps):
    """Milliseconds per step by (layer, pass) from a profile: the TF ops of each named layer,
    forward ("fwd") and backward ("bwd"); the momentum update and the gradient norm as
    "optimizer". Uses xprof (TensorBoard's profile plugin) to read the trace."""
    import collections
    import re

    from xprof.convert import raw_to_tool_data

    raw, _ = raw_to_tool_data.xspace_to_tool_data(xplane_paths, "framework_op_stats", {})
    table = json.loads(raw)[0]
    columns = [c["id"] for c in table["cols"]]
    op_times = collections.Counter({name: ps / 1e6 for name, ps in _async_op_times(xplane_paths).items()})
    for values in table["rows"]:
        op = dict(zip(columns, (cell.get("v") for cell in values["c"])))
        if op["type"] != "IDLE":
            op_times[op["operation"]] += op["total_self_time"]  # microseconds
    layer = re.compile(r"(?:^|/)alexnet(?:_\d+)?/([a-z]+\d*(?:_[ab])?|fc7_features)(?:_\d+)?/")
    times = collections.Counter()
    for name, us in op_times.items():
        if m := layer.search(name):
            key = (m.group(1), "bwd" if name.startswith("gradients/") else "fwd")
        elif re.search(r"sgd|L2Loss|AddN", name, re.IGNORECASE):
            key = ("optimizer", "")
        else:
            key = ("other", "")
        times[key] += us / 1e3 / steps
    return dict(times)


def profile(logdir, steps=3, batch_size=128):
    """Per-layer forward and backward milliseconds per step, with each conv/fc layer's GFLOP/s."""
    from alexnet_tf.bench.flops import layer_flops
    from alexnet_tf.model import build_alexnet

    paths = profile_train_step(logdir, batch_size, steps=steps)
    flops = layer_flops(build_alexnet(1000), batch_size)
    times = layer_breakdown(paths, steps)
    rows = []
    for (layer, pass_), ms in sorted(times.items(), key=lambda kv: -kv[1]):
        forward = flops.get(layer)
        # Backward: input and weight gradients, each as costly as the forward
        # pass; conv1 has no input gradient.
        work = forward if pass_ == "fwd" or (forward and layer.startswith("conv1")) else \
            2 * forward if forward else None
        rows.append({"layer": layer, "pass": pass_, "ms_per_step": ms,
                     "gflops": work / ms / 1e6 if work else None})
    return {"logdir": logdir, "steps": steps, "batch_size": batch_size, "layers": rows,
            "step_ms": sum(r["ms_per_step"] for r in rows)}


if __name__ == "__main__":
    # The child process of `profile_train_step`: python -m alexnet_tf.bench.profile '{"logdir": ..., ...}'.
    _trace_child(**json.loads(sys.argv[1]))
