"""The paper's optimizer (Section 5) and its learning-rate schedules.

The paper's rule `v <- 0.9 v - 0.0005 lr w - lr dL/dw; w <- w + v` (decay on
the kernels only) on the cross-entropy loss: `PaperSGD`, one fused update per
variable. It equals Keras' SGD on the loss plus `0.0005 / 2 * sum(w^2)`; Keras'
`SGD(weight_decay=...)` is decoupled decay and is *not* it.

Every schedule has the same two hooks, `after_step(learning_rate, step, epoch)`
(called before each step with the number of steps taken so far, and the
epochs they make, to set the rate of the step to come) and
`after_evaluation(learning_rate, top1_error)`. Each may change
`learning_rate` (a variable) and returns True when it divided it. Their state
is checkpointed.
"""

import math

import keras
import tensorflow as tf


def is_kernel(variable):
    """The paper decays the kernels (weights), not the biases. Keras variables by path, tf.Variables by name."""
    return getattr(variable, "path", variable.name).endswith("kernel")


def kernels(model):
    """The weights the paper decays: every kernel, no bias."""
    return [v for v in model.trainable_variables if is_kernel(v)]


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

    `bias_learning_rate` (the 2012 code's `epsB`): biases learn at this fixed
    rate, which no schedule lowers, instead of the schedule's. `layer_scales`
    {layer name ("conv1"): scalar variable}: that layer's kernels and biases
    learn at their rate times the variable's value (the 2012 code slowed and
    then stopped conv1 late in training).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2_decay=5e-4, bias_learning_rate=None,
                 layer_scales=None, **kwargs):
        if "weight_decay" in kwargs:
            raise ValueError("PaperSGD: use l2_decay (the paper's coupled decay), not Keras' decoupled weight_decay")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2_decay = l2_decay
        self.bias_learning_rate = bias_learning_rate
        self.layer_scales = dict(layer_scales or {})

    def build(self, variables):
        super().build(variables)
        # By path, which only the Keras variables given here have (update_step may see the tf.Variable).
        self._kernel = [is_kernel(v) for v in variables]
        self._decay = [self.l2_decay if kernel else 0.0 for kernel in self._kernel]
        self._scales = [self.layer_scales.get(_layer_of(v)) for v in variables]

    def _rate(self, index, learning_rate):
        """Variable `index`'s learning rate: the schedule's, or the fixed bias rate, times its layer's scale."""
        if self.bias_learning_rate is not None and not self._kernel[index]:
            learning_rate = tf.constant(self.bias_learning_rate, learning_rate.dtype)
        scale = self._scales[index]
        return learning_rate if scale is None else learning_rate * tf.cast(scale, learning_rate.dtype)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        learning_rate = self._rate(index, tf.convert_to_tensor(learning_rate))
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
        return {**super().get_config(), "l2_decay": self.l2_decay, "bias_learning_rate": self.bias_learning_rate}


def _layer_of(variable):
    """'conv1' for the variables of conv1_a and conv1_b (Keras paths 'conv1_a/kernel')."""
    return getattr(variable, "path", variable.name).split("/")[0].split("_")[0]


def freeze_except(model, trained_layers):
    """Freezes every weight layer of `model` whose name (before the tower's _a/_b) is not in
    `trained_layers` ("conv1" ... "fc8"). Frozen layers have no trainable variables, hence no
    gradients, no momentum slots and no updates, and `tf.gradients` builds no backward pass below
    the lowest trained layer."""
    for layer in model.layers:
        if layer.weights and layer.name.split("_")[0] not in trained_layers:
            layer.trainable = False
    return model


def make_optimizer(variables, *, lr=0.01, momentum=0.9, weight_decay=5e-4, precision="float32",
                   bias_learning_rate=None, layer_scales=None):
    """The optimizer every training step here uses (the trainer's and the benchmark's), built for
    `variables`: `PaperSGD`, wrapped in dynamic loss scaling under mixed_float16."""
    optimizer = PaperSGD(learning_rate=lr, momentum=momentum, l2_decay=weight_decay,
                         bias_learning_rate=bias_learning_rate, layer_scales=layer_scales)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # Keras 3 would otherwise create the momentum slots lazily inside the
    # first step, which fails under a distribution strategy.
    optimizer.build(variables)
    return optimizer


def learning_rate_of(optimizer):
    """The learning-rate variable, also behind a LossScaleOptimizer."""
    return getattr(optimizer, "inner_optimizer", optimizer).learning_rate


# ----------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------

class PlateauSchedule(tf.Module):
    """The paper's: divide the rate by 10 when validation top-1 error has not improved
    for `patience` evaluations, at most `max_drops` times."""

    def __init__(self, patience, max_drops):
        super().__init__(name="plateau_schedule")
        self.patience, self.max_drops = patience, max_drops
        self.best_error = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.evals_since_best = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.drops = tf.Variable(0, dtype=tf.int64, trainable=False)

    def after_step(self, learning_rate, step, epoch):
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

    def after_step(self, learning_rate, step, epoch):
        """Sets the rate for `epoch`."""
        drops = min(int(epoch // self.step_epochs), self.max_drops)
        if drops == self.drops.numpy():
            return False
        learning_rate.assign(self.rate_at(epoch))
        self.drops.assign(drops)
        return True

    def after_evaluation(self, learning_rate, top1_error):
        return False


class Warmup:
    """A linear ramp of the rate up to `base_lr` over the first `warmup_steps` steps, then `inner`.

    Step i (counting from 0) runs at base_lr * (i + 1) / warmup_steps; the
    wrapped schedule's hooks act only once the ramp is over. The ramp has no
    state of its own (it follows from the step): `checkpointed(schedule)` is the
    wrapped schedule, so a checkpoint looks the same with or without a warm-up.
    """

    def __init__(self, inner, base_lr, warmup_steps):
        self.inner, self.base_lr, self.warmup_steps = inner, base_lr, warmup_steps

    def after_step(self, learning_rate, step, epoch):
        if step < self.warmup_steps:
            learning_rate.assign(self.base_lr * (step + 1) / self.warmup_steps)
            return False
        return step > self.warmup_steps and self.inner.after_step(learning_rate, step, epoch)

    def after_evaluation(self, learning_rate, top1_error):
        return self.inner.after_evaluation(learning_rate, top1_error)


class OriginalCodeSchedule(tf.Module):
    """The 2012 run's calendar, from the handwritten log in layers/layer-params-145.cfg (lines 165-182)
    of computerhistory/AlexNet-Source-Code, stretched to this run's length (`run_epochs`; the logged
    run had 90 before it was killed at epoch 91):

    - the weights' rate divided by 10 at epochs 25, 51 and 79 (`epsW` 0.01 -> 0.001 -> 0.0001 -> 0.00001);
    - conv1's rate divided by 10 at epoch 67 and set to 0 at 72 (`conv1_scale`, for `PaperSGD`'s
      `layer_scales`; the log names conv1's epsW, the final parameter file has its epsB at 0 too,
      lines 1-15, so the scale applies to conv1's bias as well);
    - the colour noise off from epoch 67 (`colour_noise_until`, for the input pipeline).

    The biases' rate (`epsB`, twice the starting epsW) is never lowered: that is the optimizer's
    `bias_learning_rate`. Everything follows from the epoch, so there is nothing to checkpoint
    beyond what the other schedules keep.
    """

    LOGGED_EPOCHS = 90
    WEIGHT_DROPS = (25, 51, 79)
    CONV1_SLOWER, CONV1_STOPPED, COLOUR_NOISE_OFF = 67, 72, 67

    def __init__(self, base_lr, run_epochs):
        super().__init__(name="original_code_schedule")
        self.base_lr, self.stretch = base_lr, run_epochs / self.LOGGED_EPOCHS
        self.conv1_scale = tf.Variable(1.0, trainable=False, name="conv1_scale")
        self.drops = tf.Variable(0, dtype=tf.int64, trainable=False)

    def at(self, epoch):
        """(drops of the weights' rate so far, conv1's scale) at `epoch` of this run."""
        logged = epoch / self.stretch
        conv1 = 0.0 if logged >= self.CONV1_STOPPED else 0.1 if logged >= self.CONV1_SLOWER else 1.0
        return sum(logged >= e for e in self.WEIGHT_DROPS), conv1

    def colour_noise_until(self, steps_per_epoch):
        """The step from which the colour noise is off."""
        return int(round(self.COLOUR_NOISE_OFF * self.stretch * steps_per_epoch))

    def after_step(self, learning_rate, step, epoch):
        drops, conv1 = self.at(epoch)
        if conv1 != float(self.conv1_scale.numpy()):
            self.conv1_scale.assign(conv1)
        if drops == self.drops.numpy():
            return False
        learning_rate.assign(self.base_lr * 0.1 ** drops)
        self.drops.assign(drops)
        return True

    def after_evaluation(self, learning_rate, top1_error):
        return False


def checkpointed(schedule):
    """The part of a schedule that holds state, for `tf.train.Checkpoint(schedule=...)`."""
    return getattr(schedule, "inner", schedule)


def make_schedule(config, run_epochs=None):
    """The schedule `config` asks for: plateau, step or the 2012 code's calendar (stretched to
    `run_epochs`, by default `config.epochs`), behind a warm-up if it has one."""
    if config.lr_schedule == "plateau":
        schedule = PlateauSchedule(config.patience, config.max_drops)
    elif config.lr_schedule == "original_code":
        schedule = OriginalCodeSchedule(config.lr, run_epochs or config.epochs)
    else:
        schedule = StepSchedule(config.lr, config.step_epochs, config.max_drops)
    return Warmup(schedule, config.lr, config.warmup_steps) if config.warmup_steps else schedule
