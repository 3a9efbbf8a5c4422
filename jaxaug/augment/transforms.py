"""Differentiable colour transforms with per-image amounts, and random geometric samplers.

Deterministic ops take the per-image amounts as arguments; random samplers draw
them from a key and call the deterministic ops (dm-pix style). All work on float
[B, H, W, C] images in [0, 1] and are jit- and vmap-safe.

Colour ops follow dm-pix / `tf.image` semantics (per-image, per-channel mean for
contrast; HSV for saturation and hue, computed in closed form on the RGB channels
without a round trip through HSV planes) and clip the result to [0, 1] with
`clip_unit`, whose gradient is 1 for values in the closed interval [0, 1] and 0
outside it. So at the identity amount every pixel of an image in [0, 1] passes
its gradient through, including pixels at exactly 0 or 1. (`jnp.clip` would give
1/2 at exactly 0 or 1; dm-pix's own clip of the saturation channel does, for fully
saturated pixels at a saturation factor of exactly 1; here S * factor = 1 takes the
unclipped branch, so at factor 1 the image Jacobian is the identity.)
"""

from __future__ import annotations

from typing import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from jaxaug.augment import geometry


def clip_unit(values: jax.Array) -> jax.Array:
  """Clips to [0, 1]; gradient 1 on the closed interval [0, 1], 0 outside. Any shape and dtype."""
  return jnp.where(values < 0, 0, jnp.where(values > 1, 1, values)).astype(values.dtype)


def _apply_per_image(
    op: Callable[[jax.Array, jax.Array], jax.Array],
    images: jax.Array,
    amount: jax.Array,
    *,
    rgb: bool,
) -> jax.Array:
  """Applies single-image `op(image [H,W,C], amount [])` to each image with its amount, then clips.

  Args:
    op: a dm-pix style op on one image and a scalar amount.
    images: float [B, H, W, C] in [0, 1].
    amount: float [B].
    rgb: whether the op needs C == 3.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  if images.ndim != 4 or (rgb and images.shape[-1] != 3):
    raise ValueError(f"images must be [B, H, W, {3 if rgb else 'C'}], got shape {images.shape}")
  amount = jnp.asarray(amount, images.dtype)
  if amount.shape != images.shape[:1]:
    raise ValueError(f"amount must have shape ({images.shape[0]},) for images {images.shape}, "
                     f"got {amount.shape}")
  return clip_unit(jax.vmap(op)(images, amount))


def _value_low(image: jax.Array) -> tuple[jax.Array, jax.Array]:
  """HSV value V = max and the minimum of the channels, each [..., H, W, 1].

  Channels of the RGB image [..., H, W, 3] are sliced with their axis kept: measured
  faster under jit than reductions over it.
  """
  red, green, blue = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  return (jnp.maximum(jnp.maximum(red, green), blue),
          jnp.minimum(jnp.minimum(red, green), blue))


def _value_spread(image: jax.Array) -> tuple[jax.Array, jax.Array]:
  """HSV value V = max and spread V - min (V times the HSV saturation), each [..., H, W, 1]."""
  value, low = _value_low(image)
  return value, value - low


def _hue_value_spread(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """HSV hue in [0, 1] (circular: 1 may occur in float32 and means 0), and `_value_spread`.

  dm-pix's hue, except that the sector is chosen by comparing the channels with each
  other rather than testing `max == green`: under jit, XLA:CPU may round the same
  channel differently in two fusions, the equalities then all fail and dm-pix applies
  the blue formula to a pixel whose maximum is red or green (a wrong colour, seen here
  on about one pixel in 10^3 to 10^4 of a jitted colour augmenter).
  """
  red, green, blue = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  value, spread = _value_spread(image)
  norm = 1.0 / (6.0 * jnp.where(spread > 0, spread, 1.0))
  red_is_max = (red >= green) & (red >= blue)
  green_is_max = ~red_is_max & (green >= blue)
  hue = jnp.where(red_is_max, norm * (green - blue),
                  jnp.where(green_is_max, norm * (blue - red) + 2.0 / 6.0,
                            norm * (red - green) + 4.0 / 6.0))
  return jnp.where(spread > 0, hue % 1.0, 0.0), value, spread


def adjust_brightness(images: jax.Array, delta: jax.Array) -> jax.Array:
  """Adds `delta[b]` to every pixel of image b, then clips. Identity: delta 0.

  Args:
    images: float [B, H, W, C] in [0, 1].
    delta: float [B], additive shift in intensity units.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  return _apply_per_image(pix.adjust_brightness, images, delta, rgb=False)


def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales each channel's deviation from its spatial mean by `factor[b]`, then clips. Identity: 1.

  Args:
    images: float [B, H, W, C] in [0, 1].
    factor: float [B], >= 0; 0 gives the per-channel mean colour.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  return _apply_per_image(pix.adjust_contrast, images, factor, rgb=False)


def adjust_saturation(images: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiplies the HSV saturation by `factor[b]` (clipped to [0, 1]), then clips. Identity: 1.

  Args:
    images: float [B, H, W, 3] RGB in [0, 1].
    factor: float [B]; 0 (or less) gives greys of the same HSV value.

  Returns:
    float [B, H, W, 3] in [0, 1].
  """
  # In HSV every channel is c = V - V S k_c(H): scaling S to S' = clip(S * factor, 0, 1)
  # at fixed H and V moves each channel away from V by S' / S, which needs no round trip:
  # S' / S = factor, or V / (V - min) once S * factor passes 1, or 0 for factor < 0.
  # In the second case c' = V (c - min) / (V - min), written so that the minimum channel is
  # exactly 0 with gradient 0: as V - (V - c) V / (V - min) it is 0 up to rounding, and
  # the final clip's gradient there then depends on how XLA rounds it in each fusion (jax
  # 0.12 under jit: the gradient of a jitted colour augmenter off by 1e-3).
  def saturate(image, amount):
    value, low = _value_low(image)
    spread = value - low
    saturated = value * (image - low) / jnp.where(spread > 0, spread, 1.0)
    scaled = value - (value - image) * jnp.where(amount < 0, 0.0, amount)
    return jnp.where(amount * spread > value, saturated, scaled)

  return _apply_per_image(saturate, images, factor, rgb=True)


def adjust_hue(images: jax.Array, delta: jax.Array) -> jax.Array:
  """Rotates the HSV hue by `delta[b]` turns (1 = 360 degrees), then clips. Identity: 0.

  Args:
    images: float [B, H, W, 3] RGB in [0, 1].
    delta: float [B], in turns; periodic with period 1.

  Returns:
    float [B, H, W, 3] in [0, 1].
  """
  # dm-pix's HSV -> RGB with V S = spread: a channel whose own hue (red 0, green 2, blue
  # 4 sextants) is at circular distance d sextants from the pixel's hue is
  # V - spread * clip(d - 1, 0, 1).
  channel_hues = np.array([0.0, 2.0, 4.0])

  def rotate_hue(image, amount):
    hue, value, spread = _hue_value_spread(image)
    distance = jnp.abs(((hue + amount) % 1.0) * 6.0 - channel_hues.astype(image.dtype))
    distance = jnp.minimum(distance, 6.0 - distance)
    return value - spread * jnp.clip(distance - 1.0, 0.0, 1.0)

  return _apply_per_image(rotate_hue, images, delta, rgb=True)


def random_flip(rng: jax.Array, images: jax.Array, *, horizontal: bool,
                vertical: bool) -> jax.Array:
  """Flips each image left-right and/or up-down, each with probability 1/2, independently.

  The draws for the two axes come from different sub-keys of `rng`, so the left-right
  draws do not depend on `vertical` and vice versa.

  Args:
    rng: PRNG key.
    images: float [B, H, W, C].
    horizontal: whether to draw left-right flips.
    vertical: whether to draw up-down flips.

  Returns:
    float [B, H, W, C].
  """
  horizontal_rng, vertical_rng = jax.random.split(rng)
  batch = images.shape[0]
  if horizontal:
    images = geometry.flip_left_right(images, jax.random.bernoulli(horizontal_rng, 0.5, (batch,)))
  if vertical:
    images = geometry.flip_up_down(images, jax.random.bernoulli(vertical_rng, 0.5, (batch,)))
  return images


def random_pad_and_crop(rng: jax.Array, images: jax.Array, *, padding: int = 4) -> jax.Array:
  """Zero-pads by `padding` and crops the original size at a uniform per-image offset.

  The 'predefined' CIFAR augmentation (with `random_flip(horizontal=True)`): each offset
  (row and column independently) is uniform over {0, ..., 2 * padding}.

  Args:
    rng: PRNG key.
    images: float [B, H, W, C].
    padding: pixels of zeros added on each side, >= 0.

  Returns:
    float [B, H, W, C].
  """
  offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * padding + 1)
  return geometry.pad_and_crop(images, offsets, padding=padding)


def check_crop_bounds(*, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
  """Raises ValueError unless `scale` and `ratio` are each a pair (low, high) with
  0 < low <= high."""
  for name, bounds in (("scale", scale), ("ratio", ratio)):
    if not (isinstance(bounds, tuple) and len(bounds) == 2 and 0 < bounds[0] <= bounds[1]):
      raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {bounds!r}")


def resized_crop_boxes(rng: jax.Array, batch: int, height: int, width: int, *,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3),
                       attempts: int = 10) -> jax.Array:
  """Draws the boxes of the random-resized ("Inception") crop, torchvision's rule, traced.

  Per image, up to `attempts` candidates: an area fraction uniform in `scale` and an aspect
  ratio (width / height) log-uniform in `ratio`, rounded to whole pixels; the first that fits
  in the image is placed at a uniform integer offset. If none fits, the centre crop of the
  whole image with its aspect ratio clamped into `ratio`. The candidates are drawn all at once
  (not in a loop), so the result is one XLA program for the batch.

  Args:
    rng: PRNG key.
    batch: number of images B.
    height, width: image size H, W in pixels.
    scale: (low, high) area fraction, 0 < low <= high.
    ratio: (low, high) aspect ratio, 0 < low <= high.
    attempts: candidates per image before the fallback, >= 1.

  Returns:
    float32 [B, 4] boxes (top, left, height, width), whole pixels inside the image.
  """
  check_crop_bounds(scale=scale, ratio=ratio)
  area_rng, ratio_rng, offset_rng = jax.random.split(rng, 3)
  area = height * width * jax.random.uniform(area_rng, (batch, attempts), minval=scale[0],
                                             maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_rng, (batch, attempts), minval=np.log(ratio[0]),
                                      maxval=np.log(ratio[1])))
  crop_width = jnp.round(jnp.sqrt(area * aspect))
  crop_height = jnp.round(jnp.sqrt(area / aspect))
  fits = (crop_width >= 1) & (crop_width <= width) & (crop_height >= 1) & (crop_height <= height)
  first = jnp.argmax(fits, axis=1)
  take = lambda values: jnp.take_along_axis(values, first[:, None], axis=1)[:, 0]
  # The fallback: the whole image, its aspect ratio clamped into `ratio`.
  image_ratio = width / height
  fallback_width = (width if image_ratio <= ratio[1] else round(height * ratio[1]))
  fallback_height = (height if image_ratio >= ratio[0] else round(width / ratio[0]))
  any_fits = fits.any(axis=1)
  crop_height = jnp.where(any_fits, take(crop_height), fallback_height)
  crop_width = jnp.where(any_fits, take(crop_width), fallback_width)
  spare = jax.random.uniform(offset_rng, (batch, 2))
  top = jnp.where(any_fits, jnp.floor(spare[:, 0] * (height - crop_height + 1)),
                  (height - crop_height) // 2)
  left = jnp.where(any_fits, jnp.floor(spare[:, 1] * (width - crop_width + 1)),
                   (width - crop_width) // 2)
  return jnp.stack([top, left, crop_height, crop_width], axis=1).astype(jnp.float32)


def random_resized_crop(rng: jax.Array, images: jax.Array, *, size: int | tuple[int, int],
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
  """The random-resized crop: a box per image from `resized_crop_boxes`, resized to `size`.

  Args:
    rng: PRNG key.
    images: float [B, H, W, C].
    size: (H', W') of the output, or one int for a square.
    scale, ratio: see `resized_crop_boxes`.

  Returns:
    float [B, H', W', C].
  """
  batch, height, width, _ = images.shape
  boxes = resized_crop_boxes(rng, batch, height, width, scale=scale, ratio=ratio)
  return geometry.resized_crop(images, boxes, size=size)
