"""The paper's training recipe in a custom loop (Section 5 of the paper).

`train(config)` reads top to bottom: set the precision and the strategy, hold the workdir, set the run up
(load the data, build model + optimizer + schedule + checkpoint in one `strategy.scope()`, resume or
initialize, record the run), then loop: step, log, evaluate, let the schedule adjust the learning rate,
checkpoint. Step metrics stay on the device and are read back only when they are logged, so a GPU is not
synchronised every step. What SIGTERM and Ctrl-C do in each phase is `alexnet_tf.shutdown`'s; the state a
checkpoint holds is `alexnet_tf.train_state`'s. Nothing here reads flags; `tools/train.py` turns flags into
a `TrainConfig`.
"""

import contextlib
import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import (augmentation, cluster, config as config_lib, data, footprint, metrics, optim, pipelines,
                        placement, runs, service, shards, shutdown, sources, statistics, steps, summaries, train_state,
                        workdir as workdir_lib)
from alexnet_tf.metrics import NonFiniteLoss  # noqa: F401  (training.NonFiniteLoss: what a run raises)


@dataclasses.dataclass
class Run:
    """A run set up for the loop: what `train` returns beside the metrics."""
    config: config_lib.TrainConfig
    state: train_state.TrainState
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
    window: metrics.Window = dataclasses.field(default_factory=metrics.Window)  # the steps since the last log


def train(config, log=print):
    """Trains as `config` (a `TrainConfig`) says, resuming from the workdir's last checkpoint.

    Returns (the final metrics, the `Run`). SIGTERM and Ctrl-C end it with `shutdown.Stopped` (after a
    checkpoint, once it trains). Keras' global precision policy is set for the run and restored when it
    returns."""
    config.check()
    multi_worker = config.strategy == "multi_worker"
    with shutdown.Guard(multi_worker) as guard, steps.precision_policy(config.mixed_precision), \
            contextlib.ExitStack() as held:
        with guard.starting(), cluster.reported(multi_worker, when=" while starting"):
            if config.cpu_devices:
                placement.split_cpu(config.cpu_devices)  # before the strategy starts TensorFlow's runtime
            strategy = cluster.make_strategy(config, log, guard)
            chief = cluster.is_chief(strategy)
            if chief:  # one trainer per workdir: the chief holds the lock (multi-worker runs share the workdir)
                held.enter_context(workdir_lib.WorkdirLock(config.workdir))
            run = _set_up(config, strategy, chief, log, guard)
        with guard.looping(), _reported_in_one_line(run):
            last_eval = _loop(run, guard)
        last_eval = last_eval or run.evaluate()  # resumed after the last step: report without training
        return _result(run, last_eval), run


def _set_up(config, strategy, chief, log, guard):
    """Checks the workdir, loads the data, builds the state, resumes or initializes it, records the run and
    builds the pipelines and steps: everything the loop needs, as a `Run`."""
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size={config.batch_size} must divide evenly over "
                         f"{strategy.num_replicas_in_sync} replicas")
    workdir = Path(config.workdir)
    runs.check_resume(config, runs.recorded(workdir))
    if config.data_service:
        with guard.interruptible():
            waited = service.wait_for(config.data_service, config.data_service_timeout)
        log(f"training input from the tf.data service at {config.data_service} (answered in {waited:.1f} s)")
    with guard.interruptible():
        source = _load_data(config, log)
    if config.batch_size > source.num_train:  # it would never fill one batch, and the pipeline would wait
        raise ValueError(f"batch_size={config.batch_size}: larger than the training split of {source.name} "
                         f"({source.num_train} images)")
    steps_per_epoch = max(1, source.num_train // config.batch_size)
    total_steps = config.steps or max(1, int(round(config.epochs * steps_per_epoch)))
    model_config = dataclasses.replace(config.model, num_classes=source.num_classes)
    state = train_state.build_state(config, model_config, strategy, run_epochs=total_steps / steps_per_epoch)
    estimated_peak = _check_memory(config, state.model, strategy, log)  # before the statistics' long scan
    with guard.interruptible():
        stats = _statistics(config, source, log)
    # Non-chief workers of a multi-worker run must save too (the save is a collective), into a scratch folder.
    scratch = None if chief else workdir / f"tmp_worker_{strategy.cluster_resolver.task_id}"
    train_state.resume_or_initialize(config, state, strategy, chief, scratch, log)
    guard.check()  # before anything is written
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
               train_iter=_batches(config, strategy, train_ds, source.name, guard, log),
               train_step=steps.make_train_step(state.model, state.optimizer, global_batch_size=config.batch_size,
                                                strategy=strategy, jit=config.jit, mirrored=not config.hybrid,
                                                augment=augment),
               evaluate=_evaluator(state.model, strategy, val_ds, views, config.ten_crop, num_eval),
               writers=summaries.writers(workdir, chief), start=start, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps, estimated_peak=estimated_peak, log=log, records=source.records)


def _batches(config, strategy, train_ds, reads, guard, log):
    """The training batches, watched for a tf.data service that sends nothing (`service.watched`)."""
    batches = iter(strategy.experimental_distribute_dataset(train_ds))
    if not config.data_service:
        return batches
    return service.watched(batches, config.data_service, timeout=config.data_service_timeout,
                           stopped=guard.stopping, say=lambda line: log(f"\n{line}"), reads=reads)


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


@contextlib.contextmanager
def _reported_in_one_line(run):
    """What goes wrong in the loop, as the one line the user reads: a full disk (with the checkpoint that is
    safe), a lost worker of the cluster. A non-chief's scratch checkpoints are removed however it ends."""
    try:
        with cluster.reported(run.config.strategy == "multi_worker",
                              checkpoints=Path(run.config.workdir) / "checkpoints"):
            yield
    except BaseException as e:
        if run.chief:
            print(flush=True)  # end the progress bar's line, so what follows starts on a new one
        if workdir_lib.no_space(e):
            raise workdir_lib.WorkdirError(
                f"no space left on device while writing {run.config.workdir}; the last complete checkpoint is "
                f"{run.manager.latest_checkpoint or 'none yet'}") from None
        if isinstance(e, tf.errors.DataLossError):
            raise _damaged(run, e) from None
        raise
    finally:
        if run.scratch is not None and run.scratch.exists():
            tf.io.gfile.rmtree(str(run.scratch))


def _damaged(run, error):
    """A damaged file of the dataset met while training or evaluating (issue 32), as one line naming it (found
    by reading the dataset's files again) and the checkpoint of the training so far, written first."""
    checkpoint = _checkpoint_so_far(run)  # the step finished: a consistent state
    # Validation first: it is small, and an evaluation is where a damaged shard is met first; the training
    # split (262 GB of raw256 for ImageNet) is read only if the validation files are whole.
    records = run.records or {}
    found = shards.find_damaged([p for split in ("validation", "train") for p in records.get(split, [])])
    where, why = found or (f"a file of {run.config.dataset}", sources.reason(error))
    return sources.DatasetError(f"{where}: damaged ({why}); the training so far is in {checkpoint}. Copy or "
                                f"prepare the dataset again, then rerun the same command to resume")


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


def _report_drop(run, at, learning_rate):
    run.log(f"\nstep {at}: learning rate divided by 10, now {float(learning_rate.numpy()):.2g}")


def _log(run, s, progress, rate, learning_rate):
    """Reads the window's means (the one wait for the device), shows them and writes them to TensorBoard; a
    new window starts."""
    scalars = run.window.read(run.manager.latest_checkpoint)
    run.window = metrics.Window()
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


def _loop(run, guard):
    """Steps from `run.start` to the end; returns the last evaluation (None if no step was taken). After a
    step in which SIGTERM or Ctrl-C arrived (`guard`), checkpoints and raises `shutdown.Stopped`."""
    config = run.config
    learning_rate = optim.learning_rate_of(run.state.optimizer)
    # All workers of a cluster must stop at the same step: TensorFlow's handler coordinates them.
    preemption = (cluster.preemption_handler(run.strategy, run.state.checkpoint, run.manager, guard,
                                             step=lambda: int(run.state.step.numpy()))
                  if config.strategy == "multi_worker" else None)
    progress = keras.utils.Progbar(run.total_steps, stateful_metrics=["loss", "img/s", "lr"],
                                   verbose=1 if run.chief else 0, unit_name="step")
    progress.update(run.start)
    rate, last_eval, s = metrics.Rate(), None, run.start
    while s < run.total_steps:
        # The rate of the step to come, from the s steps taken so far.
        if run.state.schedule.after_step(learning_rate, s, s / run.steps_per_epoch):
            _report_drop(run, s, learning_rate)
        batch = _next_batch(run)
        if batch is None:  # SIGTERM or Ctrl-C while the tf.data service sent nothing
            raise guard.stopped_at(s, _checkpoint(run))
        run.window.add(s + 1, run.train_step(*batch), config.batch_size)
        s += 1
        run.state.step.assign(s)
        rate.count(run.window, config.batch_size, run.manager.latest_checkpoint)
        if is_time(s, config.log_every, run.total_steps):
            _log(run, s, progress, rate, learning_rate)
        else:
            progress.update(s)
        if is_time(s, config.eval_every or run.steps_per_epoch, run.total_steps):
            last_eval = _evaluate(run, s, learning_rate)
        if is_time(s, config.ckpt_every or config.eval_every or run.steps_per_epoch, run.total_steps) or \
                guard.stopping():
            _checkpoint(run)
        if preemption is not None:
            preemption.save_checkpoint_if_preempted(checkpoint_number=s)  # may save and raise Stopped
        if guard.stopping():
            raise guard.stopped_at(s, run.manager.latest_checkpoint)
    return last_eval


def _checkpoint(run):
    """Saves the state at its step (a finished one), never one that went NaN; returns the checkpoint's path."""
    if run.window.steps:
        run.window.read(run.manager.latest_checkpoint)  # raises NonFiniteLoss
    return run.manager.save(checkpoint_number=int(run.state.step.numpy()))


def _next_batch(run):
    """The next training batch; None if a signal arrived while the tf.data service sent nothing. A service that
    sends nothing for --data_service_timeout seconds, or input of which no image can be read any more, ends the
    run in one line, the training so far kept."""
    try:
        return next(run.train_iter)
    except service.ServiceError as e:
        raise service.ServiceError(f"{e}; the last checkpoint is {_checkpoint_so_far(run)}") from None
    except (StopIteration, tf.errors.OutOfRangeError):  # every file failed: the pipeline skips them (pipelines)
        where = (f"data_service={run.config.data_service}: its workers could read no image of {run.config.dataset}; "
                 f"every data worker must see it at that path" if run.config.data_service else
                 f"dataset={run.config.dataset}: no training image can be read any more (every file failed since "
                 f"the scan at start-up)")
        error = service.ServiceError if run.config.data_service else sources.DatasetError
        raise error(f"{where}; the last checkpoint is {_checkpoint_so_far(run)}") from None


def _checkpoint_so_far(run):
    """The checkpoint of the training so far, written here unless this is one worker of a cluster."""
    if run.config.strategy != "multi_worker":  # a save is a collective there: the peers are not saving
        _checkpoint(run)
    return run.manager.latest_checkpoint
