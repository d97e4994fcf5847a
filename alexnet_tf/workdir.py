"""A training workdir and what other commands read from it: its recorded configuration, its class
names, and the model restored from its latest (or a given) checkpoint.

Layout (written by `alexnet-train` and `alexnet-import`):
    config.json   every setting of the run, the dataset's sizes and statistics (the mean the model expects)
    classes.json  class names in label order
    checkpoints/  tf.train.CheckpointManager's ckpt-N files
"""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import tensorflow as tf

from alexnet_tf import config as config_lib
from alexnet_tf.config import PRESETS
from alexnet_tf.model import build_alexnet, weight_layer_names


class WorkdirError(ValueError):
    """A workdir or checkpoint that cannot be used; the message names it and says why."""


def no_space(error):
    """Whether `error` (an OSError or a TensorFlow error) means the disk is full."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def read_config(workdir):
    """(config.json as a dict, class names) of an alexnet-train or alexnet-import workdir."""
    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise WorkdirError(f"workdir={workdir}: no config.json; is this an alexnet-train or alexnet-import workdir?")
    return _read_json(workdir / "config.json", dict), _read_json(workdir / "classes.json", list)


def _read_json(path, kind):
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise WorkdirError(f"workdir={path.parent}: cannot read {path.name} ({e.strerror})") from None
    except ValueError as e:
        raise WorkdirError(f"workdir={path.parent}: {path.name} is not valid JSON ({e}); it may have been "
                           f"truncated") from None
    if not isinstance(value, kind):
        raise WorkdirError(f"workdir={path.parent}: {path.name} holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def preset_values(config):
    return config.get("preset_values") or PRESETS[config["preset"]]


def build_recorded(config, num_classes, **overrides):
    """The model a recorded config describes (preset and variant), untrained."""
    preset = preset_values(config)
    kwargs = dict(image_size=preset["image_size"], width=preset["width"], lrn=config.get("lrn", "paper"),
                  pool=config.get("pool", "overlapping"), towers=config.get("towers", 2),
                  recipe=config.get("recipe", "paper"))
    return build_alexnet(num_classes, **{**kwargs, **overrides})


def load_model(workdir, checkpoint=None, log=print, **build):
    """(model, run config, class names) of a workdir, restored from `checkpoint`, or else from the
    newest of its checkpoints that restores completely (a corrupt one is skipped, and said so).
    The model is built for inference, with no dropout and, unless `build` says otherwise (as
    `build_alexnet` arguments), no tower pins."""
    config, class_names = read_config(workdir)
    # Dropout is off at inference; without it the model also has no seed-generator
    # state, a variable the TFLite converter cannot freeze.
    model = build_recorded(config, len(class_names), **{"dropout": 0.0, **build})
    saved = tf.train.Checkpoint(model=model)
    if checkpoint:
        if why := _restore(saved, checkpoint, partial=True):
            raise WorkdirError(f"checkpoint={checkpoint}: cannot be restored into this model ({why})")
    elif not restore_newest(saved, Path(workdir) / "checkpoints", log, partial=True):
        raise WorkdirError(f"workdir={workdir}: no checkpoint in {Path(workdir) / 'checkpoints'}")
    return model, config, class_names


# ----------------------------------------------------------------------------
# Checkpoints on disk: find them, restore the newest good one, clean up
# ----------------------------------------------------------------------------

def checkpoints_on_disk(ckpt_dir):
    """Checkpoint prefixes (<dir>/ckpt-N) that have an index or data file, newest (highest N) first,
    whatever the `checkpoint` state file says."""
    numbers = set()
    for f in Path(ckpt_dir).glob("ckpt-*"):
        if m := re.fullmatch(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)", f.name):
            numbers.add(int(m.group(1)))
    return [str(Path(ckpt_dir) / f"ckpt-{n}") for n in sorted(numbers, reverse=True)]


def _restore(checkpoint, path, partial=False):
    """None if `checkpoint` (a tf.train.Checkpoint) restored every object from `path`, else why not."""
    if not Path(path + ".index").exists():
        return f"missing {Path(path).name}.index"
    if not list(Path(path).parent.glob(Path(path).name + ".data-*")):
        return f"missing its data file {Path(path).name}.data-*"
    try:
        status = checkpoint.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
    except Exception as e:  # noqa: BLE001  TF's reader raises OpErrors, IndexError, ValueError, ...: all unreadable
        text = getattr(e, "message", None) or str(e)
        return f"unreadable: {text.splitlines()[0][:160]}" if text else f"unreadable: {type(e).__name__}"
    return None


def restore_newest(checkpoint, ckpt_dir, log=print, *, partial=False, set_aside=False):
    """Restores `checkpoint` from the newest checkpoint in `ckpt_dir` that restores completely and
    returns its path; None when the folder holds no checkpoint files at all. Each one skipped is one
    line (which, and why). With `set_aside` (the trainer) its files are renamed `*.corrupt` so nothing
    picks it again, and a missing or garbage `checkpoint` state file is rewritten from the files. Raises WorkdirError when checkpoint files exist but none restores: a run must never start
    again from scratch over checkpoint data."""
    candidates, skipped = checkpoints_on_disk(ckpt_dir), []
    for path in candidates:
        why = _restore(checkpoint, path, partial=partial)
        if why is None:
            if set_aside and (skipped or not _state_file_names(ckpt_dir, path)):
                _rewrite_state_file(ckpt_dir, path, candidates[len(skipped):])
            return path
        log(f"skipped checkpoint {path}: {why}")
        skipped.append(path)
        if set_aside:
            for f in Path(ckpt_dir).glob(Path(path).name + ".*"):
                f.rename(f.with_name(f.name + ".corrupt"))
    if candidates:
        raise WorkdirError(f"no checkpoint in {ckpt_dir} restores ({', '.join(Path(p).name for p in skipped)}: "
                           f"see above); refusing to start over them. Move them away to start afresh.")
    return None


def _state_file_names(ckpt_dir, path):
    """Whether the `checkpoint` state file is readable and names `path` as the latest."""
    try:
        state = tf.train.get_checkpoint_state(str(ckpt_dir))
    except Exception:  # a garbage state file: text-format protobuf errors
        return False
    return bool(state) and Path(state.model_checkpoint_path).name == Path(path).name


def _rewrite_state_file(ckpt_dir, latest, all_paths):
    """The `checkpoint` state file from the files on disk (relative names, as CheckpointManager writes)."""
    names = [Path(p).name for p in reversed(all_paths)]
    tf.compat.v1.train.update_checkpoint_state(str(ckpt_dir), Path(latest).name,
                                               all_model_checkpoint_paths=names)


def remove_partial_saves(ckpt_dir, log=print):
    """Removes the `ckpt-N_temp` folders a save killed midway leaves behind (each can hold hundreds of MB)."""
    for folder in Path(ckpt_dir).glob("ckpt-*_temp*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            log(f"removed {folder}, left by an interrupted save")


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

    def __enter__(self):
        import fcntl

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


def resolve(path):
    """(workdir, checkpoint or None) for a workdir or a checkpoint path inside one (<workdir>/checkpoints/ckpt-N)."""
    path = Path(path)
    if path.is_dir():
        return path, None
    if Path(str(path) + ".index").exists() and path.parent.name == "checkpoints":
        return path.parent.parent, str(path)
    raise WorkdirError(f"init_from={path}: neither a workdir nor a checkpoint (<workdir>/checkpoints/ckpt-N)")


# ----------------------------------------------------------------------------
# Resuming and fine-tuning
# ----------------------------------------------------------------------------

def check_resume(config, ckpt_dir, recorded):
    """Refuses, in one line naming each flag, to resume with settings that change the model, the data
    or the optimizer state."""
    if not recorded or not checkpoints_on_disk(ckpt_dir):
        return
    conflicts = config_lib.resume_conflicts(config, recorded)
    if conflicts:
        changes = "; ".join(f"--{f}={_flag(new)} (recorded: {_flag(old)})" for f, old, new in conflicts)
        raise WorkdirError(f"workdir={config.workdir}: cannot resume with changed settings: {changes}. Rerun with "
                         f"the recorded values, or use a new --workdir; only --steps, --epochs, logging, "
                         f"evaluation and placement may change on resume")


def _flag(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else "none" if value is None else value


def initialize_from(model, init_from, log=print):
    """Loads every weight layer of `model` from the workdir or checkpoint `init_from` (fine-tuning).
    fc8 is left at the paper's initialization when the class counts differ; any other layer must match."""
    source_dir, checkpoint = resolve(init_from)
    source, _, source_names = load_model(source_dir, checkpoint, log)
    loaded = []
    for name in [layer.name for layer in model.layers if layer.weights]:
        values, layer = source.get_layer(name).get_weights(), model.get_layer(name)
        if [v.shape for v in values] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(values)
            loaded.append(name)
        elif name != "fc8":
            raise WorkdirError(f"init_from={init_from}: {name} has shapes {[v.shape for v in values]} there and "
                             f"{[tuple(w.shape) for w in layer.weights]} here; fine-tune with the preset and lrn "
                             f"it was trained with")
    new = "fc8 initialized anew" if "fc8" not in loaded else "fc8 loaded too"
    log(f"initialized from {checkpoint or source_dir}: loaded {', '.join(loaded)}; {new} "
        f"({model.get_layer('fc8').units} classes, the source has {len(source_names)})")
    return loaded
