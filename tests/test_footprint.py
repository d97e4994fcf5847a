"""The step's memory estimate and the check that refuses a batch that cannot fit, before the first step."""

import re

import numpy as np
import pytest

from alexnet_tf import footprint, optim
from alexnet_tf.model import build_alexnet
from tests.helpers import cli


@pytest.fixture(scope="module")
def tiny():
    return build_alexnet(10, image_size=67, width=0.125, seed=0)


def test_the_estimate_follows_the_layer_shapes_and_what_trains(tiny):
    need = footprint.estimate(tiny, square=76)
    outputs = sum(int(np.prod(layer.output.shape[1:])) for layer in tiny.layers)
    # The pipeline's batches are uint8 squares (76 pixels a side for the tiny preset); the step makes the
    # crops from them (uint8, then float32).
    crop, square = footprint.AUGMENTATION_BYTES * 67 * 67 * 3, 76 * 76 * 3
    assert need.per_image == int(footprint.ACTIVATIONS * outputs * 4 + crop + footprint.INPUT_BATCHES * square)
    assert footprint.estimate(tiny, square=256).per_image - need.per_image == \
        footprint.INPUT_BATCHES * 3 * (256**2 - 76**2)
    assert need.fixed == footprint.GRADIENT_COPIES * 4 * tiny.count_params()
    assert footprint.estimate(tiny, local_replicas=2).fixed == 2 * need.fixed  # a gradient copy per replica
    assert footprint.estimate(tiny, views=10).per_image > need.per_image      # ten crops forward each image
    paper = build_alexnet(1000, seed=0)
    assert footprint.estimate(paper).per_image > (227 / 67) ** 2 * need.per_image  # wider too, not only larger
    tuned = optim.freeze_except(build_alexnet(10, image_size=67, width=0.125, seed=0), ["fc8"])
    assert footprint.estimate(tuned).fixed == footprint.GRADIENT_COPIES * 4 * tuned.get_layer("fc8").count_params()


def test_a_batch_that_does_not_fit_is_refused_naming_the_largest_that_does():
    need = footprint.Estimate(fixed=1000, per_image=100)
    assert footprint.check_batch_fits(need, 40, available=1000 + 40 * 100, holds=7) == 7 + 1000 + 40 * 100
    with pytest.raises(ValueError) as e:
        footprint.check_batch_fits(need, 41, available=1000 + 40 * 100, holds=0)
    assert re.fullmatch(r"batch_size=41: a training step at this batch needs about .* GiB beyond the 0\.0 GiB "
                        r"already in use, and .* GiB is available \(given\); the largest batch that fits is 40",
                        str(e.value))
    # Two workers, each takes half; the largest named divides over the 4 replicas in sync, and fits.
    with pytest.raises(ValueError, match=r"a worker .* the largest batch that fits is 80$"):
        footprint.check_batch_fits(need, 100, workers=2, multiple=4, available=1000 + 41 * 100, holds=0)
    footprint.check_batch_fits(need, 80, workers=2, multiple=4, available=1000 + 41 * 100, holds=0)
    with pytest.raises(ValueError, match=r"not even a batch of 4 fits"):
        footprint.check_batch_fits(need, 8, multiple=4, available=1000 + 3 * 100, holds=0)


def test_the_machines_figures_are_read():
    available, where = footprint.available_bytes()
    with open("/proc/meminfo") as f:
        total = 1024 * int(next(line.split()[1] for line in f if line.startswith("MemTotal:")))
    assert 0 < available <= total and where
    assert 0 < footprint.resident_bytes() <= footprint.resident_bytes("VmHWM")


def test_the_trainer_refuses_a_batch_this_machine_cannot_hold_before_its_first_step(tmp_path):
    """A real refusal on this machine's real memory: a folder dataset (one tiny JPEG, hard-linked) large enough
    that the paper model at a batch of the whole training split needs more than the machine has."""
    from PIL import Image

    per_image = footprint.estimate(build_alexnet(2, seed=0)).per_image
    batch = int(1.2 * footprint.available_bytes()[0] / per_image) + 2
    if batch > 20_000:
        pytest.skip(f"this machine has too much free memory for a folder of {batch} images")
    root, first = tmp_path / "big", tmp_path / "one.jpg"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(first)
    for i in range(int(batch / 0.85) + 2):  # 10% goes to validation
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 2}" / f"{i}.jpg").hardlink_to(first)
    proc = cli("train", f"--dataset=folder:{root}", f"--data_dir={tmp_path / 'data'}", f"--workdir={tmp_path / 'run'}",
               "--preset=paper", f"--batch_size={batch}", "--steps=1", "--export_dir=", timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    largest = int(re.fullmatch(rf"alexnet-train: error: --batch_size={batch}: a training step at this batch needs "
                               r"about [\d.]+ GiB beyond the [\d.]+ GiB already in use, and [\d.]+ GiB is available "
                               r"\(.*\); the largest batch that fits is (\d+)", lines[0])[1])
    assert 0 < largest < batch
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_containers_memory_limit_is_read_in_cgroup_v1_and_v2(tmp_path, version):
    """Issue 32: a cgroup v1 limit (memory.limit_in_bytes) was ignored and a batch it could not hold was
    accepted against the machine's MemAvailable, then OOM-killed."""
    root = tmp_path / "sys"
    if version == "v1":
        lines = "12:cpu,cpuacct:/job\n4:memory:/job\n0::/job\n"
        folder, limit, usage = root / "memory" / "job", "memory.limit_in_bytes", "memory.usage_in_bytes"
    else:
        lines = "0::/job\n"
        folder, limit, usage = root / "job", "memory.max", "memory.current"
    folder.mkdir(parents=True)
    (tmp_path / "cgroup").write_text(lines)
    (folder / limit).write_text(f"{3 * 2**30}\n")
    (folder / usage).write_text(f"{2**30}\n")
    assert footprint._cgroup_room(tmp_path / "cgroup", root) == 2 * 2**30
    (folder / limit).write_text("9223372036854771712\n" if version == "v1" else "max\n")  # no limit
    assert footprint._cgroup_room(tmp_path / "cgroup", root) is None
