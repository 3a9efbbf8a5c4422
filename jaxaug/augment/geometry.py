"""Batched, differentiable geometric image transforms built on gathers.

Coordinate convention (PIL's, used by every function here). A pixel with row
index `i` and column index `j` covers the unit square [j, j+1) x [i, i+1) and
its centre is at (x, y) = (j + 0.5, i + 0.5); x runs along the width (columns),
y along the height (rows), both in pixels. An affine pixel matrix
`[[a, b, c], [d, e, f]]` maps the centre (x, y) of an OUTPUT pixel to the point
(a x + b y + c, d x + e y + f) of the INPUT image that it takes its value from:
the convention of PIL's `Image.transform(size, Image.AFFINE, (a, b, c, d, e, f))`.

Sampling. The input image is regarded as extended to the whole plane by
`fill_value` outside [0, W) x [0, H).
- 'nearest' takes the pixel whose square contains the source point, i.e. input
  pixel (floor(y_src), floor(x_src)): the rule of PIL's NEAREST. (For matrices
  with off-diagonal terms PIL rounds the matrix to 16.16 fixed point, so the two
  can differ where a source coordinate lies within ~1e-3 px of a pixel edge.)
- 'bilinear' interpolates the extended image between the four pixel centres
  around the source point, so a neighbour that falls outside the image
  contributes `fill_value`. This is torch's `grid_sample(..., mode='bilinear',
  padding_mode='zeros', align_corners=False)` when the fill is 0, and it is
  continuous and differentiable (almost everywhere) in the matrix and the image.
  PIL's BILINEAR agrees everywhere except where a source coordinate lies within
  half a pixel of the image border: there PIL returns the fill if the point is
  outside [0, W) x [0, H) and otherwise clamps the neighbours to the edge. PIL
  also truncates 8-bit results towards zero.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxaug.registry import Registry

# Sampler: (images [B,H,W,C], x_src [B,P], y_src [B,P], fill [C]) -> [B,P,C].
Sampler = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
SAMPLERS: Registry[Sampler] = Registry("interpolation")


def _check_images(images: jax.Array) -> None:
  """Raises ValueError unless `images` is a rank-4 [B, H, W, C] floating-point array."""
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be float [B, H, W, C], got {images.dtype} {images.shape}")


def _check_per_image(values: jax.Array, images: jax.Array, name: str,
                     trailing: tuple[int, ...] = ()) -> None:
  """Raises ValueError unless `values` has shape [B, *trailing] for the batch of `images`."""
  expected = (images.shape[0], *trailing)
  if values.shape != expected:
    raise ValueError(
        f"{name} must have shape {expected} for images {images.shape}, got {values.shape}")


def _fill_per_channel(fill_value: float | jax.Array, channels: int, dtype: jnp.dtype) -> jax.Array:
  """The fill as a [C] vector of `dtype`; `fill_value` is a scalar or a [C] vector."""
  fill = jnp.asarray(fill_value, dtype)
  if fill.shape not in ((), (1,), (channels,)):
    raise ValueError(
        f"fill_value must be a scalar or have shape ({channels},), got shape {fill.shape}")
  return jnp.broadcast_to(fill, (channels,))


def _gather_or_fill(images: jax.Array, rows: jax.Array, cols: jax.Array,
                    fill: jax.Array) -> jax.Array:
  """Pixels `images[b, rows[b, p], cols[b, p]]`, or `fill` where the index is outside.

  Args:
    images: float [B, H, W, C].
    rows, cols: int32 [B, P] pixel indices, any value.
    fill: [C] value for indices outside the image.

  Returns:
    float [B, P, C].
  """
  batch, height, width, channels = images.shape
  inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
  image_start = (jnp.arange(batch, dtype=jnp.int32) * (height * width))[:, None]
  flat_index = image_start + jnp.clip(rows, 0, height - 1) * width + jnp.clip(cols, 0, width - 1)
  # One gather over all pixels of the batch; the indices were clipped into range above.
  values = images.reshape(-1, channels).at[flat_index].get(mode="promise_in_bounds")
  return jnp.where(inside[..., None], values, fill)


@SAMPLERS.register("nearest")
def _sample_nearest(images: jax.Array, x_src: jax.Array, y_src: jax.Array,
                    fill: jax.Array) -> jax.Array:
  """PIL NEAREST: the pixel whose square contains (x_src, y_src); float [B, P, C]."""
  _, height, width, _ = images.shape
  # Clipping to one pixel beyond the image keeps the int32 cast defined for huge coordinates.
  cols = jnp.floor(jnp.clip(x_src, -1, width)).astype(jnp.int32)
  rows = jnp.floor(jnp.clip(y_src, -1, height)).astype(jnp.int32)
  return _gather_or_fill(images, rows, cols, fill)


@SAMPLERS.register("bilinear")
def _sample_bilinear(images: jax.Array, x_src: jax.Array, y_src: jax.Array,
                     fill: jax.Array) -> jax.Array:
  """Bilinear interpolation of the fill-extended image at (x_src, y_src); float [B, P, C]."""
  _, height, width, _ = images.shape
  # Positions in pixel-centre index units; clipped two pixels beyond the image, where every
  # neighbour is already outside, so the result (the fill) is unchanged.
  col = jnp.clip(x_src - 0.5, -2, width + 1)
  row = jnp.clip(y_src - 0.5, -2, height + 1)
  col0, row0 = jnp.floor(col), jnp.floor(row)
  col_weight, row_weight = (col - col0)[..., None], (row - row0)[..., None]
  col0, row0 = col0.astype(jnp.int32), row0.astype(jnp.int32)
  # Four separate gathers fuse better on CPU than one gather of the stacked corners.
  corner = lambda d_row, d_col: _gather_or_fill(images, row0 + d_row, col0 + d_col, fill)
  top = corner(0, 0) * (1 - col_weight) + corner(0, 1) * col_weight
  bottom = corner(1, 0) * (1 - col_weight) + corner(1, 1) * col_weight
  return top * (1 - row_weight) + bottom * row_weight


def affine_warp(
    images: jax.Array,
    matrices: jax.Array,
    *,
    interpolation: str = "bilinear",
    fill_value: float | jax.Array = 0.0,
) -> jax.Array:
  """Warps each image by its affine pixel matrix (output -> input, PIL convention).

  Output pixel (i, j) takes the value of the input at (x, y) = (a (j + .5) + b (i + .5) + c,
  d (j + .5) + e (i + .5) + f), sampled as described in the module docstring.
  jit- and vmap-safe; differentiable in `images`, `matrices` (bilinear) and `fill_value`.

  Args:
    images: float [B, H, W, C].
    matrices: float [B, 2, 3] rows [[a, b, c], [d, e, f]], pixels; identity [[1,0,0],[0,1,0]].
    interpolation: 'bilinear' or 'nearest'.
    fill_value: value of the plane outside the input: a scalar or a per-channel [C] vector.

  Returns:
    float [B, H, W, C], the dtype of `images`.
  """
  images, matrices = jnp.asarray(images), jnp.asarray(matrices)
  _check_images(images)
  _check_per_image(matrices, images, "matrices", (2, 3))
  sampler = SAMPLERS.get(interpolation)
  batch, height, width, channels = images.shape
  fill = _fill_per_channel(fill_value, channels, images.dtype)
  matrices = matrices.astype(images.dtype)
  y_out, x_out = jnp.meshgrid(
      jnp.arange(height, dtype=images.dtype) + 0.5,
      jnp.arange(width, dtype=images.dtype) + 0.5,
      indexing="ij",
  )
  x_out, y_out = x_out.reshape(1, -1), y_out.reshape(1, -1)
  # Elementwise products rather than a matmul: exact float32 also where matmuls default to bf16.
  source = lambda k: matrices[:, k, 0:1] * x_out + matrices[:, k, 1:2] * y_out + matrices[:, k, 2:3]
  sampled = sampler(images, source(0), source(1), fill)
  return sampled.reshape(batch, height, width, channels)


def normalized_to_pixel(theta: jax.Array, height: int, width: int) -> jax.Array:
  """Converts [-1, 1]-normalised affine matrices to the pixel matrices of `affine_warp`.

  `theta` follows torch's `affine_grid(theta, size, align_corners=False)`: a point
  (u, v) of the output, with u = 2 x / W - 1 and v = 2 y / H - 1 in the pixel units of
  the module docstring (so -1 and 1 are the outer edges of the image), samples the input
  at theta @ (u, v, 1) in the same normalised units. Hence
  `affine_warp(images, normalized_to_pixel(theta, H, W))` equals
  `grid_sample(x, affine_grid(theta, align_corners=False), mode='bilinear',
  padding_mode='zeros', align_corners=False)`.

  Args:
    theta: float [..., 2, 3]; identity [[1, 0, 0], [0, 1, 0]].
    height, width: image size in pixels, of both the input and the output.

  Returns:
    float [..., 2, 3] pixel matrices, the dtype of `theta`.
  """
  theta = jnp.asarray(theta)
  if theta.shape[-2:] != (2, 3):
    raise ValueError(f"theta must have shape [..., 2, 3], got {theta.shape}")
  pixel_to_unit = jnp.array([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]], theta.dtype)
  unit_to_pixel = jnp.array([[width / 2, 0, width / 2], [0, height / 2, height / 2]], theta.dtype)
  bottom_row = jnp.broadcast_to(jnp.array([0, 0, 1], theta.dtype), (*theta.shape[:-2], 1, 3))
  theta_homogeneous = jnp.concatenate([theta, bottom_row], axis=-2)
  matmul = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
  return matmul(matmul(unit_to_pixel, theta_homogeneous), pixel_to_unit)


def resized_crop(images: jax.Array, boxes_yxhw: jax.Array, *,
                 size: int | tuple[int, int]) -> jax.Array:
  """Crops a box of each image and resizes it to `size`: the random-resized crop's op.

  Output pixel (i, j) of image b takes the input at (x, y) = (left + (j + .5) w / W',
  top + (i + .5) h / H'), interpolated bilinearly between pixel centres, each coordinate
  clamped to the box's outermost pixel centres (the box's edges replicated, then the
  image's). For whole-pixel boxes this is the crop followed by `tf.image.resize(crop, (H', W'),
  'bilinear', antialias=False)` (half-pixel centres; torchvision's `resized_crop` with
  `antialias=False` samples the same points), so a box larger than the output is sampled
  without antialiasing, as the standard ImageNet training crop does on accelerators.
  jit- and vmap-safe; differentiable in `images`.

  Args:
    images: float [B, H, W, C].
    boxes_yxhw: float [B, 4], (top, left, height, width) of each box in pixels, inside the
      image.
    size: (H', W') of the output, or one int for a square.

  Returns:
    float [B, H', W', C], the dtype of `images`.
  """
  images, boxes_yxhw = jnp.asarray(images), jnp.asarray(boxes_yxhw)
  _check_images(images)
  _check_per_image(boxes_yxhw, images, "boxes_yxhw", (4,))
  out_height, out_width = (size, size) if isinstance(size, int) else tuple(size)
  if min(out_height, out_width) < 1:
    raise ValueError(f"size must be positive, got {size!r}")
  batch, height, width, channels = images.shape
  boxes = boxes_yxhw.astype(images.dtype)
  centres = lambda count: (jnp.arange(count, dtype=images.dtype) + 0.5) / count
  y_src = boxes[:, 0:1] + centres(out_height)[None] * boxes[:, 2:3]   # [B, H']
  x_src = boxes[:, 1:2] + centres(out_width)[None] * boxes[:, 3:4]    # [B, W']
  clamp = lambda src, start, extent, limit: jnp.clip(
      jnp.clip(src, start + 0.5, start + extent - 0.5), 0.5, limit - 0.5)
  y_src = clamp(y_src, boxes[:, 0:1], boxes[:, 2:3], height)
  x_src = clamp(x_src, boxes[:, 1:2], boxes[:, 3:4], width)
  y_src = jnp.broadcast_to(y_src[:, :, None], (batch, out_height, out_width)).reshape(batch, -1)
  x_src = jnp.broadcast_to(x_src[:, None, :], (batch, out_height, out_width)).reshape(batch, -1)
  fill = jnp.zeros((channels,), images.dtype)  # never sampled: the points are clamped inside
  sampled = _sample_bilinear(images, x_src, y_src, fill)
  return sampled.reshape(batch, out_height, out_width, channels)


def _flip_where(images: jax.Array, flip: jax.Array, axis: int) -> jax.Array:
  """Reverses image axis `axis` (1: height, 2: width) of the images whose `flip` is True."""
  images, flip = jnp.asarray(images), jnp.asarray(flip)
  _check_images(images)
  _check_per_image(flip, images, "flip")
  return jnp.where(flip[:, None, None, None], jnp.flip(images, axis), images)


def flip_left_right(images: jax.Array, flip: jax.Array) -> jax.Array:
  """Mirrors along the width the images whose `flip` (bool [B]) is True; float [B, H, W, C]."""
  return _flip_where(images, flip, axis=2)


def flip_up_down(images: jax.Array, flip: jax.Array) -> jax.Array:
  """Mirrors along the height the images whose `flip` (bool [B]) is True; float [B, H, W, C]."""
  return _flip_where(images, flip, axis=1)


def pad_and_crop(
    images: jax.Array,
    offsets_yx: jax.Array,
    *,
    padding: int,
    fill_value: float | jax.Array = 0.0,
) -> jax.Array:
  """Pads every side by `padding` pixels of `fill_value`, then crops H x W at a per-image offset.

  Offset (0, 0) keeps the top-left padded corner; (padding, padding) returns the input.
  Offsets outside [0, 2 * padding] are clamped into it (`lax.dynamic_slice` semantics).

  Args:
    images: float [B, H, W, C].
    offsets_yx: int [B, 2], (row, column) of the crop's top-left corner in the padded image.
    padding: pixels added on each side, >= 0.
    fill_value: the padding value: a scalar or a per-channel [C] vector.

  Returns:
    float [B, H, W, C].
  """
  images, offsets_yx = jnp.asarray(images), jnp.asarray(offsets_yx)
  _check_images(images)
  _check_per_image(offsets_yx, images, "offsets_yx", (2,))
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  batch, height, width, channels = images.shape
  fill = _fill_per_channel(fill_value, channels, images.dtype)
  padded = jnp.broadcast_to(fill, (batch, height + 2 * padding, width + 2 * padding, channels))
  padded = padded.at[:, padding:padding + height, padding:padding + width].set(images)
  crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                                     (height, width, channels))
  return jax.vmap(crop)(padded, offsets_yx.astype(jnp.int32))
