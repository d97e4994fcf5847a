"""python -m alexnet_tf.watchdog WAIT TIMEOUT PID PROGRAM PEER...: ends trainer PID if it is still building its
multi-worker strategy after WAIT seconds, or at once if a SIGTERM is pending in it, with one line on stderr.

While TensorFlow builds the strategy nothing in the trainer's own process can run (`alexnet_tf.shutdown`), so
this runs beside it, without TensorFlow. The trainer writes a line to this process's stdin once the strategy
exists (or closes it by dying); until then this watches.
"""

import os
import select
import signal
import sys
import time

from alexnet_tf import rendezvous


def sigterm_pending(pid):
    """Whether a SIGTERM is pending in process `pid` (which blocks it while it builds the strategy)."""
    with open(f"/proc/{pid}/status") as f:
        masks = [int(line.split()[1], 16) for line in f if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in masks)


def watch(wait, pid, told, poll=0.2):
    """What ended the watch: "connected" (`told(poll)` returned True: the trainer wrote or ended), "sigterm" (one
    is pending in `pid`), or "timeout" (`wait` s passed)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if told(poll):
            return "connected"
        if sigterm_pending(pid):
            return "sigterm"
    return "timeout"


def verdict(outcome, timeout, peers):
    """The one line for `outcome` (None: nothing to say), naming the peers that never answered."""
    if outcome == "sigterm":
        return "stopped by SIGTERM while the cluster was starting; nothing was written"
    if outcome == "timeout":
        silent = [p for p in peers if not rendezvous.answers(p, timeout=1.0)]
        return (rendezvous.NEVER_ANSWERED.format(timeout=timeout, silent=", ".join(silent)) if silent else
                rendezvous.NEVER_JOINED.format(timeout=timeout, peers=", ".join(peers)))
    return None


def main(argv):
    wait, timeout, pid, program, peers = float(argv[1]), float(argv[2]), int(argv[3]), argv[4], argv[5:]
    outcome = watch(wait, pid, lambda poll: bool(select.select([sys.stdin], [], [], poll)[0]))
    line = verdict(outcome, timeout, peers)
    if line is not None:
        error = "" if outcome == "sigterm" else "error: "
        sys.stderr.write(f"{program}: {error}{line}\n")
        sys.stderr.flush()
        os.kill(pid, signal.SIGKILL)  # TensorFlow would take a SIGTERM, and the trainer stay (the module)


if __name__ == "__main__":
    main(sys.argv)
