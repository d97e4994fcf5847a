"""Stopping a run, in-process: each phase of `shutdown.Guard`, the rendezvous, the watchdog (also as the small
TensorFlow-free child it is), and the exit-status table every tool uses. The end-to-end children (a trainer
stopped in each phase) are in test_distributed, test_train_loop, test_reliability and test_hybrid."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from alexnet_tf import rendezvous, shutdown, watchdog
from helpers import free_port, subprocess_env


def _sigterm_blocked_here():
    return signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.fixture(autouse=True)
def _signals_as_they_were():
    """Each test leaves this process's handlers and mask as it found them (a test failing half-way too)."""
    handlers = {sig: signal.getsignal(sig) for sig in shutdown.STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_starting_notes_a_signal_and_stops_at_the_next_check_with_its_status(sig, status):
    def previous(signum, frame):
        raise AssertionError("the guard's handler was not in place")

    signal.signal(sig, previous)
    guard, went_on = shutdown.Guard(), []
    with pytest.raises(shutdown.Stopped) as stopped:
        with guard.starting():
            os.kill(os.getpid(), sig)  # delivered here, at once, to the handler in place
            went_on.append("noted only: TensorFlow's code must not see an exception raised in it")
    assert went_on and stopped.value.status == status and stopped.value.signum == sig
    assert str(stopped.value) == (f"stopped by {signal.Signals(sig).name} while starting, before the first step; "
                                  f"rerun the same command to start (or resume) the run")
    assert signal.getsignal(sig) is previous


def test_interruptible_parts_of_starting_stop_at_once_and_a_signal_is_the_news_over_another_error():
    guard, went_on = shutdown.Guard(), []
    with pytest.raises(shutdown.Stopped, match="^stopped by SIGTERM while starting"):
        with guard.starting():
            with guard.interruptible():
                os.kill(os.getpid(), signal.SIGTERM)
                went_on.append(1)
    assert not went_on
    with pytest.raises(shutdown.Stopped, match="^stopped by SIGINT while starting"):
        with shutdown.Guard().starting():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("what the signal interrupted")


def test_the_loop_notes_signals_and_says_where_it_stopped():
    guard = shutdown.Guard()
    with guard.looping():
        assert not guard.stopping()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.stopping()
        stopped = guard.stopped_at(12, "runs/x/checkpoints/ckpt-12")
    assert stopped.status == 130  # the first that arrived
    assert str(stopped) == ("stopped by SIGINT at step 12: checkpoint written (runs/x/checkpoints/ckpt-12); rerun "
                            "the same command to resume")
    exit_fn = shutdown.preempted_everywhere(lambda: 7)
    with pytest.raises(shutdown.Stopped, match="every worker checkpointed at step 7") as everywhere:
        exit_fn()
    assert everywhere.value.status == 143


def test_a_multi_worker_guard_blocks_sigterm_for_the_threads_it_starts_and_the_wait_takes_a_pending_one():
    assert not _sigterm_blocked_here()
    seen = []
    with shutdown.Guard(multi_worker=True) as guard:
        assert _sigterm_blocked_here()
        thread = threading.Thread(target=lambda: seen.append(_sigterm_blocked_here()))
        thread.start()
        thread.join()
        # Blocked: pending, as one that arrives before the wait. Sent to this thread: TensorFlow's threads in this
        # test process were started before the guard (keras imported it) and would take one sent to the process.
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        with pytest.raises(shutdown.Stopped) as stopped:
            with guard.starting(), guard.waiting_for_peers(["host2:2222"]):
                raise AssertionError("the pending SIGTERM did not end the wait as it began")
    assert seen == [True] and not _sigterm_blocked_here()
    assert str(stopped.value) == ("stopped by SIGTERM while waiting for the other workers of the cluster "
                                  "(host2:2222); nothing was written") and stopped.value.status == 143


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_rendezvous_ends_it_at_once_naming_the_peers_still_silent(sig):
    answering = socket.create_server(("127.0.0.1", 0))
    answers, never = f"127.0.0.1:{answering.getsockname()[1]}", f"127.0.0.1:{free_port()}"
    silent = [answers, never]
    timer = threading.Timer(1.0, os.kill, (os.getpid(), sig))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(shutdown.Stopped) as stopped:
            with shutdown.Guard().waiting_for_peers(silent):
                rendezvous.wait_for_peers(silent, timeout=30, me=f"127.0.0.1:{free_port()}")
    finally:
        timer.cancel()
        answering.close()
    assert time.monotonic() - started < 10
    assert str(stopped.value).startswith(f"stopped by {signal.Signals(sig).name} while waiting for the other "
                                         f"workers of the cluster (127.0.0.1:")
    assert answers not in str(stopped.value) and never in str(stopped.value)  # the one that answered left the list


def test_the_rendezvous_returns_once_every_peer_answers_and_names_those_that_never_do():
    with socket.create_server(("127.0.0.1", 0)) as peer:
        silent = [f"127.0.0.1:{peer.getsockname()[1]}"]
        rendezvous.wait_for_peers(silent, timeout=10, me=f"127.0.0.1:{free_port()}")
        assert silent == []
        never = f"127.0.0.1:{free_port()}"
        with pytest.raises(rendezvous.ClusterError) as error:
            rendezvous.wait_for_peers([never], timeout=0.5, me=f"127.0.0.1:{free_port()}")
        assert str(error.value) == rendezvous.NEVER_ANSWERED.format(timeout=0.5, silent=never)
        taken = f"127.0.0.1:{peer.getsockname()[1]}"
        with pytest.raises(rendezvous.ClusterError, match=f"this worker's address {taken} cannot be listened on"):
            rendezvous.wait_for_peers([never], timeout=0.5, me=taken)


def test_peers_are_the_other_tasks_of_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert rendezvous.peers() == ["a:1", "c:3"] and rendezvous.own_address() == "b:2"


def test_the_watchdog_sees_a_pending_sigterm_a_connection_and_a_timeout():
    with socket.create_server(("127.0.0.1", 0)) as peer:
        answering, silent = f"127.0.0.1:{peer.getsockname()[1]}", f"127.0.0.1:{free_port()}"
        assert watchdog.watch(5, os.getpid(), told=lambda poll: True) == "connected"
        assert watchdog.watch(0.3, os.getpid(), told=lambda poll: time.sleep(poll)) == "timeout"
        assert watchdog.verdict("timeout", 3, [answering, silent]) == rendezvous.NEVER_ANSWERED.format(
            timeout=3, silent=silent)
        assert watchdog.verdict("timeout", 3, [answering]) == rendezvous.NEVER_JOINED.format(timeout=3,
                                                                                             peers=answering)
    assert watchdog.verdict("connected", 3, [silent]) is None
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # discarded, not delivered, when unblocked below
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # this thread's: see the guard's test above
    assert watchdog.sigterm_pending(os.getpid())
    assert watchdog.watch(5, os.getpid(), told=lambda poll: time.sleep(poll)) == "sigterm"
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    assert not watchdog.sigterm_pending(os.getpid())


def test_the_watchdog_runs_without_tensorflow_and_ends_a_process_that_outlasts_its_wait():
    """The child the trainer starts: `python -m alexnet_tf.watchdog`, here against a process that never says it
    connected (a sleep), and with its stdin closed at once (the trainer connected)."""
    env = subprocess_env()
    stuck = subprocess.Popen(["sleep", "60"])
    peer = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    watching = subprocess.Popen([sys.executable, "-m", "alexnet_tf.watchdog", "0.5", "3", str(stuck.pid),
                                 "alexnet-train", peer], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)  # its stdin open: the trainer is still building
    try:
        assert stuck.wait(timeout=30) == -signal.SIGKILL and time.monotonic() - started < 30
    finally:
        stuck.kill()
        _, err = watching.communicate(timeout=30)
    assert err.strip() == "alexnet-train: error: " + rendezvous.NEVER_ANSWERED.format(timeout=3, silent=peer)
    calm = subprocess.Popen(["sleep", "60"])
    try:
        connected = subprocess.run([sys.executable, "-m", "alexnet_tf.watchdog", "30", "30", str(calm.pid), "x", peer],
                                   input="connected\n", capture_output=True, text=True, env=env, timeout=60)
        assert connected.returncode == 0 and connected.stderr == "" and calm.poll() is None
    finally:
        calm.kill()
    free = subprocess.run([sys.executable, "-c", "import sys, alexnet_tf.watchdog, alexnet_tf.shutdown; "
                           "print('tensorflow' in sys.modules)"], capture_output=True, text=True, env=env)
    assert free.stdout.strip() == "False", free.stderr


def test_one_table_gives_every_tool_its_exit_status():
    from alexnet_tf import export, metrics, predict, pretrained, service, sources, workdir
    from tools import cli

    import tensorflow as tf

    assert cli.status_of(shutdown.Stopped("x", signal.SIGTERM)) == 143
    assert cli.status_of(shutdown.Stopped("x", signal.SIGINT)) == 130
    assert cli.status_of(KeyboardInterrupt()) == 130
    for error, status in [(rendezvous.ClusterError("x"), 1), (sources.DatasetError("x"), 1),
                          (service.ServiceError("x"), 1), (metrics.NonFiniteLoss("x"), 1),
                          (export.ExportError("x"), 1), (pretrained.WeightsError("x"), 1),
                          (predict.PredictError("x"), 2), (workdir.WorkdirError("x"), 2), (ValueError("x"), 2),
                          (PermissionError("x"), 1), (tf.errors.DataLossError(None, None, "x"), 1)]:
        assert cli.status_of(error) == status, error
    assert cli.status_of(RuntimeError("a bug")) is None  # its traceback, not a line
