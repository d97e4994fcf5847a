"""The paper's training recipe in a custom loop (Section 5 of the paper).

The paper's rule `v <- 0.9 v - 0.0005 lr w - lr dL/dw; w <- w + v` (decay on
the kernels only) on the cross-entropy loss: `PaperSGD`, one fused update per
variable. It equals Keras' SGD on the loss plus `0.0005 / 2 * sum(w^2)`; Keras'
`SGD(weight_decay=...)` is decoupled decay and is *not* it.

`train(config)` reads top to bottom: set up the strategy and precision, load
the data, build model + optimizer + checkpoint in one `strategy.scope()`,
resume, then loop: step, log, evaluate, adjust the learning rate, checkpoint.
Nothing here reads flags; `tools/train.py` turns flags into a `TrainConfig`.
"""

import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import data
from alexnet_tf.model import build_alexnet

PRESETS = {
    # The paper's model on 227x227 crops of 256x256 images.
    "paper": dict(width=1.0, image_size=227, resize=256, init_std=0.01),
    # The same topology at 1/8 width on 67x67 crops of 76x76 images, for smoke
    # runs and tests. Every fan-in is 8x smaller, so the init std is scaled by
    # sqrt(8) to give each layer the paper model's activation statistics (at
    # 0.01 the narrow model's signal drowns in the biases of 1).
    "tiny": dict(width=0.125, image_size=67, resize=76, init_std=0.01 / 0.125 ** 0.5),
}
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SCHEDULES = ("plateau", "step")


@dataclasses.dataclass
class TrainConfig:
    dataset: str = data.EMBEDDED_DATASET
    data_dir: str | None = None
    workdir: str = "runs/alexnet"
    preset: str = "paper"
    batch_size: int = 128            # global, over all replicas
    epochs: float = 90
    steps: int | None = None         # overrides epochs
    lr: float = 0.01
    warmup_steps: int = 0            # linear ramp to lr over the first steps (0: the paper's constant start)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.5
    lr_schedule: str = "plateau"
    patience: int = 3                # plateau: evaluations without improvement before a drop
    step_epochs: float = 30          # step: epochs between drops
    max_drops: int = 3
    eval_every: int | None = None    # steps; None = once per epoch
    ckpt_every: int | None = None    # steps; None = at every evaluation
    log_every: int = 10
    ten_crop: bool = False
    tower_devices: tuple | None = None
    strategy: str = "default"
    mixed_precision: str = "float32"
    jit: bool = False
    seed: int = 0
    deterministic: bool = False      # reproducible input order (slower)
    val_fraction: float = 0.05       # for datasets without a validation split
    max_eval_images: int | None = None

    def check(self):
        """Raises ValueError naming the first bad field."""
        def bad(field, want):
            raise ValueError(f"{field}={getattr(self, field)!r}: {want}")

        if self.preset not in PRESETS:
            bad("preset", f"must be one of {', '.join(PRESETS)}")
        if self.strategy not in STRATEGIES:
            bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if self.mixed_precision not in PRECISIONS:
            bad("mixed_precision", f"must be one of {', '.join(PRECISIONS)}")
        if self.lr_schedule not in SCHEDULES:
            bad("lr_schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        for field in ("batch_size", "log_every", "patience"):
            if getattr(self, field) < 1:
                bad(field, "must be >= 1")
        for field in ("steps", "eval_every", "ckpt_every", "max_eval_images"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                bad(field, "must be >= 1")
        for field in ("epochs", "lr", "step_epochs"):
            if not getattr(self, field) > 0:
                bad(field, "must be > 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.max_drops < 0:
            bad("max_drops", "must be >= 0")
        if self.tower_devices is not None and self.strategy != "default":
            bad("tower_devices", "pins the towers to devices, which only the default strategy supports; "
                                 "data-parallel strategies place a whole replica on each device")


# ----------------------------------------------------------------------------
# The loss and the step
# ----------------------------------------------------------------------------

@tf.function(jit_compile=True, autograph=False)
def _momentum_update(weight, velocity, gradient, learning_rate, momentum, decay):
    """The paper's rule, v <- m v - decay lr w - lr g; w <- w + v, in one XLA loop that
    updates both variables in place."""
    v = momentum * velocity - learning_rate * (gradient + decay * weight)
    velocity.assign(v)
    weight.assign_add(v)


class PaperSGD(keras.optimizers.SGD):
    """Momentum SGD with the paper's weight decay, as the paper writes it (Section 5):

        v <- momentum v - l2_decay lr w - lr dL/dw ;  w <- w + v

    with decay on the kernels only (variables whose path ends in "kernel"). That
    is Keras' SGD on the loss plus l2_decay/2 * sum(w^2); Keras'
    `SGD(weight_decay=...)` is decoupled decay and is *not* it.

    Each variable's update is one XLA-compiled loop (`_momentum_update`) that
    writes the weight and its momentum in place, on the variable's own device:
    Keras' version takes five elementwise passes with full-size temporaries
    (0.5 GB of them at the step's memory peak, BUILD_NOTES.md), and it creates
    those ops with no device, so with the towers on two devices TensorFlow would
    have computed tower b's updates on the default device. Under a distribution
    strategy `update_step` receives each replica's own component of the weight
    and the decay applies once, to the all-reduced gradient.
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2_decay=5e-4, **kwargs):
        if "weight_decay" in kwargs:
            raise ValueError("PaperSGD: use l2_decay (the paper's coupled decay), not Keras' decoupled weight_decay")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2_decay = l2_decay

    def build(self, variables):
        super().build(variables)
        self._decay = [self.l2_decay if is_kernel(v) else 0.0 for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        weight = variable.value if isinstance(variable, keras.Variable) else variable
        velocity = self.momentums[index].value
        # Under a distribution strategy: the replica's own component of the slot.
        velocity = next(c for c in self._distribution_strategy.experimental_local_results(velocity)
                        if c.device == weight.device)
        dtype = weight.dtype
        with tf.device(weight.device):
            _momentum_update(weight, velocity, tf.cast(gradient, dtype), tf.cast(learning_rate, dtype),
                             tf.constant(self.momentum, dtype), tf.constant(self._decay[index], dtype))

    def get_config(self):
        return {**super().get_config(), "l2_decay": self.l2_decay}


def is_kernel(variable):
    """The paper decays the kernels (weights), not the biases. Keras variables by path, tf.Variables by name."""
    return getattr(variable, "path", variable.name).endswith("kernel")


def kernels(model):
    """The weights the paper decays: every kernel, no bias."""
    return [v for v in model.trainable_variables if is_kernel(v)]


def top_k_correct(logits, labels, k):
    return tf.reduce_sum(tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), logits, k), tf.float32))


def make_train_step(model, optimizer, *, global_batch_size, strategy, jit=False):
    """A `tf.function(images, labels)` that runs one step on every replica.

    The loss is the cross-entropy alone; the paper's weight decay is part of
    the update (`PaperSGD`). Returns summed (over the global batch)
    cross-entropy, top-1 and top-5 correct counts, and the norm of the
    cross-entropy's gradient.
    """
    variables = model.trainable_variables
    replicas = strategy.num_replicas_in_sync
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, labels):
        logits = model(images, training=True)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)
        ce_sum = tf.reduce_sum(ce)
        # Averaged over the global batch: the all-reduce sums the replicas'
        # gradients into the gradient of the global batch's mean loss.
        loss = ce_sum / global_batch_size
        # tf.gradients, not GradientTape: it keeps each backward op on the
        # device of its forward op, so each tower's backward pass stays home.
        grads = tf.gradients(optimizer.scale_loss(loss) if scales_loss else loss, [v.value for v in variables])
        optimizer.apply(grads, variables)
        if scales_loss:
            grads = [g / optimizer.dynamic_scale for g in grads]
        return ce_sum, top_k_correct(logits, labels, 1), top_k_correct(logits, labels, 5), tf.linalg.global_norm(grads)

    @tf.function(jit_compile=jit)
    def step(images, labels):
        out = strategy.run(replica_step, args=(images, labels))
        ce, top1, top5, gnorm = (strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out)
        return ce, top1, top5, gnorm / replicas

    return step


def make_eval_step(model, strategy, *, ten_crop=False):
    """A `tf.function(images, labels)` -> (summed cross-entropy, top-1 and top-5 correct counts).

    With `ten_crop`, images are [batch, 10, h, w, 3] and the softmax of the ten
    views is averaged, as in the paper.
    """
    def replica_step(images, labels):
        if ten_crop:
            shape = tf.shape(images)
            logits = model(tf.reshape(images, tf.concat([[-1], shape[2:]], 0)), training=False)
            probs = tf.reduce_mean(tf.reshape(tf.nn.softmax(logits), [shape[0], 10, -1]), axis=1)
        else:
            probs = tf.nn.softmax(model(images, training=False))
        labels = tf.cast(labels, tf.int32)
        ce = -tf.math.log(tf.maximum(tf.gather(probs, labels, batch_dims=1), 1e-12))
        return tf.reduce_sum(ce), top_k_correct(probs, labels, 1), top_k_correct(probs, labels, 5)

    @tf.function
    def step(images, labels):
        out = strategy.run(replica_step, args=(images, labels))
        return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out)

    return step


# ----------------------------------------------------------------------------
# Learning-rate schedules (their state is checkpointed)
# ----------------------------------------------------------------------------

# Both schedules have two hooks, `after_step(learning_rate, epoch)` and
# `after_evaluation(learning_rate, top1_error)`; each may divide `learning_rate`
# (a variable) by 10 and returns True when it did.

class PlateauSchedule(tf.Module):
    """The paper's: divide the rate by 10 when validation top-1 error has not improved
    for `patience` evaluations, at most `max_drops` times."""

    def __init__(self, patience, max_drops):
        super().__init__(name="plateau_schedule")
        self.patience, self.max_drops = patience, max_drops
        self.best_error = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.evals_since_best = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.drops = tf.Variable(0, dtype=tf.int64, trainable=False)

    def after_step(self, learning_rate, epoch):
        return False

    def after_evaluation(self, learning_rate, top1_error):
        if top1_error < self.best_error.numpy():
            self.best_error.assign(top1_error)
            self.evals_since_best.assign(0)
            return False
        self.evals_since_best.assign_add(1)
        if self.evals_since_best.numpy() >= self.patience and self.drops.numpy() < self.max_drops:
            learning_rate.assign(learning_rate * 0.1)
            self.drops.assign_add(1)
            self.evals_since_best.assign(0)
            return True
        return False


class StepSchedule(tf.Module):
    """Divide the rate by 10 every `step_epochs` epochs, at most `max_drops` times."""

    def __init__(self, base_lr, step_epochs, max_drops):
        super().__init__(name="step_schedule")
        self.base_lr, self.step_epochs, self.max_drops = base_lr, step_epochs, max_drops
        self.drops = tf.Variable(0, dtype=tf.int64, trainable=False)

    def rate_at(self, epoch):
        return self.base_lr * 0.1 ** min(int(epoch // self.step_epochs), self.max_drops)

    def after_step(self, learning_rate, epoch):
        """Sets the rate for `epoch`."""
        drops = min(int(epoch // self.step_epochs), self.max_drops)
        if drops == self.drops.numpy():
            return False
        learning_rate.assign(self.rate_at(epoch))
        self.drops.assign(drops)
        return True

    def after_evaluation(self, learning_rate, top1_error):
        return False


# ----------------------------------------------------------------------------
# Logging to TensorBoard
# ----------------------------------------------------------------------------

def first_layer_grid(model):
    """conv1's kernels of both towers (96 at full width) as one [1, H, W, 3] image: the paper's Figure 3.

    Tower a's kernels fill the top rows, tower b's the bottom rows; each kernel
    is scaled to [0, 1] on its own, with a one-pixel border between kernels.
    """
    rows = []
    for t in ("a", "b"):
        k = model.get_layer(f"conv1_{t}").kernel.value                    # [11, 11, 3, n]
        k = tf.transpose(k, [3, 0, 1, 2])                                  # [n, 11, 11, 3]
        lo = tf.reduce_min(k, axis=[1, 2, 3], keepdims=True)
        hi = tf.reduce_max(k, axis=[1, 2, 3], keepdims=True)
        k = tf.pad((k - lo) / tf.maximum(hi - lo, 1e-8), [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.0)
        n = k.shape[0]
        # The first divisor of n from 16 up: 48 kernels -> 3 rows of 16.
        per_row = next(c for c in range(min(n, 16), n + 1) if n % c == 0)
        k = tf.reshape(k, [n // per_row, per_row, *k.shape[1:]])          # [rows, cols, h, w, 3]
        k = tf.transpose(k, [0, 2, 1, 3, 4])                               # [rows, h, cols, w, 3]
        rows.append(tf.reshape(k, [k.shape[0] * k.shape[1], k.shape[2] * k.shape[3], 3]))
    return tf.concat(rows, axis=0)[None]


def weight_histogram(name, values, bins=30):
    """Writes what `tf.summary.histogram` writes (TensorBoard's [bins, 3] float64 record of left
    edge, right edge, count) with TF's histogram_fixed_width op.

    `tf.summary.histogram` counts through a float64 one-hot matrix of
    [values, bins]: 4.5 GB for one tower's fc6 kernel, which made the default
    run's resident memory jump by 4-6 GiB at every evaluation (measured).
    """
    from tensorboard.plugins.histogram import metadata

    values = tf.reshape(values, [-1])
    lo, hi = tf.reduce_min(values), tf.reduce_max(values)
    hi = tf.where(hi > lo, hi, lo + 1.0)  # a constant tensor gets one unit-wide range
    counts = tf.histogram_fixed_width(values, tf.stack([lo, hi]), nbins=bins)
    edges = tf.cast(tf.linspace(lo, hi, bins + 1), tf.float64)
    record = tf.stack([edges[:-1], edges[1:], tf.cast(counts, tf.float64)], axis=1)
    tf.summary.write(name, record, metadata=metadata.create_summary_metadata(display_name=None, description=None))


def _write_summaries(writer, step, scalars, model=None, images=False):
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
        if model is not None:
            for k in kernels(model):
                weight_histogram(f"weights/{k.path}", k.value)
        if images and model is not None:
            tf.summary.image("conv1_kernels", first_layer_grid(model))
    writer.flush()


# ----------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    """Training stopped because the loss was NaN or infinite."""


class Preempted(SystemExit):
    """SIGTERM arrived; a checkpoint was written before exiting."""


def make_strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        # Configured by the TF_CONFIG environment variable.
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def build_state(config, num_classes, strategy):
    """Model, optimizer, step counter, schedule and the checkpoint over them, in `strategy`'s scope."""
    preset = PRESETS[config.preset]
    with strategy.scope():
        model = build_alexnet(num_classes, image_size=preset["image_size"], width=preset["width"],
                              init_std=preset["init_std"], dropout=config.dropout,
                              tower_devices=config.tower_devices, seed=config.seed)
        optimizer = PaperSGD(learning_rate=config.lr, momentum=config.momentum, l2_decay=config.weight_decay)
        if config.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Keras 3 would otherwise create the momentum slots lazily inside the
        # first step, which fails under a distribution strategy.
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        if config.lr_schedule == "plateau":
            schedule = PlateauSchedule(config.patience, config.max_drops)
        else:
            schedule = StepSchedule(config.lr, config.step_epochs, config.max_drops)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, schedule=schedule)
    return {"model": model, "optimizer": optimizer, "step": step, "schedule": schedule, "checkpoint": checkpoint}


def train(config, log=print, *, return_state=False):
    """Trains as `config` says, resuming from the workdir's last checkpoint.

    Returns the final metrics, and with `return_state` also the `build_state` dict.
    """
    config.check()
    preset = PRESETS[config.preset]
    workdir = Path(config.workdir)

    # 1. Strategy and precision: both must be set before the model exists.
    strategy = make_strategy(config.strategy)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    chief = _is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size={config.batch_size} must divide evenly over {replicas} replicas")

    # 2. Data: encoded images in, the paper's preprocessing in the pipeline.
    source = data.load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    for path, why in source.skipped:
        log(f"skipped {path}: {why}")
    if source.skipped:
        log(f"skipped {len(source.skipped)} unusable file(s) of {source.name}")
    if source.converted:
        log(f"converted {len(source.converted)} file(s) of {source.name} (grayscale, CMYK or mislabelled format)")
    stats = data.dataset_statistics(source, config.data_dir, log=log)
    steps_per_epoch = max(1, source.num_train // config.batch_size)
    total_steps = config.steps or max(1, int(round(config.epochs * steps_per_epoch)))
    eval_every = config.eval_every or steps_per_epoch
    ckpt_every = config.ckpt_every or eval_every

    # 3. Model, optimizer and checkpoint, all in one scope.
    state = build_state(config, source.num_classes, strategy)
    model, optimizer, step, schedule, checkpoint = (state[k] for k in
                                                     ("model", "optimizer", "step", "schedule", "checkpoint"))
    # Non-chief workers of a multi-worker run must save too (the save is a
    # collective), but into a scratch directory.
    ckpt_dir = workdir / "checkpoints" if chief else workdir / f"tmp_worker_{strategy.cluster_resolver.task_id}"
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=3)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(step.numpy())}")
    learning_rate = optimizer.learning_rate if not hasattr(optimizer, "inner_optimizer") \
        else optimizer.inner_optimizer.learning_rate

    run_config = {**dataclasses.asdict(config), "preset_values": preset, "num_classes": source.num_classes,
                  "num_train": source.num_train, "num_validation": source.num_validation,
                  "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "replicas": replicas,
                  "statistics": stats}
    if chief:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(run_config, indent=2, default=str))
        (workdir / "classes.json").write_text(json.dumps(source.class_names, indent=1))
    train_writer = tf.summary.create_file_writer(str(workdir / "train")) if chief else tf.summary.create_noop_writer()
    val_writer = tf.summary.create_file_writer(str(workdir / "validation")) if chief else tf.summary.create_noop_writer()

    # 4. Input pipelines. A restart reseeds the stream from the step it starts at.
    start = int(step.numpy())
    train_ds = data.train_pipeline(source.train, stats, batch_size=config.batch_size, crop=preset["image_size"],
                                   resize=preset["resize"], seed=config.seed * 1_000_003 + start,
                                   deterministic=config.deterministic)
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
    train_iter = iter(strategy.experimental_distribute_dataset(train_ds))

    train_step = make_train_step(model, optimizer, global_batch_size=config.batch_size, strategy=strategy,
                                 jit=config.jit)
    eval_step = make_eval_step(model, strategy, ten_crop=config.ten_crop)

    num_eval = min(source.num_validation, config.max_eval_images or source.num_validation)

    def evaluate():
        # Sums over the whole validation set, across replicas and workers.
        totals = np.zeros(3)
        for images, labels in strategy.experimental_distribute_dataset(val_ds):
            totals += [float(v) for v in eval_step(images, labels)]
        return {"loss": totals[0] / num_eval, "top1_error": 1 - totals[1] / num_eval,
                "top5_error": 1 - totals[2] / num_eval}

    def report_drop(s):
        log(f"\nstep {s}: learning rate divided by 10, now {float(learning_rate.numpy()):.2g}")

    # SIGTERM (preemption): finish the current step, checkpoint, exit.
    preempted = []
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: preempted.append(signum))

    progress = keras.utils.Progbar(total_steps, stateful_metrics=["loss", "img/s", "lr"],
                                   verbose=1 if chief else 0, unit_name="step")
    progress.update(start)

    def new_window():
        return dict(ce=0.0, top1=0.0, top5=0.0, gnorm=0.0, images=0, steps=0, seconds=0.0)

    window = new_window()
    # Images/s over this run's steps, not counting the first (it traces and compiles).
    rate = dict(images=0, seconds=0.0)
    last_eval = None
    try:
        while int(step.numpy()) < total_steps:
            if int(step.numpy()) < config.warmup_steps:
                # Linear warm-up: the schedules take over once it is done.
                learning_rate.assign(config.lr * (int(step.numpy()) + 1) / config.warmup_steps)
            t0 = time.perf_counter()
            images, labels = next(train_iter)
            ce, top1, top5, gnorm = train_step(images, labels)
            ce = float(ce)  # waits for the step
            seconds = time.perf_counter() - t0
            step.assign_add(1)
            s = int(step.numpy())
            # The schedules act once the warm-up is over.
            if s > config.warmup_steps and schedule.after_step(learning_rate, s / steps_per_epoch):
                report_drop(s)
            if not math.isfinite(ce):
                raise NonFiniteLoss(
                    f"the loss became {ce} at step {s}; training stopped. The last good checkpoint "
                    f"({manager.latest_checkpoint or 'none yet'}) is untouched. Try a lower --lr.")
            for key, value in (("ce", ce), ("top1", float(top1)), ("top5", float(top5)), ("gnorm", float(gnorm)),
                               ("images", config.batch_size), ("steps", 1), ("seconds", seconds)):
                window[key] += value
            if s > start + 1:
                rate["images"] += config.batch_size
                rate["seconds"] += seconds
            progress.update(s, [("loss", ce / config.batch_size),
                                ("img/s", rate["images"] / rate["seconds"] if rate["seconds"] else 0.0),
                                ("lr", float(learning_rate.numpy()))])
            if s % config.log_every == 0 or s == total_steps:
                n = window["images"]
                _write_summaries(train_writer, s, {
                    "loss": window["ce"] / n, "top1_error": 1 - window["top1"] / n,
                    "top5_error": 1 - window["top5"] / n, "learning_rate": float(learning_rate.numpy()),
                    "images_per_second": n / window["seconds"], "gradient_norm": window["gnorm"] / window["steps"],
                    "weight_norm": float(tf.linalg.global_norm([v.value for v in model.trainable_variables])),
                })
                window = new_window()
            if s % eval_every == 0 or s == total_steps:
                last_eval = evaluate()
                epoch = s / steps_per_epoch
                if schedule.after_evaluation(learning_rate, last_eval["top1_error"]):
                    report_drop(s)
                _write_summaries(val_writer, s, last_eval)
                _write_summaries(train_writer, s, {}, model=model, images=True)
                if chief:
                    log(f"\nstep {s} (epoch {epoch:.1f}): validation top-1 error {last_eval['top1_error']:.4f}, "
                        f"top-5 error {last_eval['top5_error']:.4f}")
            if s % ckpt_every == 0 or s == total_steps or preempted:
                manager.save(checkpoint_number=s)
            if preempted:
                log(f"\nSIGTERM: checkpoint written at step {s} ({manager.latest_checkpoint}); exiting")
                raise Preempted(143)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if not chief and ckpt_dir.exists():
            tf.io.gfile.rmtree(str(ckpt_dir))

    if last_eval is None:  # resumed after the last step: report without training
        last_eval = evaluate()
    result = {"step": int(step.numpy()), "start_step": start, "workdir": str(workdir),
              "checkpoint": manager.latest_checkpoint, "chief": chief,
              "validation_accuracy": float(1 - last_eval["top1_error"]),
              **{f"validation_{k}": float(v) for k, v in last_eval.items()}}
    if chief:
        (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return (result, state) if return_state else result
