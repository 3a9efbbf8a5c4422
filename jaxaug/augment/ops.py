"""The AutoAugment image operations on batches, exact to PIL on 8-bit images (dm-pix style).

Every op is a deterministic function `op(images, magnitude, *, options) -> images`:

- `images`: float [B, H, W, C] in [0, 1], C = 1 (PIL mode "L") or 3 ("RGB").
- `magnitude`: float [B] (or a scalar, broadcast), one value per image, in the op's
  natural unit (see `OPS` and each docstring); random draws of magnitudes and signs
  belong to the samplers (`jaxaug.augment.space`, `jaxaug.augment.policies`).
- the result: float [B, H, W, C] in [0, 1].

All ops are jit- and vmap-safe, with no Python branching on data, so a batch with a
different magnitude per image is one XLA program.

8-bit semantics (`quantize=True`, the default). The reference is the implementation
the AutoAugment and PBA policies were searched with: PIL's ImageOps and ImageEnhance
on uint8 images. An op first rounds `images * 255` to integer levels (a no-op for
images on the uint8 grid `levels_to_unit(k)`, about k / 255), computes in levels with
PIL's formulas, then clips to [0, 255] and truncates towards zero as PIL does
(`(UINT8) value`), and returns `levels_to_unit(levels)`. For images on the uint8 grid
the result is `levels_to_unit` of PIL's uint8 output, with these documented exceptions:

- geometric ops with 'nearest': PIL evaluates affine matrices with off-diagonal
  terms in 16.16 fixed point; a source point within ~1e-3 px of a pixel edge may pick
  the other pixel (see `geometry`).
- auto_contrast is exact: it reproduces PIL's float64 evaluation of its map,
  int(v * scale + offset), which falls one level short of the exact value for 0.43%
  of the (low, high, value) triples, with a table of those triples.

`quantize=False` keeps the same maths without the rounding of the input and the
truncation of the output (the ops are then smooth where their maths is).

Gradients. The rounding and truncation of `quantize=True` are straight-through
(gradient 1), so the gradient with respect to the images always exists. Per op,
`OPS.get(name).differentiable` says whether the magnitude gradient is the true one
(geometric ops need interpolation='bilinear'; 'nearest' has zero magnitude gradient):

- differentiable: shear_x/y, translate_x/y, rotate (bilinear), contrast, color,
  brightness, sharpness, sample_pairing (blends, linear in the magnitude).
- straight-through (documented estimators, forward value exact):
  posterize: d out / d bits of the expected rounding error, out ~ v - (2^(8-bits) - 1) / 2;
  solarize: the hard threshold relaxed to a sigmoid of width `temperature` levels;
  cutout: the hard box relaxed to a sigmoid-edged box of width `temperature` pixels;
  equalize: gradient 1 with respect to the image (its map is piecewise constant).
- blend strength: auto_contrast, invert, equalize and the flips have no magnitude in
  PIL. Here the magnitude is a strength s in [0, 1]: out = v + s (op(v) - v), exactly
  PIL's op at s = 1 and the identity at s = 0; its gradient is op(v) - v.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxaug.augment import geometry
from jaxaug.registry import Registry

MAX_LEVEL = 255.0
# PIL's RGB -> L conversion: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
_GREY_WEIGHTS = (19595.0, 38470.0, 7471.0)
# ImageFilter.SMOOTH, the degenerate image of ImageEnhance.Sharpness: kernel / 13.
_SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))
_SMOOTH_SCALE = 13.0

Op = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class OpInfo:
  """An op and what a searcher needs to know about it.

  Attributes:
    fn: `fn(images [B,H,W,C], magnitude [B], **options) -> images [B,H,W,C]`.
    differentiable: whether the magnitude gradient is the true derivative (else a
      documented straight-through or relaxed estimator, or none for `identity`).
    identity: the magnitude that returns the input unchanged, None if every one does.
  """

  fn: Op
  differentiable: bool
  identity: float | None


OPS: Registry[OpInfo] = Registry("op")


def _register(name: str, *, differentiable: bool, identity: float | None):
  """Decorator registering an op in `OPS` under `name`; returns the op unchanged."""

  def decorator(fn: Op) -> Op:
    OPS.register(name)(OpInfo(fn, differentiable, identity))
    return fn

  return decorator


def _straight_through(hard: jax.Array, soft: jax.Array) -> jax.Array:
  """The value of `hard`, exactly, with the gradient of `soft`."""
  return hard + (soft - jax.lax.stop_gradient(soft))


def levels_to_unit(levels: jax.Array) -> jax.Array:
  """Levels in [0, 255] (any shape; uint8 or float) -> values in [0, 1], levels x fl(1 / 255).

  The product is taken in float32 (float64 for float64 levels) and returned in the float
  dtype of `levels` (float32 for integer levels). It is written as a product because XLA
  turns a float32 division by the constant 255 into it under jit while jax >= 0.11 divides
  exactly in eager mode; the two differ by one ulp for 126 of the 256 levels, so every
  conversion from levels (the trainer's batches, the ops' outputs) goes through here."""
  levels = jnp.asarray(levels)
  compute_dtype = jnp.promote_types(levels.dtype, jnp.float32)
  unit = levels.astype(compute_dtype) * jnp.asarray(1.0 / MAX_LEVEL, compute_dtype)
  return unit.astype(levels.dtype) if jnp.issubdtype(levels.dtype, jnp.floating) else unit


def _to_levels(values: jax.Array, quantize: bool) -> jax.Array:
  """Values in [0, 1] -> levels in [0, 255], rounded to integers (straight-through) if `quantize`."""
  levels = values * MAX_LEVEL
  return _straight_through(jnp.round(levels), levels) if quantize else levels


def _to_images(levels: jax.Array, quantize: bool) -> jax.Array:
  """Levels -> [0, 1]: clipped to [0, 255] (gradient 1 on the closed interval), then
  truncated towards zero like PIL's `(UINT8) value` (straight-through) if `quantize`."""
  clipped = jnp.where(levels < 0, 0.0, jnp.where(levels > MAX_LEVEL, MAX_LEVEL, levels))
  if quantize:
    clipped = _straight_through(jnp.floor(clipped), clipped)
  return levels_to_unit(clipped)


def _check(images: jax.Array, magnitude: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Validates a batch and its magnitudes; returns them as arrays, magnitude float [B]."""
  images = jnp.asarray(images)
  geometry._check_images(images)  # pylint: disable=protected-access
  magnitude = jnp.asarray(magnitude, images.dtype)
  if magnitude.ndim == 0:
    magnitude = jnp.broadcast_to(magnitude, images.shape[:1])
  geometry._check_per_image(magnitude, images, "magnitude")  # pylint: disable=protected-access
  return images, magnitude


def _per_image(values: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1, 1], to broadcast against images."""
  return values[:, None, None, None]


def _apply_in_levels(images: jax.Array, magnitude: jax.Array,
                     op_in_levels: Callable[[jax.Array, jax.Array], jax.Array], *,
                     quantize: bool) -> jax.Array:
  """Runs `op_in_levels(levels [B,H,W,C], magnitude [B]) -> levels` with 8-bit semantics."""
  images, magnitude = _check(images, magnitude)
  return _to_images(op_in_levels(_to_levels(images, quantize), magnitude), quantize)


def _split_high_low(values: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 x -> (high, low), x = high + low exactly, high keeping 15 significant bits."""
  high_bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32) & ~0x1FF
  high = jax.lax.bitcast_convert_type(high_bits, jnp.float32)
  return high, values - high


def _blend(degenerate: jax.Array, levels: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL's `Image.blend(degenerate, image, factor)` before truncation: d + f (v - d).

  PIL rounds the float32 product f (v - d) before adding d. XLA:CPU contracts a product
  and a sum into one fused multiply-add (single rounding), which would move values
  within float32 rounding of an integer across it. So f is split into a 15-bit high
  and a low part whose products with integer differences (|v - d| <= 255) are exact;
  their sum is then rounded once whether or not it is fused: PIL's rounded product.
  """
  high, low = _split_high_low(_per_image(factor))
  difference = levels - degenerate
  return degenerate + (high * difference + low * difference)


def _with_strength(levels: jax.Array, op_levels: jax.Array, strength: jax.Array) -> jax.Array:
  """v + s (op(v) - v): the op at strength 1, the identity at 0."""
  return _blend(levels, op_levels, strength)


# ----------------------------------------------------------------------------- geometric


def _pixel_matrices(a, b, c, d, e, f) -> jax.Array:
  """Stacks per-image coefficients (each [B] or scalar) into [B, 2, 3] pixel matrices."""
  batch = jnp.broadcast_shapes(*(jnp.shape(v) for v in (a, b, c, d, e, f)))
  rows = [jnp.stack([jnp.broadcast_to(v, batch) for v in row], axis=-1)
          for row in ((a, b, c), (d, e, f))]
  return jnp.stack(rows, axis=-2)


def _as_float(values: jax.Array) -> jax.Array:
  """`values` as a floating-point array (float32 unless already floating)."""
  values = jnp.asarray(values)
  return values if jnp.issubdtype(values.dtype, jnp.floating) else values.astype(jnp.float32)


def shear_x_matrix(shear: jax.Array, height: int, width: int) -> jax.Array:
  """Pixel matrices [B, 2, 3] of PIL's AFFINE data (1, s, 0, 0, 1, 0): out(x, y) = in(x + s y, y)."""
  del height, width
  shear = _as_float(shear)
  return _pixel_matrices(1.0, shear, 0.0, 0.0, 1.0, 0.0).astype(shear.dtype)


def shear_y_matrix(shear: jax.Array, height: int, width: int) -> jax.Array:
  """Pixel matrices [B, 2, 3] of PIL's AFFINE data (1, 0, 0, s, 1, 0): out(x, y) = in(x, s x + y)."""
  del height, width
  shear = _as_float(shear)
  return _pixel_matrices(1.0, 0.0, 0.0, shear, 1.0, 0.0).astype(shear.dtype)


def translate_x_matrix(fraction: jax.Array, height: int, width: int) -> jax.Array:
  """Pixel matrices [B, 2, 3] of (1, 0, fraction * W, 0, 1, 0): content moves left for > 0."""
  del height
  fraction = _as_float(fraction)
  return _pixel_matrices(1.0, 0.0, fraction * width, 0.0, 1.0, 0.0).astype(fraction.dtype)


def translate_y_matrix(fraction: jax.Array, height: int, width: int) -> jax.Array:
  """Pixel matrices [B, 2, 3] of (1, 0, 0, 0, 1, fraction * H): content moves up for > 0."""
  del width
  fraction = _as_float(fraction)
  return _pixel_matrices(1.0, 0.0, 0.0, 0.0, 1.0, fraction * height).astype(fraction.dtype)


def rotate_matrix(degrees: jax.Array, height: int, width: int) -> jax.Array:
  """Pixel matrices [B, 2, 3] of PIL's `Image.rotate(degrees)`: counter-clockwise about (W/2, H/2)."""
  degrees = _as_float(degrees)
  radians = degrees * (math.pi / 180.0)
  cos, sin = jnp.cos(radians), jnp.sin(radians)
  centre_x, centre_y = width / 2.0, height / 2.0
  # PIL's inverse map: rotate by -angle about the centre, a = cos, b = -sin, d = sin, e = cos.
  return _pixel_matrices(cos, -sin, centre_x - cos * centre_x + sin * centre_y,
                         sin, cos, centre_y - sin * centre_x - cos * centre_y).astype(degrees.dtype)


def warp(images: jax.Array, matrices: jax.Array, *, interpolation: str = "nearest",
         fill: float | jax.Array = 0.0, quantize: bool = True) -> jax.Array:
  """Warps each image by its pixel matrix with the geometric ops' 8-bit semantics.

  Args:
    images: float [B, H, W, C] in [0, 1].
    matrices: float [B, 2, 3] pixel matrices, output -> input (`geometry.affine_warp`'s
      PIL convention), e.g. from `shear_x_matrix`; several ops' matrices compose by product.
    interpolation: 'nearest' (PIL NEAREST) or 'bilinear'.
    fill: value in [0, 1] of pixels that come from outside the image; scalar or [C].
    quantize: 8-bit semantics (module docstring).

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  images = jnp.asarray(images)
  geometry._check_images(images)  # pylint: disable=protected-access
  channels = images.shape[-1]
  fill_levels = _to_levels(geometry._fill_per_channel(  # pylint: disable=protected-access
      fill, channels, images.dtype), quantize)
  warped = geometry.affine_warp(_to_levels(images, quantize), matrices,
                                interpolation=interpolation, fill_value=fill_levels)
  return _to_images(warped, quantize)


# Pixel-matrix function (magnitude [B], height, width) -> [B, 2, 3] of each geometric op.
GEOMETRIC_MATRICES: dict[str, Callable[[jax.Array, int, int], jax.Array]] = {}


def _geometric_op(name: str, matrix_fn: Callable[[jax.Array, int, int], jax.Array],
                  unit: str, pil_reference: str) -> Op:
  """The registered op warping by `matrix_fn`; one definition serves all five geometric ops."""

  def op(images: jax.Array, magnitude: jax.Array, *, interpolation: str = "nearest",
         fill: float | jax.Array = 0.0, quantize: bool = True) -> jax.Array:
    images, magnitude = _check(images, magnitude)
    matrices = matrix_fn(magnitude, images.shape[1], images.shape[2])
    return warp(images, matrices, interpolation=interpolation, fill=fill, quantize=quantize)

  op.__name__ = op.__qualname__ = name
  op.__doc__ = f"""{name.replace('_', ' ').capitalize()} by `magnitude` ({unit}); identity 0.

  PIL: {pil_reference} (matrix: `{matrix_fn.__name__}`).

  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B] ({unit}).
    interpolation: 'nearest' (PIL NEAREST, the AutoAugment default; zero magnitude
      gradient) or 'bilinear' (differentiable in the magnitude).
    fill: value in [0, 1] of pixels that come from outside the image; scalar or [C].
    quantize: 8-bit semantics (module docstring).

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  GEOMETRIC_MATRICES[name] = matrix_fn
  return _register(name, differentiable=True, identity=0.0)(op)


shear_x = _geometric_op("shear_x", shear_x_matrix, "shear factor",
                        "im.transform(size, AFFINE, (1, m, 0, 0, 1, 0))")
shear_y = _geometric_op("shear_y", shear_y_matrix, "shear factor",
                        "im.transform(size, AFFINE, (1, 0, 0, m, 1, 0))")
translate_x = _geometric_op("translate_x", translate_x_matrix, "fraction of the width",
                            "im.transform(size, AFFINE, (1, 0, m * W, 0, 1, 0))")
translate_y = _geometric_op("translate_y", translate_y_matrix, "fraction of the height",
                            "im.transform(size, AFFINE, (1, 0, 0, 0, 1, m * H))")
rotate = _geometric_op("rotate", rotate_matrix, "degrees, counter-clockwise", "im.rotate(m)")



def _strength_op(name: str, transform: Callable[[jax.Array, bool], jax.Array],
                 pil_reference: str, details: str = "") -> Op:
  """The registered op applying `transform(levels, quantize) -> levels` at a blend strength."""

  def op(images: jax.Array, magnitude: jax.Array, *, quantize: bool = True) -> jax.Array:
    return _apply_in_levels(
        images, magnitude, lambda v, s: _with_strength(v, transform(v, quantize), s),
        quantize=quantize)

  op.__name__ = op.__qualname__ = name
  details = f"\n  {details.strip()}\n" if details.strip() else ""
  op.__doc__ = f"""`{pil_reference}` at strength `magnitude` in [0, 1].
{details}
  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B], strength: 1 is PIL's op, 0 the identity (module docstring).
    quantize: 8-bit semantics.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  return _register(name, differentiable=False, identity=0.0)(op)


flip_left_right = _strength_op("flip_left_right", lambda v, _: jnp.flip(v, axis=2),
                               "ImageOps.mirror")
flip_up_down = _strength_op("flip_up_down", lambda v, _: jnp.flip(v, axis=1), "ImageOps.flip")
invert = _strength_op("invert", lambda v, _: MAX_LEVEL - v, "ImageOps.invert (255 - v)")


def pad_and_crop(images: jax.Array, magnitude: jax.Array, *, offsets_yx: jax.Array,
                 fill: float | jax.Array = 0.0, quantize: bool = True) -> jax.Array:
  """Pads by `magnitude` pixels of `fill` on every side and crops the original size back.

  The classic CIFAR random crop (`geometry.pad_and_crop` with a per-image padding). The
  crop's top-left corner in the padded image is round(offset * 2 p), p = round(magnitude),
  so offset 0.5 is the identity crop. Not in `OPS`: it is a baseline transform, not an
  op of the AutoAugment search space; its magnitude has no gradient.

  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B], padding in pixels (rounded, >= 0); 0 is the identity.
    offsets_yx: float [B, 2] in [0, 1], (row, column) position of the crop.
    fill: value in [0, 1] of the padding; scalar or [C].
    quantize: 8-bit semantics.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  images, magnitude = _check(images, magnitude)
  offsets_yx = jnp.asarray(offsets_yx, images.dtype)
  geometry._check_per_image(offsets_yx, images, "offsets_yx", (2,))  # pylint: disable=protected-access
  padding = jnp.round(jnp.maximum(magnitude, 0))[:, None]
  shift = jnp.round(jnp.clip(offsets_yx, 0, 1) * 2 * padding) - padding  # [B, 2] (row, col)
  matrices = _pixel_matrices(1.0, 0.0, shift[:, 1], 0.0, 1.0, shift[:, 0]).astype(images.dtype)
  return warp(images, matrices, interpolation="nearest", fill=fill, quantize=quantize)


# ----------------------------------------------------------------------------- point ops


@_register("identity", differentiable=False, identity=None)
def identity(images: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Returns `images` (float [B, H, W, C]) unchanged; `magnitude` [B] is ignored."""
  images, _ = _check(images, magnitude)
  return images


@_register("solarize", differentiable=False, identity=256.0)
def solarize(images: jax.Array, magnitude: jax.Array, *, temperature: float = 8.0,
             quantize: bool = True) -> jax.Array:
  """`ImageOps.solarize(threshold)`: levels v >= threshold become 255 - v.

  Straight-through: the value is PIL's; the gradient is that of the relaxation
  v + sigmoid((v - threshold + 1/2) / temperature) (255 - 2 v).

  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B], threshold in levels [0, 256]; 256 is the identity, 0 inverts.
    temperature: width of the relaxation, in levels (> 0).
    quantize: 8-bit semantics.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")

  def op(levels, threshold):
    threshold = _per_image(threshold)
    hard = jnp.where(levels >= threshold, MAX_LEVEL - levels, levels)
    inverted = jax.nn.sigmoid((levels - threshold + 0.5) / temperature)
    return _straight_through(hard, levels + inverted * (MAX_LEVEL - 2 * levels))

  return _apply_in_levels(images, magnitude, op, quantize=quantize)


@_register("posterize", differentiable=False, identity=8.0)
def posterize(images: jax.Array, magnitude: jax.Array, *, quantize: bool = True) -> jax.Array:
  """`ImageOps.posterize(bits)`: keeps the `bits` most significant bits of each level.

  `bits` is rounded to an integer in [0, 8]; 0 gives black (which PIL >= 10 refuses;
  older PIL and torchvision allow it). Straight-through: the value is PIL's; the
  gradient is that of the expected result v - (2^(8 - bits) - 1) / 2, continuous in bits,
  and 1 with respect to the image.

  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B], bits in [0, 8]; 8 is the identity.
    quantize: 8-bit semantics.

  Returns:
    float [B, H, W, C] in [0, 1].
  """

  def op(levels, bits):
    bits = _per_image(bits)
    step = 2.0 ** (8.0 - jnp.clip(jnp.round(bits), 0, 8))  # levels per bin: 1, 2, ..., 256
    hard = jnp.where(step > 1, jnp.floor(levels / step) * step, levels)
    soft = levels - (2.0 ** (8.0 - bits) - 1) / 2
    return _straight_through(hard, soft)

  return _apply_in_levels(images, magnitude, op, quantize=quantize)


def _channel_extremes(levels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per image and channel minimum and maximum over the pixels, [B, 1, 1, C] each."""
  return (jnp.min(levels, axis=(1, 2), keepdims=True),
          jnp.max(levels, axis=(1, 2), keepdims=True))


@functools.cache
def _pil_float64_shortfalls() -> np.ndarray:
  """Bit set, uint32 [2^24 / 32], of the keys low * 2^16 + high * 2^8 + v of the (low, high,
  v) where PIL's float64 int(v * scale + offset) of autocontrast is one below the exact
  floor((v - low) 255 / (high - low)): 12,094 of the 2.8M triples low < high, low <= v <= high."""
  low, high = np.triu_indices(256, k=1)
  lengths = high - low + 1
  starts, ends, spread = (np.repeat(a, lengths) for a in (low, high, high - low))
  value = starts + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  scale = 255.0 / spread
  pil = (value * scale + (-starts * scale)).astype(np.int64)  # PIL's float64 expression
  short = pil < (value - starts) * 255 // spread
  keys = starts[short] * 65536 + ends[short] * 256 + value[short]
  bits = np.zeros(2**24 // 32, np.uint32)
  np.bitwise_or.at(bits, keys // 32, (np.uint32(1) << (keys % 32).astype(np.uint32)))
  return bits


def _pil_auto_contrast_levels(levels: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
  """PIL's autocontrast map of integer levels [B, H, W, C] given each channel's extremes.

  The exact floor((v - low) 255 / (high - low)) in integers (XLA may divide by multiplying
  by a reciprocal), minus one where PIL's float64 evaluation falls just short of it.
  """
  as_int = lambda x: x.astype(jnp.int32)
  exact = (as_int(levels - low) * 255) // jnp.maximum(as_int(high - low), 1)
  keys = (as_int(low) * 65536 + as_int(high) * 256 + as_int(levels)).astype(jnp.uint32)
  words = jnp.asarray(_pil_float64_shortfalls())[keys // 32]
  shortfall = (words >> (keys % 32)) & 1
  return (exact - shortfall.astype(jnp.int32)).astype(levels.dtype)


def _auto_contrast_levels(levels: jax.Array, quantize: bool) -> jax.Array:
  """PIL's autocontrast of levels [B, H, W, C]; see `auto_contrast`."""
  low, high = _channel_extremes(levels)
  spread = high - low
  stretched = (levels - low) * MAX_LEVEL / jnp.where(spread > 0, spread, 1.0)
  if quantize:
    stretched = _straight_through(_pil_auto_contrast_levels(levels, low, high), stretched)
  return jnp.where(spread > 0, stretched, levels)


auto_contrast = _strength_op(
    "auto_contrast", _auto_contrast_levels, "ImageOps.autocontrast",
    """
  Each channel is mapped linearly so that its lowest level becomes 0 and its highest
  255: floor((v - low) 255 / (high - low)), as PIL evaluates it in float64 (module
  docstring); a constant channel is unchanged.
""")


def _equalize_maps(levels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """PIL's per-channel equalisation lookup tables of integer levels.

  Args:
    levels: float [B, H, W, C], integer-valued in [0, 255].

  Returns:
    (lookup float [B * C * 256] of output levels, index int32 [B, H, W, C] of each pixel
    into it).
  """
  batch, height, width, channels = levels.shape
  bins = 256
  values = jnp.clip(levels, 0, MAX_LEVEL).astype(jnp.int32)
  table_start = (jnp.arange(batch * channels, dtype=jnp.int32) * bins).reshape(batch, 1, 1, channels)
  index = table_start + values
  counts = jax.ops.segment_sum(jnp.ones(index.size, jnp.int32), index.reshape(-1),
                               num_segments=batch * channels * bins).reshape(batch, channels, bins)
  # PIL: step = (pixels - count of the highest occupied level) // 255; lut[i] = (step // 2 +
  # pixels below level i) // step; identity when one level is occupied or step is 0.
  highest = jnp.max(values, axis=(1, 2)).reshape(batch, channels, 1)
  count_of_highest = jnp.take_along_axis(counts, highest, axis=-1)
  step = (height * width - count_of_highest) // 255
  below = jnp.cumsum(counts, axis=-1) - counts
  lookup = jnp.minimum((step // 2 + below) // jnp.maximum(step, 1), 255)
  occupied = jnp.sum(counts > 0, axis=-1, keepdims=True)
  lookup = jnp.where((occupied <= 1) | (step == 0), jnp.arange(bins, dtype=jnp.int32), lookup)
  return lookup.reshape(-1).astype(levels.dtype), index


def _equalize_levels(levels: jax.Array, quantize: bool) -> jax.Array:
  """PIL's equalisation of levels [B, H, W, C]; see `equalize`."""
  del quantize  # the histogram is of rounded levels either way
  lookup, index = _equalize_maps(jax.lax.stop_gradient(jnp.round(levels)))
  return _straight_through(lookup[index], levels)


equalize = _strength_op(
    "equalize", _equalize_levels, "ImageOps.equalize (per-channel histogram equalisation)",
    """
  The histogram is of the levels rounded to integers whatever `quantize` is. The map
  is piecewise constant; its image gradient is taken as 1 (straight-through).
""")


# ----------------------------------------------------------------------------- enhance


def _grey(levels: jax.Array, quantize: bool) -> jax.Array:
  """PIL's 'L' of each pixel, [B, H, W, 1]: the RGB -> L conversion for C = 3, else the image."""
  if levels.shape[-1] == 1:
    return levels
  if levels.shape[-1] != 3:
    raise ValueError(f"colour ops need C = 1 or 3 channels, got shape {levels.shape}")
  # Integer products and sums stay below 2^24, so the float32 dot is exact.
  weights = jnp.asarray(_GREY_WEIGHTS, levels.dtype)[:, None]
  weighted = jnp.dot(levels, weights, precision=jax.lax.Precision.HIGHEST) / 65536.0
  return _straight_through(jnp.floor(weighted + 0.5), weighted) if quantize else weighted


def _enhance_op(name: str, degenerate_fn: Callable[[jax.Array, bool], jax.Array],
                pil_name: str, degenerate: str) -> Op:
  """The registered `ImageEnhance.<pil_name>` op blending from `degenerate_fn(levels, quantize)`."""

  def op(images: jax.Array, magnitude: jax.Array, *, quantize: bool = True) -> jax.Array:
    return _apply_in_levels(
        images, magnitude,
        lambda v, factor: _blend(degenerate_fn(v, quantize), v, factor), quantize=quantize)

  op.__name__ = op.__qualname__ = name
  op.__doc__ = f"""`ImageEnhance.{pil_name}(image).enhance(factor)`: d + factor (v - d).

  d is {degenerate}. Factor 1 is the identity, 0 gives d.

  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B], the enhance factor (>= 0; AutoAugment uses [0.1, 1.9]).
    quantize: 8-bit semantics.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  return _register(name, differentiable=True, identity=1.0)(op)


def _mean_grey(levels: jax.Array, quantize: bool) -> jax.Array:
  """The mean 'L' level of each image, [B, 1, 1, 1], rounded half up if `quantize` (ImageStat)."""
  mean = jnp.mean(_grey(levels, quantize), axis=(1, 2, 3), keepdims=True)
  return _straight_through(jnp.floor(mean + 0.5), mean) if quantize else mean


def _black(levels: jax.Array, quantize: bool) -> jax.Array:
  """Zeros like `levels`."""
  del quantize
  return jnp.zeros_like(levels)


def _smooth(levels: jax.Array, quantize: bool) -> jax.Array:
  """PIL's SMOOTH filter of levels [B, H, W, C]: 3 x 3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13,
  rounded if `quantize`; the one-pixel border is left unchanged, as PIL does."""
  height, width = levels.shape[1:3]
  padded = jnp.pad(levels, ((0, 0), (1, 1), (1, 1), (0, 0)))
  total = sum(weight * padded[:, dy:dy + height, dx:dx + width]
              for dy, row in enumerate(_SMOOTH_KERNEL) for dx, weight in enumerate(row))
  smooth = total / _SMOOTH_SCALE
  if quantize:
    smooth = _straight_through(jnp.floor(smooth + 0.5), smooth)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  return jnp.where(interior[None, :, :, None], smooth, levels)


contrast = _enhance_op("contrast", _mean_grey, "Contrast",
                       "the mean of the image's 'L' levels, rounded half up (ImageStat)")
color = _enhance_op("color", _grey, "Color", "each pixel's 'L' level (RGB -> L conversion)")
brightness = _enhance_op("brightness", _black, "Brightness", "black")
sharpness = _enhance_op("sharpness", _smooth, "Sharpness", "the image smoothed by PIL's SMOOTH")


# ----------------------------------------------------------------------------- regional


@_register("cutout", differentiable=False, identity=0.0)
def cutout(images: jax.Array, magnitude: jax.Array, *, centers_yx: jax.Array,
           fill: float | jax.Array = 0.5, temperature: float = 1.0,
           quantize: bool = True) -> jax.Array:
  """Fills a square of side `magnitude * H` pixels centred at `centers_yx` (DeVries & Taylor).

  Pixel (i, j) is filled when cy - s/2 <= i < cy + s/2 and cx - s/2 <= j < cx + s/2,
  s = magnitude * H; with integer centres and even s, the box of the AutoAugment
  reference. The box may extend beyond the image. Straight-through: the value is the
  hard box; the gradient is that of a box with sigmoid edges `temperature` pixels wide.

  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B], side as a fraction of the image height; 0 is the identity.
    centers_yx: float [B, 2], (row, column) of each box centre in pixels.
    fill: value in [0, 1] of the box; scalar or [C].
    temperature: edge width of the relaxation, in pixels (> 0).
    quantize: 8-bit semantics.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  images, magnitude = _check(images, magnitude)
  centers_yx = jnp.asarray(centers_yx, images.dtype)
  geometry._check_per_image(centers_yx, images, "centers_yx", (2,))  # pylint: disable=protected-access
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  _, height, width, channels = images.shape
  fill_levels = _to_levels(geometry._fill_per_channel(  # pylint: disable=protected-access
      fill, channels, images.dtype), quantize)
  half = magnitude * height / 2

  def inside(positions, center):
    """Hard and soft membership [B, N] of pixel indices `positions` [N] in [c - s/2, c + s/2)."""
    start = (center - half)[:, None]
    stop = (center + half)[:, None]
    hard = (positions >= start) & (positions < stop)
    soft = (jax.nn.sigmoid((positions + 0.5 - start) / temperature)
            * jax.nn.sigmoid((stop - positions - 0.5) / temperature))
    return hard.astype(images.dtype), soft

  hard_rows, soft_rows = inside(jnp.arange(height, dtype=images.dtype), centers_yx[:, 0])
  hard_cols, soft_cols = inside(jnp.arange(width, dtype=images.dtype), centers_yx[:, 1])
  outer = lambda rows, cols: (rows[:, :, None] * cols[:, None, :])[..., None]
  # Straight-through on the whole box, so the soft box's gradient survives an empty hard box.
  box = _straight_through(outer(hard_rows, hard_cols), outer(soft_rows, soft_cols))
  levels = _to_levels(images, quantize)
  return _to_images(levels + box * (fill_levels - levels), quantize)


@_register("sample_pairing", differentiable=True, identity=0.0)
def sample_pairing(images: jax.Array, magnitude: jax.Array, *, partners: jax.Array,
                   quantize: bool = True) -> jax.Array:
  """`Image.blend(image, partner, weight)` (Inoue, 2018): v + weight (partner - v).

  Args:
    images: float [B, H, W, C] in [0, 1].
    magnitude: float [B], the partner's weight in [0, 1]; 0 is the identity.
    partners: float [B, H, W, C] in [0, 1], the image blended into each image.
    quantize: 8-bit semantics.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  partners = jnp.asarray(partners)
  if partners.shape != jnp.shape(images):
    raise ValueError(f"partners must have the shape of images {jnp.shape(images)}, "
                     f"got {partners.shape}")
  partner_levels = _to_levels(partners, quantize)
  return _apply_in_levels(images, magnitude,
                          lambda v, weight: _blend(v, partner_levels, weight), quantize=quantize)
