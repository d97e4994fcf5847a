import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_tf.model import build_alexnet, conv1_padding, weight_layer_names
from helpers import TINY


@pytest.fixture(scope="module")
def paper_model():
    return build_alexnet(seed=0)


@pytest.fixture(scope="module")
def tiny():
    return build_alexnet(**TINY, seed=0)


def spatial_sizes(model):
    return [model.get_layer(n).output.shape[1] for n in ("conv1_a", "pool1_a", "pool2_a", "pool5_b")]


def test_layer_names_are_stable(tiny):
    assert weight_layer_names() == [
        "conv1_a", "conv1_b", "conv2_a", "conv2_b", "conv3_a", "conv3_b", "conv4_a", "conv4_b",
        "conv5_a", "conv5_b", "fc6_a", "fc6_b", "fc7_a", "fc7_b", "fc8"]
    weighted = [layer.name for layer in tiny.layers if layer.weights]
    assert sorted(weighted) == sorted(weight_layer_names())


@pytest.mark.heavy
def test_paper_model_parameter_count_and_shapes(paper_model):
    # Computed from the paper's table: per tower conv 11*11*3*48, 5*5*48*128,
    # 3*3*256*192, 3*3*192*192, 3*3*192*128; fc 9216*2048, 4096*2048; one fc8.
    per_tower = [(11 * 11 * 3, 48), (5 * 5 * 48, 128), (3 * 3 * 256, 192), (3 * 3 * 192, 192),
                 (3 * 3 * 192, 128), (6 * 6 * 256, 2048), (4096, 2048)]
    expected = 2 * sum(i * o + o for i, o in per_tower) + 4096 * 1000 + 1000
    assert expected == 60_965_224
    assert sum(int(np.prod(v.shape)) for v in paper_model.trainable_variables) == expected
    assert spatial_sizes(paper_model) == [55, 27, 13, 6]
    assert paper_model.output.shape == (None, 1000)
    kernels = {n: tuple(paper_model.get_layer(n).kernel.shape) for n in weight_layer_names()}
    assert kernels["conv1_b"] == (11, 11, 3, 48)
    assert kernels["conv2_b"] == (5, 5, 48, 128)   # its own tower's 48 maps only
    assert kernels["conv3_a"] == (3, 3, 256, 192)  # both towers' maps
    assert kernels["conv4_b"] == (3, 3, 192, 192)
    assert kernels["fc6_a"] == (9216, 2048)
    assert kernels["fc7_b"] == (4096, 2048)
    assert kernels["fc8"] == (4096, 1000)


def test_paper_224_input_reaches_55_like_cuda_convnet():
    assert conv1_padding(227) == 0
    assert conv1_padding(224) == 3  # 224 + 3 = 227 = 54 * 4 + 11
    model = build_alexnet(10, image_size=224, width=0.125)
    assert spatial_sizes(model) == [55, 27, 13, 6]
    assert model.get_layer("conv1_pad").output.shape[1:3] == (227, 227)


@pytest.mark.heavy
def test_paper_model_forward_pass_is_finite(paper_model):
    images = tf.random.normal((4, 227, 227, 3), seed=1) * 50
    logits = paper_model(images, training=False)
    assert logits.shape == (4, 1000) and logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()
    assert np.std(logits.numpy()) > 0


@pytest.mark.heavy
def test_initialization_follows_the_paper(paper_model):
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
    for name in weight_layer_names():
        layer = paper_model.get_layer(name)
        want_bias = 1.0 if name.split("_")[0] in ones else 0.0
        np.testing.assert_array_equal(layer.bias.numpy(), want_bias, err_msg=name)
        kernel = layer.kernel.numpy()
        assert abs(kernel.std() - 0.01) < 0.1 * 0.01 and abs(kernel.mean()) < 0.002, name


def test_seed_makes_initialization_reproducible():
    a, b, c = (build_alexnet(**TINY, seed=s) for s in (7, 7, 8))
    for x, y, z in zip(a.get_weights(), b.get_weights(), c.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a.get_weights(), c.get_weights()))
    # Different layers draw from different seeds.
    assert not np.array_equal(a.get_layer("conv1_a").kernel.numpy(), a.get_layer("conv1_b").kernel.numpy())


def test_width_scales_filters_and_units(tiny):
    assert tiny.get_layer("conv1_a").filters == 6      # 48 / 8
    assert tiny.get_layer("conv3_b").kernel.shape == (3, 3, 32, 24)
    assert tiny.get_layer("fc6_a").units == 256
    assert tiny.get_layer("fc8").kernel.shape == (512, 10)
    assert tiny.output.shape == (None, 10)


def test_towers_only_meet_at_the_merges(tiny):
    """Perturbing tower a's pool1 changes conv3_b (through the merge) but never conv2_b."""
    probe = keras.Model([tiny.get_layer("pool1_a").output, tiny.get_layer("pool1_b").output],
                        [tiny.get_layer("conv2_a").output, tiny.get_layer("conv2_b").output,
                         tiny.get_layer("conv3_b").output])
    rng = np.random.default_rng(0)
    shape = (2, *tiny.get_layer("pool1_a").output.shape[1:])
    pool1_a, pool1_b = (rng.uniform(0, 1, shape).astype(np.float32) for _ in range(2))
    before = [t.numpy() for t in probe([pool1_a, pool1_b])]
    after = [t.numpy() for t in probe([pool1_a + rng.normal(size=shape).astype(np.float32), pool1_b])]
    assert not np.allclose(before[0], after[0])           # conv2_a reads tower a
    np.testing.assert_array_equal(before[1], after[1])    # conv2_b does not
    assert not np.allclose(before[2], after[2])           # conv3_b reads both towers


def test_fc6_sees_pool5_concatenated_a_then_b_and_flattened_nhwc(tiny):
    probe = keras.Model([tiny.get_layer("pool5_a").output, tiny.get_layer("pool5_b").output],
                        [tiny.get_layer("flatten6_a").output, tiny.get_layer("flatten6_b").output])
    rng = np.random.default_rng(1)
    shape = (2, *tiny.get_layer("pool5_a").output.shape[1:])
    a, b = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    want = np.concatenate([a, b], axis=-1).reshape(2, -1)
    for got in probe([a, b]):
        np.testing.assert_array_equal(got.numpy(), want)


def test_dropout_is_active_only_in_training(tiny):
    images = tf.random.uniform((3, 67, 67, 3), seed=2) * 100
    np.testing.assert_array_equal(tiny(images).numpy(), tiny(images).numpy())
    assert not np.allclose(tiny(images, training=True).numpy(), tiny(images).numpy())
    no_dropout = build_alexnet(**TINY, seed=0, dropout=0.0)
    np.testing.assert_allclose(no_dropout(images, training=True).numpy(), tiny(images).numpy(), rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=0), "num_classes must be a positive integer, got 0"),
    (dict(num_classes=2.5), "got 2.5"),
    (dict(image_size=66), "image_size must be an integer >= 67.*got 66"),
    (dict(width=0), "width must be .* got 0"),
    (dict(dropout=1.0), "dropout must be a rate in \\[0, 1\\), got 1.0"),
    (dict(seed="1"), "seed must be None or an integer, got '1'"),
    (dict(name=""), "name must be a non-empty string"),
    (dict(init_std=0), "init_std must be a positive number, got 0"),
])
def test_bad_arguments_say_what_was_received(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_alexnet(**{**TINY, **kwargs})


def test_init_std_sets_the_weight_spread():
    model = build_alexnet(10, image_size=67, width=0.5, init_std=0.03, seed=0)
    kernel = model.get_layer("fc6_a").kernel.numpy()  # 2304 x 1024 samples
    assert abs(kernel.std() - 0.03) < 0.001
