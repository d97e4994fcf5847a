"""Where each tower runs: everything about device placement lives in this module.

The paper split AlexNet into two towers so that each could live on its own
GTX 580. Reproducing that in Keras 3 on TensorFlow has three traps:

1. A `with tf.device(...)` around layer calls while *building* a functional
   model only places the variables created then; Keras replays the graph later
   without the scope, so every op lands on the default device. The scope has
   to be opened each time the layer itself is called. `OnDevice.__call__` does
   that, and since Keras' `__call__` runs both `build()` and `call()`, it
   places the variables and the forward ops alike.
2. `tf.GradientTape.gradient` creates every backward op on the ambient device.
   `tf.gradients` inside a `tf.function` colocates each gradient op with its
   forward op, so the training step must use `tf.gradients` (see
   `tests/test_placement.py`, which checks both).
3. A SavedModel records the device of every op in its functions. A model whose
   towers are pinned to /GPU:1 would not load on a machine without one. The
   export therefore traces `device_free(model)`, which shares the weights but
   opens no device scope. (Export also traces the LRN from plain ops rather
   than XLA functions, `layers.plain_ops()`, for the same reason: the graph
   must run anywhere. It composes the two itself.)
"""

import contextlib
import contextvars

import keras
import tensorflow as tf

from alexnet_tf import layers
from alexnet_tf.layers import LocalResponseNormalization

# False while tracing through `device_free`: placed layers then open no scope.
_placement_enabled = contextvars.ContextVar("alexnet_tf_placement_enabled", default=True)


@contextlib.contextmanager
def _placement_disabled():
    token = _placement_enabled.set(False)
    try:
        yield
    finally:
        _placement_enabled.reset(token)


def _local_devices():
    """{(device_type, index): full name} of this process's logical devices."""
    found = {}
    for d in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(d.name)
        found[(spec.device_type, spec.device_index)] = d.name
    return found


def _canonical_device(device, position):
    """'/gpu:1', 'GPU:1', '/device:GPU:1' -> '/device:GPU:1'; an error for anything not on this machine."""
    local = _local_devices()
    available = ", ".join(sorted(f"/{t}:{i}" for t, i in local))
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"tower_devices[{position}] must be a device name such as '/GPU:1', "
                         f"got {device!r}; devices on this machine: {available}")
    text = device.strip()
    try:
        spec = tf.DeviceSpec.from_string(text if text.startswith("/") else "/" + text)
    except (ValueError, TypeError) as e:
        raise ValueError(f"tower_devices[{position}]={device!r} is not a device name ({e}); "
                         f"devices on this machine: {available}") from None
    if spec.job not in (None, "localhost") or spec.task not in (None, 0):
        raise ValueError(f"tower_devices[{position}]={device!r} names a remote device; towers must run on "
                         f"this machine's devices ({available}). Use --strategy=multi_worker to scale "
                         f"across machines.")
    if spec.device_type is None or spec.device_index is None:
        raise ValueError(f"tower_devices[{position}]={device!r} must name a device type and index, "
                         f"such as '/GPU:1'; devices on this machine: {available}")
    key = (spec.device_type.upper(), spec.device_index)
    if key not in local:
        # Soft placement would silently move the tower elsewhere; a typo must fail here.
        hint = " (cpu_devices=2 splits the CPU into /CPU:0 and /CPU:1)" if key[0] == "CPU" else ""
        raise ValueError(f"tower_devices[{position}]={device!r} does not exist on this machine; "
                         f"devices on this machine: {available}{hint}")
    return f"/device:{key[0]}:{key[1]}"


def split_cpu(n):
    """Splits the host CPU into `n` logical devices, /CPU:0 ... /CPU:n-1, so that tower placement can be
    tried (and seen in a profile or the log) on a machine without GPUs. They share the same cores.
    Must run before TensorFlow initializes its devices; a ValueError says so otherwise."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        raise ValueError(f"cpu_devices={n}: TensorFlow's devices are initialized already in this process; "
                         f"split the CPU before anything else runs") from None


def resolve_tower_devices(tower_devices=None):
    """The (tower a, tower b) devices for `build_alexnet`.

    `None` is automatic: with two or more GPUs, tower a on /GPU:0 and tower b on
    /GPU:1, as in the paper. With fewer, no tower is pinned: TensorFlow's own
    placement then runs both towers on the one GPU, or on the CPU when there is
    none, and a data-parallel `tf.distribute` strategy can put each replica on
    its own device. A pair of names is checked against this machine's devices.
    """
    if tower_devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) >= 2:
            return ("/device:GPU:0", "/device:GPU:1")
        return (None, None)
    if isinstance(tower_devices, str) or len(tower_devices) != 2:
        raise ValueError(f"tower_devices must be None or a pair of device names (tower a, tower b), "
                         f"got {tower_devices!r}")
    return tuple(_canonical_device(d, i) for i, d in enumerate(tower_devices))


class OnDevice:
    """Mixin for a Keras layer: build and call it under `tf.device(self.device)`.

    `device=None` means no scope. The device is part of the layer's config.
    """

    def __init__(self, *args, device=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.device = device

    def __call__(self, *args, **kwargs):
        if self.device is None or not _placement_enabled.get():
            return super().__call__(*args, **kwargs)
        with tf.device(self.device):
            return super().__call__(*args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "device": self.device}


def _placed(layer_class):
    placed = type(layer_class.__name__, (OnDevice, layer_class), {
        "__doc__": f"`keras.layers.{layer_class.__name__}` built and run on `device` (see `OnDevice`).",
        "__module__": __name__,
    })
    return keras.saving.register_keras_serializable(package="alexnet_tf.placed")(placed)


# The layer types a tower is made of, each with a `device=` argument.
Conv2D = _placed(keras.layers.Conv2D)
Dense = _placed(layers.Dense)
MaxPooling2D = _placed(keras.layers.MaxPooling2D)
Dropout = _placed(keras.layers.Dropout)
Concatenate = _placed(keras.layers.Concatenate)
Flatten = _placed(keras.layers.Flatten)
LocalResponseNormalization = _placed(LocalResponseNormalization)
CrossTowerLRN = _placed(layers.CrossTowerLRN)
SameMapResponseNormalization = _placed(layers.SameMapResponseNormalization)
ReLU = _placed(keras.layers.ReLU)


class _DeviceFree(keras.Model):
    """Runs `placed` with every tower's device scope switched off."""

    def __init__(self, placed, **kwargs):
        super().__init__(name=placed.name, **kwargs)
        self.placed = placed

    def call(self, inputs, training=False):
        with _placement_disabled():
            return self.placed(inputs, training=training)


def device_free(model):
    """A model that shares `model`'s weights but pins no op to a device.

    Export traces this copy, so the SavedModel loads on any machine, also with
    soft device placement off. Training further through `model` changes this
    copy too: the variables are the same objects.
    """
    return _DeviceFree(model)
