"""What several test modules share: the tiny configuration, launchers for the CLIs and for
snippets that need logical devices, and a free loopback port.

Test modules import this (`from helpers import ...`); no test module imports another.
"""

import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# The tiny preset used by most tests: the paper's topology at 1/8 width on
# 67x67 inputs (the smallest size that survives to pool5).
TINY = dict(num_classes=10, image_size=67, width=0.125)


def tiny_config(workdir, dataset_dir, data_dir, **overrides):
    """A TrainConfig for a few steps of the tiny preset on a folder dataset (`overrides`: TrainConfig's fields
    and the model's flags, as `runs.make_config` takes them)."""
    from alexnet_tf.runs import make_config

    values = dict(dataset=f"folder:{dataset_dir}", data_dir=str(data_dir), workdir=str(workdir), preset="tiny",
                  batch_size=8, steps=4, eval_every=2, log_every=1, val_fraction=0.25, seed=0)
    values.update(overrides)
    return make_config(**values)


def tiny_preprocessing(num_classes=10, mean=(0.0, 0.0, 0.0)):
    """The Preprocessing record an export of the tiny preset takes: 67-pixel crops of a 76-pixel square."""
    from alexnet_tf.sidecar import Preprocessing

    return Preprocessing(image_size=67, resize=76, mean=tuple(mean), class_names=tuple(f"c{i}" for i in range(num_classes)))


def subprocess_env(**extra):
    """The environment of a child Python: this checkout and the tests' helpers importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), **extra}


def run_tool(tool, *args):
    """Runs the console script of tools/<tool>.py (alexnet-train, alexnet-import, ...) in this process, as its
    entry point does (`main(argv)`), with stdout and stderr captured: a CompletedProcess. Tests reach the tools
    only through their console scripts, as users do."""
    entry = next(e for e in importlib.metadata.entry_points(group="console_scripts") if e.module == f"tools.{tool}")
    name, main = entry.name, importlib.import_module(entry.module).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([name, *map(str, args)])
        except SystemExit as e:  # the trainer's exit after a signal
            code = e.code
    return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())


def cli(tool, *args, wait=True, timeout=300, env=None, process=False):
    """Runs alexnet-<tool> with `args` as a user would: in this process (`run_tool`) where what is tested is
    what the tool says and does, or, with `process=True`, `wait=False` (a running Popen) or an `env` of its
    own, as `python -m tools.<tool>` in a child process from the checkout, where the process itself is what is
    tested (signals, the workdir lock, TensorFlow's start-up, flag checks before TensorFlow starts). Returns
    a CompletedProcess (or the Popen)."""
    if wait and not process and env is None:
        return run_tool(tool, *args)
    command = [sys.executable, "-m", f"tools.{tool}", *map(str, args)]
    if env is None:  # a user's environment: the tool decides how quiet TensorFlow is
        env = subprocess_env()
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if wait:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Logical devices must be configured before TensorFlow initialises, which has
# long happened in the pytest process, hence a fresh Python for these snippets.
DEVICES_PRELUDE = """
import json, os, sys
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * {cpus})
tf.config.set_soft_device_placement(False)
"""


def run_with_devices(snippet, cpus=2, timeout=300):
    """Runs `snippet` in a fresh Python whose CPU is split into `cpus` logical devices (soft placement
    off). The snippet prints one JSON document as its last line; this returns it parsed."""
    code = DEVICES_PRELUDE.format(cpus=cpus) + textwrap.dedent(snippet)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="2"), cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
