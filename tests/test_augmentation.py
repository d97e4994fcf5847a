"""The augmentation the train step runs on a batch (alexnet_tf.augmentation) against the per-image reference
(preprocessing.train_view, eval_view): eagerly, in a tf.function and compiled by XLA."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import augmentation, preprocessing, steps
from alexnet_tf.model import build_alexnet
from helpers import TINY

STATS = dict(mean=[120.0, 110.0, 100.0], eigval=[50.0, 5.0, 1.0],
             eigvec=np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].tolist())
MODES = {"eager": lambda fn: fn, "function": tf.function, "jit": lambda fn: tf.function(fn, jit_compile=True)}


def index_squares(count, size=256):
    """`count` uint8 squares whose pixel (y, x) holds (y, x, 0): a crop's offset and mirroring read off its
    corners."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.broadcast_to(np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8), (count, size, size, 3))


def random_squares(count, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def rows(draws, i):
    return tuple(d[i] for d in draws)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size,crop", [(256, 227), (256, 224), (76, 67)])
def test_batched_augmentation_equals_the_per_image_reference(mode, size, crop):
    squares = tf.constant(random_squares(12, size))
    draws = augmentation.draw(tf.constant([5, 9], tf.int64), 12, size=size, crop=crop)
    crops = MODES[mode](lambda s, d: augmentation.crop_and_flip(s, d[0], d[1], crop))(squares, draws).numpy()
    shifts = MODES[mode](lambda a: augmentation.colour_shifts(a, STATS["eigval"], STATS["eigvec"]))(draws[2]).numpy()
    images = MODES[mode](lambda s, d: augmentation.train_images(s, d, crop=crop, **STATS))(squares, draws).numpy()
    assert crops.dtype == np.uint8 and crops.shape == (12, crop, crop, 3) and images.shape == (12, crop, crop, 3)
    zeros = tf.zeros((1, 1, 3))
    for i in range(12):
        reference = preprocessing.train_view(squares[i], rows(draws, i), crop=crop, **STATS)
        uint8_reference = preprocessing.train_view(squares[i], rows(draws, i), crop=crop, mean=[0.0] * 3,
                                                   eigval=STATS["eigval"], eigvec=STATS["eigvec"], pca_lighting=False)
        np.testing.assert_array_equal(crops[i], uint8_reference.numpy().astype(np.uint8))  # the same pixels
        shift = preprocessing.pca_lighting(zeros, STATS["eigval"], STATS["eigvec"], draws[2][i])[0, 0]
        np.testing.assert_allclose(shifts[i], shift.numpy(), atol=1e-5)
        np.testing.assert_allclose(images[i], reference.numpy(), atol=1e-4)


def test_each_image_of_a_batch_gets_its_own_crop_and_flip():
    squares = index_squares(64)
    offsets, flips, alphas = augmentation.draw(tf.constant([1, 2], tf.int64), 64, size=256, crop=227)
    crops = augmentation.crop_and_flip(squares, offsets, flips, 227).numpy()
    tops = crops[:, 0, 0, 0]
    mirrored = crops[:, 0, 0, 1] > crops[:, 0, -1, 1]
    lefts = np.where(mirrored, crops[:, 0, -1, 1], crops[:, 0, 0, 1])
    np.testing.assert_array_equal(np.stack([tops, lefts], 1), offsets.numpy())   # read back from the pixels
    np.testing.assert_array_equal(mirrored, flips.numpy())
    assert len(set(zip(tops, lefts))) >= 20
    assert 16 <= mirrored.sum() <= 48
    assert tops.min() >= 0 and tops.max() <= 29 and lefts.max() <= 29
    # The colour coefficients: N(0, 0.1) each, one triple an image (a loose check on 192 draws).
    assert len({tuple(a) for a in alphas.numpy()}) == 64 and 0.07 < alphas.numpy().std() < 0.13


def test_the_switches_turn_off_what_they_say_and_the_colour_noise_stops_at_its_step():
    squares = tf.constant(random_squares(16, 76))
    draws = augmentation.draw(tf.constant([3, 4], tf.int64), 16, size=76, crop=67)
    common = dict(crop=67, **STATS)
    plain = augmentation.train_images(squares, draws, pca_lighting=False, flip=False, **common).numpy()
    lit = augmentation.train_images(squares, draws, flip=False, **common).numpy()
    mirrored = augmentation.train_images(squares, draws, pca_lighting=False, **common).numpy()
    shift = lit - plain
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1], shift.shape), atol=1e-3)  # one per image
    assert np.abs(shift).max() > 0.1
    flipped = draws[1].numpy()
    np.testing.assert_array_equal(mirrored[flipped], plain[flipped][:, :, ::-1])
    np.testing.assert_array_equal(mirrored[~flipped], plain[~flipped])
    assert 0 < flipped.sum() < 16
    # The 2012 code's colour noise, off from step 670 on: counted by the step variable inside the step.
    step = tf.Variable(0, dtype=tf.int64)
    augment = tf.function(augmentation.for_training(STATS, crop=67, flip=False, step=step, colour_noise_until=670))
    for at, want in ((669, lit), (670, plain), (9000, plain)):
        step.assign(at)
        np.testing.assert_allclose(augment(squares, draws).numpy(), want, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ten_crop", [False, True])
def test_evaluation_views_equal_the_per_image_ones(mode, ten_crop):
    squares = tf.constant(random_squares(5, 256, seed=3))
    views = MODES[mode](lambda s: augmentation.eval_images(s, crop=227, mean=STATS["mean"], ten_crop=ten_crop))
    got = views(squares).numpy()
    assert got.shape == ((5, 10, 227, 227, 3) if ten_crop else (5, 227, 227, 3))
    for i in range(5):
        np.testing.assert_array_equal(got[i], preprocessing.eval_view(squares[i], crop=227, mean=STATS["mean"],
                                                                      ten_crop=ten_crop).numpy())


def test_the_compute_dtype_is_what_the_step_receives():
    squares = tf.constant(random_squares(2, 76))
    draws = augmentation.draw(tf.constant([0, 0], tf.int64), 2, size=76, crop=67)
    assert augmentation.train_images(squares, draws, crop=67, dtype="bfloat16", **STATS).dtype == tf.bfloat16
    assert augmentation.eval_images(squares, crop=67, mean=STATS["mean"], dtype="float16").dtype == tf.float16


@pytest.mark.parametrize("jit", [False, True], ids=["function", "xla"])
def test_the_train_step_augments_inside_its_function(jit):
    """The step that takes uint8 squares trains exactly as the step fed the same images made outside it."""
    squares = tf.constant(random_squares(4, 76, seed=5))
    labels = tf.constant([0, 1, 2, 3], tf.int64)
    draws = augmentation.draw(tf.constant([7, 7], tf.int64), 4, size=76, crop=67)
    augment = augmentation.for_training(STATS, crop=67)
    results = []
    for inside in (True, False):
        model = build_alexnet(**TINY, seed=0)
        step = steps.paper_train_step(model, 4, jit=jit, augment=augment if inside else None)
        out = step(squares, labels, draws) if inside else step(augment(squares, draws), labels)
        results.append([float(v) for v in out] + [model.get_layer("conv1_a").kernel.numpy()])
        if inside:  # the crop's gathers are ops of the step's own graph (compiled whole with jit)
            graph = step.get_concrete_function(squares, labels, draws).graph
            assert "GatherV2" in {op.type for op in graph.get_operations()}
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)   # the same loss
    np.testing.assert_allclose(results[0][-1], results[1][-1], atol=1e-6)  # the same update
