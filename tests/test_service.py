"""The tf.data service (alexnet-data-service, --data_service): servers the tests start on loopback ports they
pick, and stop."""

import json
import re
import signal

import pytest
import tensorflow as tf

from alexnet_tf import pipelines, runs, service, training
from alexnet_tf.sources import Source
from helpers import cli, free_port, subprocess_env, tiny_config


def _server(*args):
    """An alexnet-data-service child process, once it says it is listening."""
    proc = cli("data_service", *args, wait=False)
    line = proc.stdout.readline()
    assert "listening on" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def _solid_source(count):
    """A Source whose image i is a solid square of value i: after any crop or flip (and no colour noise, a zero
    mean) every pixel of a training view still says which image it was."""
    ids = tf.data.Dataset.range(count)
    images = ids.map(lambda i: (tf.fill([8, 8, 3], tf.cast(i, tf.uint8)), i % 2))
    return Source(name="solid", class_names=["even", "odd"], train=images, validation=images.take(2),
                  num_train=count, num_validation=2,
                  decode=lambda image, size=76: tf.image.resize(tf.cast(image, tf.float32), (size, size)))


def test_each_trainer_gets_its_own_images_each_once_an_epoch(tmp_path):
    dispatcher = service.start_dispatcher(free_port())
    worker = service.start_worker(dispatcher.target.split("://")[1])
    try:
        config = runs.make_config(dataset="solid", workdir=str(tmp_path / "run"), preset="tiny", batch_size=8,
                                  pca_lighting=False, data_service=dispatcher.target, strategy="multi_worker")
        source = _solid_source(240)
        # What the two workers of a multi-worker run build from the same config.
        streams = [iter(pipelines.for_training(config, source, start=0, task=t)[0]) for t in (0, 1)]
        seen, draws = {0: [], 1: []}, {0: [], 1: []}
        for _ in range(30):  # one epoch each
            for task, stream in enumerate(streams):
                squares, labels, (offsets, flips, alphas) = next(stream)
                # What crosses the service's wire: uint8 squares (no float, no colour shift) and the draws.
                assert squares.dtype == tf.uint8 and squares.shape == (8, 76, 76, 3)
                assert (offsets.dtype, flips.dtype, alphas.dtype) == (tf.int32, tf.bool, tf.float32)
                seen[task] += [int(v) for v in squares[:, 0, 0, 0].numpy()]
                draws[task] += [tuple(o) for o in offsets.numpy()]
        for task in (0, 1):
            assert sorted(seen[task]) == list(range(240))  # every image once in the epoch
        assert seen[0] != seen[1]  # in a different order
        assert draws[0] != draws[1]  # and with other crops
        assert sum(a == b for a, b in zip(seen[0], seen[1])) < 24  # not the same batches
    finally:
        worker.stop()
        dispatcher.stop()


def test_an_unreachable_dispatcher_is_one_line_after_a_bounded_wait(tmp_path, shapes_folder, data_dir):
    address = f"grpc://localhost:{free_port()}"
    proc = cli("train", f"--dataset=folder:{shapes_folder}", f"--data_dir={data_dir}", f"--workdir={tmp_path}/run",
               "--preset=tiny", "--steps=2", "--batch_size=8", f"--data_service={address}",
               "--data_service_timeout=1", "--export_dir=")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"alexnet-train: error: --data_service={address}: no tf.data service dispatcher "
                                   f"answered within 1 s; start one there (alexnet-data-service --dispatcher "
                                   f"--port=...) or fix the address")
    worker = cli("data_service", "--worker", f"--dispatcher_address=localhost:{free_port()}",
                 "--dispatcher_timeout=1")
    assert worker.returncode == 1 and "--dispatcher_address=grpc://localhost:" in worker.stderr


@pytest.mark.heavy
def test_a_port_already_in_use_or_a_worker_for_a_dispatcher_is_refused_in_one_line():
    """Issue 32: gRPC shares a port among servers that bind it with SO_REUSEPORT, so a second dispatcher on a
    taken port said "listening" and split the connections with the first."""
    port = free_port()
    dispatcher, worker = service.start_dispatcher(port), None
    try:
        for role in (["--dispatcher"], ["--worker", f"--dispatcher_address=localhost:{port}"]):
            proc = cli("data_service", *role, f"--port={port}")
            assert proc.returncode == 1, proc.stdout
            assert proc.stderr.strip() == (f"alexnet-data-service: error: --port={port}: already in use on this "
                                           f"machine (another server listens there); stop it or choose another port")
        # A worker pointed at another worker (it answers gRPC, but is no dispatcher): one line, not 24.
        worker = service.start_worker(f"localhost:{port}")
        other = f"localhost:{worker._address.rsplit(':', 1)[1]}"
        proc = cli("data_service", "--worker", f"--dispatcher_address={other}", "--dispatcher_timeout=5")
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"alexnet-data-service: error: --dispatcher_address={other}: answers, but not "
                                      f"as a tf.data service dispatcher"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        if worker is not None:
            worker.stop()
        dispatcher.stop()
    bad = cli("data_service", "--worker", "--dispatcher_address=localhost:1", "--dispatcher_timeout=-1")
    assert bad.returncode != 0 and "dispatcher_timeout" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_training_outlives_a_dead_data_worker_and_a_restarted_dispatcher(tmp_path, shapes_folder, data_dir):
    port, journal = free_port(), tmp_path / "dispatcher"
    servers = {"dispatcher": _server("--dispatcher", f"--port={port}", f"--work_dir={journal}")}
    for name in ("worker0", "worker1"):
        servers[name] = _server("--worker", f"--dispatcher_address=localhost:{port}")
    events = []

    def log(line):
        """At the first evaluation a data worker dies; at the second the dispatcher is killed and restarted."""
        if "validation top-1 error" not in line:
            return
        events.append(line)
        if len(events) == 1:
            servers["worker1"].send_signal(signal.SIGKILL)
            servers["worker1"].communicate()
        elif len(events) == 2:
            _stop(servers["dispatcher"], signal.SIGKILL)
            servers["dispatcher"] = _server("--dispatcher", f"--port={port}", f"--work_dir={journal}")

    try:
        config = tiny_config(tmp_path / "run", shapes_folder, data_dir, steps=24, eval_every=8, log_every=4,
                             data_service=f"grpc://localhost:{port}")
        result, _ = training.train(config, log=log)
        assert result["step"] == 24 and len(events) == 3
    finally:
        codes = {name: _stop(proc)[0] for name, proc in servers.items() if proc.poll() is None}
    assert codes == {"dispatcher": 0, "worker0": 0}  # SIGTERM stops a server cleanly


def test_a_service_that_sends_nothing_is_said_then_ends_the_run_and_sigterm_is_honoured_meanwhile(
        tmp_path, shapes_folder, data_dir):
    """Issue 32: with its workers dead (here: none ever started) a trainer waited in silence for ever, deaf to
    SIGTERM and Ctrl-C."""
    port = free_port()
    dispatcher = _server("--dispatcher", f"--port={port}")
    args = [f"--dataset=folder:{shapes_folder}", f"--data_dir={data_dir}", "--preset=tiny", "--batch_size=8",
            "--steps=4", "--export_dir=", f"--data_service=grpc://localhost:{port}"]
    try:
        timed_out = cli("train", *args, f"--workdir={tmp_path / 'a'}", "--data_service_timeout=6", wait=False)
        waiting = cli("train", *args, f"--workdir={tmp_path / 'b'}", "--data_service_timeout=12", wait=False)
        out = ""
        while "no batch from the tf.data service" not in out:  # said after half the timeout of nothing
            line = waiting.stdout.readline()
            assert line, waiting.communicate()[1][-2000:]
            out += line
        waiting.send_signal(signal.SIGTERM)
        out_b, err_b = waiting.communicate(timeout=60)
        out_a, err_a = timed_out.communicate(timeout=120)
    finally:
        _stop(dispatcher)
    assert timed_out.returncode == 1, err_a
    assert "no batch from the tf.data service" in out_a  # said before giving up
    lines = [line for line in err_a.splitlines() if line.strip() and not re.match(r"^[IWEF]\d{4} |WARNING: All", line)]
    assert len(lines) == 1 and "Traceback" not in err_a, err_a
    assert lines[0] == (f"alexnet-train: error: --data_service=grpc://localhost:{port}: no batch from its workers for "
                        f"6 s (a worker died, none is registered, or they cannot read folder:{shapes_folder}, which "
                        f"every worker must see at that path); the last checkpoint is "
                        f"{tmp_path / 'a' / 'checkpoints' / 'ckpt-0'}")
    assert waiting.returncode == 143, err_b
    assert (f"alexnet-train: stopped by SIGTERM at step 0: checkpoint written "
            f"({tmp_path / 'b' / 'checkpoints' / 'ckpt-0'}); rerun the same command to resume") in err_b


@pytest.mark.heavy
def test_a_hybrid_multi_worker_run_reads_through_the_service(tmp_path, shapes_folder, data_dir):
    """Two loopback workers, each with the paper's towers on two CPU devices (the hybrid scheme, which is
    multi_worker plus placement), reading their batches from a service with two workers."""
    dispatcher = service.start_dispatcher(free_port())
    workers = [service.start_worker(dispatcher.target.split("://")[1]) for _ in range(2)]
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    trainers = []
    try:
        for index in range(2):
            env = subprocess_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            trainers.append(cli("train", f"--dataset=folder:{shapes_folder}", f"--data_dir={data_dir}",
                                f"--workdir={tmp_path}/run", "--preset=tiny", "--steps=6", "--batch_size=8",
                                "--eval_every=6", "--strategy=multi_worker", "--cpu_devices=2",
                                "--tower_devices=/CPU:0,/CPU:1", f"--data_service={dispatcher.target}",
                                "--export_dir=", wait=False, env=env))
        outs = []
        for trainer in trainers:
            out, err = trainer.communicate(timeout=600)
            assert trainer.returncode == 0, err[-3000:]
            outs.append(out)
        recorded = json.loads((tmp_path / "run" / "config.json").read_text())
        assert recorded["replicas"] == 2 and recorded["tower_devices"] == ["/CPU:0", "/CPU:1"]
        assert "training input from the tf.data service at grpc://" in outs[0]  # the chief's output
    finally:
        for trainer in trainers:
            if trainer.poll() is None:
                trainer.kill()
        for worker in workers:
            worker.stop()
        dispatcher.stop()


def test_a_data_worker_that_cannot_read_a_file_ends_the_run_in_one_line_naming_both(tmp_path, shapes_folder,
                                                                                     data_dir):
    """Issue 32: a worker that cannot read the trainer's files (another machine's paths, a file gone) left the
    trainer waiting in silence. Here the shard goes once the trainer has checked it is there: the worker's read
    fails, and the trainer stops with the worker, the file and the checkpoint of the training so far."""
    from alexnet_tf import data, prepared, statistics

    source = data.load_dataset(f"folder:{shapes_folder}", str(data_dir), val_fraction=0.25, ordered=True)
    prepared.prepare(source, tmp_path / "p", "raw256", statistics=statistics.dataset_statistics(source, str(data_dir)),
                     shard_size=16, log=lambda *_: None, progress=False)
    gone = sorted((tmp_path / "p").glob("prepared-train.tfrecord-*"))[0]
    port = free_port()
    servers = [_server("--dispatcher", f"--port={port}")]
    servers.append(_server("--worker", f"--dispatcher_address=localhost:{port}"))

    def log(line):
        if line.startswith("memory:"):  # loaded and checked; the workers have not read anything yet
            gone.unlink()

    try:
        config = tiny_config(tmp_path / "run", shapes_folder, data_dir, dataset=f"prepared:{tmp_path / 'p'}",
                             steps=8, data_service=f"grpc://localhost:{port}", data_service_timeout=60)
        with pytest.raises(service.ServiceError) as error:
            training.train(config, log=log)
    finally:
        codes = [_stop(proc)[0] for proc in servers]
    assert re.fullmatch(rf"data_service=grpc://localhost:{port}: the data worker at localhost:\d+ failed: {gone}; No "
                        rf"such file or directory; every data worker must read the dataset at the path the trainer "
                        rf"gives it; the last checkpoint is {tmp_path / 'run' / 'checkpoints' / 'ckpt-0'}",
                        str(error.value)), str(error.value)
    assert codes == [0, 0]


def test_a_data_worker_skipping_files_it_cannot_read_still_stops_on_sigterm(tmp_path, shapes_folder):
    """Issue 32: a worker whose input had gone skipped its files for ever, and ignored SIGTERM for good: its
    server's stop() hung holding Python's interpreter lock, so not even the thread meant to bound it could run.
    It now stops (or is ended) within STOP_WITHIN seconds."""
    import shutil
    import subprocess

    from alexnet_tf import data, statistics

    folder = tmp_path / "folder"
    shutil.copytree(shapes_folder, folder)
    statistics.dataset_statistics(data.load_dataset(f"folder:{folder}", str(tmp_path / "data"), val_fraction=0.25),
                                  str(tmp_path / "data"), log=lambda *_: None)  # stored: the run reads no file for them
    port = free_port()
    dispatcher = _server("--dispatcher", f"--port={port}")
    worker = _server("--worker", f"--dispatcher_address=localhost:{port}")

    def log(line):
        if line.startswith("memory:"):  # scanned; the worker has read nothing yet
            for f in folder.rglob("*.jpg"):
                f.unlink()

    try:
        with pytest.raises(service.ServiceError, match="no batch from its workers for 5 s"):
            training.train(tiny_config(tmp_path / "run", folder, tmp_path / "data", steps=4,
                                       data_service=f"grpc://localhost:{port}", data_service_timeout=5), log=log)
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise AssertionError("the data worker ignored SIGTERM for 30 s") from None
        assert "stopping (at most 5 s)" in out
    finally:
        _stop(dispatcher)
        if worker.poll() is None:
            worker.kill()
