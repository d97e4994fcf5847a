"""Running on a cluster: the strategy for each kind of run, which worker is the chief, keeping the hybrid
scheme's per-worker copies equal, coordinated preemption, and what a lost worker looks like.

The hybrid scheme (`TrainConfig.hybrid`: the paper's towers on each worker's devices, data parallel
across workers) is cuda-convnet2's; BUILD_NOTES.md, "Hybrid parallelism", says what TF 2.21 allows and
why it is built this way.
"""

import json
import os
import re
import signal
import sys

import keras
import tensorflow as tf


class ClusterError(RuntimeError):
    """A multi-worker run lost a worker (it died, or a collective timed out), or its TF_CONFIG is unusable."""


# A collective that waits longer than this for a peer fails the step (a worker died or hangs).
# Generous: the first step also waits for the slowest worker to trace and compile.
COLLECTIVE_TIMEOUT_SECONDS = 300


def check_tf_config(strategy, log=print):
    """A TF_CONFIG that is not a JSON object: an error naming it for a multi-worker run, which reads it; one
    line saying it is ignored for any other strategy (which never reads it)."""
    raw = os.environ.get("TF_CONFIG")
    if raw is None:
        return
    try:
        ok, why = isinstance(json.loads(raw), dict), "not a JSON object"
    except ValueError as e:
        ok, why = False, f"not valid JSON: {e}"
    if not ok and strategy == "multi_worker":
        raise ClusterError(f"TF_CONFIG={raw[:80]!r}: {why}; it must describe the cluster and this worker's task, "
                           f'e.g. {{"cluster": {{"worker": ["host1:port", "host2:port"]}}, '
                           f'"task": {{"type": "worker", "index": 0}}}}')
    if not ok:
        log(f"note: TF_CONFIG is set but {why}; ignored (only --strategy=multi_worker reads it)")


def make_strategy(config, log=print):
    check_tf_config(config.strategy, log)
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy != "multi_worker":
        return tf.distribute.get_strategy()
    # Configured by the TF_CONFIG environment variable.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS)
    if not config.hybrid:
        return _when_peers_answer(lambda: tf.distribute.MultiWorkerMirroredStrategy(communication_options=options),
                                  config.cluster_timeout, log)
    # One replica per worker, on its first GPU (or the CPU): the strategy makes one replica per GPU it is
    # told of, and a resolver other than TFConfigClusterResolver is asked how many there are. The
    # replica's towers then run on the devices `tower_devices` names (`build_state`).
    tf_config = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf_config.cluster_spec(), task_type=tf_config.task_type, task_id=tf_config.task_id,
        rpc_layer=tf_config.rpc_layer or "grpc",
        num_accelerators={"GPU": 1} if tf.config.list_physical_devices("GPU") else {})
    return _when_peers_answer(lambda: tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options), config.cluster_timeout, log)


# The watchdog of `_when_peers_answer`: a separate Python (no TensorFlow), which ends the trainer if it is
# still waiting for its peers after the timeout, saying which of them never answered.
_WATCHDOG = r"""
import os, select, signal, socket, sys
timeout, parent, prog, peers = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
if select.select([sys.stdin], [], [], timeout)[0]:
    sys.exit(0)  # the trainer connected (or ended: end of file)
def answers(address):
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        return True
    except (OSError, ValueError):
        return False
silent = [p for p in peers if not answers(p)] or peers
sys.stderr.write(f"{prog}: error: --cluster_timeout={timeout:g}: worker(s) {', '.join(silent)} never answered "
                 f"within {timeout:g} s; start every worker in TF_CONFIG with the same flags, or check their "
                 f"addresses\n")
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)  # the waiting trainer takes SIGTERM for preemption and stays
"""


def _when_peers_answer(build, timeout, log):
    """`build()`'s multi-worker strategy. Building it blocks until every worker in TF_CONFIG has started, inside
    TensorFlow and holding Python's interpreter lock, so that no Python signal handler or thread can run until
    it returns (measured: BUILD_NOTES "Failure modes"). So: one line says whom this worker waits for; SIGINT
    gets its default action meanwhile, which ends the process at once (130); and a watchdog process ends it
    (SIGKILL) after `timeout` s with one line naming the workers that never answered. SIGTERM is caught by
    TensorFlow's own preemption notifier, which the strategy installs while it waits."""
    import subprocess

    peers = _peers()
    handlers = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGINT)}
    log(f"waiting for the other workers of the cluster ({', '.join(peers)}); giving up after {timeout:g} s "
        f"(--cluster_timeout)")
    sys.stdout.flush()
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(timeout), str(os.getpid()),
                                 "alexnet-train", *peers], stdin=subprocess.PIPE)
    try:
        return build()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        watchdog.stdin.write(b"connected\n")
        watchdog.stdin.close()
        watchdog.wait()


def _peers():
    """The other tasks' addresses in TF_CONFIG."""
    spec = json.loads(os.environ["TF_CONFIG"])
    me = spec.get("task", {})
    return [address for kind, addresses in spec.get("cluster", {}).items() for i, address in enumerate(addresses)
            if (kind, i) != (me.get("type"), me.get("index"))]


def num_workers(strategy):
    """The processes of the run: the cluster's workers (and chief), or 1."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, sum(len(spec.get(kind, [])) for kind in ("chief", "worker")))


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def sync_from_chief(strategy, variables, chief):
    """Sets every worker's copy of `variables` (the hybrid scheme's, one per worker) to the chief's: an
    all-reduce of the chief's values and zeros elsewhere. Other state than float32 travels as float64
    (exact for counters below 2^53), in a second all-reduce (one collective takes one dtype)."""
    variables = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    groups = [[v for v in variables if v.dtype == tf.float32], [v for v in variables if v.dtype != tf.float32]]

    def replica():
        summed = []
        for group in filter(None, groups):
            # Copies on the replica's device: the collective needs one, and ops here get none by default.
            with tf.device(strategy.extended.worker_devices[0]):
                values = [tf.identity(tf.cast(v, tf.float32 if v.dtype == tf.float32 else tf.float64)) for v in group]
                values = values if chief else [tf.zeros_like(x) for x in values]
            summed += tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)
        return summed

    @tf.function
    def sync():
        for v, x in zip([v for group in groups for v in group], strategy.run(replica)):
            v.assign(tf.cast(strategy.experimental_local_results(x)[0], v.dtype))

    sync()


def failure_reason(error):
    """A short reason for a collective's failure: which task stopped, when TF's message says."""
    text = error.message or ""
    if match := re.search(r"unhealthy[^\n]*\n\s*(/job:\S+)", text):
        return f"{match.group(1)} stopped sending heartbeats"
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(("Graph execution error", "Detected at node"))]
    return f"{type(error).__name__}: {lines[0][:200] if lines else 'no message'}"


def preemption_handler(strategy, checkpoint, manager, exit_fn):
    """TF's PreemptionCheckpointHandler for a multi-worker run: when any worker gets SIGTERM (or SIGINT),
    every worker checkpoints at the same step (`manager.save`), then calls `exit_fn` (which raises)."""
    # The handler counts its calls from its own counter, restored from the checkpoint it finds in
    # `manager`'s directory: a non-chief's is a scratch one, so the counts would differ between workers.
    # With this attribute taken, the handler keeps its counter out of the checkpoint and every worker
    # counts from 0 at every start; the step itself is the TrainState's.
    checkpoint.checkpointed_runs = tf.Variable(0, dtype=tf.int64, trainable=False)
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, manager, termination_config=tf.distribute.experimental.TerminationConfig(
            exit_fn=exit_fn))
    signal.signal(signal.SIGINT, signal.getsignal(signal.SIGTERM))  # Ctrl-C on one worker: the same
    return handler
