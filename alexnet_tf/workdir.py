"""A training workdir and what other commands read from it: its recorded configuration, its class
names, and the model restored from its latest (or a given) checkpoint.

Layout (written by `alexnet-train` and `alexnet-import`):
    config.json   every setting of the run, the dataset's sizes and statistics (the mean the model expects)
    classes.json  class names in label order
    checkpoints/  tf.train.CheckpointManager's ckpt-N files
"""

import json
from pathlib import Path

import tensorflow as tf

from alexnet_tf.config import PRESETS
from alexnet_tf.model import build_alexnet


class WorkdirError(ValueError):
    """A workdir or checkpoint that cannot be used; the message names it and says why."""


def read_config(workdir):
    """(config.json as a dict, class names) of an alexnet-train or alexnet-import workdir."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise WorkdirError(f"workdir={workdir}: no config.json; is this an alexnet-train or alexnet-import workdir?")
    config = json.loads(config_path.read_text())
    return config, json.loads((workdir / "classes.json").read_text())


def preset_values(config):
    return config.get("preset_values") or PRESETS[config["preset"]]


def build_recorded(config, num_classes, **overrides):
    """The model a recorded config describes (preset and LRN variant), untrained."""
    preset = preset_values(config)
    kwargs = dict(image_size=preset["image_size"], width=preset["width"], lrn=config.get("lrn", "paper"))
    return build_alexnet(num_classes, **{**kwargs, **overrides})


def checkpoint_of(workdir, checkpoint=None):
    """The checkpoint to restore: `checkpoint` if given, else the workdir's latest."""
    checkpoint = checkpoint or tf.train.latest_checkpoint(str(Path(workdir) / "checkpoints"))
    if not checkpoint:
        raise WorkdirError(f"workdir={workdir}: no checkpoint in {Path(workdir) / 'checkpoints'}")
    return checkpoint


def load_model(workdir, checkpoint=None):
    """(model, run config, class names) of a workdir, restored from its latest checkpoint or
    `checkpoint`. The model is built for inference: no tower pins, no dropout."""
    config, class_names = read_config(workdir)
    checkpoint = checkpoint_of(workdir, checkpoint)
    # Dropout is off at inference; without it the model also has no seed-generator
    # state, a variable the TFLite converter cannot freeze.
    model = build_recorded(config, len(class_names), dropout=0.0)
    try:
        tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    except (tf.errors.NotFoundError, ValueError, AssertionError) as e:
        raise WorkdirError(f"checkpoint={checkpoint}: cannot be restored into this model ({e})") from None
    return model, config, class_names


def resolve(path):
    """(workdir, checkpoint or None) for a workdir or a checkpoint path inside one (<workdir>/checkpoints/ckpt-N)."""
    path = Path(path)
    if path.is_dir():
        return path, None
    if Path(str(path) + ".index").exists() and path.parent.name == "checkpoints":
        return path.parent.parent, str(path)
    raise WorkdirError(f"init_from={path}: neither a workdir nor a checkpoint (<workdir>/checkpoints/ckpt-N)")
