"""The input pipelines: what the host does for training and evaluation, which is only reading.

A dataset's stored images become batches of uint8 central squares (`size` x `size`, the paper's 256) with
their labels, and a training batch also carries each image's random draw (`augmentation.draw`: its crop
offset, flip and colour coefficients). The crops, flips, colour shifts, mean and float cast happen in the
step, on the device (`alexnet_tf.augmentation`). A prepared dataset is read a batch at a time (one
`parse_example` and one `decode_raw` for raw256); other datasets decode each image's central square and round
it to uint8, as alexnet-prepare stores it. `for_training` gives the pair a run reads.
"""

import tensorflow as tf

from alexnet_tf import augmentation, preprocessing

AUTOTUNE = tf.data.AUTOTUNE


def train_pipeline(source, *, batch_size, size=preprocessing.RESIZE, crop=227, seed=0, shuffle_buffer=10_000,
                   deterministic=False, distribute=None):
    """Endless shuffled batches of (uint8 squares [batch_size, size, size, 3], int64 labels, draws) of
    `source`'s training split, for `augmentation.train_images` to turn into `crop` x `crop` training images.

    The draws of the k-th batch come from the seed (`seed`, k), so with `deterministic=True` the batches and
    their augmentation are exactly reproducible; otherwise batches may arrive out of order, which is faster.
    Pass a different `seed` on every (re)start. `distribute(batches)`, if given, is applied last (the tf.data
    service: what crosses its wire is then the uint8 batches and their draws).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = _shuffled_squares(source, batch_size, size, shuffle_buffer=shuffle_buffer, seed=seed)
    seeds = tf.constant(seed, tf.int64)
    ds = ds.enumerate().map(lambda k, batch: (*batch, augmentation.draw(tf.stack([seeds, k]), batch_size,
                                                                        size=size, crop=crop)))
    if distribute is not None:
        ds = distribute(ds)
    return ds.prefetch(AUTOTUNE).with_options(options)


def _shuffled_squares(source, batch_size, size, *, shuffle_buffer, seed):
    if source.records is not None:  # a prepared dataset: shuffle the records, parse a batch at a time
        files = source.records["train"]
        records = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed).interleave(
            tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE)
        batches = records.shuffle(shuffle_buffer, seed=seed).repeat().batch(batch_size, drop_remainder=True)
        return batches.map(lambda serialized: _sized(*source.parse(serialized), size), num_parallel_calls=AUTOTUNE)
    ds = source.train.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda image, label: (source.square(image, size), label), num_parallel_calls=AUTOTUNE)
    # A file that breaks after the scan must not end a long run; TF logs it. Skipped within each epoch, before
    # `repeat`: an epoch of which no file can be read (every file gone, or a data worker that sees other paths)
    # is empty, and `repeat` ends on an empty epoch, where after it the skipping went on for ever (issue 32).
    return ds.ignore_errors(log_warning=True).repeat().batch(batch_size, drop_remainder=True)


def eval_pipeline(source, split="validation", *, batch_size, size=preprocessing.RESIZE, count=None):
    """One pass over `split` ("validation" or "train") of `source` in order, as (uint8 squares [B, size,
    size, 3], labels) batches; only its first `count` images if given. `augmentation.eval_images` cuts the
    views."""
    if source.records is not None:
        ds = tf.data.TFRecordDataset(source.records[split])
        ds = ds.take(count) if count else ds
        return ds.batch(batch_size).map(lambda serialized: _sized(*source.parse(serialized), size),
                                        num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    examples = source.train if split == "train" else source.validation
    examples = examples.take(count) if count else examples
    ds = examples.map(lambda image, label: (source.square(image, size), label), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def _sized(squares, labels, size):
    """A batch of stored squares at `size` (a model whose `resize` is not the stored 256: area averaging to
    shrink, bilinear to enlarge, as `preprocessing.center_square`), uint8."""
    if squares.shape[1] == size:
        return squares, labels
    method = "area" if squares.shape[1] > size else "bilinear"
    return preprocessing.to_uint8(tf.image.resize(squares, (size, size), method=method)), labels


def for_training(config, source, start, task=0):
    """(training batches, validation batches) of a run of `config` on `source`, the training stream reseeded
    from the step it starts at. A multi-worker run's workers (`task`: this one's index) each take their share
    of every global batch. With `config.data_service`, the training batches come from the tf.data service's
    workers instead (`alexnet_tf.service`): each trainer reads its own job, shuffled and drawn with its own
    seed, so trainers get different images; evaluation always runs here."""
    model = config.model
    seed = config.seed * 1_000_003 + start + (task * 7_919 if config.data_service else 0)
    distribute = None
    if config.data_service:
        # One job per trainer and start: two trainers sharing a job were measured to receive overlapping
        # batches (BUILD_NOTES "tf.data service"). What a trainer reads from its job it must not shard again.
        from alexnet_tf import service
        distribute = lambda ds: service.distribute(  # noqa: E731
            ds, config.data_service, job_name=f"alexnet_tf:{config.workdir}:{start}:{task}")
    train_ds = train_pipeline(source, batch_size=config.batch_size, size=model.resize, crop=model.image_size,
                              seed=seed, deterministic=config.deterministic, distribute=distribute)
    val_ds = eval_pipeline(source, batch_size=config.batch_size, size=model.resize,
                           count=config.max_eval_images or None)
    if config.strategy == "multi_worker":
        train_ds = train_ds.with_options(_sharding(tf.data.experimental.AutoShardPolicy.OFF if config.data_service
                                                   else tf.data.experimental.AutoShardPolicy.DATA))
        val_ds = val_ds.with_options(_sharding(tf.data.experimental.AutoShardPolicy.DATA))
    return train_ds, val_ds


def _sharding(policy):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return options
