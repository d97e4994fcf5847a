"""The per-replica training and evaluation steps, as pure functions of their inputs.

`make_train_step` and `make_eval_step` return `tf.function`s that run one step
on every replica of a `tf.distribute` strategy and return the sums over the
global batch, as tensors: the caller decides when to read them back.
`paper_train_step` is the trainer's step with the paper's optimizer, for
measurements; `precision_policy` sets Keras' global policy for a block.
"""

import contextlib

import keras
import tensorflow as tf


def top_k_correct(logits, labels, k):
    return tf.reduce_sum(tf.cast(tf.math.in_top_k(tf.cast(labels, tf.int32), logits, k), tf.float32))


def make_train_step(model, optimizer, *, global_batch_size, strategy, jit=False, mirrored=True, augment=None):
    """A `tf.function(images, labels)` that runs one step on every replica; with `augment`, a
    `tf.function(squares, labels, draws)` whose replicas first make their training images with
    `augment(squares, draws)` (`augmentation.for_training`): on the replica's device, inside the step's
    function and, with `jit`, inside its XLA cluster.

    The loss is the cross-entropy alone; the paper's weight decay is part of
    the update (`PaperSGD`). Returns summed (over the global batch)
    cross-entropy, top-1 and top-5 correct counts, and the norm of the
    cross-entropy's gradient.

    `mirrored=False` is for variables created outside `strategy.scope()`, one
    copy per worker, each on its tower's device (the hybrid scheme,
    `training.build_state`): the replica all-reduces the gradients with the
    strategy's collectives and every worker applies the same sum to its copy.
    """
    variables = model.trainable_variables
    replicas = strategy.num_replicas_in_sync
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(inputs, labels, *draws):
        images = augment(inputs, *draws) if augment is not None else inputs
        logits = model(images, training=True)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)
        ce_sum = tf.reduce_sum(ce)
        # Averaged over the global batch: the all-reduce sums the replicas'
        # gradients into the gradient of the global batch's mean loss.
        loss = ce_sum / global_batch_size
        # tf.gradients, not GradientTape: it keeps each backward op on the
        # device of its forward op, so each tower's backward pass stays home.
        grads = tf.gradients(optimizer.scale_loss(loss) if scales_loss else loss, [v.value for v in variables])
        summed = []
        if mirrored:
            optimizer.apply(grads, variables)
        else:
            summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if scales_loss:
            grads = [g / optimizer.dynamic_scale for g in grads]
        metrics = (ce_sum, top_k_correct(logits, labels, 1), top_k_correct(logits, labels, 5),
                   tf.linalg.global_norm(grads))
        return metrics, summed

    @tf.function(jit_compile=jit)
    def step(*batch):
        metrics, summed = strategy.run(replica_step, args=batch)
        if not mirrored:  # this worker's one replica: apply the global sum to its own copy
            optimizer.apply([strategy.experimental_local_results(g)[0] for g in summed], variables)
        ce, top1, top5, gnorm = (strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in metrics)
        return ce, top1, top5, gnorm / replicas

    return step


def make_eval_step(model, strategy, *, ten_crop=False, views=None):
    """A `tf.function(images, labels)` -> (summed cross-entropy, top-1 and top-5 correct counts).

    With `ten_crop`, images are [batch, 10, h, w, 3] and the softmax of the ten
    views is averaged, as in the paper. With `views` (`augmentation.for_evaluation`), the step takes the
    uint8 squares and each replica cuts its views on its own device.
    """
    def replica_step(images, labels):
        if views is not None:
            images = views(images)
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


@contextlib.contextmanager
def precision_policy(policy):
    """Keras' global precision policy set to `policy` (it must be set before a model is built), and the
    previous one restored after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def paper_train_step(model, batch_size, *, precision="float32", jit=False, augment=None):
    """The trainer's step for `model` with the paper's optimizer (lr 0.01, momentum 0.9, decay 5e-4), on the
    default strategy: what the benchmark and the profile time (with `augment`, the step that augments uint8
    squares, as `make_train_step`). `precision` must be the global policy `model` was built under."""
    from alexnet_tf import optim

    optimizer = optim.make_optimizer(model.trainable_variables, precision=precision)
    return make_train_step(model, optimizer, global_batch_size=batch_size, strategy=tf.distribute.get_strategy(),
                           jit=jit, augment=augment)
