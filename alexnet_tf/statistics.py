"""The statistics the pipelines subtract and augment with: the per-channel mean and the PCA colour basis of a
dataset's training split, computed once and stored beside the dataset (or ImageNet's published values)."""

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from alexnet_tf.sources import DatasetError

# ImageNet's published RGB statistics (0..255 scale), used for imagenet2012 unless computed ones are stored:
# the per-channel mean, and the eigenvalues and eigenvectors (columns) of the RGB covariance over the
# training set, as published with fb.resnet.torch's re-implementation of the paper's lighting.
IMAGENET_STATISTICS = {
    "mean": [123.68, 116.779, 103.939],
    "eigval": [0.2175 * 255, 0.0188 * 255, 0.0045 * 255],
    "eigvec": [[-0.5675, 0.7192, 0.4009],
               [-0.5808, -0.0045, -0.8140],
               [-0.5836, -0.6948, 0.4203]],
}


def default_data_dir():
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def is_imagenet(name):
    """imagenet2012 and its TFDS subsets: 1000 synset labels, ImageNet's statistics."""
    return name.split("/")[0].split(":")[0] in ("imagenet2012", "imagenet2012_subset")


def compute_statistics(squares, max_images=2000, pixels_per_image=1024, seed=0):
    """Per-channel mean and the RGB covariance's eigen-decomposition over `squares`: a dataset of images as
    training sees them before the crop (the central square, float32 0..255). Each image's pixels enter the
    mean, and a random sample of them the covariance."""
    rng = np.random.default_rng(seed)
    total, count, samples = np.zeros(3), 0, []
    for image in squares.take(max_images).as_numpy_iterator():
        pixels = image.reshape(-1, 3).astype(np.float64)
        total += pixels.sum(0)
        count += len(pixels)
        samples.append(pixels[rng.choice(len(pixels), min(pixels_per_image, len(pixels)), replace=False)])
    if not count:
        raise DatasetError("cannot compute statistics over an empty training split")
    # The paper's eigenvalues are those of the covariance of RGB values in [0, 1] (in 0..255 units the shift
    # would be hundreds of levels); they are stored times 255, the units in which the pipeline adds the
    # shift, as IMAGENET_STATISTICS are.
    eigval, eigvec = np.linalg.eigh(np.cov(np.concatenate(samples) / 255.0, rowvar=False))
    order = np.argsort(eigval)[::-1]
    return {"mean": (total / count).tolist(), "eigval": (255.0 * np.maximum(eigval[order], 0)).tolist(),
            "eigvec": eigvec[:, order].tolist(), "images": len(samples)}


def statistics_path(source_name, data_dir):
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source_name.strip("/"))
    return Path(data_dir or default_data_dir()) / "alexnet_tf_statistics" / f"{safe}.json"


def dataset_statistics(source, data_dir=None, *, recompute=False, max_images=2000, log=print):
    """The statistics of `source`: its own (`source.statistics`, where it carries them), else read from
    `<data_dir>/alexnet_tf_statistics/<name>.json` if present, else ImageNet's published values for
    imagenet2012, else computed over the training split (up to `max_images` images) and stored there."""
    if source.statistics is not None and not recompute:
        return dict(source.statistics)
    path = statistics_path(source.name, data_dir)
    if path.exists() and not recompute:
        return json.loads(path.read_text())
    if is_imagenet(source.name) and not recompute:
        return dict(IMAGENET_STATISTICS)
    log(f"computing mean and PCA colour basis of {source.name} over up to {max_images} training images")
    squares = source.train.map(lambda image, label: source.decode(image), num_parallel_calls=tf.data.AUTOTUNE)
    stats = compute_statistics(squares, max_images=max_images)
    # Every worker of a multi-worker run computes the same statistics into a shared data_dir: each writes its
    # own temporary file, and the last rename wins with identical content.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(stats, indent=2))
        tmp.replace(path)
    except OSError as e:
        raise DatasetError(f"data_dir={data_dir or default_data_dir()}: cannot store the statistics of {source.name} "
                           f"in {path.parent} ({e.strerror}); give a --data_dir that can be written") from None
    log(f"stored statistics in {path}")
    return stats
