"""Tower placement, proven on two logical CPUs in a subprocess.

The op devices read here are the ones the graph requests; the subprocess runs
with soft placement off, so executing the step also proves they are honoured.
"""

import re

import pytest

from alexnet_tf import build_alexnet, resolve_tower_devices
from helpers import TINY, run_with_devices as run

BUILD = f"""
from alexnet_tf import build_alexnet, device_free
model = build_alexnet(**{TINY!r}, tower_devices=("/CPU:0", "cpu:1"), seed=0)
images = tf.random.uniform((2, 67, 67, 3), seed=0) * 255
labels = tf.constant([1, 2])

def describe(graph):
    return [dict(name=op.name, type=op.type, device=op.device,
                 inputs=[(t.op.name, t.op.device) for t in op.inputs]) for op in graph.get_operations()]
"""

# Ops of a tower's own layers, forward or backward ("gradients/alexnet_1/conv3_b_1/...").
TOWER_OP = re.compile(r"(?:^|/)(?:conv\d|norm\d|pool\d|merge\d|flatten6|fc\d|drop\d)_([ab])(?:_\d+)?/")
HEAD_OP = re.compile(r"(?:^|/)(?:fc8|fc7_features)(?:_\d+)?/")
DEVICE = {"a": "/device:CPU:0", "b": "/device:CPU:1"}
# LRN's forward and backward passes are calls of XLA-compiled functions (alexnet_tf/layers.py), which
# run where the call is placed; within the towers only the LRN calls functions.
COMPUTE = {"Conv2D", "MatMul", "PartitionedCall", "MaxPool", "Relu", "BiasAdd", "ConcatV2",
           "Conv2DBackpropFilter", "Conv2DBackpropInput", "MaxPoolGrad", "ReluGrad", "BiasAddGrad"}


def tower_of(op_name):
    if m := TOWER_OP.search(op_name):
        return m.group(1)
    if HEAD_OP.search(op_name):
        return "a"  # fc8 runs on tower a's device
    return None


@pytest.fixture(scope="module")
def traced():
    return run(BUILD + """
@tf.function
def forward(images):
    return model(images, training=False)

@tf.function
def gradients(images, labels):
    logits = model(images, training=True)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    # tf.gradients colocates each backward op with its forward op.
    return tf.gradients(loss, [v.value for v in model.trainable_variables])

grads = gradients(images, labels)  # runs with soft placement off
print(json.dumps(dict(
    variables={v.path: v.value.device for v in model.trainable_variables},
    forward=describe(forward.get_concrete_function(images).graph),
    backward=describe(gradients.get_concrete_function(images, labels).graph),
    finite=bool(all(tf.reduce_all(tf.math.is_finite(g)) for g in grads)))))
""")


def test_variables_live_on_their_towers_device(traced):
    assert len(traced["variables"]) == 30
    for path, device in traced["variables"].items():
        layer = path.split("/")[0]
        tower = "a" if layer == "fc8" else layer[-1]
        assert device.endswith(DEVICE[tower]), (path, device)


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_every_tower_op_runs_on_its_towers_device(traced, pass_):
    ops = traced[pass_]
    checked = {t: set() for t in "ab"}
    for op in ops:
        tower = tower_of(op["name"])
        if tower and op["type"] in COMPUTE:
            assert op["device"] == DEVICE[tower], op
            checked[tower].add(op["type"])
    want = {"Conv2D", "MatMul", "PartitionedCall", "MaxPool", "ConcatV2"}
    if pass_ == "backward":
        want |= {"Conv2DBackpropFilter", "MaxPoolGrad", "ReluGrad", "BiasAddGrad"}
    for tower in "ab":
        assert want <= checked[tower], (tower, want - checked[tower])
    # Both LRN layers of each tower, forward and (in the backward graph) backward, are calls on its device.
    lrn_calls = [op["name"] for op in ops if op["type"] == "PartitionedCall" and re.search(r"norm\d_[ab]", op["name"])]
    assert len(lrn_calls) == (8 if pass_ == "backward" else 4), lrn_calls
    assert traced["finite"]


def test_towers_exchange_data_only_at_the_merges(traced):
    """Every edge between the two devices carries a merge's input or its gradient."""
    def strip(name):
        return re.sub(r"_\d+(?=/|$)", "", name)

    merges = {f"alexnet/{m}_{t}/concat" for m in ("merge3", "merge6", "merge7") for t in "ab"}
    merges.add("alexnet/fc7_features/concat")
    merge_grad = re.compile(r"^gradients/(alexnet/(merge\d_[ab]|fc7_features)/concat_grad/Slice|AddN)")
    for pass_ in ("forward", "backward"):
        edges = [(strip(src), strip(op["name"])) for op in traced[pass_] if op["device"]
                 for src, device in op["inputs"] if device and device != op["device"]]
        forward = {dst for src, dst in edges if not dst.startswith("gradients/")}
        backward = {src for src, dst in edges if dst.startswith("gradients/")}
        # Forward: only the concatenations where a tower reads the other's maps.
        assert forward == merges, pass_
        # Backward: only the gradients coming back out of those concatenations.
        assert all(merge_grad.match(src) for src in backward), (pass_, backward)
        assert bool(backward) == (pass_ == "backward")


def test_device_free_copy_shares_weights_and_pins_nothing():
    out = run(BUILD + """
copy = device_free(model)
fn = tf.function(lambda x: copy(x, training=False))
graph = fn.get_concrete_function(images).graph
print(json.dumps(dict(
    pinned=sorted({op.device for op in graph.get_operations()} - {""}),
    same_variables=[a is b for a, b in zip(copy.trainable_variables, model.trainable_variables)],
    count=(len(copy.trainable_variables), len(model.trainable_variables)),
    max_diff=float(tf.reduce_max(tf.abs(fn(images) - model(images, training=False)))),
    scale=float(tf.reduce_max(tf.abs(fn(images)))))))
""")
    assert out["pinned"] == []
    assert out["count"] == [30, 30] and all(out["same_variables"])
    # Same weights, same function; the copy's LRN is the plain-op formulation, so
    # the two differ by float32 rounding only.
    assert out["max_diff"] <= 1e-5 * out["scale"], out


def test_missing_device_is_an_error_listing_the_real_ones():
    with pytest.raises(ValueError, match=r"tower_devices\[1\]='/GPU:7' does not exist on this machine; "
                                         r"devices on this machine: /CPU:0"):
        build_alexnet(**TINY, tower_devices=("/CPU:0", "/GPU:7"))
    with pytest.raises(ValueError, match=r"tower_devices\[0\]='/CPU' must name a device type and index"):
        resolve_tower_devices(("/CPU", "/CPU:0"))
    with pytest.raises(ValueError, match="pair of device names"):
        resolve_tower_devices("/CPU:0")


@pytest.mark.skipif(len(__import__("tensorflow").config.list_logical_devices("GPU")) >= 2,
                    reason="with two GPUs automatic placement pins the towers to them")
def test_automatic_placement_without_gpus_pins_nothing():
    # With fewer than two GPUs TensorFlow's own placement runs both towers on
    # the one GPU or the CPU; explicit names are canonicalised.
    assert resolve_tower_devices(None) == (None, None)
    assert resolve_tower_devices(("cpu:0", "/device:CPU:0")) == ("/device:CPU:0", "/device:CPU:0")
