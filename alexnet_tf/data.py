"""Datasets and input pipelines for training and evaluation.

A dataset is named by a string (the train script's `--dataset`):

- `alexnet_shapes` (the default): the embedded offline dataset, a TFDS builder
  inside this package (`alexnet_tf.datasets`), generated on first use.
- `imagenet2012`: TFDS, built from the official ILSVRC2012 tars in the manual
  dir (`<data_dir>/downloads/manual/`); see the README.
- any other TFDS image-classification dataset (`imagenette`,
  `imagenet2012_subset/1pct`, ...), downloaded by TFDS where the machine can.
- `folder:PATH`: one sub-folder per class, either under `PATH/train` and
  `PATH/val`, or directly under PATH with a held-out fraction for validation
  (`alexnet_tf.folders`, which also scans them for bad files).

`load_dataset` returns a `Source`: encoded image bytes and integer labels for
the train and validation splits, with the class names. `train_pipeline` and
`eval_pipeline` turn those into batches with the paper's preprocessing.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from alexnet_tf import preprocessing
from alexnet_tf.config import EMBEDDED_DATASET, MAX_PIXELS

# ImageNet's published RGB statistics (0..255 scale), used for imagenet2012
# unless computed ones are stored: the per-channel mean, and the eigenvalues
# and eigenvectors (columns) of the RGB covariance over the training set, as
# published with fb.resnet.torch's re-implementation of the paper's lighting.
IMAGENET_STATISTICS = {
    "mean": [123.68, 116.779, 103.939],
    "eigval": [0.2175 * 255, 0.0188 * 255, 0.0045 * 255],
    "eigvec": [[-0.5675, 0.7192, 0.4009],
               [-0.5808, -0.0045, -0.8140],
               [-0.5836, -0.6948, 0.4203]],
}


@dataclasses.dataclass
class Source:
    """A dataset as encoded images: `train` and `validation` yield (image bytes, int64 label)."""
    name: str
    class_names: list
    train: tf.data.Dataset
    validation: tf.data.Dataset
    num_train: int
    num_validation: int
    # Files that could not be used, as (path, reason); folder datasets only.
    skipped: list = dataclasses.field(default_factory=list)
    # Files that were usable after conversion, as (path, what was done).
    converted: list = dataclasses.field(default_factory=list)

    @property
    def num_classes(self):
        return len(self.class_names)


class DatasetError(ValueError):
    """A dataset name or folder that cannot be used; the message says why."""


def default_data_dir():
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _download_and_prepare(builder, name, data_dir):
    """TFDS's download_and_prepare, failing fast where the machine has no network.

    TFDS retries every failed request with backoff (minutes without a network). The first attempt here
    runs without those retries: if it cannot even connect, the dataset cannot be had from this machine
    and that is said at once. Any other failure of that attempt (a server error, say) gets TFDS's
    normal attempt with its retries."""
    import requests
    from tensorflow_datasets.core.download import downloader

    retries = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = 0
    try:
        builder.download_and_prepare()
        return
    except requests.exceptions.ConnectionError as e:
        host = getattr(getattr(e, "request", None), "url", None) or "its download server"
        raise DatasetError(f"dataset={name}: is not prepared in {data_dir} and needs a download from {host}, "
                           f"which this machine cannot reach; build it where there is network (tfds build "
                           f"{name} --data_dir=...) and copy the data dir here") from None
    except AssertionError:  # missing manual files: nothing a retry would change
        raise
    except Exception:  # noqa: BLE001  anything else: TFDS's own attempt, with its retries, decides
        pass
    finally:
        downloader.MAX_RETRIES = retries
    builder.download_and_prepare()


def imagenet_class_names():
    """(synsets, human-readable names) of ImageNet's 1000 classes, in label order, shipped in the package."""
    rows = [line.split("\t") for line in
            (Path(__file__).with_name("imagenet_classes.tsv")).read_text().splitlines()
            if line and not line.startswith("#")]
    return [r[0] for r in rows], [r[1] for r in rows]


def _is_imagenet(name):
    """imagenet2012 and its TFDS subsets: 1000 synset labels, ImageNet's statistics."""
    return name.split("/")[0].split(":")[0] in ("imagenet2012", "imagenet2012_subset")


def load_dataset(name, data_dir=None, *, val_fraction=0.05, seed=0, download=True, max_pixels=MAX_PIXELS):
    """The dataset called `name` (see the module docstring) as a `Source`."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset must be a name such as '{EMBEDDED_DATASET}', 'imagenet2012' or "
                           f"'folder:PATH', got {name!r}")
    if name.startswith("folder:"):
        from alexnet_tf.folders import load_folder

        return load_folder(name[len("folder:"):], val_fraction=val_fraction, seed=seed, max_pixels=max_pixels)
    return load_tfds(name, data_dir, val_fraction=val_fraction, download=download)


def load_tfds(name, data_dir=None, *, val_fraction=0.05, download=True):
    import tensorflow_datasets as tfds
    import alexnet_tf.datasets  # noqa: F401  registers alexnet_shapes

    data_dir = data_dir or default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for unknown names
        raise DatasetError(f"dataset={name}: not a TFDS dataset this installation knows ({e}); "
                           f"use '{EMBEDDED_DATASET}', a TFDS name, or 'folder:PATH'") from None
    if download:
        try:
            _download_and_prepare(builder, name, data_dir)
        except AssertionError as e:  # TFDS's way of saying the manual files are missing
            raise DatasetError(f"dataset={name}: {e}") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetError(f"dataset={name}: not an image-classification dataset "
                           f"(it has features {sorted(features.keys())}, needs 'image' and 'label')")
    splits = builder.info.splits
    if "train" not in splits:
        raise DatasetError(f"dataset={name}: has no 'train' split (splits: {sorted(splits.keys())})")
    eval_split = next((s for s in ("validation", "test") if s in splits), None)
    train_split = "train"
    if eval_split is None:
        held_out = max(1, int(round(val_fraction * 100)))
        train_split, eval_split = f"train[:{100 - held_out}%]", f"train[{100 - held_out}%:]"

    def as_pairs(split):
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                                shuffle_files=split.startswith("train"))
        return ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int64)))

    names = list(features["label"].names)
    if _is_imagenet(name):
        synsets, readable = imagenet_class_names()
        lookup = dict(zip(synsets, readable))
        names = [lookup.get(n, n) for n in names]
    return Source(name=name, class_names=names, train=as_pairs(train_split), validation=as_pairs(eval_split),
                  num_train=builder.info.splits[train_split].num_examples,
                  num_validation=builder.info.splits[eval_split].num_examples)


# ----------------------------------------------------------------------------
# Statistics: mean and PCA colour basis over the training split
# ----------------------------------------------------------------------------

def compute_statistics(images, max_images=2000, pixels_per_image=1024, seed=0):
    """Per-channel mean and the RGB covariance's eigen-decomposition over `images` (encoded bytes).

    Each image is decoded as training sees it (central 256x256) and a random
    sample of its pixels enters the covariance.
    """
    rng = np.random.default_rng(seed)
    decoded = images.take(max_images).map(preprocessing.decode_center_256, num_parallel_calls=tf.data.AUTOTUNE)
    total, count, samples = np.zeros(3), 0, []
    for image in decoded.as_numpy_iterator():
        pixels = image.reshape(-1, 3).astype(np.float64)
        total += pixels.sum(0)
        count += len(pixels)
        samples.append(pixels[rng.choice(len(pixels), min(pixels_per_image, len(pixels)), replace=False)])
    if not count:
        raise DatasetError("cannot compute statistics over an empty training split")
    # The paper's eigenvalues are those of the covariance of RGB values in
    # [0, 1] (in 0..255 units the shift would be hundreds of levels); they are
    # stored times 255, the units in which the pipeline adds the shift, as
    # IMAGENET_STATISTICS are.
    eigval, eigvec = np.linalg.eigh(np.cov(np.concatenate(samples) / 255.0, rowvar=False))
    order = np.argsort(eigval)[::-1]
    return {"mean": (total / count).tolist(), "eigval": (255.0 * np.maximum(eigval[order], 0)).tolist(),
            "eigvec": eigvec[:, order].tolist(), "images": len(samples)}


def _statistics_path(source_name, data_dir):
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source_name.strip("/"))
    return Path(data_dir or default_data_dir()) / "alexnet_tf_statistics" / f"{safe}.json"


def dataset_statistics(source, data_dir=None, *, recompute=False, max_images=2000, log=print):
    """The statistics the pipeline subtracts and augments with, stored beside the dataset.

    Read from `<data_dir>/alexnet_tf_statistics/<name>.json` if present;
    otherwise ImageNet's published values for imagenet2012, or computed over
    the training split (up to `max_images` images) and stored there.
    """
    path = _statistics_path(source.name, data_dir)
    if path.exists() and not recompute:
        return json.loads(path.read_text())
    if _is_imagenet(source.name) and not recompute:
        return dict(IMAGENET_STATISTICS)
    log(f"computing mean and PCA colour basis of {source.name} over up to {max_images} training images")
    stats = compute_statistics(source.train.map(lambda image, label: image), max_images=max_images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats, indent=2))
    tmp.replace(path)
    log(f"stored statistics in {path}")
    return stats


# ----------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------

def train_pipeline(examples, stats, *, batch_size, crop=227, resize=preprocessing.RESIZE, seed=0,
                   shuffle_buffer=10_000, deterministic=False, pca_lighting=True, flip=True, pca_lighting_until=None):
    """Endless shuffled batches of (augmented image, label) from (image bytes, label) examples.

    Images are resized to `resize` (the paper's 256) before the random crop.
    Each example's crop, flip and colour shift come from a seed derived from
    (`seed`, its position in the stream), so with `deterministic=True` the
    batches are exactly reproducible; otherwise map results may arrive out of
    order, which is faster. Pass a different `seed` on every (re)start.
    With `pca_lighting_until`, only the stream's first that many images get the colour noise.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    options = tf.data.Options()
    options.deterministic = deterministic
    lighting = lambda index: (pca_lighting if pca_lighting_until is None or not pca_lighting  # noqa: E731
                              else index < pca_lighting_until)
    view = lambda index, image: preprocessing.train_view(  # noqa: E731
        image, tf.stack([tf.constant(seed, tf.int64), index]), crop=crop, resize=resize,
        mean=stats["mean"], eigval=stats["eigval"], eigvec=stats["eigvec"], pca_lighting=lighting(index), flip=flip)
    ds = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().map(lambda i, ex: (view(i, ex[0]), ex[1]), num_parallel_calls=tf.data.AUTOTUNE)
    # A file that breaks after the scan must not end a long run; TF logs it.
    ds = ds.ignore_errors(log_warning=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(options)


def eval_pipeline(examples, stats, *, batch_size, crop=227, resize=preprocessing.RESIZE, ten_crop=False):
    """One pass of (centre crop or [10 views], label) batches, in order."""
    view = lambda image: preprocessing.eval_view(image, crop=crop, resize=resize, mean=stats["mean"],  # noqa: E731
                                                 ten_crop=ten_crop)
    ds = examples.map(lambda image, label: (view(image), label),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
