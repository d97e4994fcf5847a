"""The paper's image preprocessing (Sections 2 and 4.1), as pure TensorFlow functions.

Every function works on one image, eagerly or inside `Dataset.map`. Images are
float32 RGB in [0, 255] until the mean is subtracted.

- `decode_center_256`: rescale the shorter side to 256 and take the central
  256x256. The central square is cut while decoding (`decode_and_crop_jpeg`),
  so a 500x375 JPEG decodes only 375x375 pixels.
- Training: a random 227 (or 224) crop, a horizontal flip with probability
  1/2, and the "fancy PCA" colour augmentation (`train_view`, one image: the
  reference for the batched version the train step runs, `alexnet_tf.augmentation`).
- Evaluation: the centre crop, or the ten views (four corners, centre, and
  their mirror images) whose softmax outputs the paper averages.
(What an exported model expects of its input is `alexnet_tf.sidecar.Preprocessing`.)
"""

import tensorflow as tf

RESIZE = 256


def _central_square(height, width):
    side = tf.minimum(height, width)
    return (height - side) // 2, (width - side) // 2, side


def decode_center_256(image_bytes, size=RESIZE):
    """Encoded image (JPEG, PNG, GIF, BMP) -> float32 [size, size, 3]: the central square, resized.

    JPEGs decode only the central square. Other formats, and JPEGs stored under
    any name, are decoded by content; grayscale and CMYK become RGB.
    """
    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        top, left, side = _central_square(shape[0], shape[1])
        return tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([top, left, side, side]), channels=3)

    def other():
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

    return center_square(tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other), size)


def center_square(image, size=RESIZE):
    """A decoded RGB image [H, W, 3] (any dtype, 0..255) -> float32 [size, size, 3]: its central
    square, resized. (A square image is only resized.)"""
    image = tf.cast(image, tf.float32)
    image.set_shape([None, None, 3])
    shape = tf.shape(image)
    top, left, side = _central_square(shape[0], shape[1])
    square = image[top:top + side, left:left + side]
    # Shrinking: area averaging, which does not alias. It is 2.2x faster than
    # antialiased bilinear, which took two thirds of the training pipeline's
    # time (BUILD_NOTES.md, "Performance"). Enlarging: bilinear.
    return tf.cond(side >= size,
                   lambda: tf.image.resize(square, (size, size), method="area"),
                   lambda: tf.image.resize(square, (size, size), method="bilinear"))


def pca_lighting(image, eigval, eigvec, alpha):
    """Adds eigvec @ (alpha * eigval) to every pixel (paper, Section 4.1).

    eigval: [3] eigenvalues of the RGB covariance; eigvec: [3, 3] with the
    eigenvectors as columns; alpha: [3], drawn from N(0, 0.1) once per image.
    """
    return image + _shift(eigval, eigvec, alpha)


def to_uint8(square):
    """A square of 0..255 values (any dtype) as the uint8 pixels the pipelines ship and `raw256` stores."""
    if square.dtype == tf.uint8:
        return square
    return tf.cast(tf.round(tf.clip_by_value(tf.cast(square, tf.float32), 0, 255)), tf.uint8)


def center_crop(image, crop):
    size = tf.shape(image)[0]
    offset = (size - crop) // 2
    return image[offset:offset + crop, offset:offset + crop]


def ten_crop_offsets(size, crop):
    """(top, left) of the paper's five patches: top-left, top-right, bottom-left, bottom-right, centre."""
    far, mid = size - crop, (size - crop) // 2
    return [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]


def ten_crops(image, crop, size=RESIZE):
    """[10, crop, crop, 3] of a size x size image: the five patches of `ten_crop_offsets`, then the same five
    mirrored."""
    patches = [image[top:top + crop, left:left + crop] for top, left in ten_crop_offsets(size, crop)]
    patches = tf.stack(patches)
    return tf.concat([patches, tf.image.flip_left_right(patches)], axis=0)


def train_view(square, draw, *, crop, mean, eigval, eigvec, pca_lighting=True, flip=True):
    """One image's training view, float32 [crop, crop, 3]: the reference that the step's batched
    `augmentation.train_images` equals. `draw` = (offset [2] as (top, left), flipped: bool, alpha [3]), one
    row of `augmentation.draw`: the crop at `offset`, mirrored if `flipped`, plus the colour shift of
    `alpha`, minus the mean. `pca_lighting` and `flip` switch off the colour augmentation and the
    reflections (ablations)."""
    offset, flipped, alpha = draw
    patch = square[offset[0]:offset[0] + crop, offset[1]:offset[1] + crop]
    if flip:
        patch = tf.cond(flipped, lambda: tf.image.flip_left_right(patch), lambda: patch)
    shift = -tf.convert_to_tensor(mean, tf.float32)
    if pca_lighting:
        shift = _shift(eigval, eigvec, alpha) + shift
    return tf.cast(patch, tf.float32) + shift


def _shift(eigval, eigvec, alpha):
    return tf.linalg.matvec(tf.convert_to_tensor(eigvec, tf.float32),
                            tf.cast(alpha, tf.float32) * tf.convert_to_tensor(eigval, tf.float32))


def eval_view(square, *, crop, mean, ten_crop=False):
    """The centre crop ([crop, crop, 3]) or the ten views ([10, crop, crop, 3]) of a central square, mean
    subtracted."""
    image = tf.cast(square, tf.float32) - tf.convert_to_tensor(mean, tf.float32)
    return ten_crops(image, crop, image.shape[0] or tf.shape(image)[0]) if ten_crop else center_crop(image, crop)
