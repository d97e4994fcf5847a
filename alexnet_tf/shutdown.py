"""Stopping a run: what SIGTERM (a scheduler's preemption, `kill`) and SIGINT (Ctrl-C) do in each phase of a
training run, the one exception a stopped run ends in, and its exit status. Every signal handler, signal mask
and signal a process sends itself in this package is set here. No TensorFlow: the watchdog imports it too.

A run goes through these phases (`Guard` holds which one it is in):

| phase                                  | SIGTERM                               | SIGINT (Ctrl-C)          | exit |
|----------------------------------------|---------------------------------------|--------------------------|------|
| waiting for peers (multi-worker)       | Stopped at once                       | Stopped at once          | 143 / 130 |
| building the multi-worker strategy     | held pending; the watchdog says so    | the default action: the  | 137 / 130 |
|   (inside TensorFlow, holding the GIL) |   and ends the process with SIGKILL   |   process ends at once   |      |
| starting (data, model, restore)        | noted, Stopped at the next check      | the same                 | 143 / 130 |
| the loop                               | noted; the step finishes, a           | the same                 | 143 / 130 |
|                                        |   checkpoint is written, Stopped      |                          |      |
| the loop of a multi-worker run         | TensorFlow's PreemptionCheckpoint-    | the same as SIGTERM      | 143  |
|                                        |   Handler: every worker checkpoints   |                          |      |
|                                        |   at the same step, then Stopped      |                          |      |

Why each (measured, BUILD_NOTES "Failure modes"): building the strategy blocks inside TensorFlow holding
Python's interpreter lock, so no Python handler can run, and a SIGTERM delivered then goes to TensorFlow's
preemption notifier, which keeps the process waiting; the only way to end it with its line said is from
another process, and SIGKILL is the only signal TensorFlow cannot take (hence 137, not 143). A Python
exception raised at once inside TensorFlow's code while starting was measured to become pybind's "MISMATCH of
original and normalized active exception types", "cannot join current thread" or a segmentation fault, hence
"noted, raised at the next check" outside the pure-Python phases (`Guard.interruptible`). SIGTERM is blocked
in a multi-worker run's threads from before TensorFlow starts them (`sigterm_blocked`), so that none of
them hands it to TensorFlow's notifier while the cluster forms; the main thread takes it.
"""

import contextlib
import os
import signal
import subprocess
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A run stopped by a signal: `status` is the exit status (128 + the signal, as a shell reports it), the
    message the one line saying when and what was kept. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way takes it for an error of its own."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum
        self.status = 128 + signum


def name(signum):
    return signal.Signals(signum).name


@contextlib.contextmanager
def sigterm_blocked(block=True):
    """SIGTERM blocked in this thread, and so in every thread it starts meanwhile (TensorFlow's among them),
    until the block ends; the previous mask back then. A pending SIGTERM is delivered when it is unblocked."""
    if not block:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def handled(handler, signals=STOP_SIGNALS):
    """`handler(signum, frame)` for each of `signals` until the block ends; the previous handlers back then."""
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Guard:
    """One run's stop signals: which phase it is in (the context managers below, entered in the order of the
    module's table) and the signals that arrived (`arrived`, in order). `with Guard(multi_worker):` around the
    whole run; for a multi-worker run SIGTERM is blocked in the threads started within (see the module)."""

    def __init__(self, multi_worker=False):
        self.multi_worker = multi_worker
        self.arrived = []
        self._at_once = None  # while set: (signum) -> the exception to raise at once
        self._mask = None

    def __enter__(self):
        self._mask = sigterm_blocked(self.multi_worker)
        self._mask.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mask.__exit__(*exc)

    def _note(self, signum, frame):
        self.arrived.append(signum)
        if self._at_once is not None:
            raise self._at_once(signum)

    @contextlib.contextmanager
    def _raising_at_once(self, make):
        before, self._at_once = self._at_once, make
        try:
            yield
        finally:
            self._at_once = before

    # Waiting for peers and building the strategy: a multi-worker run's first phases.

    @contextlib.contextmanager
    def waiting_for_peers(self, silent):
        """SIGTERM and Ctrl-C end the wait at once, naming the workers in `silent` (a list the wait keeps up to
        date). SIGTERM is taken by this thread only, and only now: one that arrived since the run began (blocked,
        so pending) is delivered here."""
        def stopped(signum):
            return Stopped(f"stopped by {name(signum)} while waiting for the other workers of the cluster "
                           f"({', '.join(silent)}); nothing was written", signum)

        with handled(self._note), self._raising_at_once(stopped):
            previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            try:
                self.check()  # one that arrived before this phase
                yield
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    @contextlib.contextmanager
    def building_strategy(self, program, wait, timeout, peers):
        """While TensorFlow builds the strategy (see the module): Ctrl-C ends the process at once; SIGTERM stays
        pending, and the watchdog (`python -m alexnet_tf.watchdog`) ends the process with one line if one is
        pending, or if the build outlasts `wait` s. Afterwards this thread takes SIGTERM (the loop's handlers
        must get it; TensorFlow's threads, started under the mask, do not)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        with handled(signal.SIG_DFL):
            watchdog = subprocess.Popen(
                [sys.executable, "-m", "alexnet_tf.watchdog", f"{wait:g}", f"{timeout:g}", str(os.getpid()), program,
                 *peers], stdin=subprocess.PIPE)
            try:
                yield
            finally:
                watchdog.stdin.write(b"connected\n")
                watchdog.stdin.close()
                watchdog.wait()  # before SIGTERM is unblocked: a pending one is then this process's to handle
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    # Starting: everything before the first step.

    @contextlib.contextmanager
    def starting(self):
        """SIGTERM and Ctrl-C are noted and raised as Stopped at the next `check()`, at the end of the block, or
        at once inside `interruptible()`. A signal that arrived is the news, whatever else the block raised."""
        with handled(self._note):
            try:
                yield self
            except Stopped:
                raise  # said already, by the phase it arrived in
            except BaseException:
                self.check()
                raise
            self.check()

    def check(self):
        if self.arrived:
            raise _stopped_while_starting(self.arrived[0])

    @contextlib.contextmanager
    def interruptible(self):
        """A pure-Python part of starting (scanning files, the statistics): a signal raises Stopped at once."""
        self.check()
        with self._raising_at_once(_stopped_while_starting):
            yield

    # The loop.

    @contextlib.contextmanager
    def looping(self):
        """SIGTERM and Ctrl-C are noted; the loop asks `stopping()` after each step, checkpoints and raises
        `stopped_at(...)`."""
        self.arrived.clear()
        with handled(self._note):
            yield self

    def stopping(self):
        return bool(self.arrived)

    def stopped_at(self, step, checkpoint):
        signum = self.arrived[0]
        return Stopped(f"stopped by {name(signum)} at step {step}: checkpoint written ({checkpoint}); rerun the "
                       f"same command to resume", signum)

    def hand_to_tensorflow(self):
        """After TensorFlow's PreemptionCheckpointHandler took SIGTERM (a multi-worker loop): Ctrl-C goes to it
        too, and a signal that arrived while it was being made is handed to it (measured: otherwise a lone
        checkpoint, then the peer lost), since stopping is now the cluster's to coordinate."""
        signal.signal(signal.SIGINT, signal.getsignal(signal.SIGTERM))
        if self.arrived:
            self.arrived.clear()
            os.kill(os.getpid(), signal.SIGTERM)


def _stopped_while_starting(signum):
    return Stopped(f"stopped by {name(signum)} while starting, before the first step; rerun the same command to "
                   f"start (or resume) the run", signum)


def preempted_everywhere(step):
    """TensorFlow's exit_fn after the coordinated checkpoint of a multi-worker run: raises Stopped (143) naming
    the step, `step()` (every worker stopped at the same one)."""
    def exit_fn():
        raise Stopped(f"stopped by SIGTERM or Ctrl-C on a worker of the cluster: every worker checkpointed at step "
                      f"{step()}; rerun the same command on every worker to resume", signal.SIGTERM)

    return exit_fn


def on_signal(callback, signals=STOP_SIGNALS):
    """`callback()` on SIGTERM and Ctrl-C until the block ends (a server that stops when asked)."""
    return handled(lambda signum, frame: callback(), signals)
