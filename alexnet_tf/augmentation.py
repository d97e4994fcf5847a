"""The paper's augmentation of a whole batch inside the train step, on the replica's device (Section 4.1).

The host only reads: the input pipelines ship batches of uint8 central squares (what `raw256` stores), and
with each training batch its `draw`: every image's crop offset, flip and PCA colour coefficients, drawn on
the host from the batch's seed (a few numbers an image). The step then cuts each image's own crop, mirrors
it, adds its colour shift, subtracts the mean and casts to the compute dtype (`train_images`), or cuts the
centre crop or the ten views for evaluation (`eval_images`), in the step's own `tf.function` and, under
`--jit`, inside its XLA cluster. This is what DALI's `crop_mirror_normalize` and FFCV's on-device
normalization do; Keras' `RandomCrop` would take one offset for the whole batch (keras-team/keras#16399).

Why the random numbers are drawn on the host: TensorFlow's stateless random ops promise the same numbers
only on the same device and TensorFlow version, and a per-image seed cannot be vectorized (`pfor` falls back
to a loop over the images). Drawn on the host, a batch's numbers are the same whichever device or compiler
applies them, and everything the device does with them is exact integer indexing plus one matrix product.

`preprocessing.train_view` and `preprocessing.eval_view` are the per-image references these equal.
"""

import tensorflow as tf

from alexnet_tf import preprocessing


def draw(seed, batch_size, *, size, crop):
    """(offsets int32 [batch_size, 2] as (top, left), flips bool [batch_size], alphas float32 [batch_size, 3]):
    each image's random crop of a size x size square, whether it is mirrored (probability 1/2), and its PCA
    lighting coefficients ~ N(0, 0.1). `seed`: shape [2] int."""
    offset_seed, flip_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    offsets = tf.random.stateless_uniform([batch_size, 2], offset_seed, minval=0, maxval=size - crop + 1,
                                          dtype=tf.int32)
    flips = tf.random.stateless_uniform([batch_size], flip_seed) < 0.5
    alphas = tf.random.stateless_normal([batch_size, 3], colour_seed, stddev=0.1)
    return offsets, flips, alphas


def crop_and_flip(squares, offsets, flips, crop):
    """uint8 [B, crop, crop, 3]: image i's crop at offsets[i], mirrored left-right where flips[i]. Two
    gathers of the uint8 pixels, the mirror folded into the columns' order (XLA compiles gathers)."""
    steps = tf.range(crop)
    rows = offsets[:, :1] + steps
    columns = tf.where(flips[:, None], offsets[:, 1:] + (crop - 1) - steps, offsets[:, 1:] + steps)
    patches = tf.gather(squares, rows, axis=1, batch_dims=1)
    return tf.gather(patches, columns, axis=2, batch_dims=1)


def colour_shifts(alphas, eigval, eigvec):
    """[B, 3]: each image's eigvec @ (alpha * eigval), the paper's colour shift (`preprocessing.pca_lighting`)."""
    return tf.linalg.matvec(tf.convert_to_tensor(eigvec, tf.float32),
                            tf.cast(alphas, tf.float32) * tf.convert_to_tensor(eigval, tf.float32))


def train_images(squares, draws, *, crop, mean, eigval, eigvec, pca_lighting=True, flip=True, dtype=tf.float32):
    """The training images of a batch of uint8 squares [B, S, S, 3] and its `draw`: [B, crop, crop, 3] in
    `dtype`, mean subtracted. `flip=False` and `pca_lighting=False` switch the reflections and the colour
    noise off (ablations); `pca_lighting` may also be a boolean tensor (the 2012 code's colour noise, off
    from a step on)."""
    offsets, flips, alphas = draws
    if not flip:
        flips = tf.zeros_like(flips)
    shift = -tf.convert_to_tensor(mean, tf.float32)[None]
    if pca_lighting is not False:
        lit = colour_shifts(alphas, eigval, eigvec)
        if pca_lighting is not True:
            lit = tf.where(pca_lighting, lit, tf.zeros_like(lit))
        shift = lit + shift
    patches = tf.cast(crop_and_flip(squares, offsets, flips, crop), tf.float32)
    return tf.cast(patches + shift[:, None, None, :], dtype)


def eval_images(squares, *, crop, mean, ten_crop=False, dtype=tf.float32):
    """The evaluation views of a batch of squares [B, S, S, 3], mean subtracted, in `dtype`: the centre crops
    [B, crop, crop, 3], or the ten views [B, 10, crop, crop, 3] (`preprocessing.ten_crop_offsets`' five
    patches, then the same five mirrored)."""
    size = squares.shape[1]
    if ten_crop:
        views = tf.stack([squares[:, top:top + crop, left:left + crop]
                          for top, left in preprocessing.ten_crop_offsets(size, crop)], axis=1)
        views = tf.concat([views, tf.reverse(views, axis=[3])], axis=1)
    else:
        offset = (size - crop) // 2
        views = squares[:, offset:offset + crop, offset:offset + crop]
    return tf.cast(tf.cast(views, tf.float32) - tf.convert_to_tensor(mean, tf.float32), dtype)


def for_run(config, stats, *, step=None, colour_noise_until=None):
    """(augment, views) of a run of `config` (a `TrainConfig`): what its train and eval steps do to the
    squares, in the run's compute dtype (bfloat16 or float16 under mixed precision)."""
    import keras

    dtype = keras.mixed_precision.Policy(config.mixed_precision).compute_dtype
    crop = config.model.image_size
    return (for_training(stats, crop=crop, pca_lighting=config.pca_lighting, flip=config.flip, step=step,
                         colour_noise_until=colour_noise_until, dtype=dtype),
            for_evaluation(stats, crop=crop, ten_crop=config.ten_crop, dtype=dtype))


def for_training(stats, *, crop, pca_lighting=True, flip=True, step=None, colour_noise_until=None,
                 dtype=tf.float32):
    """augment(squares, draws) -> the step's training images, with `stats`' mean and colour basis. With
    `colour_noise_until`, the colour noise stops once `step` (the run's step variable) reaches it, counted
    in the step itself, so a resumed run stops it at the same step."""
    def augment(squares, draws):
        lighting = pca_lighting
        if pca_lighting and colour_noise_until is not None:
            lighting = step < colour_noise_until
        return train_images(squares, draws, crop=crop, mean=stats["mean"], eigval=stats["eigval"],
                            eigvec=stats["eigvec"], pca_lighting=lighting, flip=flip, dtype=dtype)

    return augment


def for_evaluation(stats, *, crop, ten_crop=False, dtype=tf.float32):
    """views(squares) -> the step's evaluation views, with `stats`' mean."""
    return lambda squares: eval_images(squares, crop=crop, mean=stats["mean"], ten_crop=ten_crop, dtype=dtype)
