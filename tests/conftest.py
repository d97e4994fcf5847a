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
