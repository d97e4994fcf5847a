"""Before a multi-worker strategy is built: the workers of TF_CONFIG, whether one answers, and the wait until
all of them do. No TensorFlow (the watchdog, `alexnet_tf.watchdog`, runs this in a process of its own).

TensorFlow's own wait for the cluster happens inside the strategy's constructor, where nothing can interrupt
it (`alexnet_tf.shutdown`); the wait here comes first, in Python, where SIGTERM, Ctrl-C and --cluster_timeout
each end it with one line naming the workers that never answered.
"""

import json
import os
import socket
import struct
import time


class ClusterError(RuntimeError):
    """A multi-worker run lost a worker (it died, or a collective timed out), its TF_CONFIG is unusable, or
    its workers never all started."""


# What a worker says of the peers that never answered (the wait below and the watchdog alike).
NEVER_ANSWERED = ("--cluster_timeout={timeout:g}: worker(s) {silent} never answered within {timeout:g} s; start "
                  "every worker in TF_CONFIG with the same flags, or check their addresses")
# ... and of peers that answer but never join TensorFlow's cluster (the watchdog).
NEVER_JOINED = ("--cluster_timeout={timeout:g}: {peers} answer(s) but never joined the cluster within {timeout:g} s; "
                "is each an alexnet-train worker started with the same TF_CONFIG?")


def own_address():
    spec = json.loads(os.environ["TF_CONFIG"])
    return spec["cluster"][spec["task"]["type"]][spec["task"]["index"]]


def peers():
    """The other tasks' addresses in TF_CONFIG."""
    spec = json.loads(os.environ["TF_CONFIG"])
    me = spec.get("task", {})
    return [address for kind, addresses in spec.get("cluster", {}).items() for i, address in enumerate(addresses)
            if (kind, i) != (me.get("type"), me.get("index"))]


def answers(address, timeout=0.5):
    """Whether something accepts a TCP connection at `address` (HOST:PORT)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def wait_for_peers(silent, timeout, me=None):
    """Returns once every worker in `silent` accepts a TCP connection on its port, listening on this worker's
    own port (`me`, HOST:PORT; TF_CONFIG's by default) meanwhile so that they see it too; the listener is
    closed before TensorFlow's server takes the port. `silent`, a list, is kept up to date as peers answer (the
    line a signal ends the wait with names them). Raises ClusterError naming the silent workers after
    `timeout` s."""
    me = me or own_address()
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
    deadline = time.monotonic() + timeout
    try:
        while silent:
            _drop_probes(listener)
            silent[:] = [peer for peer in silent if not answers(peer)]
            if silent and time.monotonic() > deadline:
                raise ClusterError(NEVER_ANSWERED.format(timeout=timeout, silent=", ".join(silent)))
            time.sleep(0.2 if silent else 0)
    finally:
        listener.close()


def _drop_probes(listener):
    """Accepts and resets the connections peers opened to see this worker (no TIME_WAIT left on its port)."""
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
