"""The paper's preprocessing of one image, each op eagerly and inside Dataset.map (the batched augmentation the
train step runs is tested against these in test_augmentation)."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import preprocessing as pp


def encode(array, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def smooth_image(height, width, seed=0):
    """A smooth RGB image, so JPEG round trips stay within a few levels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [127 + 100 * np.sin(2 * np.pi * (rng.uniform(1, 3) * yy + rng.uniform(1, 3) * xx + rng.uniform()))
                for _ in range(3)]
    return np.stack(channels, -1).astype(np.uint8)


def in_dataset_map(fn, *args):
    """fn(*args) computed inside Dataset.map (graph mode)."""
    ds = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
    return next(iter(ds))


def both_modes(fn, *args):
    return fn(*[tf.convert_to_tensor(a) for a in args]), in_dataset_map(fn, *args)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_center_256_takes_the_central_square(fmt):
    array = smooth_image(300, 400)                 # landscape: the square is columns 50..349
    data = encode(array, fmt)
    # Reference: decode everything, then crop; the fused crop must see the same window.
    full = tf.io.decode_image(data, channels=3).numpy()
    want = tf.image.resize(full[:, 50:350].astype(np.float32), (256, 256), method="area").numpy()
    for got in both_modes(pp.decode_center_256, data):
        assert got.shape == (256, 256, 3) and got.dtype == tf.float32
        # A partial JPEG decode upsamples chroma differently at the window's
        # edge: a level or two in the last column, nothing elsewhere.
        diff = np.abs(got.numpy() - want)
        assert diff[:, :-1].max() < 1e-3 and diff[:, -1].max() < 4


def test_decode_center_256_portrait_and_grayscale():
    data = encode(smooth_image(400, 300)[..., 0])  # portrait grayscale: rows 50..349
    full = tf.io.decode_jpeg(data, channels=1).numpy()
    want = tf.image.resize(np.repeat(full[50:350], 3, -1).astype(np.float32), (256, 256), method="area").numpy()
    for got in both_modes(pp.decode_center_256, data):
        np.testing.assert_allclose(got.numpy(), want, atol=1.0)


def test_decode_center_256_shrinks_without_aliasing_and_enlarges_smoothly():
    # Stripes one pixel wide every three, 768 wide: a 3:1 shrink. Sampled (plain
    # bilinear) they alias: every sample lands on a dark pixel. Averaged, every
    # output pixel covers one bright and two dark pixels: a flat 85.
    stripes = np.zeros((768, 768, 3), np.uint8)
    stripes[:, ::3] = 255
    data = encode(stripes, "PNG")
    aliased = tf.image.resize(stripes.astype(np.float32), (256, 256), method="bilinear").numpy()
    assert abs(aliased.mean() - 85) > 40
    for got in both_modes(pp.decode_center_256, data):
        np.testing.assert_allclose(got.numpy(), 85.0, atol=0.01)
    # A small image is enlarged bilinearly: a ramp stays a ramp, without steps.
    ramp = np.tile(np.linspace(0, 255, 100, dtype=np.float32)[None, :, None], (100, 1, 3)).astype(np.uint8)
    for got in both_modes(pp.decode_center_256, encode(ramp, "PNG")):
        steps = np.diff(got.numpy()[50, 20:-20, 0])
        assert steps.min() >= -0.01 and steps.max() < 2.0, (steps.min(), steps.max())


def test_pca_lighting_matches_numpy():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    eigvec, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigval = np.array([50.0, 5.0, 1.0], np.float32)
    alpha = rng.normal(0, 0.1, 3).astype(np.float32)
    want = image + (eigvec @ (alpha * eigval))[None, None, :]
    for got in both_modes(lambda x, a: pp.pca_lighting(x, eigval, eigvec.astype(np.float32), a), image, alpha):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)


def index_image(size=256):
    """Pixel (y, x) holds (y, x, 0), so a crop's position can be read off its corner."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([yy, xx, np.zeros_like(yy)], -1)


def test_ten_crops_have_the_exact_coordinates():
    image = index_image()
    crop = 227
    expected = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]
    assert pp.ten_crop_offsets(256, crop) == expected
    for views in both_modes(lambda x: pp.ten_crops(x, crop), image):
        views = views.numpy()
        assert views.shape == (10, crop, crop, 3)
        for i, (top, left) in enumerate(expected):
            np.testing.assert_array_equal(views[i], image[top:top + crop, left:left + crop])
            np.testing.assert_array_equal(views[5 + i], image[top:top + crop, left:left + crop][:, ::-1])


def test_center_crop_offsets():
    image = index_image()
    for crop, offset in ((227, 14), (224, 16)):
        for got in both_modes(lambda x: pp.center_crop(x, crop), image):
            assert got.shape == (crop, crop, 3)
            assert tuple(got.numpy()[0, 0, :2]) == (offset, offset)


def test_train_view_is_its_draws_crop_mirror_and_shift_and_eager_equals_map():
    image = index_image()
    stats = dict(mean=[0.0, 0.0, 0.0], eigval=[50.0, 5.0, 1.0], eigvec=np.eye(3).tolist())
    for flipped in (False, True):
        draw = (tf.constant([3, 17]), tf.constant(flipped), tf.constant([0.1, -0.2, 0.05]))
        fn = lambda x, o, f, a: pp.train_view(x, (o, f, a), crop=224, **stats)  # noqa: E731
        eager, mapped = both_modes(fn, image, *draw)
        np.testing.assert_array_equal(eager.numpy(), mapped.numpy())
        want = image[3:3 + 224, 17:17 + 224]
        want = (want[:, ::-1] if flipped else want) + np.array([5.0, -1.0, 0.05])  # eigvec = I: alpha * eigval
        np.testing.assert_allclose(eager.numpy(), want, atol=1e-4)


def test_eval_view_subtracts_the_mean():
    array = np.full((256, 256, 3), 100, np.uint8)
    for ten_crop, shape in ((False, (227, 227, 3)), (True, (10, 227, 227, 3))):
        fn = lambda b: pp.eval_view(pp.decode_center_256(b), crop=227, mean=[100.0, 90.0, 80.0],  # noqa: E731
                                    ten_crop=ten_crop)
        for got in both_modes(fn, encode(array, "PNG")):
            assert got.shape == shape
            np.testing.assert_allclose(got.numpy().reshape(-1, 3) - [0.0, 10.0, 20.0], 0.0, atol=1e-3)
