"""The tf.data service: a dispatcher and workers on other machines run the training pipeline, so the trainer's
host does not decode. TensorFlow's own servers (`tf.data.experimental.service`); this module starts them and
points a training pipeline at them.

Processing mode: `ShardingPolicy.DYNAMIC` ("distributed_epoch"). The dispatcher hands each epoch's input out
to the workers in splits, so a job gives no image twice in an epoch (epochs may overlap a little at their
boundary, as workers finish their splits at different times). It is at most once: a worker that dies loses
the images of the split it was processing, and the others carry on. Each trainer of a multi-worker run reads
its own job with its own seed, so the trainers get different images, each trainer every image once per epoch.
Evaluation does not go through the service (it must see every validation image exactly once).

Security: the open-source service speaks gRPC with insecure credentials (the only protocol, "grpc", is
`InsecureCredentialsFactory` in tensorflow/core/data/service/credentials_factory.cc): no authentication and no
encryption. Anyone who reaches a dispatcher's or worker's port can register a dataset (a graph of ops that run
on the workers, file reads included) and read what the workers produce. Run them on a private network only.
"""

import errno
import queue
import re
import socket
import threading
import time

import tensorflow as tf

from alexnet_tf.sources import DatasetError

SERVICE = tf.data.experimental.service


class ServiceError(DatasetError):
    """The tf.data service cannot be used; the message names the address."""


def check_port_free(port, flag="port"):
    """ServiceError if something already listens on `port` (0: any free port, nothing to check). gRPC servers
    bind with SO_REUSEPORT, so a second dispatcher or worker on a taken port would start and split the
    connections with the first; a plain bind (no SO_REUSEPORT) is refused there."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind(("", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise ServiceError(f"{flag}={port}: cannot listen there ({e.strerror})") from None
            raise ServiceError(f"{flag}={port}: already in use on this machine (another server listens there); "
                               f"stop it or choose another port") from None


def start_dispatcher(port, work_dir=None):
    """A dispatcher on `port` (0: any free one). With `work_dir` it journals its state there and, restarted
    with the same one, takes up the jobs it had (fault-tolerant mode)."""
    return SERVICE.DispatchServer(SERVICE.DispatcherConfig(port=port, work_dir=work_dir,
                                                           fault_tolerant_mode=work_dir is not None))


def start_worker(dispatcher_address, port=0, worker_address=None):
    """A worker on `port` that registers with the dispatcher at `dispatcher_address` (HOST:PORT, no scheme);
    `worker_address` is how trainers reach it (default localhost:<port>, right only on one machine)."""
    config = SERVICE.WorkerConfig(dispatcher_address=dispatcher_address, port=port,
                                  worker_address=worker_address or "localhost:%port%")
    try:
        return SERVICE.WorkerServer(config)
    except (NotImplementedError, tf.errors.OpError) as e:  # it answers gRPC, but not as a dispatcher
        why = str(e).splitlines()[0].rstrip(": ") if str(e).strip() else type(e).__name__
        raise ServiceError(f"dispatcher_address={dispatcher_address}: answers, but not as a tf.data service "
                           f"dispatcher ({why}); give the address alexnet-data-service --dispatcher printed") from None


def wait_for(address, timeout, what="data_service"):
    """Returns once something answers gRPC at `address` (grpc://HOST:PORT); ServiceError after `timeout` s.
    (The service's own client would retry an absent dispatcher for ever.)"""
    import grpc

    target = address.split("://", 1)[-1]
    channel = grpc.insecure_channel(target)
    started = time.monotonic()
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ServiceError(f"{what}={address}: no tf.data service dispatcher answered within {timeout:g} s; "
                           f"start one there (alexnet-data-service --dispatcher --port=...) or fix the "
                           f"address") from None
    finally:
        channel.close()
    return time.monotonic() - started


def watched(iterator, address, *, timeout, stopped, say, reads="the dataset", quiet_after=10.0):
    """The batches of `iterator` (a dataset the service at `address` produces), each without waiting for ever:
    says once (`say`) when nothing came for `quiet_after` s, raises ServiceError after `timeout` s, and yields
    None as soon as `stopped()` (a signal arrived); `reads` names what the workers read. The service's own client
    waits for ever for a worker that died or cannot read its input (issue 32), so one fetching thread waits for
    it and this one keeps watch."""
    wanted, fetched = queue.SimpleQueue(), queue.SimpleQueue()

    def fetch():
        while wanted.get():
            try:
                fetched.put((next(iterator), None))
            except StopIteration:  # the input ended (it never does, unless no image could be read)
                fetched.put((_END, None))
            except BaseException as e:  # noqa: BLE001  handed to the caller
                fetched.put((None, e))

    # A daemon: one stuck in the service's client must not keep the process alive at exit.
    threading.Thread(target=fetch, name="data_service_batches", daemon=True).start()
    try:
        while True:
            wanted.put(True)
            batch = _watch(fetched, address, timeout, stopped, say, reads, quiet_after)
            if batch is _END:
                return
            yield batch
    finally:
        wanted.put(False)


_END = object()  # what the fetching thread hands over when the input ended


def _watch(fetched, address, timeout, stopped, say, reads, quiet_after):
    started, said = time.monotonic(), False
    while True:
        try:
            batch, error = fetched.get(timeout=0.2)
        except queue.Empty:
            if stopped():
                return None
            waited = time.monotonic() - started
            if not said and waited >= min(quiet_after, timeout / 2):
                say(f"no batch from the tf.data service at {address} for {waited:.0f} s: are its workers running "
                    f"and can they read {reads}? (waiting up to --data_service_timeout={timeout:g} s)")
                said = True
            if waited >= timeout:
                raise ServiceError(f"data_service={address}: no batch from its workers for {timeout:g} s (a worker "
                                   f"died, none is registered, or they cannot read {reads}, which every worker "
                                   f"must see at that path)") from None
            continue
        if error is not None:
            raise _from_worker(error, address) or error
        return batch


def _from_worker(error, address):
    """A ServiceError naming the data worker and what it could not do, if `error` (an OpError the service's
    client raised) is a worker's failure; None otherwise. A worker that cannot read a file of the dataset (it
    sees other paths than the trainer, or the file is gone) fails this way, naming the file."""
    text = getattr(error, "message", "") or ""
    found = re.search(r"Failed to get element from worker (\S+?): .*?Failed to get element: (.+?)(?: \[Op:|$)", text,
                      re.S)
    if found is None:
        return None
    worker, why = found.group(1), " ".join(found.group(2).split())
    return ServiceError(f"data_service={address}: the data worker at {worker} failed: {why}; every data worker must "
                        f"read the dataset at the path the trainer gives it")


def distribute(dataset, address, job_name):
    """`dataset` produced by the service at `address` as the job `job_name`: its workers run it, each epoch split
    among them."""
    # No compression: the batches are pixels, which Snappy barely shrinks, at a cost per byte on both ends.
    return dataset.apply(SERVICE.distribute(processing_mode=SERVICE.ShardingPolicy.DYNAMIC, service=address,
                                            job_name=job_name, compression=None))
