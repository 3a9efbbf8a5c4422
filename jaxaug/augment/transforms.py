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


def _value_spread(image: jax.Array) -> tuple[jax.Array, jax.Array]:
  """HSV value V = max and spread V - min (V times the HSV saturation), each [..., H, W, 1].

  Channels of the RGB image [..., H, W, 3] are sliced with their axis kept: measured
  faster under jit than reductions over it.
  """
  red, green, blue = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  value = jnp.maximum(jnp.maximum(red, green), blue)
  return value, value - jnp.minimum(jnp.minimum(red, green), blue)


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
  def saturate(image, amount):
    value, spread = _value_spread(image)
    scale = jnp.where(amount * spread > value, value / jnp.where(spread > 0, spread, 1.0),
                      jnp.where(amount < 0, 0.0, amount))
    return value - (value - image) * scale

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
