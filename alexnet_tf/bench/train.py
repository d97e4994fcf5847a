"""The forward pass and the train step of the paper model (or of any width and size), timed in memory.

Every step here is the trainer's (`steps.paper_train_step`: `optim.make_optimizer`, `steps.make_train_step`),
and every rate carries the FLOPs per image of the model that was timed (`flops`)."""

from alexnet_tf.bench import flops as flops_lib
from alexnet_tf.bench.timing import time_call


def forward_pass(model, batch_size, *, warmup=2, repeats=5, seed=0):
    """Inference time of `model` on one random in-memory batch, as a compiled tf.function."""
    import tensorflow as tf

    images = tf.random.uniform((batch_size, *model.input_shape[1:]), 0, 255, seed=seed)
    step = tf.function(lambda x: model(x, training=False))
    result = time_call(lambda: step(images).numpy(), warmup=warmup, repeats=repeats)
    result.update(images_per_s=batch_size / result["median_s"], batch_size=batch_size)
    return result


def train_step(batch_size, *, precision="float32", jit=False, warmup=2, repeats=5, seed=0, width=1.0,
               image_size=227, train_layers=None):
    """Images/s of the real training step (paper model unless `width`/`image_size` say otherwise, 1000
    classes) on one in-memory batch, and the step's FLOPs per image. The global precision policy is
    `precision` for the measurement and restored after."""
    import tensorflow as tf

    from alexnet_tf import optim, steps
    from alexnet_tf.model import build_alexnet

    with steps.precision_policy(precision):
        model = build_alexnet(1000, image_size=image_size, width=width, seed=seed)
        if train_layers:  # fine-tuning: only these layers train
            optim.freeze_except(model, train_layers)
        step = steps.paper_train_step(model, batch_size, precision=precision, jit=jit)
        images = tf.random.uniform((batch_size, image_size, image_size, 3), -120, 120, seed=seed)
        labels = tf.random.uniform((batch_size,), 0, 1000, dtype=tf.int64, seed=seed)
        result = time_call(lambda: float(step(images, labels)[0]), warmup=warmup, repeats=repeats)
    result.update(images_per_s=batch_size / result["median_s"], batch_size=batch_size, precision=precision,
                  jit=jit, train_layers=",".join(train_layers) if train_layers else "all",
                  flop_per_image=flops_lib.step_flops(flops_lib.layer_flops(model), train_layers))
    return result


def fine_tuning(layer_sets, *, warmup=2, repeats=5):
    """The full step and a step of each of `layer_sets` (fine-tuning's trained layers) at batch 128: each
    one's images/s, the full step's, and the FLOP ratio the speed-up should reach."""
    full = train_step(128, warmup=warmup, repeats=repeats)
    rows = []
    for layers in layer_sets:
        row = train_step(128, train_layers=layers, warmup=warmup, repeats=repeats)
        rows.append({**row, "flop_ratio": full["flop_per_image"] / row["flop_per_image"],
                     "full_images_per_s": full["images_per_s"]})
    return rows
