import os

# Quieter TF logs in test output; set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

# The tiny preset used by most tests: the paper's topology at 1/8 width on
# 67x67 inputs (the smallest size that survives to pool5).
TINY = dict(num_classes=10, image_size=67, width=0.125)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Each test starts and ends with Keras' default float32 policy."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory):
    """A small folder dataset (10 classes x 8 JPEGs, 96x96) rendered like the embedded dataset."""
    from PIL import Image
    from alexnet_tf.datasets.shapes_render import CLASS_NAMES, render

    root = tmp_path_factory.mktemp("shapes_folder")
    for i in range(80):
        pixels, label = render("train", i)
        path = root / CLASS_NAMES[label] / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).resize((96, 96)).save(path, quality=90)
    return root


def tiny_config(workdir, dataset_dir, data_dir, **overrides):
    from alexnet_tf.training import TrainConfig
    values = dict(dataset=f"folder:{dataset_dir}", data_dir=str(data_dir), workdir=str(workdir), preset="tiny",
                  batch_size=8, steps=4, eval_every=2, log_every=1, val_fraction=0.25, seed=0)
    values.update(overrides)
    return TrainConfig(**values)
