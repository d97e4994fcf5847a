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
    """A multi-worker run lost a worker (it died, or a collective timed out), its TF_CONFIG is unusable, or
    its workers never all started. `status`: the exit status a tool gives (143: stopped by SIGTERM)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


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


# What a worker says of the peers that never answered (the rendezvous and the watchdog alike).
_NEVER_ANSWERED = ("cluster_timeout={timeout:g}: worker(s) {silent} never answered within {timeout:g} s; start every "
                   "worker in TF_CONFIG with the same flags, or check their addresses")

# The watchdog of `_when_peers_answer`: a separate Python (no TensorFlow), which ends the trainer if it is
# still waiting for its peers after the timeout, saying which of them never answered.
_WATCHDOG = r"""
import os, select, signal, socket, sys
import time
wait, timeout, parent, prog, never_answered, peers = (float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4],
                                                      sys.argv[5], sys.argv[6:])
def sigterm_pending():  # the trainer blocks SIGTERM while it waits: it stays pending, visible here
    with open(f"/proc/{parent}/status") as f:
        masks = [int(line.split()[1], 16) for line in f if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in masks)
deadline = time.monotonic() + wait
while time.monotonic() < deadline:
    if select.select([sys.stdin], [], [], 0.2)[0]:
        sys.exit(0)  # the trainer connected (or ended: end of file)
    if sigterm_pending():
        sys.stderr.write(f"{prog}: error: stopped by SIGTERM while the cluster was starting; nothing was written\n")
        sys.stderr.flush()
        os.kill(parent, signal.SIGKILL)
        sys.exit(0)
def answers(address):
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        return True
    except (OSError, ValueError):
        return False
silent = [p for p in peers if not answers(p)]
why = (never_answered.format(silent=", ".join(silent)) if silent else
       f"--cluster_timeout={timeout}: {', '.join(peers)} answer(s) but never joined the cluster within {timeout} s; "
       f"is each an alexnet-train worker started with the same TF_CONFIG?")
sys.stderr.write(f"{prog}: error: {why}\n")
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)  # TensorFlow's preemption notifier would take a SIGTERM, and the trainer stay
"""


def _when_peers_answer(build, timeout, log):
    """`build()`'s multi-worker strategy. Building it blocks until every worker in TF_CONFIG has started, inside
    TensorFlow and holding Python's interpreter lock, so that no Python signal handler or thread can run until
    it returns, and SIGTERM meanwhile goes to TensorFlow's preemption notifier, which keeps the process alive
    (measured: BUILD_NOTES "Failure modes"). So the wait happens first in Python (`_rendezvous`), where SIGTERM,
    Ctrl-C and the timeout each end it with one line; only then is the strategy built. For that last, short
    wait SIGINT gets its default action (the process ends at once, 130) and SIGTERM is blocked, so that no
    thread that also blocks it (alexnet-train blocks it before TensorFlow starts its threads) hands it to
    TensorFlow: it stays pending, for the handler in place once the strategy exists. A watchdog process ends
    the trainer (SIGKILL) with one line if a SIGTERM is pending meanwhile, or if the wait outlasts the rest of
    `timeout` (naming the workers that never answered)."""
    import subprocess
    import time

    peers = _peers()
    log(f"waiting for the other workers of the cluster ({', '.join(peers)}); giving up after {timeout:g} s "
        f"(--cluster_timeout)")
    sys.stdout.flush()
    started = time.monotonic()
    _rendezvous(peers, timeout)  # unblocks SIGTERM in this thread once its own handler is in place
    handlers = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    left = max(1.0, timeout - (time.monotonic() - started))
    never_answered = "--" + _NEVER_ANSWERED.format(timeout=timeout, silent="{silent}")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(left), f"{timeout:g}", str(os.getpid()),
                                 "alexnet-train", never_answered, *peers], stdin=subprocess.PIPE)
    try:
        return build()
    finally:
        watchdog.stdin.write(b"connected\n")
        watchdog.stdin.close()
        watchdog.wait()  # before SIGTERM is unblocked: a pending one is then this process's to handle
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _rendezvous(peers, timeout):
    """Returns once every worker in `peers` accepts a TCP connection on its port, listening on this worker's
    own port meanwhile so that they see it too (the listener is closed before TensorFlow's server takes the
    port). Raises ClusterError naming the silent workers after `timeout` s, or on SIGTERM (status 143);
    Ctrl-C raises KeyboardInterrupt as anywhere else."""
    import socket
    import time

    me = _own_address()
    host, _, port = me.rpartition(":")
    listener = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(port)))
    except OSError as e:
        listener.close()
        raise ClusterError(f"TF_CONFIG: this worker's address {me} cannot be listened on ({e.strerror}); is another "
                           f"process using port {port}?") from None
    listener.listen(16)
    listener.setblocking(False)

    def terminated(signum, frame):
        raise ClusterError(f"stopped by SIGTERM while waiting for the other workers of the cluster "
                           f"({', '.join(silent)}); nothing was written", status=128 + signal.SIGTERM)

    silent, deadline = list(peers), time.monotonic() + timeout
    previous = signal.signal(signal.SIGTERM, terminated)
    # This thread only, and only now: a SIGTERM that arrived since the "waiting" line (blocked, so pending) goes
    # to this handler, not to the start-up guard's, which only notes it until the strategy exists.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        while silent:
            _drop_probes(listener)
            silent = [peer for peer in silent if not answers(peer)]
            if silent and time.monotonic() > deadline:
                raise ClusterError(_NEVER_ANSWERED.format(timeout=timeout, silent=", ".join(silent)))
            time.sleep(0.2 if silent else 0)
    finally:
        signal.signal(signal.SIGTERM, previous)
        listener.close()


def answers(address, timeout=0.5):
    """Whether something accepts a TCP connection at `address` (HOST:PORT). (The watchdog has its own copy:
    it runs without this package, which imports TensorFlow.)"""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _drop_probes(listener):
    """Accepts and resets the connections peers opened to see this worker (no TIME_WAIT left on its port)."""
    import socket
    import struct

    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()


def _own_address():
    spec = json.loads(os.environ["TF_CONFIG"])
    return spec["cluster"][spec["task"]["type"]][spec["task"]["index"]]


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


def lost_contact(error, *, when="", checkpoints=None):
    """The ClusterError a collective's `error` becomes: which worker, and to restart every worker (resuming from
    `checkpoints`, if there are any yet). `when`: e.g. " while starting"."""
    resume = f" to resume from the last checkpoint ({checkpoints})" if checkpoints else ""
    return ClusterError(f"lost contact with a worker of the cluster{when} ({failure_reason(error)}); restart every "
                        f"worker with the same command{resume}")


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
