"""alexnet-data-service: run a tf.data service dispatcher or worker, so that the training input's host side
(reading, decoding, batching uint8 squares) runs on other machines than the trainer; the trainer's step
augments them.

    alexnet-data-service --dispatcher --port=5050 --work_dir=/shared/dispatcher
    alexnet-data-service --worker --dispatcher_address=HOST:5050 --worker_address=THIS_HOST:5051 --port=5051
    alexnet-train --data_service=grpc://HOST:5050 --dataset=prepared:/shared/imagenet-jpeg256 ...

The workers read the dataset's files at the paths the trainer gives, so put them on storage every worker
sees. The service has no authentication and no encryption: run it on a private network only.
It serves until SIGTERM or Ctrl-C.
"""

import faulthandler
import os
import sys
import threading

from absl import flags

from alexnet_tf import shutdown
from tools import cli

FLAGS = cli.flag_values()
STOP_WITHIN = 5  # seconds a server gets to stop after SIGTERM or Ctrl-C
flags.DEFINE_boolean("dispatcher", False, "Run the dispatcher (one per cluster).", flag_values=FLAGS)
flags.DEFINE_boolean("worker", False, "Run a worker (as many as it takes to feed the trainers).", flag_values=FLAGS)
flags.DEFINE_integer("port", 0, "Port to listen on (0: any free port; the address is printed).", lower_bound=0,
                     upper_bound=65535, flag_values=FLAGS)
flags.DEFINE_string("work_dir", None, "Dispatcher: a folder where it journals its state, so that restarted with "
                    "the same one it takes up its jobs again (trainers keep going).", flag_values=FLAGS)
flags.DEFINE_string("dispatcher_address", None, "Worker: the dispatcher's HOST:PORT.", flag_values=FLAGS)
flags.DEFINE_string("worker_address", None, "Worker: the HOST:PORT trainers reach it at (default localhost:<port>, "
                    "right only when trainer and worker share a machine).", flag_values=FLAGS)
flags.DEFINE_float("dispatcher_timeout", 60, "Worker: seconds to wait for the dispatcher at start-up.",
                   lower_bound=0, flag_values=FLAGS)


def main(argv):
    return cli.main("alexnet-data-service", FLAGS, argv, _data_service, __doc__)


def _data_service(args):
    name = "alexnet-data-service"
    if args:
        cli.error(name, f"unexpected arguments: {' '.join(args)}")
        return 2
    if FLAGS.dispatcher == FLAGS.worker:
        cli.error(name, "give one of --dispatcher or --worker")
        return 2
    if FLAGS.worker and not FLAGS.dispatcher_address:
        cli.error(name, "--worker needs --dispatcher_address=HOST:PORT")
        return 2
    try:
        if FLAGS.work_dir:
            cli.check_folder("work_dir", FLAGS.work_dir)
    except ValueError as e:
        cli.error(name, e)
        return 2
    stop = threading.Event()
    with shutdown.on_signal(stop.set):
        return _serve(name, stop)


def _serve(name, stop):
    """Starts the server the flags ask for and serves until `stop` is set."""
    cli.start_tensorflow(FLAGS)
    from alexnet_tf import service

    address = FLAGS.dispatcher_address.split("://", 1)[-1] if FLAGS.worker else None
    try:
        service.check_port_free(FLAGS.port, "--port")
        if FLAGS.dispatcher:
            server = service.start_dispatcher(FLAGS.port, FLAGS.work_dir)
            port = server.target.rsplit(":", 1)[1]
            print(f"dispatcher listening on {server.target} (all interfaces, port {port}); "
                  f"train with --data_service=grpc://<this host>:{port}", flush=True)
        else:
            service.wait_for(f"grpc://{address}", FLAGS.dispatcher_timeout, what="dispatcher_address")
            server = service.start_worker(address, FLAGS.port, FLAGS.worker_address)
            port = FLAGS.port or server._address.rsplit(":", 1)[1]  # the port it bound (no public accessor)
            print(f"worker listening on port {port} (all interfaces), serving the "
                  f"dispatcher at {address}", flush=True)
        while not stop.wait(1.0):
            pass
        _stop(server)
    except service.ServiceError as e:
        return cli.fail(name, e)
    return 0


def _stop(server):
    """Stops `server` within STOP_WITHIN s. A worker's stop() was measured to hang (after a job; while its input
    skips files it cannot read) holding Python's interpreter lock, so that no other thread of this process can run
    meanwhile, and SIGTERM was ignored for good (issue 32). faulthandler's timer is a C thread that needs no lock:
    it ends the process (exit status 1) if stop() has not returned by then."""
    print(f"stopping (at most {STOP_WITHIN} s)", flush=True)
    with open(os.devnull, "w") as nowhere:
        faulthandler.dump_traceback_later(STOP_WITHIN, exit=True, file=nowhere)
        try:
            server.stop()
        finally:
            faulthandler.cancel_dump_traceback_later()
    print("stopped", flush=True)


def run():
    """The console script. It ends with os._exit: the server's own threads may still be busy (above), and
    nothing of a server's is left to flush."""
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    run()
