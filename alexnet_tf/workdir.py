"""A training workdir: its layout, the lock one trainer holds on it, its checkpoints on disk, and what a full
disk looks like. (The rules for resuming in one are `alexnet_tf.runs`': they compare run records.)
No TensorFlow here: the checkpoints' contents are `alexnet_tf.checkpoints`' business.

Layout (written by `alexnet-train` and `alexnet-import`):
    config.json   the run's record (`runs.RunRecord`: every setting, the data's sizes and statistics)
    classes.json  class names in label order
    checkpoints/  tf.train.CheckpointManager's ckpt-N files
    .lock         held by the trainer that runs in it
"""

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path


class WorkdirError(ValueError):
    """A workdir, or a file in it, that cannot be used; the message names it (as `flag=path`) and says why."""


def alive(pid):
    """Whether a process `pid` runs (an export's or a preparation's writer, named in its temporary file)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def no_space(error):
    """Whether `error` (an OSError or a TensorFlow error) means the disk is full."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def checkpoints_on_disk(ckpt_dir):
    """Checkpoint prefixes (<dir>/ckpt-N) that have an index or data file, newest (highest N) first,
    whatever the `checkpoint` state file says."""
    numbers = set()
    for f in Path(ckpt_dir).glob("ckpt-*"):
        if m := re.fullmatch(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)", f.name):
            numbers.add(int(m.group(1)))
    return [str(Path(ckpt_dir) / f"ckpt-{n}") for n in sorted(numbers, reverse=True)]


def remove_partial_saves(ckpt_dir, log=print):
    """Removes the `ckpt-N_temp` folders a save killed midway leaves behind (each can hold hundreds of MB)."""
    for folder in Path(ckpt_dir).glob("ckpt-*_temp*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            log(f"removed {folder}, left by an interrupted save")


def resolve(path, flag="init_from"):
    """(workdir, checkpoint or None) for a workdir or a checkpoint path inside one (<workdir>/checkpoints/ckpt-N)."""
    path = Path(path)
    if path.is_dir():
        return path, None
    if Path(str(path) + ".index").exists() and path.parent.name == "checkpoints":
        return path.parent.parent, str(path)
    raise WorkdirError(f"{flag}={path}: neither a workdir nor a checkpoint (<workdir>/checkpoints/ckpt-N)")


# ----------------------------------------------------------------------------
# One trainer per workdir
# ----------------------------------------------------------------------------

class WorkdirLock:
    """An advisory lock (flock) on <workdir>/.lock for a trainer's lifetime. The operating system releases
    it when the process ends, however it ends, so a crash leaves no stale lock; the file names the
    holder's PID for the message another trainer shows."""

    def __init__(self, workdir):
        self.path = Path(workdir) / ".lock"
        self._fd = None
        self._created = []  # the folders the lock created, innermost first

    def __enter__(self):
        import fcntl

        self._created = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirError(f"workdir={self.path.parent}: in use by process {holder} (another alexnet-train); "
                               f"wait for it to finish or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # closing releases the lock
        self._fd = None
        # A run refused before it wrote anything leaves nothing behind: no lock file, nor the folders it made.
        if [p.name for p in self.path.parent.iterdir()] == [".lock"]:
            self.path.unlink()
            for folder in self._created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
