"""A workdir's checkpoints: the newest one that restores completely, the model restored from it (what
export, predict, fine-tuning and `AlexNet(weights=dir)` use), and fine-tuning's start from another run.

A corrupt checkpoint is skipped, and said so; the trainer also sets its files aside (`*.corrupt`) and
rewrites a garbage `checkpoint` state file from the files on disk. A run never starts from scratch over
checkpoint data: when none restores, that is an error.
"""

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from alexnet_tf import model as model_lib, runs, workdir as workdir_lib
from alexnet_tf.workdir import WorkdirError


def load_model(workdir, checkpoint=None, log=print, *, flag="workdir", inference=True, tower_devices=None,
               name="alexnet"):
    """(model, RunRecord, class names) of a workdir, restored from `checkpoint`, or else from the newest of
    its checkpoints that restores completely. The model is built as the run recorded it; `inference` (the
    default) leaves dropout out, and no tower is pinned unless `tower_devices` says so. Errors name `flag`."""
    record, class_names = runs.read_run(workdir, flag=flag)
    model_config = record.model
    if model_config.num_classes is None or model_config.num_classes != len(class_names):
        model_config = dataclasses.replace(model_config, num_classes=len(class_names))
    model = model_lib.from_config(model_config, tower_devices=tower_devices, inference=inference, name=name)
    saved = tf.train.Checkpoint(model=model)
    if checkpoint:
        if why := _restore(saved, checkpoint, partial=True):
            raise WorkdirError(f"{flag}={checkpoint}: cannot be restored into this model ({why})")
    elif not restore_newest(saved, Path(workdir) / "checkpoints", log, partial=True):
        raise WorkdirError(f"{flag}={workdir}: no checkpoint in {Path(workdir) / 'checkpoints'}")
    broken = [w.path for w in model.weights if not np.isfinite(w.numpy()).all()]
    if broken:  # exported or fine-tuned, it would give NaN for every image
        raise WorkdirError(f"{flag}={checkpoint or workdir}: non-finite weights (NaN or inf) in {', '.join(broken)}; "
                           f"train on from an earlier checkpoint (<workdir>/checkpoints/ckpt-N)")
    return model, record, class_names


def _restore(checkpoint, path, partial=False):
    """None if `checkpoint` (a tf.train.Checkpoint) restored every object from `path`, else why not."""
    if not Path(path + ".index").exists():
        return f"missing {Path(path).name}.index"
    if not list(Path(path).parent.glob(Path(path).name + ".data-*")):
        return f"missing its data file {Path(path).name}.data-*"
    try:
        status = checkpoint.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
        # The optimizer's slots restore when the first step creates them; a run stopped before it is not an
        # error, and TensorFlow would warn at exit of "unrestored values".
        status.expect_partial()
    except Exception as e:  # noqa: BLE001  TF's reader raises OpErrors, IndexError, ValueError, ...: all unreadable
        text = getattr(e, "message", None) or str(e)
        return f"unreadable: {text.splitlines()[0][:160]}" if text else f"unreadable: {type(e).__name__}"
    return None


def restore_newest(checkpoint, ckpt_dir, log=print, *, partial=False, set_aside=False):
    """Restores `checkpoint` from the newest checkpoint in `ckpt_dir` that restores completely and
    returns its path; None when the folder holds no checkpoint files at all. Each one skipped is one
    line (which, and why). With `set_aside` (the trainer) its files are renamed `*.corrupt` so nothing
    picks it again, and a missing or garbage `checkpoint` state file is rewritten from the files. Raises
    WorkdirError when checkpoint files exist but none restores."""
    candidates, skipped = workdir_lib.checkpoints_on_disk(ckpt_dir), []
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
    except Exception:  # noqa: BLE001  a garbage state file: text-format protobuf errors
        return False
    return bool(state) and Path(state.model_checkpoint_path).name == Path(path).name


def _rewrite_state_file(ckpt_dir, latest, all_paths):
    """The `checkpoint` state file from the files on disk (relative names, as CheckpointManager writes)."""
    names = [Path(p).name for p in reversed(all_paths)]
    tf.compat.v1.train.update_checkpoint_state(str(ckpt_dir), Path(latest).name,
                                               all_model_checkpoint_paths=names)


def initialize_from(model, init_from, log=print):
    """Loads every weight layer of `model` from the workdir or checkpoint `init_from` (fine-tuning).
    fc8 is left at the paper's initialization when the class counts differ; any other layer must match."""
    source_dir, checkpoint = workdir_lib.resolve(init_from)
    source, _, source_names = load_model(source_dir, checkpoint, log, flag="init_from")
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
