"""The paper's training recipe in a custom loop (Section 5 of the paper).

`train(config)` reads top to bottom: set the precision and the strategy, hold the workdir, set the run up
(load the data, build model + optimizer + schedule + checkpoint in one `strategy.scope()`, resume or
initialize, record the run), then loop: step, log, evaluate, let the schedule adjust the learning rate,
checkpoint. Step metrics stay on the device and are read back only when they are logged, so a GPU is not
synchronised every step. Nothing here reads flags; `tools/train.py` turns flags into a `TrainConfig`.
"""

import contextlib
import dataclasses
import json
import os
import signal
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import (augmentation, checkpoints, cluster, config as config_lib, data, footprint, metrics,
                        model as model_lib, optim, pipelines, placement, runs, service, shards, sources, statistics,
                        steps, summaries, workdir as workdir_lib)
from alexnet_tf.metrics import NonFiniteLoss  # noqa: F401  (training.NonFiniteLoss: what a run raises)


class Preempted(SystemExit):
    """SIGTERM or SIGINT arrived; a checkpoint was written before exiting (status 128 + the signal)."""


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


@dataclasses.dataclass
class Run:
    """A run set up for the loop: what `train` returns beside the metrics."""
    config: config_lib.TrainConfig
    state: TrainState
    strategy: tf.distribute.Strategy
    chief: bool
    manager: tf.train.CheckpointManager
    scratch: Path | None          # a non-chief worker's checkpoint folder, removed at the end
    train_iter: object
    train_step: object
    evaluate: object
    writers: tuple
    start: int
    steps_per_epoch: int
    total_steps: int
    estimated_peak: int | None    # bytes, this process (None: not estimated, on a GPU)
    log: object
    records: dict | None = None   # a prepared dataset's TFRecord files by split, to name a damaged one


class Terminated(BaseException):
    """SIGTERM before the first step (a BaseException, like KeyboardInterrupt, so no `except Exception`
    on the way swallows it)."""


def train(config, log=print):
    """Trains as `config` (a `TrainConfig`) says, resuming from the workdir's last checkpoint.

    Returns (the final metrics, the `Run`). Keras' global precision policy is set for the run and
    restored when it returns."""
    config.check()
    with steps.precision_policy(config.mixed_precision):  # set before the model exists
        if config.cpu_devices:
            placement.split_cpu(config.cpu_devices)  # before the strategy starts TensorFlow's runtime
        with _starting(config):
            strategy = cluster.make_strategy(config, log)
        chief = cluster.is_chief(strategy)
        # One trainer per workdir: the chief holds the lock (multi-worker runs share the workdir).
        with workdir_lib.WorkdirLock(config.workdir) if chief else contextlib.nullcontext():
            with _starting(config) as starting:
                run = _set_up(config, strategy, chief, log, starting)
            with _stop_signals() as stop, _reported_in_one_line(run):
                last_eval = _loop(run, stop)
            last_eval = last_eval or run.evaluate()  # resumed after the last step: report without training
            return _result(run, last_eval), run


def _set_up(config, strategy, chief, log, starting):
    """Checks the workdir, loads the data, builds the state, resumes or initializes it, records the run and
    builds the pipelines and steps: everything the loop needs, as a `Run`."""
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size={config.batch_size} must divide evenly over "
                         f"{strategy.num_replicas_in_sync} replicas")
    workdir = Path(config.workdir)
    workdir_lib.check_resume(config, workdir_lib.recorded(workdir))
    if config.data_service:
        with starting.interruptible():
            waited = service.wait_for(config.data_service, config.data_service_timeout)
        log(f"training input from the tf.data service at {config.data_service} (answered in {waited:.1f} s)")
    with starting.interruptible():
        source = _load_data(config, log)
    if config.batch_size > source.num_train:  # it would never fill one batch, and the pipeline would wait
        raise ValueError(f"batch_size={config.batch_size}: larger than the training split of {source.name} "
                         f"({source.num_train} images)")
    steps_per_epoch = max(1, source.num_train // config.batch_size)
    total_steps = config.steps or max(1, int(round(config.epochs * steps_per_epoch)))
    model_config = dataclasses.replace(config.model, num_classes=source.num_classes)
    state = build_state(config, model_config, strategy, run_epochs=total_steps / steps_per_epoch)
    estimated_peak = _check_memory(config, state.model, strategy, log)  # before the statistics' long scan
    with starting.interruptible():
        stats = _statistics(config, source, log)
    # Non-chief workers of a multi-worker run must save too (the save is a collective), into a scratch folder.
    scratch = None if chief else workdir / f"tmp_worker_{strategy.cluster_resolver.task_id}"
    _resume_or_initialize(config, state, strategy, chief, scratch, log)
    starting.check()  # before anything is written
    manager = tf.train.CheckpointManager(state.checkpoint, str(scratch or workdir / "checkpoints"), max_to_keep=3)
    if chief:
        runs.write_run(workdir, runs.RunRecord(
            config=dataclasses.replace(config, model=model_config), statistics=stats, num_train=source.num_train,
            num_validation=source.num_validation, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
            replicas=strategy.num_replicas_in_sync), source.class_names)
    start = int(state.step.numpy())
    train_ds, val_ds = pipelines.for_training(
        config, source, start, task=strategy.cluster_resolver.task_id if config.strategy == "multi_worker" else 0)
    num_eval = min(source.num_validation, config.max_eval_images or source.num_validation)
    calendar = optim.checkpointed(state.schedule)  # the 2012 code's colour noise stops at a step of its calendar
    augment, views = augmentation.for_run(config, stats, step=state.step, colour_noise_until=(
        calendar.colour_noise_until(steps_per_epoch) if hasattr(calendar, "colour_noise_until") else None))
    return Run(config=config, state=state, strategy=strategy, chief=chief, manager=manager, scratch=scratch,
               train_iter=iter(strategy.experimental_distribute_dataset(train_ds)),
               train_step=steps.make_train_step(state.model, state.optimizer, global_batch_size=config.batch_size,
                                                strategy=strategy, jit=config.jit, mirrored=not config.hybrid,
                                                augment=augment),
               evaluate=_evaluator(state.model, strategy, val_ds, views, config.ten_crop, num_eval),
               writers=summaries.writers(workdir, chief), start=start, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps, estimated_peak=estimated_peak, log=log, records=source.records)


def _check_memory(config, model, strategy, log):
    """Refuses a batch whose step cannot fit in this machine's memory (ValueError naming the largest that fits),
    before the first step rather than by the kernel's OOM killer during it. On a GPU the step's tensors live in
    the device's memory, whose size TensorFlow does not report: not checked there."""
    if tf.config.list_logical_devices("GPU"):
        return None
    workers = cluster.num_workers(strategy)
    local_replicas = 1 if config.hybrid else strategy.num_replicas_in_sync // workers
    need = footprint.estimate(model, local_replicas=local_replicas, views=10 if config.ten_crop else 1,
                              square=config.model.resize)
    peak = footprint.check_batch_fits(need, config.batch_size, workers=workers,
                                      multiple=strategy.num_replicas_in_sync)
    log(f"memory: about {peak / footprint.GIB:.1f} GiB at the step's peak (estimated)")
    return peak


def _load_data(config, log):
    """The dataset as a `data.Source`, skipped and converted files reported."""
    source = data.load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction, seed=config.seed,
                               max_pixels=config.max_pixels)
    sources.report(source, log)
    return source


def _statistics(config, source, log):
    """The statistics the model is trained with. Fine-tuning keeps the mean the pretrained features expect:
    the source run's."""
    stats = statistics.dataset_statistics(source, config.data_dir, log=log)
    if config.init_from:
        source_run = runs.read_run(workdir_lib.resolve(config.init_from)[0], flag="init_from")[0]
        stats = {**stats, "mean": source_run.statistics["mean"]}
    return stats


def _resume_or_initialize(config, state, strategy, chief, scratch, log):
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


def _evaluator(model, strategy, val_ds, views, ten_crop, num_eval):
    """evaluate() -> {loss, top1_error, top5_error} over the validation set (batches of squares, cut into
    `views` in the step), across replicas and workers."""
    eval_step = steps.make_eval_step(model, strategy, ten_crop=ten_crop, views=views)

    def evaluate():
        totals = np.zeros(3)
        for images, labels in strategy.experimental_distribute_dataset(val_ds):
            totals += [float(v) for v in eval_step(images, labels)]
        return {"loss": totals[0] / num_eval, "top1_error": 1 - totals[1] / num_eval,
                "top5_error": 1 - totals[2] / num_eval}

    return evaluate


class _Starting:
    """SIGTERM while a run starts (connecting, loading, restoring): noted, and raised as Terminated at the next
    `check()`, or at once inside `interruptible()` (the pure-Python phases: scanning files, the statistics).
    Raised at once inside TensorFlow's own code it was measured to turn into pybind's "MISMATCH of original and
    normalized active exception types", "cannot join current thread", or a segmentation fault."""

    MESSAGE = ("stopped by SIGTERM while starting, before the first step; rerun the same command to start (or "
               "resume) the run")

    def __init__(self):
        self.arrived, self._at_once = False, False

    def handle(self, signum, frame):
        self.arrived = True
        if self._at_once:
            raise Terminated(self.MESSAGE)

    def check(self):
        if self.arrived:
            raise Terminated(self.MESSAGE)

    @contextlib.contextmanager
    def interruptible(self):
        self.check()
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False


@contextlib.contextmanager
def _starting(config):
    """A `_Starting` handling SIGTERM until the block ends (then checked, and the previous handler back; the
    loop's own handling, `_stop_signals`, takes over from there); a multi-worker run's peer lost meanwhile is
    a ClusterError in one line."""
    starting = _Starting()
    previous = signal.signal(signal.SIGTERM, starting.handle)
    try:
        yield starting
        starting.check()
    except BaseException as e:
        starting.check()  # a SIGTERM is the news, whatever it interrupted
        if config.strategy == "multi_worker" and isinstance(e, tf.errors.OpError):
            raise cluster.lost_contact(e, when=" while starting") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM (preemption) and SIGINT (Ctrl-C) append to the list this yields; the loop finishes the
    current step, checkpoints and exits. The previous handlers come back afterwards."""
    arrived = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield arrived
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _reported_in_one_line(run):
    """What goes wrong in the loop, as the one line the user reads: a full disk (with the checkpoint that is
    safe), a lost worker of the cluster. A non-chief's scratch checkpoints are removed however it ends."""
    try:
        yield
    except BaseException as e:
        if run.chief:
            print(flush=True)  # end the progress bar's line, so what follows starts on a new one
        if workdir_lib.no_space(e):
            raise workdir_lib.WorkdirError(
                f"no space left on device while writing {run.config.workdir}; the last complete checkpoint is "
                f"{run.manager.latest_checkpoint or 'none yet'}") from None
        if run.config.strategy == "multi_worker" and isinstance(e, tf.errors.OpError):
            raise cluster.lost_contact(e, checkpoints=Path(run.config.workdir) / "checkpoints") from None
        if isinstance(e, tf.errors.DataLossError):
            raise _damaged(run, e) from None
        raise
    finally:
        if run.scratch is not None and run.scratch.exists():
            tf.io.gfile.rmtree(str(run.scratch))


def _damaged(run, error):
    """A damaged file of the dataset met while training or evaluating (issue 32), as one line naming it (found
    by reading the dataset's files again) and the checkpoint of the training so far, written first."""
    run.manager.save(checkpoint_number=int(run.state.step.numpy()))  # the step finished: a consistent state
    # Validation first: it is small, and an evaluation is where a damaged shard is met first; the training
    # split (262 GB of raw256 for ImageNet) is read only if the validation files are whole.
    records = run.records or {}
    found = shards.find_damaged([p for split in ("validation", "train") for p in records.get(split, [])])
    where, why = found or (f"a file of {run.config.dataset}", sources.reason(error))
    return sources.DatasetError(f"{where}: damaged ({why}); the training so far is in "
                                f"{run.manager.latest_checkpoint}. Copy or prepare the dataset again, then rerun "
                                f"the same command to resume")


def _result(run, last_eval):
    result = {"step": int(run.state.step.numpy()), "start_step": run.start, "workdir": str(run.config.workdir),
              "checkpoint": run.manager.latest_checkpoint, "chief": run.chief,
              "validation_accuracy": float(1 - last_eval["top1_error"]),
              "estimated_peak_bytes": run.estimated_peak, "peak_rss_bytes": footprint.resident_bytes("VmHWM"),
              **{f"validation_{k}": float(v) for k, v in last_eval.items()}}
    if run.chief:
        (Path(run.config.workdir) / "result.json").write_text(json.dumps(result, indent=2))
    return result


def is_time(step, every, last_step):
    """The one "is it time" rule of the loop: every `every` steps, and at the last step."""
    return step % every == 0 or step == last_step


def _preempted_everywhere(step, log):
    """The multi-worker exit after the coordinated checkpoint: one line, then `Preempted`."""
    def exit_fn():
        log(f"\npreempted (SIGTERM or SIGINT on a worker of the cluster): every worker checkpointed at step "
            f"{int(step.numpy())}; exiting. Rerun the same command on every worker to resume.")
        raise Preempted(128 + signal.SIGTERM)

    return exit_fn


def _report_drop(run, at, learning_rate):
    run.log(f"\nstep {at}: learning rate divided by 10, now {float(learning_rate.numpy()):.2g}")


def _log(run, s, window, progress, rate, learning_rate):
    """Reads the window's means (the one wait for the device), shows them and writes them to TensorBoard."""
    scalars = window.read(run.manager.latest_checkpoint)
    progress.update(s, [("loss", scalars["loss"]), ("img/s", rate.per_second()),
                        ("lr", float(learning_rate.numpy()))])
    summaries.write(run.writers[0], s, {
        **scalars, "learning_rate": float(learning_rate.numpy()),
        "weight_norm": float(tf.linalg.global_norm([v.value for v in run.state.model.trainable_variables]))})


def _evaluate(run, s, learning_rate):
    """Evaluates, lets the schedule react to the error, writes and reports the result."""
    result = run.evaluate()
    if run.state.schedule.after_evaluation(learning_rate, result["top1_error"]):
        _report_drop(run, s, learning_rate)
    summaries.write(run.writers[1], s, result)
    summaries.write(run.writers[0], s, {}, model=run.state.model, images=True)
    if run.chief:
        run.log(f"\nstep {s} (epoch {s / run.steps_per_epoch:.1f}): validation top-1 error "
                f"{result['top1_error']:.4f}, top-5 error {result['top5_error']:.4f}")
    return result


def _loop(run, stop):
    """Steps from `run.start` to the end; returns the last evaluation (None if no step was taken). `stop` is
    the list of signals that arrived (`_stop_signals`)."""
    config, step = run.config, run.state.step
    learning_rate = optim.learning_rate_of(run.state.optimizer)
    # All workers of a cluster must stop at the same step: TensorFlow's handler coordinates them.
    preemption = (cluster.preemption_handler(run.strategy, run.state.checkpoint, run.manager,
                                             _preempted_everywhere(step, run.log))
                  if config.strategy == "multi_worker" else None)
    if preemption is not None and stop:
        # Arrived while the handler was being made (measured: a lone checkpoint, then the peer lost): it is
        # the cluster's to coordinate, so hand it over.
        stop.clear()
        os.kill(os.getpid(), signal.SIGTERM)
    progress = keras.utils.Progbar(run.total_steps, stateful_metrics=["loss", "img/s", "lr"],
                                   verbose=1 if run.chief else 0, unit_name="step")
    progress.update(run.start)
    window, rate, last_eval, s = metrics.Window(), metrics.Rate(), None, run.start
    while s < run.total_steps:
        # The rate of the step to come, from the s steps taken so far.
        if run.state.schedule.after_step(learning_rate, s, s / run.steps_per_epoch):
            _report_drop(run, s, learning_rate)
        batch = _next_batch(run, stop)
        if batch is None:  # SIGTERM or Ctrl-C while the tf.data service sent nothing
            run.manager.save(checkpoint_number=s)
            raise _preempted(run, s, stop)
        window.add(s + 1, run.train_step(*batch), config.batch_size)
        s += 1
        step.assign(s)
        rate.count(window, config.batch_size, run.manager.latest_checkpoint)
        if is_time(s, config.log_every, run.total_steps):
            _log(run, s, window, progress, rate, learning_rate)
            window = metrics.Window()
        else:
            progress.update(s)
        if is_time(s, config.eval_every or run.steps_per_epoch, run.total_steps):
            last_eval = _evaluate(run, s, learning_rate)
        if is_time(s, config.ckpt_every or config.eval_every or run.steps_per_epoch, run.total_steps) or stop:
            if window.steps:
                window.read(run.manager.latest_checkpoint)  # never save a state that went NaN
            run.manager.save(checkpoint_number=s)
        if preemption is not None:
            preemption.save_checkpoint_if_preempted(checkpoint_number=s)  # may save and raise Preempted
        if stop:
            raise _preempted(run, s, stop)
    return last_eval


def _preempted(run, s, stop):
    run.log(f"\n{signal.Signals(stop[0]).name}: checkpoint written at step {s} ({run.manager.latest_checkpoint}); "
            f"exiting")
    return Preempted(128 + stop[0])


def _next_batch(run, stop):
    """The next training batch; None if a signal arrived while the tf.data service sent nothing. A service that
    sends nothing for --data_service_timeout seconds ends the run in one line, the training so far kept."""
    if not run.config.data_service:
        return next(run.train_iter)
    try:
        return service.next_batch(run.train_iter, run.config.data_service, timeout=run.config.data_service_timeout,
                                  stopped=lambda: bool(stop), say=lambda line: run.log(f"\n{line}"))
    except service.ServiceError as e:
        if run.config.strategy != "multi_worker":  # a save is a collective there: the peers are not saving
            run.manager.save(checkpoint_number=int(run.state.step.numpy()))
        raise service.ServiceError(f"{e}; the last checkpoint is {run.manager.latest_checkpoint}") from None
