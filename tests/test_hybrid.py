"""The hybrid scheme (cuda-convnet2's): the paper's towers on each worker's two devices, data parallel
across workers with tf.distribute, and coordinated preemption. Two loopback workers, each with its CPU
split into two logical devices (--cpu_devices=2)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from helpers import ROOT, cli, free_port, subprocess_env

WORKER = """
import json, sys
import numpy as np
import tensorflow as tf
from helpers import tiny_config
from alexnet_tf import training
config = tiny_config({workdir!r}, {dataset!r}, {data_dir!r}, strategy={strategy!r}, dropout=0.0, cpu_devices=2,
                     tower_devices=("/CPU:0", "/CPU:1"), deterministic=True, steps=4, batch_size=8, eval_every=4,
                     seed=3)
result, run = training.train(config, log=lambda *a: None)
np.savez({out!r}, *[v.numpy() for v in run.state.model.trainable_variables])
if {strategy!r} == "multi_worker":
    # Where this worker's step runs: trace it again (plain tensors, one local replica) and list every op.
    graph = run.train_step.get_concrete_function(
        tf.TensorSpec((8, 76, 76, 3), tf.uint8), tf.TensorSpec((8,), tf.int64),
        (tf.TensorSpec((8, 2), tf.int32), tf.TensorSpec((8,), tf.bool), tf.TensorSpec((8, 3), tf.float32))).graph
    handles = {{}}
    for outer, inner in graph.captures:
        for v in run.state.model.trainable_variables:
            if outer is v.value.handle:
                handles[inner.name] = v.path
    ops = []
    def walk(g, prefix=""):
        for op in g.get_operations():
            writes = [handles[t.name] for t in op.inputs if t.name in handles] if g is graph else []
            ops.append((prefix + op.name, op.type, op.device, writes))
        for name, f in getattr(g, "_functions", {{}}).items():
            if hasattr(f, "graph"):
                walk(f.graph, prefix + str(name) + "/")
    walk(graph)
    json.dump(dict(ops=ops, replicas=run.strategy.num_replicas_in_sync,
                   weights={{v.path: v.value.device for v in run.state.model.trainable_variables}}),
              open({out!r} + ".json", "w"))
"""


def _worker_script(workdir, strategy, out, shapes_folder, data_dir):
    return textwrap.dedent(WORKER).format(workdir=str(workdir), dataset=str(shapes_folder), data_dir=str(data_dir),
                                          strategy=strategy, out=str(out))


def _tf_config(cluster, index):
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@pytest.mark.heavy
def test_hybrid_workers_keep_towers_on_their_own_devices_and_match_one_process(tmp_path, shapes_folder):
    data_dir = tmp_path / "data"
    env = subprocess_env(TF_CPP_MIN_LOG_LEVEL="2")
    # One process, the towers pinned the same way, on the same global batches.
    single = subprocess.run([sys.executable, "-c", _worker_script(tmp_path / "single", "default",
                                                                  tmp_path / "single.npz", shapes_folder, data_dir)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = [subprocess.Popen([sys.executable, "-c", _worker_script(tmp_path / "multi", "multi_worker",
                                                                      tmp_path / f"w{i}.npz", shapes_folder,
                                                                      data_dir)],
                                env={**env, "TF_CONFIG": _tf_config(cluster, i)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]

    reference, w0, w1 = (np.load(tmp_path / f) for f in ("single.npz", "w0.npz", "w1.npz"))
    for key in reference.files:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)  # the workers agree exactly
        np.testing.assert_allclose(w0[key], reference[key], atol=1e-5, rtol=0, err_msg=key)
    assert json.loads((tmp_path / "multi" / "config.json").read_text())["replicas"] == 2

    tower_device = {"a": "CPU:0", "b": "CPU:1"}
    for task in (0, 1):
        placed = json.loads((tmp_path / f"w{task}.npz.json").read_text())
        assert placed["replicas"] == 2  # one replica per worker, not one per logical device
        for path, device in placed["weights"].items():  # each tower's weights live on its own device
            tower = "a" if path.startswith("fc8") else path.split("/")[0][-1]
            assert device == f"/job:worker/replica:0/task:{task}/device:{tower_device[tower]}", (path, device)
        checked = {"forward": 0, "backward": 0, "update": 0}
        for name, op_type, device, writes in placed["ops"]:
            layer = re.search(r"(?:^|/)((conv[1-5]|fc[67])_[ab])(?:_\d+)?/", name)  # 'alexnet_1/conv2_b_1/convolution'
            kind = ("forward" if op_type in ("Conv2D", "MatMul", "BiasAdd", "Relu", "MaxPool")
                    else "backward" if op_type in ("Conv2DBackpropFilter", "Conv2DBackpropInput", "BiasAddGrad",
                                                   "ReluGrad", "MaxPoolGrad") else None)
            if writes and op_type in ("StatefulPartitionedCall", "PartitionedCall"):
                # The fused momentum update of a tower's weight (PaperSGD).
                kind, layer = "update", re.match(r"((conv[1-5]|fc[67])_[ab])/", writes[0])
            if kind is None or layer is None:
                continue
            tower = layer.group(1)[-1]
            assert device == f"/job:worker/replica:0/task:{task}/device:{tower_device[tower]}", (name, op_type,
                                                                                                device)
            checked[kind] += 1
        assert min(checked.values()) > 0, checked  # each kind was found and checked
        # The augmentation (the crop's gathers of the uint8 squares) runs at the top of the replica's step, on
        # the replica's device, which is tower a's: both towers' conv1 read the one augmented batch from there.
        crops = [device for name, op_type, device, _ in placed["ops"] if op_type == "GatherV2"]
        assert crops and set(crops) == {f"/job:worker/replica:0/task:{task}/device:CPU:0"}, crops


def _start_workers(tmp_path, shapes_folder, cluster, steps, extra=()):
    args = [f"--dataset=folder:{shapes_folder}", f"--data_dir={tmp_path}/data", f"--workdir={tmp_path}/run",
            "--preset=tiny", "--batch_size=8", f"--steps={steps}", "--eval_every=1000", "--ckpt_every=1000",
            "--log_every=1", "--strategy=multi_worker", "--cpu_devices=2", "--tower_devices=/CPU:0,/CPU:1",
            "--export_dir=", "--max_eval_images=8", *extra]
    env = subprocess_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return [cli("train", *args, wait=False, env={**env, "TF_CONFIG": _tf_config(cluster, i)}) for i in range(2)]


def _wait_for_steps(workers, tmp_path, minimum, timeout=600):
    """Waits until the chief's TensorBoard log has a step >= minimum (training is under way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert all(w.poll() is None for w in workers), [w.communicate()[1][-2000:] for w in workers]
        events = list((tmp_path / "run" / "train").glob("events.*"))
        if events and _last_logged_step(events[0]) >= minimum:
            return
        time.sleep(1)
    raise AssertionError("the workers never got going")


def _last_logged_step(path):
    import tensorflow as tf

    last = 0
    try:
        for record in tf.compat.v1.train.summary_iterator(str(path)):
            last = max(last, record.step)
    except Exception:  # noqa: BLE001  a record being written
        pass
    return last


@pytest.mark.heavy
def test_sigterm_to_one_worker_checkpoints_every_worker_at_the_same_step_and_the_rerun_resumes(tmp_path,
                                                                                                shapes_folder):
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = _start_workers(tmp_path, shapes_folder, cluster, steps=500)
    _wait_for_steps(workers, tmp_path, 3)
    workers[1].send_signal(signal.SIGTERM)  # the non-chief: the chief must stop with it
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [143, 143], [o[1][-2000:] for o in outputs]
    steps = [int(re.search(r"every worker checkpointed at step (\d+)", out + err).group(1)) for out, err in outputs]
    assert steps[0] == steps[1] >= 3
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.index"))
    assert checkpoints == [f"ckpt-{steps[0]}.index"]
    assert not list((tmp_path / "run").glob("tmp_worker_*")) and not list((tmp_path / "run").rglob("*.partial"))
    assert not list((tmp_path / "run").rglob("*.corrupt"))
    # The same command on every worker resumes there and finishes.
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    rerun = _start_workers(tmp_path, shapes_folder, cluster, steps=steps[0] + 2)
    outputs = [w.communicate(timeout=600) for w in rerun]
    assert [w.returncode for w in rerun] == [0, 0], [o[1][-2000:] for o in outputs]
    assert f"at step {steps[0]}" in outputs[0][0] + outputs[0][1]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["step"] == steps[0] + 2


@pytest.mark.heavy
def test_a_killed_worker_makes_the_other_fail_with_one_line_in_bounded_time(tmp_path, shapes_folder):
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = _start_workers(tmp_path, shapes_folder, cluster, steps=100000)
    _wait_for_steps(workers, tmp_path, 2)
    workers[1].send_signal(signal.SIGKILL)
    killed = time.time()
    out, err = workers[0].communicate(timeout=400)  # bounded: the collective timeout is 300 s
    elapsed = time.time() - killed
    print(f"the chief stopped {elapsed:.0f} s after its peer was killed: {err.strip().splitlines()[-1]}")
    assert workers[0].returncode == 1, err[-3000:]
    assert re.search(r"^alexnet-train: error: lost contact with a worker of the cluster .*restart every worker",
                     err, re.M), err[-3000:]
    assert "Traceback" not in err


def test_cpu_devices_lets_a_laptop_pin_the_towers(tmp_path, shapes_folder):
    from helpers import cli

    proc = cli("train", f"--dataset=folder:{shapes_folder}", f"--data_dir={tmp_path}/data",
               f"--workdir={tmp_path}/run", "--preset=tiny", "--batch_size=8", "--steps=2", "--eval_every=2",
               "--cpu_devices=2", "--tower_devices=/CPU:0,/CPU:1", "--export_dir=", timeout=600,
               process=True)  # the CPU is split before TensorFlow starts: a fresh process
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["cpu_devices"] == 2 and recorded["tower_devices"] == ["/CPU:0", "/CPU:1"]
    # Without the split there is no /CPU:1: one line naming the flag and the devices that exist.
    proc = cli("train", f"--dataset=folder:{shapes_folder}", f"--data_dir={tmp_path}/data",
               f"--workdir={tmp_path}/run2", "--preset=tiny", "--batch_size=8", "--steps=1",
               "--tower_devices=/CPU:0,/CPU:1",
               "--export_dir=", timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "alexnet-train: error: tower_devices[1]='/CPU:1' does not exist on this machine; devices on this "
        "machine: /CPU:0 (cpu_devices=2 splits the CPU into /CPU:0 and /CPU:1)"), proc.stderr[-2000:]


def test_combinations_that_cannot_work_are_refused_in_one_line():
    from helpers import cli

    proc = cli("train", "--strategy=mirrored", "--tower_devices=/CPU:0,/CPU:1", "--steps=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "alexnet-train: error: --tower_devices=('/CPU:0', '/CPU:1'): cannot be combined with strategy=mirrored, "
        "which makes every local device a replica of the whole net; use strategy=multi_worker (one replica per "
        "machine, its towers on these devices) or the default strategy"]
