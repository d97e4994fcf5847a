"""The paper's image preprocessing (Sections 2 and 4.1), as pure TensorFlow functions.

Every function works on one image, eagerly or inside `Dataset.map`. Images are
float32 RGB in [0, 255] until the mean is subtracted.

- `decode_center_256`: rescale the shorter side to 256 and take the central
  256x256. The central square is cut while decoding (`decode_and_crop_jpeg`),
  so a 500x375 JPEG decodes only 375x375 pixels.
- Training: a random 227 (or 224) crop, a horizontal flip with probability
  1/2, and the "fancy PCA" colour augmentation.
- Evaluation: the centre crop, or the ten views (four corners, centre, and
  their mirror images) whose softmax outputs the paper averages.
- `Preprocessing`: the record of what an exported model expects (sizes, mean,
  class names), stored beside it.
"""

import dataclasses

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


def random_crop_and_flip(image, crop, seed, flip=True):
    """A random crop x crop patch, mirrored left-right with probability 1/2 (unless `flip` is False).
    `seed`: shape [2] int."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    patch = tf.image.stateless_random_crop(image, (crop, crop, 3), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(patch, seed=flip_seed) if flip else patch


def pca_lighting(image, eigval, eigvec, alpha):
    """Adds eigvec @ (alpha * eigval) to every pixel (paper, Section 4.1).

    eigval: [3] eigenvalues of the RGB covariance; eigvec: [3, 3] with the
    eigenvectors as columns; alpha: [3], drawn from N(0, 0.1) once per image.
    """
    return image + _shift(eigval, eigvec, alpha)


def random_pca_lighting(image, eigval, eigvec, seed, stddev=0.1):
    return tf.cast(image, tf.float32) + lighting_shift(eigval, eigvec, seed, stddev)


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


def train_view(square, seed, *, crop, mean, eigval, eigvec, pca_lighting=True, flip=True):
    """Everything the paper does to a training image after the central square (`decode_center_256`), minus
    batching: `apply_shift(*train_patch(...))`. `seed`: shape [2] int. `pca_lighting` and `flip` switch off
    the colour augmentation and the reflections (ablations); `pca_lighting` may also be a boolean tensor (the
    colour noise switched off late in a run)."""
    return apply_shift(*train_patch(square, seed, crop=crop, mean=mean, eigval=eigval, eigvec=eigvec,
                                    pca_lighting=pca_lighting, flip=flip))


def train_patch(square, seed, *, crop, mean, eigval, eigvec, pca_lighting=True, flip=True):
    """(the random crop, flipped, in the square's own dtype; the [3] colour shift to add to it: the PCA
    lighting minus the mean). Split so that a pipeline can batch uint8 patches (a quarter of float32's
    bytes) and add the shifts to the whole batch at once (`apply_shift`)."""
    crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    patch = random_crop_and_flip(square, crop, crop_seed, flip=flip)
    mean = tf.convert_to_tensor(mean, tf.float32)
    if isinstance(pca_lighting, bool) and not pca_lighting:
        return patch, -mean
    delta = lighting_shift(eigval, eigvec, colour_seed)
    if not isinstance(pca_lighting, bool):
        delta = tf.where(pca_lighting, delta, tf.zeros_like(delta))
    return patch, delta - mean


def lighting_shift(eigval, eigvec, seed, stddev=0.1):
    """The paper's colour shift of one image: eigvec @ (alpha * eigval), alpha ~ N(0, stddev) from `seed`."""
    return _shift(eigval, eigvec, tf.random.stateless_normal([3], seed=seed, stddev=stddev))


def _shift(eigval, eigvec, alpha):
    return tf.linalg.matvec(tf.convert_to_tensor(eigvec, tf.float32),
                            tf.cast(alpha, tf.float32) * tf.convert_to_tensor(eigval, tf.float32))


def apply_shift(patch, shift):
    """float32 patch(es) plus their colour shift(s): [H, W, 3] and [3], or a batch [N, H, W, 3] and [N, 3]."""
    shift = tf.convert_to_tensor(shift, tf.float32)
    return tf.cast(patch, tf.float32) + shift[..., None, None, :]


def eval_view(square, *, crop, mean, ten_crop=False):
    """The centre crop ([crop, crop, 3]) or the ten views ([10, crop, crop, 3]) of a central square, mean
    subtracted."""
    image = tf.cast(square, tf.float32) - tf.convert_to_tensor(mean, tf.float32)
    return ten_crops(image, crop, image.shape[0] or tf.shape(image)[0]) if ten_crop else center_crop(image, crop)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What an exported model expects of its input and names its outputs by: the evaluation preprocessing's
    sizes and mean, and the class names. alexnet-export stores it beside each model (`to_json`), and
    alexnet-predict reads it back (`from_json`)."""
    image_size: int
    resize: int
    mean: tuple
    class_names: tuple

    def view(self, image_bytes, ten_crop=False):
        """The model's input for one encoded image: its central square, then the centre crop or ten views."""
        return eval_view(decode_center_256(image_bytes, self.resize), crop=self.image_size, mean=self.mean,
                         ten_crop=ten_crop)

    def to_json(self):
        return {"image_size": self.image_size, "resize": self.resize, "mean": list(self.mean),
                "num_classes": len(self.class_names), "class_names": list(self.class_names)}

    @classmethod
    def from_json(cls, meta, class_names=None):
        """From `to_json`'s dict; a KeyError names a missing field."""
        return cls(image_size=int(meta["image_size"]), resize=int(meta["resize"]), mean=tuple(meta["mean"]),
                   class_names=tuple(class_names if class_names is not None else meta["class_names"]))
