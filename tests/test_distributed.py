"""Training keeps the towers' placement; data parallelism across worker processes matches one process."""

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from helpers import cli, free_port, run_with_devices as run, subprocess_env


def test_momentum_slots_and_updates_stay_on_their_towers_device():
    out = run("""
import keras
from alexnet_tf import build_alexnet, optim, steps
model = build_alexnet(10, image_size=67, width=0.125, tower_devices=("/CPU:0", "/CPU:1"), seed=0)
optimizer = optim.make_optimizer(model.trainable_variables)
step = steps.make_train_step(model, optimizer, global_batch_size=2, strategy=tf.distribute.get_strategy())
images, labels = tf.random.uniform((2, 67, 67, 3)) * 255, tf.constant([1, 2], tf.int64)
step(images, labels)  # runs with soft placement off
graph = step.get_concrete_function(images, labels).graph
# Every op that writes a variable, with the device of the variable it writes.
handle_device = {}
for outer, inner in graph.captures:
    for v in model.trainable_variables + [s for s in optimizer.variables if "momentum" in s.path]:
        if outer is v.value.handle:
            handle_device[inner.name] = (v.path, v.value.device)
library = {f.signature.name: f for f in graph.as_graph_def().library.function}

def is_write(node_type):
    return node_type.startswith("Assign") and node_type.endswith("VariableOp") or node_type.startswith("ResourceApply")

def written_args(function):
    # Positions of the arguments a library function writes (the fused update assigns its variables).
    names = [a.name for a in function.signature.input_arg]
    return {names.index(n.input[0].split(":")[0]) for n in function.node_def
            if is_write(n.op) and n.input[0].split(":")[0] in names}

writes = []
for op in graph.get_operations():
    if is_write(op.type):
        targets = [op.inputs[0]]
    elif op.type in ("PartitionedCall", "StatefulPartitionedCall"):
        targets = [op.inputs[i] for i in written_args(library[op.get_attr("f").name])]
    else:
        continue
    for target in targets:
        if target.name in handle_device:
            writes.append((handle_device[target.name][0], handle_device[target.name][1], op.device))
slots = {v.path: v.value.device for v in optimizer.variables if "momentum" in v.path}
print(json.dumps(dict(writes=writes, slots=slots,
                      weights={v.path: v.value.device for v in model.trainable_variables})))
""")
    tower_device = {"a": "CPU:0", "b": "CPU:1"}

    def tower(path):
        """'sgd/conv3_b_kernel_momentum' or 'conv3_b/kernel' -> 'b'; fc8 runs on tower a."""
        layer = next(w.split("/")[0] for w in out["weights"] if w.replace("/", "_") in path.replace("/", "_"))
        return "a" if layer == "fc8" else layer[-1]

    # Each momentum slot lives where its weight lives.
    assert len(out["slots"]) == 30
    for path, device in out["slots"].items():
        assert device.endswith(tower_device[tower(path)]), (path, device)
    # Every weight and every slot is written once per step, on its tower's device.
    written = [path for path, _, _ in out["writes"]]
    assert sorted(written) == sorted(set(out["slots"]) | set(out["weights"]))
    for path, var_device, op_device in out["writes"]:
        assert op_device.endswith(tower_device[tower(path)]) and var_device.endswith(op_device.split("device:")[-1]), \
            (path, var_device, op_device)


WORKER = """
import os, sys
import numpy as np
from helpers import tiny_config
from alexnet_tf import training
config = tiny_config({workdir!r}, {dataset!r}, {data_dir!r}, strategy={strategy!r}, dropout=0.0,
                     deterministic=True, steps=4, batch_size=8, eval_every=4, seed=3)
result, run = training.train(config, log=lambda *a: None)
np.savez({out!r}, *[v.numpy() for v in run.state.model.trainable_variables])
"""


@pytest.mark.heavy
def test_two_workers_match_one_process_on_the_same_global_batches(tmp_path, shapes_folder):
    """Two MultiWorkerMirroredStrategy workers on loopback ports vs. one process, dropout off."""
    data_dir = tmp_path / "data"
    env = subprocess_env(TF_CPP_MIN_LOG_LEVEL="2")

    def script(workdir, strategy, out):
        return textwrap.dedent(WORKER).format(workdir=str(workdir),
                                              dataset=str(shapes_folder), data_dir=str(data_dir),
                                              strategy=strategy, out=str(out))

    # The single-process reference first (it also computes and stores the dataset statistics).
    single = subprocess.run([sys.executable, "-c", script(tmp_path / "single", "default", tmp_path / "single.npz")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    workers = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-c", script(tmp_path / "multi", "multi_worker", tmp_path / f"worker{index}.npz")],
            env={**env, "TF_CONFIG": json.dumps(tf_config)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]

    # Really two replicas in sync (not two independent runs that ignored TF_CONFIG).
    assert json.loads((tmp_path / "multi" / "config.json").read_text())["replicas"] == 2
    assert json.loads((tmp_path / "single" / "config.json").read_text())["replicas"] == 1
    reference, w0, w1 = (np.load(tmp_path / f) for f in ("single.npz", "worker0.npz", "worker1.npz"))
    assert len(reference.files) == 30
    from alexnet_tf.model import build_alexnet
    initial = build_alexnet(10, image_size=67, width=0.125, dropout=0.0, seed=3).get_weights()
    for i, key in enumerate(reference.files):
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)        # the workers agree exactly
        np.testing.assert_allclose(w0[key], reference[key], atol=1e-5, rtol=0, err_msg=key)
    assert sum(not np.allclose(reference[k], w) for k, w in zip(reference.files, initial)) >= 15  # it trained
    assert (tmp_path / "multi" / "checkpoints").is_dir() and not list((tmp_path / "multi").glob("tmp_worker_*"))


def test_a_worker_whose_peer_never_starts_gives_up_naming_it_and_writes_nothing(monkeypatch, tmp_path, shapes_folder,
                                                                               data_dir):
    """In-process: the wait ends after --cluster_timeout naming the silent peer, before anything is written.
    (SIGTERM and Ctrl-C during the wait, and the watchdog's own verdicts: test_shutdown.)"""
    from alexnet_tf import cluster, training
    from helpers import tiny_config

    peer = f"localhost:{free_port()}"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"localhost:{free_port()}", peer]},
                                                "task": {"type": "worker", "index": 0}}))
    said = []
    with pytest.raises(cluster.ClusterError) as error:
        training.train(tiny_config(tmp_path / "run", shapes_folder, data_dir, strategy="multi_worker",
                                   cluster_timeout=1), log=said.append)
    assert said[-1] == f"waiting for the other workers of the cluster ({peer}); giving up after 1 s (--cluster_timeout)"
    assert str(error.value) == (f"--cluster_timeout=1: worker(s) {peer} never answered within 1 s; start every "
                                f"worker in TF_CONFIG with the same flags, or check their addresses")
    assert not (tmp_path / "run").exists() and signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_sigterm_while_tensorflow_builds_the_strategy_is_held_from_it_and_the_watchdog_ends_the_trainer(
        tmp_path, shapes_folder, data_dir):
    """The one child of the cluster-wait case: something answers on the peer's port, so the wait passes to
    TensorFlow's constructor, which never connects. A SIGTERM meanwhile is held back from TensorFlow's
    preemption notifier (which would keep the process alive: alexnet_tf.shutdown), and the watchdog ends the
    trainer at once with one line (SIGKILL, the one signal TensorFlow cannot take)."""
    peer = f"localhost:{free_port()}"
    env = subprocess_env(TF_CONFIG=json.dumps({"cluster": {"worker": [f"localhost:{free_port()}", peer]},
                                               "task": {"type": "worker", "index": 0}}))
    args = (f"--dataset=folder:{shapes_folder}", f"--data_dir={data_dir}", f"--workdir={tmp_path}/run",
            "--preset=tiny", "--batch_size=8", "--steps=2", "--strategy=multi_worker", "--export_dir=")
    with socket.create_server(("127.0.0.1", int(peer.rpartition(":")[2]))):
        waiting = cli("train", *args, env=env, wait=False)
        assert "waiting for the other workers" in waiting.stdout.readline()
        time.sleep(3)  # past the rendezvous, inside the strategy's constructor
        waiting.send_signal(signal.SIGTERM)
        _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == -signal.SIGKILL, err
    assert err.strip().splitlines()[-1] == ("alexnet-train: stopped by SIGTERM while the cluster was starting; "
                                            "nothing was written")
    assert not (tmp_path / "run").exists()


def one_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not _tf_log(line)]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _tf_log(line):
    """TensorFlow's own C++ log lines (glog style: `W0000 00:00:...`), which a tool cannot silence before
    TensorFlow reads its log threshold."""
    return bool(re.match(r"^[IWEF]\d{4} ", line)) or line.startswith("WARNING: All log messages before absl")
