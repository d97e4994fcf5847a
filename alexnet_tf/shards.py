"""A prepared dataset's TFRecord shards as training reads them: `parser` parses and decodes a whole batch of
records at once, `check` refuses at load a folder whose shards are missing or in another format than its
record says, and `find_damaged` and `read_through` find a damaged shard (TensorFlow's read errors name a
byte offset, not the file). `alexnet_tf.prepared` writes the shards and loads the folder."""

from pathlib import Path

import tensorflow as tf

from alexnet_tf import preprocessing
from alexnet_tf.sources import DatasetError, reason

SIZE = preprocessing.RESIZE  # the stored squares' side

# What a prepared record holds, as `tf.io.parse_example` reads it (TFDS's features serialize to these).
FEATURES = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


def parser(jpeg):
    """parse(serialized examples [B]) -> (uint8 squares [B, 256, 256, 3], int64 labels [B]): one
    `parse_example` for the whole batch; raw256's pixels are then one `decode_raw`, jpeg256's one JPEG decode
    an image (TensorFlow decodes JPEGs one at a time, on the host)."""
    shape = tf.TensorSpec([SIZE, SIZE, 3], tf.uint8)

    def parse(serialized):
        features = tf.io.parse_example(serialized, FEATURES)
        if jpeg:
            squares = tf.map_fn(lambda data: tf.ensure_shape(tf.io.decode_jpeg(data, channels=3), shape.shape),
                                features["image"], fn_output_signature=shape)
        else:
            squares = tf.reshape(tf.io.decode_raw(features["image"], tf.uint8), [-1, SIZE, SIZE, 3])
        return squares, features["label"]

    return parse


def check(records, name, jpeg, record_file):
    """Refuses (DatasetError) a prepared dataset `name` whose shards (`records`: {split: [path]}) are not all
    there, or whose first record is not in the format its `record_file` says (a folder whose metadata and
    shards disagree used to hang training)."""
    if missing := next((p for paths in records.values() for p in paths if not Path(p).exists()), None):
        raise DatasetError(f"dataset={name}: shard {missing} is missing; copy the whole folder again, or "
                           f"prepare it again into a new --output")
    first = records["train"][0]
    try:
        image = tf.io.parse_single_example(next(iter(tf.data.TFRecordDataset(first))), FEATURES)["image"]
    except (StopIteration, tf.errors.OpError) as e:
        raise DatasetError(f"dataset={name}: {first} cannot be read ({reason(e)})") from None
    is_jpeg = bool(tf.io.is_jpeg(image))
    if is_jpeg != jpeg or (not jpeg and len(image.numpy()) != SIZE * SIZE * 3):
        stored = "JPEGs" if is_jpeg else f"{len(image.numpy())}-byte records"
        raise DatasetError(f"dataset={name}: its {record_file} says {'jpeg256' if jpeg else 'raw256'} but {first} "
                           f"holds {stored}; the folder's metadata and shards come from different preparations")


def find_damaged(paths):
    """(path, reason) of the first of these TFRecord files that cannot be read to its end (truncated, or a
    record whose checksum fails), or None. TensorFlow's read error names the byte offset, not the file: this
    reads each file to find it, so it is for the failure path only."""
    for path in paths:
        try:
            for _ in tf.data.TFRecordDataset(path).batch(256):
                pass
        except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
            return path, _why(e)
    return None


def _why(error):
    """A TensorFlow read error's reason alone: "{{function_node ...}} truncated record at 1573336' failed with
    Read less bytes than requested [Op:IteratorGetNext]" -> "truncated record at 1573336"."""
    return error.message.splitlines()[0].split("}} ")[-1].split("' failed")[0].split(" [Op:")[0]


def read_through(path, parse, advance):
    """(records read, None) of a shard read to its end, parsing and decoding each record with `parse` as
    training does (a record at a time, so a damaged one is counted exactly), or (records read before it,
    why) where it is damaged. `advance()` is called for each record."""
    read = 0
    try:
        for _ in tf.data.TFRecordDataset(str(path)).batch(1).map(parse, num_parallel_calls=tf.data.AUTOTUNE):
            read += 1
            advance()
    except tf.errors.OpError as e:
        return read, _why(e)
    return read, None
