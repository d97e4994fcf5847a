"""What the trainer writes to TensorBoard: scalars, weight histograms and conv1's kernels (Figure 3)."""

import tensorflow as tf

from alexnet_tf.optim import kernels


def first_layer_grid(model):
    """conv1's kernels of both towers (96 at full width) as one [1, H, W, 3] image: the paper's Figure 3.

    Tower a's kernels fill the top rows, tower b's the bottom rows; each kernel
    is scaled to [0, 1] on its own, with a one-pixel border between kernels.
    """
    rows = []
    for t in [t for t in ("a", "b") if any(layer.name == f"conv1_{t}" for layer in model.layers)]:
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


def write(writer, step, scalars, model=None, images=False):
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
        if model is not None:
            for k in kernels(model):
                weight_histogram(f"weights/{k.path}", k.value)
        if images and model is not None:
            tf.summary.image("conv1_kernels", first_layer_grid(model))
    writer.flush()


def read_scalars(folder, tag):
    """[(step, value)] of scalar `tag` in the TensorBoard event files of `folder` (a run's train/ or
    validation/), by step: what the run logged, read back for a plot or a table."""
    found = {}
    for path in sorted(tf.io.gfile.glob(f"{folder}/events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    found[event.step] = float(tf.make_ndarray(value.tensor))
    return sorted(found.items())


def writers(workdir, chief):
    """(train, validation) summary writers under the workdir; no-op writers on a non-chief worker."""
    if not chief:
        return tf.summary.create_noop_writer(), tf.summary.create_noop_writer()
    return (tf.summary.create_file_writer(str(workdir / "train")),
            tf.summary.create_file_writer(str(workdir / "validation")))
