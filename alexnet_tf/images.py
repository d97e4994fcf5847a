"""Image files as this project reads them: which files count as images, the size a header claims (read
without decoding, so a decompression bomb is refused unread), and one decode whose failure says why.

The folder scan (`check_image`) and prediction (`read_rgb`) both go through `_read` and `_decode`, so a
file is refused for the same reasons, in the same words, wherever it is met.
"""

import io
from pathlib import Path

from alexnet_tf.config import MAX_PIXELS

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")


def header_size(data):
    """(width, height) from an encoded image's header, without decoding its pixels (Pillow reads headers
    lazily); None when Pillow does not recognise the format."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # Pillow would raise on large sizes; the caller applies max_pixels itself
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _read(path, max_pixels):
    """(bytes, None), or (None, why) for a file that cannot be read, is empty, or claims too many pixels."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        return None, "a folder, not an image file"
    except OSError as e:
        return None, f"unreadable ({e.strerror})"
    if not data:
        return None, "empty file (0 bytes)"
    size = header_size(data)
    if size and size[0] * size[1] > max_pixels:
        return None, (f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels exceeds the limit of {max_pixels:,} "
                      f"(--max_pixels); not decoded")
    return data, None


def _decode(data, channels):
    """(uint8 tensor [H, W, C], None) or (None, why), decoding by content (a PNG named .JPEG decodes too)."""
    import tensorflow as tf

    try:
        return tf.io.decode_image(data, channels=channels, expand_animations=False), None
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        reason = e.message.splitlines()[0]
        if "Unknown image file format" in reason:
            return None, "not an image"
        return None, f"corrupt or truncated image ({reason})"


def read_rgb(path, max_pixels=MAX_PIXELS):
    """(uint8 RGB tensor [H, W, 3], None), or (None, why): the one decode prediction makes of a file.
    Grayscale, CMYK and alpha become RGB."""
    data, why = _read(path, max_pixels)
    return (None, why) if data is None else _decode(data, 3)


def check_image(path, max_pixels=MAX_PIXELS):
    """(ok, note) for one file of a training folder: decoded fully, as training will, unless its header says
    it has more than `max_pixels` pixels. (A *cropped* decode of a truncated JPEG can succeed, which is why
    the scan decodes the whole file.)

    note is None for an ordinary RGB image, says what conversion the pipeline applies to a usable odd one
    (grayscale, CMYK, a PNG named .JPEG), or why an unusable file is skipped (empty, truncated, not an image).
    """
    import tensorflow as tf

    data, why = _read(path, max_pixels)
    image, why = (None, why) if data is None else _decode(data, 0)
    if image is None:
        return False, why
    notes = []
    is_jpeg = bool(tf.io.is_jpeg(data))
    if is_jpeg:
        channels = int(tf.image.extract_jpeg_shape(data)[2])
        if channels == 4:
            notes.append("CMYK JPEG converted to RGB")
    else:
        channels = int(image.shape[-1])
        if Path(path).suffix.lower() in (".jpeg", ".jpg"):
            notes.append("not a JPEG despite its name; decoded by content")
    if channels == 1:
        notes.append("grayscale converted to RGB")
    elif channels == 2 or (channels == 4 and not is_jpeg):
        notes.append("alpha channel dropped")
    return True, "; ".join(notes) or None
