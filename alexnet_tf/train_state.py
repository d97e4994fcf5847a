"""A run's state: what a checkpoint holds (`TrainState`), how it is built for a strategy, and how a run
resumes it (or initializes it, for fine-tuning)."""

import contextlib
import dataclasses
from pathlib import Path

import keras
import tensorflow as tf

from alexnet_tf import checkpoints, cluster, model as model_lib, optim, workdir as workdir_lib


@dataclasses.dataclass
class TrainState:
    """What a checkpoint holds: the model, the optimizer (momentum slots, iteration, learning rate), the
    step and the schedule's state."""
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    schedule: object
    checkpoint: tf.train.Checkpoint


def build_state(config, model_config, strategy, run_epochs=None):
    """The TrainState of a run of `config` whose network is `model_config` (its classes set), in
    `strategy`'s scope. `run_epochs`: the run's length, for a schedule that stretches to it.

    The hybrid scheme (`config.hybrid`) creates it outside the scope: a strategy's variables live on its
    replica's one device (measured, BUILD_NOTES.md "Hybrid parallelism"), and tower b's weights must live on
    tower b's device. Each worker then holds its own copy, kept equal by all-reducing the gradients
    (`steps.make_train_step(mirrored=False)`) and by `cluster.sync_from_chief`."""
    with contextlib.nullcontext() if config.hybrid else strategy.scope():
        model = model_lib.from_config(model_config, tower_devices=config.tower_devices, seed=config.seed)
        optim.freeze_except(model, config.trained_layers)
        schedule = optim.make_schedule(config, run_epochs)
        conv1_scale = getattr(optim.checkpointed(schedule), "conv1_scale", None)
        optimizer = optim.make_optimizer(
            model.trainable_variables, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            precision=config.mixed_precision, layer_scales={"conv1": conv1_scale} if conv1_scale is not None else None,
            # The 2012 code's biases learn at twice the weights' starting rate, never lowered (epsB).
            bias_learning_rate=2 * config.lr if model_config.recipe == "original_code" else None)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                         schedule=optim.checkpointed(schedule))
    return TrainState(model, optimizer, step, schedule, checkpoint)


def resume_or_initialize(config, state, strategy, chief, scratch, log):
    """Resumes from the newest checkpoint that restores completely (corrupt ones set aside, each said in one
    line), or, in a fresh workdir, initializes from `init_from`. Resuming wins: a fine-tuning run never
    re-imports over its progress. Every worker reads the chief's checkpoints (so a multi-worker run needs a
    workdir they all see); the hybrid scheme's copies are then made equal to the chief's."""
    ckpt_dir = Path(config.workdir) / "checkpoints"
    if chief:
        workdir_lib.remove_partial_saves(ckpt_dir, log)
    elif scratch.exists():
        tf.io.gfile.rmtree(str(scratch))  # a scratch save left by a worker that was killed
    if resumed := checkpoints.restore_newest(state.checkpoint, ckpt_dir, log, set_aside=chief):
        log(f"resumed from {resumed} at step {int(state.step.numpy())}")
    elif config.init_from:
        checkpoints.initialize_from(state.model, config.init_from, log)
    if config.hybrid:
        cluster.sync_from_chief(strategy, state.model.variables + state.optimizer.variables + [state.step]
                                + list(optim.checkpointed(state.schedule).variables), chief)
