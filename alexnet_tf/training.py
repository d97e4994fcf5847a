"""The paper's training recipe in a custom loop (Section 5 of the paper).

`train(config)` reads top to bottom: set the precision and the strategy, load
the data, build model + optimizer + schedule + checkpoint in one
`strategy.scope()`, resume, then loop: step, log, evaluate, let the schedule
adjust the learning rate, checkpoint. Step metrics stay on the device and are
read back only when they are logged, so a GPU is not synchronised every step.
Nothing here reads flags; `tools/train.py` turns flags into a `TrainConfig`
(`alexnet_tf.config`).
"""

import contextlib
import dataclasses
import json
import signal
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import cluster, config as config_lib, data, optim, placement, steps, summaries, workdir as workdir_lib
from alexnet_tf.model import build_alexnet


class NonFiniteLoss(RuntimeError):
    """Training stopped because the loss was NaN or infinite."""


class Preempted(SystemExit):
    """SIGTERM or SIGINT arrived; a checkpoint was written before exiting (status 128 + the signal)."""


def build_state(config, num_classes, strategy, run_epochs=None):
    """Model, optimizer, step counter, schedule and the checkpoint over them, in `strategy`'s scope.
    `run_epochs`: the run's length, for a schedule that stretches to it (default `config.epochs`).

    The hybrid scheme (`config.hybrid`) creates them outside the scope: a strategy's variables live on
    its replica's one device (measured, ../shared/notes/multiworker-placement.md), and tower b's
    weights must live on tower b's device. Each worker then holds its own copy, kept equal by
    all-reducing the gradients (`steps.make_train_step(mirrored=False)`) and by `sync_from_chief`."""
    preset = config.preset_values
    with contextlib.nullcontext() if config.hybrid else strategy.scope():
        model = build_alexnet(num_classes, image_size=preset["image_size"], width=preset["width"],
                              init_std=preset["init_std"], dropout=config.dropout, lrn=config.lrn,
                              pool=config.pool, towers=config.towers, recipe=config.recipe,
                              tower_devices=config.tower_devices, seed=config.seed)
        optim.freeze_except(model, config.trained_layers)
        schedule = optim.make_schedule(config, run_epochs)
        conv1_scale = getattr(optim.checkpointed(schedule), "conv1_scale", None)
        optimizer = optim.make_optimizer(
            model.trainable_variables, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            precision=config.mixed_precision, layer_scales={"conv1": conv1_scale} if conv1_scale is not None else None,
            # The 2012 code's biases learn at twice the weights' starting rate, never lowered (epsB).
            bias_learning_rate=2 * config.lr if config.recipe == "original_code" else None)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                         schedule=optim.checkpointed(schedule))
    return {"model": model, "optimizer": optimizer, "step": step, "schedule": schedule, "checkpoint": checkpoint}


def _preempted_everywhere(state, log):
    """The multi-worker exit after the coordinated checkpoint: one line, then `Preempted`."""
    def exit_fn():
        log(f"\npreempted (SIGTERM or SIGINT on a worker of the cluster): every worker checkpointed at step "
            f"{int(state['step'].numpy())}; exiting. Rerun the same command on every worker to resume.")
        raise Preempted(128 + signal.SIGTERM)

    return exit_fn


def is_time(step, every, last_step):
    """The one "is it time" rule of the loop: every `every` steps, and at the last step."""
    return step % every == 0 or step == last_step


class _Window:
    """The train step's sums since the last log, kept as tensors on the device until `read`."""

    def __init__(self):
        self.sums, self.steps, self.images = None, 0, 0
        self.first_bad = (tf.constant(0, tf.int64), tf.constant(0.0))  # (step, loss) of the first NaN/inf
        self.started = time.perf_counter()

    def add(self, step, outputs, batch_size):
        ce = outputs[0]
        bad = (self.first_bad[0] == 0) & ~tf.math.is_finite(ce)
        self.first_bad = (tf.where(bad, tf.constant(step, tf.int64), self.first_bad[0]),
                          tf.where(bad, ce, self.first_bad[1]))
        self.sums = list(outputs) if self.sums is None else [a + b for a, b in zip(self.sums, outputs)]
        self.steps += 1
        self.images += batch_size

    def read(self, last_checkpoint):
        """The window's means as floats (this waits for its steps); NonFiniteLoss if a loss was NaN/inf."""
        bad_step = int(self.first_bad[0])
        if bad_step:
            raise NonFiniteLoss(
                f"the loss became {float(self.first_bad[1])} at step {bad_step}; training stopped. The last good "
                f"checkpoint ({last_checkpoint or 'none yet'}) is untouched. Try a lower --lr.")
        ce, top1, top5, gnorm = (float(v) for v in self.sums)
        n = self.images
        return {"loss": ce / n, "top1_error": 1 - top1 / n, "top5_error": 1 - top5 / n,
                "gradient_norm": gnorm / self.steps, "images_per_second": n / (time.perf_counter() - self.started)}


def _load_data(config, log):
    """The dataset as a `data.Source`, with its statistics; skipped and converted files reported."""
    source = data.load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction, seed=config.seed,
                               max_pixels=config.max_pixels)
    for path, why in source.skipped:
        log(f"skipped {path}: {why}")
    if source.skipped:
        log(f"skipped {len(source.skipped)} unusable file(s) of {source.name}")
    if source.converted:
        log(f"converted {len(source.converted)} file(s) of {source.name} (grayscale, CMYK or mislabelled format)")
    return source, data.dataset_statistics(source, config.data_dir, log=log)


def _pipelines(config, source, stats, start, strategy, colour_noise_until=None):
    """(iterator over distributed training batches, validation dataset). A restart reseeds the
    training stream from the step it starts at. `colour_noise_until`: the step from which the
    training images get no colour noise (None: never)."""
    preset = config.preset_values
    until = None if colour_noise_until is None else max(0, colour_noise_until - start) * config.batch_size
    train_ds = data.train_pipeline(source.train, stats, batch_size=config.batch_size, crop=preset["image_size"],
                                   resize=preset["resize"], seed=config.seed * 1_000_003 + start,
                                   deterministic=config.deterministic, pca_lighting=config.pca_lighting,
                                   flip=config.flip, pca_lighting_until=until)
    val_examples = source.validation
    if config.max_eval_images:
        val_examples = val_examples.take(config.max_eval_images)
    val_ds = data.eval_pipeline(val_examples, stats, batch_size=config.batch_size, crop=preset["image_size"],
                                resize=preset["resize"], ten_crop=config.ten_crop)
    if config.strategy == "multi_worker":
        options = tf.data.Options()
        # Each worker takes its share of every global batch.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    return iter(strategy.experimental_distribute_dataset(train_ds)), val_ds


def _write_run_files(workdir, config, source, stats, **derived):
    """config.json (every setting, the dataset's sizes and statistics) and classes.json."""
    run_config = {**dataclasses.asdict(config), "preset_values": config.preset_values,
                  "num_classes": source.num_classes, "num_train": source.num_train,
                  "num_validation": source.num_validation, **derived, "statistics": stats}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(run_config, indent=2, default=str))
    (workdir / "classes.json").write_text(json.dumps(source.class_names, indent=1))


def _evaluator(model, strategy, val_ds, config, num_eval):
    """evaluate() -> {loss, top1_error, top5_error} over the validation set, across replicas and workers."""
    eval_step = steps.make_eval_step(model, strategy, ten_crop=config.ten_crop)

    def evaluate():
        totals = np.zeros(3)
        for images, labels in strategy.experimental_distribute_dataset(val_ds):
            totals += [float(v) for v in eval_step(images, labels)]
        return {"loss": totals[0] / num_eval, "top1_error": 1 - totals[1] / num_eval,
                "top5_error": 1 - totals[2] / num_eval}

    return evaluate


def train(config, log=print):
    """Trains as `config` (a `TrainConfig`) says, resuming from the workdir's last checkpoint.

    Returns (the final metrics, the `build_state` dict). Keras' global precision
    policy is set for the run and restored when it returns.
    """
    config.check()
    workdir = Path(config.workdir)
    previous_policy = keras.mixed_precision.global_policy()
    # The policy must be set before the model exists.
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    try:
        if config.cpu_devices:
            placement.split_cpu(config.cpu_devices)  # before the strategy starts TensorFlow's runtime
        strategy = cluster.make_strategy(config)
        chief = cluster.is_chief(strategy)
        # One trainer per workdir: the chief holds the lock (multi-worker runs share the workdir).
        with workdir_lib.WorkdirLock(workdir) if chief else contextlib.nullcontext():
            return _train(config, strategy, chief, log)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


@dataclasses.dataclass
class _Run:
    """What the loop needs, set up by `_train`."""
    config: object
    state: dict
    manager: tf.train.CheckpointManager
    train_iter: object
    train_step: object
    evaluate: object
    writers: tuple
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    ckpt_every: int
    chief: bool
    log: object
    preemption: object = None  # the multi-worker PreemptionCheckpointHandler


def _train(config, strategy, chief, log):
    workdir = Path(config.workdir)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size={config.batch_size} must divide evenly over {replicas} replicas")

    recorded = config_lib.recorded_config(workdir) or {}
    # Non-chief workers of a multi-worker run must save too (the save is a
    # collective), but into a scratch directory.
    ckpt_dir = workdir / "checkpoints" if chief else workdir / f"tmp_worker_{strategy.cluster_resolver.task_id}"
    if "imported_from" in recorded:
        raise ValueError(f"workdir={workdir}: holds weights imported by alexnet-import; fine-tune them into a new "
                         f"workdir with --init_from={workdir}")
    workdir_lib.check_resume(config, ckpt_dir, recorded)
    source, stats = _load_data(config, log)
    if config.init_from:
        # The pretrained features expect the inputs they were trained on: that run's mean.
        stats = {**stats, "mean": workdir_lib.read_config(workdir_lib.resolve(config.init_from)[0])[0]
                 ["statistics"]["mean"]}
    steps_per_epoch = max(1, source.num_train // config.batch_size)
    total_steps = config.steps or max(1, int(round(config.epochs * steps_per_epoch)))
    eval_every = config.eval_every or steps_per_epoch

    state = build_state(config, source.num_classes, strategy, run_epochs=total_steps / steps_per_epoch)
    if chief:
        workdir_lib.remove_partial_saves(ckpt_dir, log)
    elif ckpt_dir.exists():
        tf.io.gfile.rmtree(str(ckpt_dir))  # a scratch save left by a worker that was killed
    # Resuming wins over init_from: never re-import over progress. The newest checkpoint that
    # restores completely is taken; corrupt ones are set aside, each said in one line. Every worker
    # reads the chief's (so a multi-worker run needs a workdir they all see).
    if resumed := workdir_lib.restore_newest(state["checkpoint"], workdir / "checkpoints", log, set_aside=chief):
        log(f"resumed from {resumed} at step {int(state['step'].numpy())}")
    elif config.init_from:
        workdir_lib.initialize_from(state["model"], config.init_from, log)
    if config.hybrid:
        cluster.sync_from_chief(strategy, state["model"].variables + state["optimizer"].variables + [state["step"]]
                        + list(optim.checkpointed(state["schedule"]).variables), chief)
    manager = tf.train.CheckpointManager(state["checkpoint"], str(ckpt_dir), max_to_keep=3)
    if chief:
        _write_run_files(workdir, config, source, stats, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                         replicas=replicas)

    start = int(state["step"].numpy())
    calendar = optim.checkpointed(state["schedule"])
    train_iter, val_ds = _pipelines(config, source, stats, start, strategy, colour_noise_until=(
        calendar.colour_noise_until(steps_per_epoch) if hasattr(calendar, "colour_noise_until") else None))
    run = _Run(config=config, state=state, manager=manager, train_iter=train_iter,
               train_step=steps.make_train_step(state["model"], state["optimizer"], global_batch_size=config.batch_size,
                                                strategy=strategy, jit=config.jit, mirrored=not config.hybrid),
               evaluate=_evaluator(state["model"], strategy, val_ds, config,
                                   min(source.num_validation, config.max_eval_images or source.num_validation)),
               writers=summaries.writers(workdir, chief), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               eval_every=eval_every, ckpt_every=config.ckpt_every or eval_every, chief=chief, log=log)
    state.update(strategy=strategy, train_step=run.train_step)  # for callers that look inside (tests)
    # SIGTERM (preemption) and SIGINT (Ctrl-C): finish the current step, checkpoint, exit.
    preempted = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: preempted.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if config.strategy == "multi_worker":  # all workers must stop at the same step: TF's handler
            run.preemption = cluster.preemption_handler(strategy, state, manager, _preempted_everywhere(state, log))
        last_eval = _loop(run, start, preempted)
    except BaseException as e:
        if chief:
            print(flush=True)  # end the progress bar's line, so what follows starts on a new one
        if workdir_lib.no_space(e):
            raise workdir_lib.WorkdirError(
                f"no space left on device while writing {workdir}; the last complete checkpoint is "
                f"{manager.latest_checkpoint or 'none yet'}") from None
        if config.strategy == "multi_worker" and isinstance(e, tf.errors.OpError):
            raise cluster.ClusterError(
                f"lost contact with a worker of the cluster ({cluster.failure_reason(e)}); restart every worker with "
                f"the same command to resume from the last checkpoint ({workdir / 'checkpoints'})") from None
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if not chief and ckpt_dir.exists():
            tf.io.gfile.rmtree(str(ckpt_dir))

    last_eval = last_eval or run.evaluate()  # resumed after the last step: report without training
    result = {"step": int(state["step"].numpy()), "start_step": start, "workdir": str(workdir),
              "checkpoint": manager.latest_checkpoint, "chief": chief,
              "validation_accuracy": float(1 - last_eval["top1_error"]),
              **{f"validation_{k}": float(v) for k, v in last_eval.items()}}
    if chief:
        (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return result, state


def _loop(run, start, preempted):
    """Steps from `start` to the end; returns the last evaluation (None if no step was taken)."""
    config, model, step, schedule = run.config, run.state["model"], run.state["step"], run.state["schedule"]
    learning_rate = optim.learning_rate_of(run.state["optimizer"])
    train_writer, val_writer = run.writers

    def report_drop(at):
        run.log(f"\nstep {at}: learning rate divided by 10, now {float(learning_rate.numpy()):.2g}")

    progress = keras.utils.Progbar(run.total_steps, stateful_metrics=["loss", "img/s", "lr"],
                                   verbose=1 if run.chief else 0, unit_name="step")
    progress.update(start)
    window, last_eval, s = _Window(), None, start
    # Images/s over this run's steps, not counting the first (it traces and compiles).
    rate = {"images": 0, "since": None}
    while s < run.total_steps:
        # The rate of the step to come, from the s steps taken so far.
        if schedule.after_step(learning_rate, s, s / run.steps_per_epoch):
            report_drop(s)
        window.add(s + 1, run.train_step(*next(run.train_iter)), config.batch_size)
        s += 1
        step.assign(s)
        if rate["since"] is None:
            window.read(run.manager.latest_checkpoint)  # waits for the first step
            rate["since"] = time.perf_counter()
        else:
            rate["images"] += config.batch_size
        if is_time(s, config.log_every, run.total_steps):
            scalars, window = window.read(run.manager.latest_checkpoint), _Window()
            progress.update(s, [("loss", scalars["loss"]),
                                ("img/s", rate["images"] / max(time.perf_counter() - rate["since"], 1e-9)),
                                ("lr", float(learning_rate.numpy()))])
            summaries.write(train_writer, s, {
                **scalars, "learning_rate": float(learning_rate.numpy()),
                "weight_norm": float(tf.linalg.global_norm([v.value for v in model.trainable_variables]))})
        else:
            progress.update(s)
        if is_time(s, run.eval_every, run.total_steps):
            last_eval = run.evaluate()
            if schedule.after_evaluation(learning_rate, last_eval["top1_error"]):
                report_drop(s)
            summaries.write(val_writer, s, last_eval)
            summaries.write(train_writer, s, {}, model=model, images=True)
            if run.chief:
                run.log(f"\nstep {s} (epoch {s / run.steps_per_epoch:.1f}): validation top-1 error "
                        f"{last_eval['top1_error']:.4f}, top-5 error {last_eval['top5_error']:.4f}")
        if is_time(s, run.ckpt_every, run.total_steps) or preempted:
            if window.steps:
                window.read(run.manager.latest_checkpoint)  # never save a state that went NaN
            run.manager.save(checkpoint_number=s)
        if run.preemption is not None:
            run.preemption.save_checkpoint_if_preempted(checkpoint_number=s)  # may save and raise Preempted
        if preempted:
            run.log(f"\n{signal.Signals(preempted[0]).name}: checkpoint written at step {s} "
                    f"({run.manager.latest_checkpoint}); exiting")
            raise Preempted(128 + preempted[0])
    return last_eval
