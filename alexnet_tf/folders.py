"""Folder datasets (one sub-folder per class) and the scan that finds bad files before training.

Every file is checked once, as training will decode it (`images.check_image`): grayscale and CMYK JPEGs and
PNGs named .JPEG are converted, empty, truncated and non-image files are skipped with the reason, and images
whose header says they exceed `max_pixels` are refused unread (decompression bombs).
"""

import concurrent.futures
import random
from pathlib import Path

import numpy as np
import tensorflow as tf

from alexnet_tf.config import MAX_PIXELS
from alexnet_tf.images import check_image
from alexnet_tf.sources import DatasetError, Source


def _class_files(root):
    """{class name: [files]} for the sub-folders of root, or an error naming what is wrong."""
    if not root.is_dir():
        raise DatasetError(f"folder dataset {str(root)!r} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"folder dataset {str(root)!r} has no class sub-folders; expected one folder per "
                           f"class (or train/ and val/ holding them)")
    return {c: sorted(str(p) for p in (root / c).rglob("*") if p.is_file() and not p.name.startswith("."))
            for c in classes}


def scan_files(files, workers=8, max_pixels=MAX_PIXELS):
    """Checks every file; returns (usable [(path, label)], skipped [(path, why)], converted [(path, what)])."""
    usable, skipped, converted = [], [], []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for (path, label), (ok, note) in zip(files, pool.map(lambda f: check_image(f[0], max_pixels), files)):
            if not ok:
                skipped.append((path, note))
                continue
            usable.append((path, label))
            if note:
                converted.append((path, note))
    return usable, skipped, converted


def load_folder(path, *, val_fraction=0.05, seed=0, max_pixels=MAX_PIXELS):
    # Absolute: the files are read where the pipeline runs, which may be a tf.data service worker started in
    # another directory (issue 32).
    root = Path(path).expanduser().absolute()
    if (root / "train").is_dir():
        train_classes = _class_files(root / "train")
        if not (root / "val").is_dir():
            raise DatasetError(f"folder dataset {str(root)!r} has train/ but no val/ folder")
        val_classes = _class_files(root / "val")
        if unknown := sorted(set(val_classes) - set(train_classes)):
            raise DatasetError(f"folder dataset {str(root)!r}: val/ has classes not in train/: {unknown}")
        names = sorted(train_classes)
        index = {c: i for i, c in enumerate(names)}
        train = [(f, index[c]) for c in names for f in train_classes[c]]
        val = [(f, index[c]) for c in val_classes for f in val_classes[c]]
    else:
        if not 0 < val_fraction < 1:
            raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
        classes = _class_files(root)
        names = sorted(classes)
        train, val = [], []
        for label, c in enumerate(names):
            files = list(classes[c])
            random.Random(f"{seed}/{c}").shuffle(files)  # a fixed split, whatever the machine
            n_val = max(1, int(round(val_fraction * len(files)))) if len(files) > 1 else 0
            val += [(f, label) for f in files[:n_val]]
            train += [(f, label) for f in files[n_val:]]
    present = {label for _, label in train} | {label for _, label in val}
    if empty := [c for i, c in enumerate(names) if i not in present]:
        raise DatasetError(f"folder dataset {str(root)!r}: class folder(s) {', '.join(empty)} hold no files; "
                           f"a class without images cannot be learned: add images or remove the folder")
    if len(names) < 2:
        raise DatasetError(f"folder dataset {str(root)!r} has one class ({names[0]}); classification needs at "
                           f"least two class folders")
    train, skipped_t, converted_t = scan_files(train, max_pixels=max_pixels)
    val, skipped_v, converted_v = scan_files(val, max_pixels=max_pixels)
    if not train:
        raise DatasetError(f"folder dataset {str(root)!r} has no usable training images "
                           f"({len(skipped_t)} files skipped)")
    if not val:
        raise DatasetError(f"folder dataset {str(root)!r} has no usable validation images: hold-out needs at "
                           f"least 2 images in a class (one goes to validation), or put them under val/")

    # The training files in a fixed random order rather than class by class: a shuffle buffer smaller than
    # the split then still mixes classes, and a prepared copy's shards each hold every class.
    random.Random(f"{seed}/order").shuffle(train)

    def pairs(items):
        paths = [p for p, _ in items]
        labels = np.array([l for _, l in items], np.int64)
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        return ds.map(lambda p, l: (tf.io.read_file(p), l), num_parallel_calls=tf.data.AUTOTUNE)

    return Source(name=f"folder:{root}", class_names=names, train=pairs(train), validation=pairs(val),
                  num_train=len(train), num_validation=len(val),
                  skipped=skipped_t + skipped_v, converted=converted_t + converted_v)


