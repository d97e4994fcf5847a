"""Datasets by name: what `--dataset` takes, loaded as a `sources.Source`.

- `alexnet_shapes` (the default): the embedded offline dataset, a TFDS builder
  inside this package (`alexnet_tf.datasets`), generated on first use.
- `imagenet2012`: TFDS, built from the official ILSVRC2012 tars in the manual
  dir (`<data_dir>/downloads/manual/`); see the README.
- any other TFDS image-classification dataset (`imagenette`,
  `imagenet2012_subset/1pct`, ...), downloaded by TFDS where the machine can.
- `folder:PATH`: one sub-folder per class, either under `PATH/train` and
  `PATH/val`, or directly under PATH with a held-out fraction for validation
  (`alexnet_tf.folders`, which also scans them for bad files).
- `prepared:PATH`: any of these, prepared once by alexnet-prepare as 256x256
  squares (`alexnet_tf.prepared`).

A `Source` holds encoded image bytes and integer labels for the train and
validation splits, with the class names; `alexnet_tf.pipelines` turns them
into batches with the paper's preprocessing, `alexnet_tf.statistics` gives
the mean and colour basis they use.
"""

import os
from pathlib import Path

import tensorflow as tf

from alexnet_tf import folders, prepared, sources
from alexnet_tf.config import EMBEDDED_DATASET, MAX_PIXELS
from alexnet_tf.sources import DatasetError, Source
from alexnet_tf.statistics import default_data_dir, is_imagenet


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
        downloader.MAX_RETRIES = retries
        return
    except requests.exceptions.ConnectionError as e:
        # MAX_RETRIES stays 0 here: TFDS's other downloads run on in its thread pool after this one failed,
        # and those started after a restore would each retry for minutes before the process could end
        # (measured: 208 s after the error line was printed).
        host = getattr(getattr(e, "request", None), "url", None) or "its download server"
        raise DatasetError(f"dataset={name}: is not prepared in {data_dir} and needs a download from {host}, "
                           f"which this machine cannot reach; build it where there is network (tfds build "
                           f"{name} --data_dir=...) and copy the data dir here") from None
    except AssertionError:  # missing manual files: nothing a retry would change
        downloader.MAX_RETRIES = retries
        raise
    except Exception:  # noqa: BLE001  anything else: TFDS's own attempt, with its retries, decides
        downloader.MAX_RETRIES = retries
    builder.download_and_prepare()


def imagenet_class_names():
    """(synsets, human-readable names) of ImageNet's 1000 classes, in label order, shipped in the package."""
    rows = [line.split("\t") for line in
            (Path(__file__).with_name("imagenet_classes.tsv")).read_text().splitlines()
            if line and not line.startswith("#")]
    return [r[0] for r in rows], [r[1] for r in rows]


def load_dataset(name, data_dir=None, *, val_fraction=0.05, seed=0, download=True, max_pixels=MAX_PIXELS,
                 ordered=False):
    """The dataset called `name` (see the module docstring) as a `Source`. With `ordered`, each split is read
    in the same order every time (TFDS otherwise shuffles the training split's files), as a preparation
    needs to resume."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset must be a name such as '{EMBEDDED_DATASET}', 'imagenet2012', "
                           f"'folder:PATH' or 'prepared:PATH', got {name!r}")
    if name.startswith("folder:"):
        return folders.load_folder(name[len("folder:"):], val_fraction=val_fraction, seed=seed, max_pixels=max_pixels)
    if name.startswith(prepared.PREFIX):
        return prepared.load(name[len(prepared.PREFIX):])
    return load_tfds(name, data_dir, val_fraction=val_fraction, download=download, ordered=ordered)


def load_tfds(name, data_dir=None, *, val_fraction=0.05, download=True, ordered=False):
    import tensorflow_datasets as tfds
    import alexnet_tf.datasets  # noqa: F401  registers alexnet_shapes

    data_dir = os.path.abspath(data_dir or default_data_dir())  # read where the pipeline runs (a service worker)
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
        except (OSError, tf.errors.OpError) as e:  # TFDS creating its folders in a data_dir it cannot write
            raise DatasetError(f"data_dir={data_dir}: cannot prepare {name} there ({sources.reason(e)}); give a "
                               f"--data_dir that can be written, or one where it is prepared already") from None
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
        # No cardinality assertion: under the tf.data service's dynamic sharding each worker reads part of a split.
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                                shuffle_files=split.startswith("train") and not ordered,
                                read_config=tfds.ReadConfig(assert_cardinality=False))
        return ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int64)))

    names = list(features["label"].names)
    if is_imagenet(name):
        synsets, readable = imagenet_class_names()
        lookup = dict(zip(synsets, readable))
        names = [lookup.get(n, n) for n in names]
    return Source(name=name, class_names=names, train=as_pairs(train_split), validation=as_pairs(eval_split),
                  num_train=builder.info.splits[train_split].num_examples,
                  num_validation=builder.info.splits[eval_split].num_examples)
