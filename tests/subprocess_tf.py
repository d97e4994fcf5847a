"""Run a snippet in a fresh Python whose CPU is split into logical devices.

Logical devices must be configured before TensorFlow initialises, which has
long happened in the pytest process, hence the subprocess. The snippet prints
one JSON document as its last line of output; `run` returns it parsed.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import json, os, sys
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * {cpus})
tf.config.set_soft_device_placement(False)
"""


def run(snippet, cpus=2, timeout=300):
    code = PRELUDE.format(cpus=cpus) + textwrap.dedent(snippet)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
