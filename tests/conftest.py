import os

# Quieter TF logs in test output; set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


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
