"""What every dataset becomes: a `Source` of stored images and labels, and the error for one that cannot be
used. (`alexnet_tf.data` names and loads them; `alexnet_tf.folders` reads folder datasets.)"""

import dataclasses

from alexnet_tf import preprocessing


class DatasetError(ValueError):
    """A dataset name or folder that cannot be used; the message says why."""


@dataclasses.dataclass
class Source:
    """A dataset as stored images: `train` and `validation` are `tf.data.Dataset`s of (stored image, int64
    label), and `decode(image, size)` turns one stored image into what the pipelines crop: its central
    square at size x size, 0..255 (float32, or uint8 where no resizing was needed). Datasets of encoded files
    (JPEG, PNG, ...) decode with `decode_center_256`; prepared ones (squares already) give their own, and
    their `records` and `parse` too."""
    name: str
    class_names: list
    train: object
    validation: object
    num_train: int
    num_validation: int
    # Files that could not be used, as (path, reason); folder datasets only.
    skipped: list = dataclasses.field(default_factory=list)
    # Files that were usable after conversion, as (path, what was done).
    converted: list = dataclasses.field(default_factory=list)
    decode: object = preprocessing.decode_center_256
    # The mean and PCA colour basis to train with, for a dataset that carries its own (prepared ones do).
    statistics: dict | None = None
    # Prepared datasets: each split's TFRecord files in order, and `parse(serialized examples [B])` -> (uint8
    # squares [B, S, S, 3], int64 labels [B]), so that the pipelines parse and decode a whole batch at once
    # rather than a record at a time (BUILD_NOTES "Input on the device").
    records: dict | None = None
    parse: object = None

    @property
    def num_classes(self):
        return len(self.class_names)

    def square(self, image, size=preprocessing.RESIZE):
        """One stored image's central square at size x size as uint8: what the pipelines ship and raw256 stores
        (`decode`'s output, rounded)."""
        return preprocessing.to_uint8(self.decode(image, size))


def reason(error):
    """The short reason of an OS or TensorFlow error, for a one-line message: its strerror, else its message's
    first line."""
    return getattr(error, "strerror", None) or getattr(error, "message", None) or str(error).splitlines()[0]


def report(source, log):
    """Says which files of `source` were skipped (each with why) and how many were converted."""
    for path, why in source.skipped:
        log(f"skipped {path}: {why}")
    if source.skipped:
        log(f"skipped {len(source.skipped)} unusable file(s) of {source.name}")
    if source.converted:
        log(f"converted {len(source.converted)} file(s) of {source.name} (grayscale, CMYK or mislabelled format)")
