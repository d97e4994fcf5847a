"""Running on a cluster: the strategy for each kind of run, which worker is the chief, keeping the hybrid
scheme's per-worker copies equal, coordinated preemption, and what a lost worker looks like.

The hybrid scheme (`TrainConfig.hybrid`: the paper's towers on each worker's devices, data parallel
across workers) is cuda-convnet2's; BUILD_NOTES.md, "Hybrid parallelism", says what TF 2.21 allows and
why it is built this way.
"""

import contextlib
import json
import os
import re
import sys
import time

import keras
import tensorflow as tf

from alexnet_tf import rendezvous, shutdown
from alexnet_tf.rendezvous import ClusterError


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


def make_strategy(config, log=print, guard=None):
    """The strategy of `config.strategy`. A multi-worker one waits for its peers first (`guard`: the run's
    `shutdown.Guard`, whose phases that wait goes through)."""
    check_tf_config(config.strategy, log)
    guard = guard or shutdown.Guard()
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if config.strategy != "multi_worker":
        return tf.distribute.get_strategy()
    # Configured by the TF_CONFIG environment variable.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS)
    if not config.hybrid:
        return _when_peers_answer(lambda: tf.distribute.MultiWorkerMirroredStrategy(communication_options=options),
                                  config.cluster_timeout, guard, log)
    # One replica per worker, on its first GPU (or the CPU): the strategy makes one replica per GPU it is
    # told of, and a resolver other than TFConfigClusterResolver is asked how many there are. The
    # replica's towers then run on the devices `tower_devices` names (`build_state`).
    tf_config = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf_config.cluster_spec(), task_type=tf_config.task_type, task_id=tf_config.task_id,
        rpc_layer=tf_config.rpc_layer or "grpc",
        num_accelerators={"GPU": 1} if tf.config.list_physical_devices("GPU") else {})
    return _when_peers_answer(lambda: tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options), config.cluster_timeout, guard, log)


def _when_peers_answer(build, timeout, guard, log):
    """`build()`'s multi-worker strategy. Building it blocks until every worker in TF_CONFIG has started, inside
    TensorFlow, where nothing can interrupt it (`alexnet_tf.shutdown`). So the wait happens first in Python
    (`rendezvous.wait_for_peers`), where SIGTERM, Ctrl-C and the timeout each end it with one line; only then
    is the strategy built, watched by the watchdog for the rest of `timeout`."""
    silent = rendezvous.peers()
    log(f"waiting for the other workers of the cluster ({', '.join(silent)}); giving up after {timeout:g} s "
        f"(--cluster_timeout)")
    sys.stdout.flush()
    started, peers = time.monotonic(), list(silent)
    with guard.waiting_for_peers(silent):
        rendezvous.wait_for_peers(silent, timeout)
    left = max(1.0, timeout - (time.monotonic() - started))
    with guard.building_strategy("alexnet-train", left, timeout, peers):
        return build()


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


def lost_contact(error, *, when="", checkpoints=None):
    """The ClusterError a collective's `error` becomes: which worker, and to restart every worker (resuming from
    `checkpoints`, if there are any yet). `when`: e.g. " while starting"."""
    resume = f" to resume from the last checkpoint ({checkpoints})" if checkpoints else ""
    return ClusterError(f"lost contact with a worker of the cluster{when} ({failure_reason(error)}); restart every "
                        f"worker with the same command{resume}")


def preemption_handler(strategy, checkpoint, manager, guard, step):
    """TF's PreemptionCheckpointHandler for a multi-worker run: when any worker gets SIGTERM (or SIGINT),
    every worker checkpoints at the same step (`manager.save`), then raises `shutdown.Stopped` naming `step()`.
    The run's `guard` hands it the signals from here on."""
    # The handler counts its calls from its own counter, restored from the checkpoint it finds in
    # `manager`'s directory: a non-chief's is a scratch one, so the counts would differ between workers.
    # With this attribute taken, the handler keeps its counter out of the checkpoint and every worker
    # counts from 0 at every start; the step itself is the TrainState's.
    checkpoint.checkpointed_runs = tf.Variable(0, dtype=tf.int64, trainable=False)
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, manager, termination_config=tf.distribute.experimental.TerminationConfig(
            exit_fn=shutdown.preempted_everywhere(step)))
    guard.hand_to_tensorflow()
    return handler


@contextlib.contextmanager
def reported(multi_worker, *, when="", checkpoints=None):
    """A collective's failure in a multi-worker run, raised as `lost_contact`'s one line."""
    try:
        yield
    except tf.errors.OpError as e:
        if not multi_worker:
            raise
        raise lost_contact(e, when=when, checkpoints=checkpoints) from None
