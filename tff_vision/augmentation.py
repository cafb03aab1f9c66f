"""Training-time image augmentations: seeded, stateless, one uint8 example at a time.

Each augmentation maps `((image uint8 [H, W, C], label), round_seed, index)`
to an augmented `(image, label)` of the same dtype and shape. Its random
draws come from stateless ops seeded by the round's seed and the example's
position in the round, so a resumed run sees exactly the images an
uninterrupted one would, and no augmentation keeps state between rounds.

- "flip": random horizontal and vertical flips.
- "fundus": the flips, then a rotation of up to 15 degrees either way about the
  centre (bilinear, black outside, as a fundus photograph's own border), a
  brightness shift of up to 0.1 and a contrast factor in [0.9, 1.1]. A retina
  has no canonical orientation, and fundus cameras differ in exposure; the
  changes stay small enough that a 28 px lesion keeps its shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

AUGMENTATIONS = ("none", "flip", "fundus")

_FUNDUS_MAX_DEGREES = 15.0
_FUNDUS_BRIGHTNESS = 0.1
_FUNDUS_CONTRAST = (0.9, 1.1)

Example = tuple[tf.Tensor, tf.Tensor]


def _seed(round_seed: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.cast(round_seed, tf.int64), tf.cast(index, tf.int64)])


def flip(example: Example, round_seed: tf.Tensor, index: tf.Tensor) -> Example:
    """Random horizontal and vertical flips."""
    image, label = example
    seed = _seed(round_seed, index)
    image = tf.image.stateless_random_flip_left_right(image, seed)
    image = tf.image.stateless_random_flip_up_down(image, seed + 1)
    return image, label


def fundus(example: Example, round_seed: tf.Tensor, index: tf.Tensor) -> Example:
    """Flips, a small rotation, brightness and contrast (see the module docstring)."""
    image, label = flip(example, round_seed, index)
    seed = _seed(round_seed, index)
    pixels = tf.cast(image, tf.float32) / 255.0
    max_angle = _FUNDUS_MAX_DEGREES * math.pi / 180.0
    angle = tf.random.stateless_uniform([], seed + 2, -max_angle, max_angle)
    pixels = rotate(pixels, angle)
    pixels = tf.image.stateless_random_brightness(pixels, _FUNDUS_BRIGHTNESS, seed + 3)
    pixels = tf.image.stateless_random_contrast(pixels, *_FUNDUS_CONTRAST, seed + 4)
    pixels = tf.clip_by_value(pixels, 0.0, 1.0)
    return tf.cast(tf.round(pixels * 255.0), tf.uint8), label


def rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Float `image` [H, W, C] rotated by `angle` radians about its centre; black outside."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    x0, y0 = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    # Each output pixel (x, y) samples the input at (a0 x + a1 y + a2, b0 x + b1 y + b2).
    transform = tf.stack(
        [cos, -sin, x0 - cos * x0 + sin * y0, sin, cos, y0 - sin * x0 - cos * y0, 0.0, 0.0]
    )
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return rotated[0]


def augmentation(name: str) -> Callable[[Example, tf.Tensor, tf.Tensor], Example] | None:
    """The augmentation called `name` (one of `AUGMENTATIONS`); None for "none"."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {name!r}; use one of {', '.join(AUGMENTATIONS)}")
    return {"none": None, "flip": flip, "fundus": fundus}[name]
