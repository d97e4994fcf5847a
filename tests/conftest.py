import os
import signal

# Quieter TF logs in test output; set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A shell that starts a command in the background without job control (`make test &`, some CI runners) starts
# it with SIGINT ignored, every child inherits that, and a Python child then never installs its Ctrl-C
# handler: the tests that press Ctrl-C on a child trainer failed in every such run. A handler here is reset to
# the default in each child at exec, as in a foreground run.
signal.signal(signal.SIGINT, signal.default_int_handler)

import keras  # noqa: E402
import pytest  # noqa: E402

# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup): each module's tests stay together
# on one worker (its module-scoped fixtures are made once), and the modules that start clusters of trainers
# share one group, so that two clusters never compete for the same two cores (their collectives time out).
CLUSTER_MODULES = {"test_distributed", "test_hybrid", "test_service"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        item.add_marker(pytest.mark.xdist_group("cluster" if module in CLUSTER_MODULES else module))


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


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A TFDS data directory holding the embedded dataset, generated once per test session."""
    from alexnet_tf import data
    from alexnet_tf.config import EMBEDDED_DATASET

    directory = tmp_path_factory.mktemp("tfds")
    data.load_dataset(EMBEDDED_DATASET, str(directory))
    return directory


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One data directory for the session: the shapes folder's statistics are computed once, here."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shapes_folder, data_dir):
    """A tiny run of 6 steps on the shapes folder with checkpoints at steps 2, 4 and 6: what the tests that
    resume, damage, export or fine-tune a workdir start from (copy it before changing it). Returns its
    workdir."""
    from alexnet_tf import training
    from helpers import tiny_config

    workdir = tmp_path_factory.mktemp("tiny_run") / "run"
    training.train(tiny_config(workdir, shapes_folder, data_dir, steps=6, ckpt_every=2, eval_every=6,
                               val_fraction=0.05), log=lambda *_: None)
    return workdir
