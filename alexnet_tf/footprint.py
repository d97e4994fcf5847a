"""How much memory a training step will need, estimated before the first step from the model's layer shapes,
and the check that refuses a batch that cannot fit in the machine's memory (BUILD_NOTES "Memory: the
estimate before the first step", where the constants below were measured)."""

import dataclasses
from pathlib import Path

import numpy as np

GIB = 2**30

# What a step keeps per image, as a multiple of the sum of its layers' outputs: the slope of the measured peak
# of alexnet-train with the paper model (batches 128 and 256, inputs subtracted) was 1.39x that sum; of the
# bare train step, 1.0-1.23x (batches 16-256). TensorFlow keeps the tensors the backward pass needs, and its
# CPU pool grows in doubling regions. Evaluation, per view: 0.49-0.63x (ten crops, batches 32-128); even
# forward only, the two towers' ops run side by side and the pool holds on to what they used.
ACTIVATIONS = 1.4
EVAL_ACTIVATIONS = 0.65
# Input batches alive at once: the one trained on, the one prefetched, the one being built. They are uint8
# squares; the step makes the float images from them.
INPUT_BATCHES = 3
# Bytes a value of the model's input costs while the step makes it from the squares (`augmentation`): the
# uint8 crop and the rows gathered on the way to it (1 + 1), the float32 cast and the float32 image after the
# shift, which the backward pass of conv1 keeps (4 + 4). Evaluation the same, for each view. Counting one float
# image instead (issue 29's first version) put the estimate 8.6-10.3% under alexnet-train's measured peak
# (BUILD_NOTES "Input on the device").
AUGMENTATION_BYTES = 10
# Beyond the weights and momentum the process already holds: the gradients, and one transient of that size
# while the optimizer updates (the benchmark's peak minus the resident memory before the first step).
GRADIENT_COPIES = 2


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A step's memory beyond what the process holds before it: `fixed` bytes whatever the batch, and
    `per_image` bytes for each image of this process's share of the batch."""
    fixed: int
    per_image: int

    def at(self, local_batch):
        return self.fixed + local_batch * self.per_image


def estimate(model, *, local_replicas=1, views=1, square=None):
    """The `Estimate` of a training step of `model` (a built Keras model) with `local_replicas` copies of its
    gradients in this process (a mirrored strategy's replicas on this host), fed uint8 squares of `square`
    pixels a side (default: the model's input size). Evaluation with `views` views an image (10 for the
    paper's ten crops) runs every view forward; whichever needs more counts."""
    outputs = [int(np.prod(layer.output.shape[1:])) for layer in model.layers]
    itemsize = np.dtype(model.layers[1].compute_dtype).itemsize  # float16 activations under mixed precision
    image = int(np.prod(model.input_shape[1:]))
    squares = INPUT_BATCHES * 3 * (square or model.input_shape[1]) ** 2
    train = ACTIVATIONS * sum(outputs) * itemsize + AUGMENTATION_BYTES * image + squares
    evaluation = views * (EVAL_ACTIVATIONS * sum(outputs) * itemsize + AUGMENTATION_BYTES * image) + squares
    trainable = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.trainable_variables)
    return Estimate(fixed=GRADIENT_COPIES * trainable * local_replicas, per_image=int(max(train, evaluation)))


def resident_bytes(field="VmRSS"):
    """This process's resident memory now (VmRSS), or its peak so far (`field="VmHWM"`: not getrusage's
    ru_maxrss, which Linux carries across fork and exec, so a child would report its parent's peak)."""
    return _kib_field("/proc/self/status", field)


def available_bytes():
    """(bytes this process can still take, where that figure comes from): the kernel's MemAvailable, or less
    if the process's cgroup (a container's memory limit) leaves less."""
    available, where = _kib_field("/proc/meminfo", "MemAvailable"), "MemAvailable in /proc/meminfo"
    if (room := _cgroup_room()) is not None and room < available:
        available, where = room, "the memory limit of this process's cgroup"
    return available, where


def _kib_field(path, field):
    """The `field: N kB` line of a /proc file, in bytes."""
    with open(path) as f:
        return 1024 * int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def _cgroup_room(cgroups="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """The room left under this process's cgroup memory limit, in bytes, or None where there is no limit:
    cgroup v2's memory.max - memory.current, or v1's memory.limit_in_bytes - memory.usage_in_bytes (v1 says
    "no limit" with a number near 2**63)."""
    try:
        lines = Path(cgroups).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2's unified hierarchy
            folder, limit_file, usage_file = Path(root) / path.lstrip("/"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            folder, limit_file, usage_file = Path(root) / "memory" / path.lstrip("/"), "memory.limit_in_bytes", \
                "memory.usage_in_bytes"
        else:
            continue
        try:
            limit = (folder / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2**62:
                continue
            return int(limit) - int((folder / usage_file).read_text())
        except (OSError, ValueError):
            continue
    return None


def check_batch_fits(estimate_, batch_size, *, workers=1, multiple=1, available=None, holds=None):
    """Raises ValueError (`batch_size=N: ...`, naming the largest batch that fits) if this process's share of
    a `batch_size` batch (split over `workers` processes) needs more than `available` bytes beyond what it
    `holds`; both default to this machine's figures now. The largest batch named is a multiple of `multiple`
    (the replicas in sync). Returns the estimated peak of this process, in bytes."""
    available, where = available_bytes() if available is None else (available, "given")
    holds = resident_bytes() if holds is None else holds
    local = batch_size // workers
    if estimate_.at(local) > available:
        largest = max(0, (available - estimate_.fixed) // estimate_.per_image) * workers // multiple * multiple
        fits = (f"the largest batch that fits is {largest}" if largest else
                f"not even a batch of {multiple} fits: free memory or use a smaller model preset")
        raise ValueError(
            f"batch_size={batch_size}: a training step at this batch needs about {estimate_.at(local) / GIB:.1f} "
            f"GiB{' a worker' if workers > 1 else ''} beyond the {holds / GIB:.1f} GiB already in use, and "
            f"{available / GIB:.1f} GiB is available ({where}); {fits}")
    return holds + estimate_.at(local)
