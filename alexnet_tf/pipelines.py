"""The input pipelines: a dataset's stored images to batches of the paper's training views (random crop,
flip, PCA lighting, mean subtracted) or evaluation views (centre crop or ten views), and the pair a training
run reads (`for_training`)."""

import tensorflow as tf

from alexnet_tf import preprocessing


def train_pipeline(examples, stats, *, batch_size, crop=227, resize=preprocessing.RESIZE,
                   decode=preprocessing.decode_center_256, seed=0, shuffle_buffer=10_000, deterministic=False,
                   pca_lighting=True, flip=True, pca_lighting_until=None, distribute=None):
    """Endless shuffled batches of (augmented image, label) from (stored image, label) examples.

    `decode(image, resize)` gives each image's central square at `resize` (the paper's 256) before the
    random crop. Each example's crop, flip and colour shift come from a seed derived from (`seed`, its
    position in the stream), so with `deterministic=True` the batches are exactly reproducible; otherwise
    map results may arrive out of order, which is faster. Pass a different `seed` on every (re)start.
    With `pca_lighting_until`, only the stream's first that many images get the colour noise.
    Crops are batched in the decoded square's dtype (uint8 from a prepared raw256 or jpeg256 dataset) with
    their colour shifts, and the shifts added to each batch at once; `distribute(batches)`, if given, is
    applied in between (the tf.data service: what crosses its wire is then the compact batches).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    options = tf.data.Options()
    options.deterministic = deterministic
    lighting = lambda index: (pca_lighting if pca_lighting_until is None or not pca_lighting  # noqa: E731
                              else index < pca_lighting_until)
    patch = lambda index, image: preprocessing.train_patch(  # noqa: E731
        decode(image, resize), tf.stack([tf.constant(seed, tf.int64), index]), crop=crop, mean=stats["mean"],
        eigval=stats["eigval"], eigvec=stats["eigvec"], pca_lighting=lighting(index), flip=flip)
    ds = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().map(lambda i, ex: (patch(i, ex[0]), ex[1]), num_parallel_calls=tf.data.AUTOTUNE)
    # A file that breaks after the scan must not end a long run; TF logs it.
    ds = ds.ignore_errors(log_warning=True).batch(batch_size, drop_remainder=True)
    if distribute is not None:
        ds = distribute(ds)
    ds = ds.map(lambda patches, labels: (preprocessing.apply_shift(*patches), labels),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def eval_pipeline(examples, stats, *, batch_size, crop=227, resize=preprocessing.RESIZE,
                  decode=preprocessing.decode_center_256, ten_crop=False):
    """One pass of (centre crop or [10 views], label) batches, in order."""
    ds = examples.map(lambda image, label: (preprocessing.eval_view(decode(image, resize), crop=crop,
                                                                    mean=stats["mean"], ten_crop=ten_crop), label),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def for_training(config, source, stats, start, colour_noise_until=None, task=0):
    """(training batches, validation batches) of a run of `config` on `source`, the training stream reseeded
    from the step it starts at. `colour_noise_until`: the step from which the training images get no colour
    noise (None: never). A multi-worker run's workers (`task`: this one's index) each take their share of
    every global batch. With `config.data_service`, the training batches come from the tf.data service's
    workers instead (`alexnet_tf.service`): each trainer reads its own job, shuffled and augmented with its
    own seed, so trainers get different images; evaluation always runs here."""
    model = config.model
    until = None if colour_noise_until is None else max(0, colour_noise_until - start) * config.batch_size
    seed = config.seed * 1_000_003 + start + (task * 7_919 if config.data_service else 0)
    distribute = None
    if config.data_service:
        # One job per trainer and start: two trainers sharing a job were measured to receive overlapping
        # batches (BUILD_NOTES "tf.data service"). What a trainer reads from its job it must not shard again.
        from alexnet_tf import service
        distribute = lambda ds: service.distribute(  # noqa: E731
            ds, config.data_service, job_name=f"alexnet_tf:{config.workdir}:{start}:{task}")
    train_ds = train_pipeline(source.train, stats, batch_size=config.batch_size, crop=model.image_size,
                              resize=model.resize, decode=source.decode, seed=seed,
                              deterministic=config.deterministic, pca_lighting=config.pca_lighting, flip=config.flip,
                              pca_lighting_until=until, distribute=distribute)
    val_examples = source.validation
    if config.max_eval_images:
        val_examples = val_examples.take(config.max_eval_images)
    val_ds = eval_pipeline(val_examples, stats, batch_size=config.batch_size, crop=model.image_size,
                           resize=model.resize, decode=source.decode, ten_crop=config.ten_crop)
    if config.strategy == "multi_worker":
        train_ds = train_ds.with_options(_sharding(tf.data.experimental.AutoShardPolicy.OFF if config.data_service
                                                   else tf.data.experimental.AutoShardPolicy.DATA))
        val_ds = val_ds.with_options(_sharding(tf.data.experimental.AutoShardPolicy.DATA))
    return train_ds, val_ds


def _sharding(policy):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return options
