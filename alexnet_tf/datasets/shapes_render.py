"""Deterministic renderer behind the embedded `alexnet_shapes` dataset.

Ten classes of 256x256 RGB images: five filled shapes and five textures, in
random sizes, positions, orientations and periods, on a noisy gradient
background. Colour is half a cue: the classes come in five colour families,
each shared by one shape and one texture (disc and horizontal stripes are
reddish, square and vertical stripes yellowish, ...), so colour alone gets a
model to about 50% and the rest takes telling a shape from a texture and one
shape or texture from another. Image i of a split is always the same.

Why the colour families: with the paper's N(0, 0.01^2) initialization AlexNet
starts in a long plateau in which it is close to linear in its input, and a
dataset whose labels have no linear cue at all kept it at chance for the whole
10-minute `make train` budget (BUILD_NOTES.md has the runs).
"""

import colorsys

import numpy as np

SIZE = 256
CLASS_NAMES = ("disc", "square", "triangle", "ring", "cross",
               "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "dots")
SPLIT_SEEDS = {"train": 1, "validation": 2}


NUM_FAMILIES = 5


def family(label):
    """The colour family of a class (see the module docstring)."""
    return label % NUM_FAMILIES


def _colours(rng, label):
    """Foreground and background of the class's hue family, one light, one dark."""
    hue = (family(label) + rng.uniform(-0.35, 0.35)) / NUM_FAMILIES

    def rgb(h, s, v):
        return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255

    light = rgb(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.4, 1.0), rng.uniform(0.75, 1.0))
    dark = rgb(hue + rng.uniform(-0.03, 0.03), rng.uniform(0.4, 1.0), rng.uniform(0.15, 0.45))
    return (light, dark) if rng.uniform() < 0.5 else (dark, light)


def _shape_mask(label, rng, yy, xx):
    r = rng.uniform(30, 75)
    cy, cx = rng.uniform(r + 5, SIZE - r - 5, 2)
    dy, dx = yy - cy, xx - cx
    theta = rng.uniform(0, np.pi / 2)
    # Coordinates in the shape's own (rotated) frame.
    u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
    name = CLASS_NAMES[label]
    if name == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if name == "square":
        return (np.abs(u) <= r * 0.8) & (np.abs(v) <= r * 0.8)
    if name == "triangle":
        # Equilateral, pointing in a random direction.
        phi = rng.uniform(0, 2 * np.pi)
        inside = np.ones_like(dy, dtype=bool)
        for k in range(3):
            a = phi + 2 * np.pi * k / 3
            inside &= dx * np.cos(a) + dy * np.sin(a) <= r * 0.5
        return inside
    if name == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.6 * r) ** 2)
    if name == "cross":
        arm = r * 0.3
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    raise ValueError(name)


def _texture_mask(label, rng, yy, xx):
    period = rng.uniform(14, 40)
    phase = rng.uniform(0, period)
    name = CLASS_NAMES[label]
    if name == "horizontal_stripes":
        return ((yy + phase) % period) < period / 2
    if name == "vertical_stripes":
        return ((xx + phase) % period) < period / 2
    if name == "diagonal_stripes":
        sign = rng.choice([-1.0, 1.0])
        return ((xx + sign * yy + phase) % period) < period / 2
    if name == "checkerboard":
        return (((yy + phase) // (period / 2)) + ((xx + phase) // (period / 2))) % 2 == 0
    if name == "dots":
        cy, cx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2
        return cy ** 2 + cx ** 2 <= (period * 0.3) ** 2
    raise ValueError(name)


def render(split, index):
    """(uint8 HxWx3 image, label) for example `index` of `split`; deterministic."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    label = index % len(CLASS_NAMES)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    fg, bg = _colours(rng, label)
    mask = (_shape_mask if label < 5 else _texture_mask)(label, rng, yy, xx)
    # Background: a gentle linear gradient around bg.
    g = rng.uniform(-40, 40, 3).astype(np.float32)
    ramp = ((xx * np.cos(rng.uniform(0, 2 * np.pi)) + yy * np.sin(rng.uniform(0, 2 * np.pi))) / SIZE)[..., None]
    image = np.where(mask[..., None], fg, bg + g * ramp)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), label
