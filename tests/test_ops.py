"""Tests of jaxaug.augment.ops against independent references.

References: PIL 13 (Image.transform / rotate / blend, ImageOps, ImageEnhance) on nine real
CIFAR-10 images cropped to 27 x 32 (non-square, so an x / y swap shows), also as PIL 'L'
images; a numpy restatement of the spec's Cutout box; central finite differences in float64;
the API table of the issue-3 spec (names, identity magnitudes, differentiability). Every image
of a batch gets a different magnitude, the HBA range ends included.

Tolerances against PIL, per op, in uint8 levels (ours = op(uint8 / 255) * 255):
- identity, invert, solarize, posterize, equalize, auto_contrast, flips (strength 1), cutout:
  exact. These are integer maps (PIL's LUTs, Python integer or float64 arithmetic).
- geometric ops, 'nearest' (the default): exact, except output pixels whose source point lies
  within 1e-3 px of a pixel edge, which are left out (at most 2% of an image). PIL evaluates
  matrices with off-diagonal terms in 16.16 fixed point (each coefficient off by <= 2^-17,
  accumulated over <= 1 + W + H steps: < 5e-4 px) and our coordinates are float32 (~1e-5 px);
  only near an edge can the two pick different pixels.
- geometric ops, 'bilinear': compared where PIL's BILINEAR and ours are the same function
  (sources at least half a pixel from the image border, see geometry.py). quantize=False: PIL's
  unrounded value (a PIL 'F' image: the same double interpolation) within 5e-3 levels (float32
  coordinates, error ~2e-5 px, times pixel differences of up to 255 levels per px).
  quantize=True: PIL's uint8 exactly, except where PIL's unrounded value is within 5e-3 of an
  integer and its neighbours differ: there float32 against PIL's float64 may truncate to either
  side (<= 1 level). Where the neighbours are all equal PIL's a + (b - a) d is exactly a, and
  so must ours be.
- blends (contrast, color, brightness, sharpness, sample_pairing, blend-strength ops at
  fractional strength): PIL's Image.blend computes (float) in1 + f (in2 - in1) in float32 and
  truncates. Exact, except at pixels where the truncation of the exact value, of PIL's float32
  expression and of its fused-multiply-add form disagree (the level is decided by float
  rounding, not by the maths); there <= 1 level, and at most 1% of an image may differ.
"""

from __future__ import annotations

import functools
import io
import math
import os
import tarfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from jaxaug.augment import ops

from shared_data import CIFAR_TAR
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship")
HEIGHT, WIDTH = 27, 32
FILL_RGB = (10, 200, 77)  # uint8 levels, on the grid so that the fill is exact
FILL_GREY = 77

# The spec table (ISSUE3_SPEC.md): identity magnitude of each op (None: ignored).
SPEC_IDENTITY = {
    "identity": None, "shear_x": 0.0, "shear_y": 0.0, "translate_x": 0.0, "translate_y": 0.0,
    "rotate": 0.0, "auto_contrast": 0.0, "invert": 0.0, "equalize": 0.0, "solarize": 256.0,
    "posterize": 8.0, "contrast": 1.0, "color": 1.0, "brightness": 1.0, "sharpness": 1.0,
    "cutout": 0.0, "sample_pairing": 0.0, "flip_left_right": 0.0, "flip_up_down": 0.0,
}
ALL_OPS = sorted(SPEC_IDENTITY)
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
ENHANCE = ("contrast", "color", "brightness", "sharpness")
BLEND_STRENGTH = ("auto_contrast", "invert", "equalize", "flip_left_right", "flip_up_down")
# Differentiable in the magnitude per the spec: geometric (bilinear), enhance, sample pairing.
DIFFERENTIABLE = GEOMETRIC + ENHANCE + ("sample_pairing",)
# Straight-through / relaxed estimators, and the blend-strength relaxations.
STRAIGHT_THROUGH = ("posterize", "solarize", "cutout") + BLEND_STRENGTH

# One magnitude per image (nine images), the HBA range ends included.
STRENGTHS = [0.0, 0.2, 0.35, 0.5, 0.8, 1.0, 1.0, 1.0, 1.0]
ENHANCE_FACTORS = [0.1, 0.37, 0.64, 1.0, 1.23, 1.5, 1.72, 1.8, 1.9]
SHEARS = [-0.3, -0.17, -0.05, 0.0, 0.05, 0.123, 0.213, 0.27, 0.3]
TRANSLATIONS = [-0.45, -0.31, -0.13, 0.0, 0.07, 0.2, 0.37, 0.41, 0.45]
MAGNITUDES = {
    "identity": [0.0, 0.3, 1.0, -2.0, 5.0, 0.1, 0.9, 256.0, 7.0],
    "shear_x": SHEARS, "shear_y": SHEARS,
    "translate_x": TRANSLATIONS, "translate_y": TRANSLATIONS,
    "rotate": [-30.0, -21.7, -7.3, 0.0, 2.5, 12.5, 19.0, 26.0, 30.0],
    "solarize": [0.0, 31.0, 77.5, 128.0, 200.0, 254.0, 255.0, 255.5, 256.0],
    "posterize": [0.0, 1.2, 2.0, 2.6, 4.4, 5.0, 6.3, 7.0, 8.0],
    "sample_pairing": [0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.77, 0.9, 1.0],
    # Sides in [0, 0.2] of the height: 0 to 5.4 px, non-integer, so both ends of the half-open
    # box interval matter.
    "cutout": [0.0, 0.05, 0.1, 0.15, 0.2, 0.18, 0.07, 0.13, 0.11],
    **{name: STRENGTHS for name in BLEND_STRENGTH},
    **{name: ENHANCE_FACTORS for name in ENHANCE},
}
# Cutout centres (row, col), integers (the PIL-exact case), some at the corners (box clipped).
CUTOUT_CENTERS = [[13, 16], [5, 7], [20, 25], [0, 0], [26, 31], [1, 30], [14, 3], [10, 10],
                  [22, 17]]
# Keyword arrays with one entry per image (vmapped / sliced); others are shared by the batch.
PER_IMAGE_OPTIONS = ("partners", "centers_yx")


# ----------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module")
def cifar_full() -> np.ndarray:
  """Nine real CIFAR-10 test images (one per class), uint8 [9, 32, 32, 3]."""
  if not os.path.exists(CIFAR_TAR):
    pytest.skip(f"{CIFAR_TAR} is missing")
  wanted = {f"cifar10/test/{name}/0000.jpg": name for name in CIFAR_CLASSES}
  images = {}
  with tarfile.open(CIFAR_TAR) as archive:
    for member in archive:
      if member.name in wanted:
        data = archive.extractfile(member).read()
        images[wanted[member.name]] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if len(images) == len(wanted):
          break
  return np.stack([images[name] for name in CIFAR_CLASSES])


@pytest.fixture(scope="module")
def cifar(cifar_full) -> np.ndarray:
  """The nine images cropped to HEIGHT x WIDTH, uint8 [9, 27, 32, 3]."""
  return cifar_full[:, 2:2 + HEIGHT, :WIDTH]


@pytest.fixture(scope="module")
def cifar_grey(cifar) -> np.ndarray:
  """PIL's 'L' conversion of the crops, uint8 [9, 27, 32, 1]."""
  return np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in cifar])[..., None]


def to_unit(levels) -> np.ndarray:
  """uint8 levels -> float32 [0, 1] as the trainer and the ops convert them
  (`ops.levels_to_unit`): levels times fl(1/255), one ulp off numpy's k / 255 for 126 of the
  256 levels."""
  return np.asarray(levels, np.float32) * np.float32(1 / 255)


def test_levels_to_unit_is_the_product_in_every_mode_and_dtype():
  levels = np.arange(256, dtype=np.uint8)
  expected = to_unit(levels)
  assert np.count_nonzero(expected != (levels / 255).astype(np.float32)) == 126
  for name, convert in [("eager", ops.levels_to_unit), ("jit", jax.jit(ops.levels_to_unit)),
                        ("vmap", jax.vmap(ops.levels_to_unit))]:
    for dtype in (np.uint8, np.float32):
      unit = convert(levels.astype(dtype))
      assert unit.dtype == jnp.float32, (name, dtype)
      np.testing.assert_array_equal(np.asarray(unit), expected, err_msg=f"{name} {dtype}")
    # bfloat16 levels stay bfloat16, rounded once from the float32 product: k / 255 rounded.
    unit = convert(jnp.asarray(levels, jnp.bfloat16))
    assert unit.dtype == jnp.bfloat16, name
    np.testing.assert_array_equal(np.asarray(unit, np.float32),
                                  np.asarray(jnp.asarray(levels / 255, jnp.bfloat16), np.float32))


def levels_of(ours: np.ndarray) -> np.ndarray:
  """Our float [0, 1] output in uint8 levels, asserting that it lies on the uint8 grid."""
  levels = ours.astype(np.float64) * 255
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
  return np.round(levels)


def f32(value: float) -> float:
  """The float32 value of a magnitude: what the op sees, and what PIL is given."""
  return float(np.float32(value))


def options_for(name: str, images: np.ndarray) -> dict[str, np.ndarray]:
  """The keyword arrays of op `name` for a batch [B, H, W, C]: sample-pairing partners (the
  next image), cutout centres, and a uint8-grid fill for geometric ops and cutout."""
  batch, height, width, channels = images.shape
  options = {}
  if name in GEOMETRIC or name == "cutout":
    options["fill"] = np.asarray(FILL_RGB if channels == 3 else (FILL_GREY,)) / 255.0
  if name == "sample_pairing":
    options["partners"] = np.roll(images, 1, axis=0)
  if name == "cutout":
    options["centers_yx"] = np.asarray(
        [[row % height, col % width] for row, col in CUTOUT_CENTERS[:batch]], np.float64)
  return options


def bilinear_if_geometric(name: str) -> dict[str, str]:
  """Static options selecting the interpolating (differentiable) path of geometric ops."""
  return {"interpolation": "bilinear"} if name in GEOMETRIC else {}


def jitted(name: str, **static) -> Callable:
  """The op `name` jitted once per set of static options (shared by all tests)."""
  return _jitted(name, tuple(sorted(static.items())))


@functools.cache
def _jitted(name: str, static: tuple[tuple[str, object], ...]) -> Callable:
  return jax.jit(functools.partial(ops.OPS.get(name).fn, **dict(static)))


def run(name: str, images: np.ndarray, magnitude, options: dict, **static) -> np.ndarray:
  """The jitted op on float32 images, magnitudes and keyword arrays; `static`: interpolation,
  quantize."""
  arrays = {key: jnp.asarray(value, jnp.float32) for key, value in options.items()}
  return np.asarray(jitted(name, **static)(jnp.asarray(images, jnp.float32),
                                           jnp.asarray(magnitude, jnp.float32), **arrays))


def to_pil(image: np.ndarray) -> Image.Image:
  """uint8 [H, W, 1] -> mode 'L', [H, W, 3] -> 'RGB'."""
  return Image.fromarray(image[..., 0], "L") if image.shape[-1] == 1 else Image.fromarray(image)


def from_pil(image: Image.Image) -> np.ndarray:
  """PIL image -> uint8 [H, W, C]."""
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def value_and_gradient_fn(name: str, **static) -> Callable:
  """jitted (images, magnitude, weights, options) -> (loss, (d / d images, d / d magnitude))."""
  return _value_and_gradient_fn(name, tuple(sorted(static.items())))


@functools.cache
def _value_and_gradient_fn(name: str, static: tuple[tuple[str, object], ...]) -> Callable:
  fn = functools.partial(ops.OPS.get(name).fn, **dict(static))
  loss = lambda images, m, weights, options: jnp.sum(weights * fn(images, m, **options))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def random_weights(seed: int, shape: tuple[int, ...]) -> np.ndarray:
  """float64 standard normal weights of a loss sum(weights * output)."""
  return np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float64))


def gradients(images: np.ndarray, name: str, magnitudes, seed: int, **static):
  """(loss function of the magnitudes, d loss / d images, d loss / d magnitude) for float64
  images [3, 27, 32, 3] (one compilation per op and static options, shared by the tests), with
  loss = sum(weights * op(images, magnitude)) for random normal weights drawn from `seed`."""
  weights = random_weights(seed, images.shape)
  options = options_for(name, images)
  fn = value_and_gradient_fn(name, **static)
  _, (image_gradient, magnitude_gradient) = fn(images, magnitudes, weights, options)
  loss = lambda m: float(fn(images, m, weights, options)[0])
  return loss, np.asarray(image_gradient), np.asarray(magnitude_gradient)


# ------------------------------------------------------------------------------- registry, spec


def test_registry_names_identities_and_differentiability():
  assert ops.OPS.names() == ALL_OPS
  for name, identity in SPEC_IDENTITY.items():
    info = ops.OPS.get(name)
    assert isinstance(info, ops.OpInfo)
    assert info.identity == identity, name
    assert info.differentiable == (name in DIFFERENTIABLE), name


def test_unknown_op_lists_valid_names():
  with pytest.raises(ValueError, match="Nope") as error:
    ops.OPS.get("Nope")
  for name in ALL_OPS:
    assert name in str(error.value)


@pytest.mark.parametrize("name", ALL_OPS)
def test_bad_shapes_raise_naming_the_value(name):
  images = np.full((3, 4, 5, 3), 0.5, np.float32)
  options = options_for(name, images)
  per_image = {key: value for key, value in options.items() if key in PER_IMAGE_OPTIONS}
  fn = ops.OPS.get(name).fn
  with pytest.raises(ValueError, match="images"):
    fn(images[0], np.ones(3, np.float32), **{**options, **jax.tree.map(lambda v: v[0], per_image)})
  for magnitude in (np.ones(2, np.float32), np.ones((3, 1), np.float32)):
    with pytest.raises(ValueError, match="magnitude"):
      fn(images, magnitude, **options)
  for key, value in per_image.items():
    with pytest.raises(ValueError, match=key):
      fn(images, np.ones(3, np.float32), **{**options, key: value[:2]})


# ------------------------------------------------------------------------ geometric ops vs PIL


def pil_rotation_data(degrees: float, height: int, width: int) -> tuple[float, ...]:
  """The AFFINE data that PIL's Image.rotate(degrees) builds (Image.py; centre (W/2, H/2))."""
  angle = -math.radians(degrees % 360.0)
  a, b, d, e = (round(math.cos(angle), 15), round(math.sin(angle), 15),
                round(-math.sin(angle), 15), round(math.cos(angle), 15))
  cx, cy = width / 2, height / 2
  return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


# The spec's AFFINE data (output pixel centre -> input point) of each geometric op.
PIL_AFFINE_DATA = {
    "shear_x": lambda m, h, w: (1.0, m, 0.0, 0.0, 1.0, 0.0),
    "shear_y": lambda m, h, w: (1.0, 0.0, 0.0, m, 1.0, 0.0),
    "translate_x": lambda m, h, w: (1.0, 0.0, m * w, 0.0, 1.0, 0.0),
    "translate_y": lambda m, h, w: (1.0, 0.0, 0.0, 0.0, 1.0, m * h),
    "rotate": pil_rotation_data,
}


def pil_geometric(name: str, image: np.ndarray, magnitude: float, resample, fill) -> np.ndarray:
  """The spec's PIL reference of a geometric op on a uint8 [H, W, C] or float32 [H, W] image."""
  im = Image.fromarray(image) if image.dtype == np.float32 else to_pil(image)
  if name == "rotate":
    out = im.rotate(magnitude, resample, fillcolor=fill)
  else:
    data = PIL_AFFINE_DATA[name](magnitude, im.height, im.width)
    out = im.transform(im.size, Image.Transform.AFFINE, data, resample, fillcolor=fill)
  return np.asarray(out) if image.dtype == np.float32 else from_pil(out)


def pil_fill(channels: int):
  """The uint8 fill as PIL's fillcolor."""
  return FILL_RGB if channels == 3 else FILL_GREY


def source_points(data: tuple[float, ...], height: int, width: int):
  """Float64 source (x, y) [H, W] of every output pixel centre under AFFINE `data`."""
  a, b, c, d, e, f = data
  y, x = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  return a * x + b * y + c, d * x + e * y + f


def off_pixel_edges(data, height: int, width: int, tolerance: float = 1e-3) -> np.ndarray:
  """bool [H, W]: output pixels whose source point is >= `tolerance` px from every pixel edge."""
  near = lambda v: np.abs(v - np.round(v)) < tolerance
  x_src, y_src = source_points(data, height, width)
  return ~(near(x_src) | near(y_src))


def check_nearest(name: str, images: np.ndarray) -> None:
  """Ours (default options: 'nearest', quantize) == PIL NEAREST away from pixel edges."""
  height, width, channels = images.shape[1:]
  magnitudes = MAGNITUDES[name]
  ours = levels_of(run(name, to_unit(images), magnitudes, options_for(name, images)))
  fill = pil_fill(channels)
  for image, magnitude, our_image in zip(images, magnitudes, ours):
    data = PIL_AFFINE_DATA[name](f32(magnitude), height, width)
    expected = pil_geometric(name, image, f32(magnitude), Image.Resampling.NEAREST, fill)
    if name == "rotate":  # the edge mask uses PIL's own rotation matrix
      via_data = to_pil(image).transform((width, height), Image.Transform.AFFINE, data,
                                         Image.Resampling.NEAREST, fillcolor=fill)
      np.testing.assert_array_equal(from_pil(via_data), expected)
    keep = off_pixel_edges(data, height, width)
    assert keep.mean() >= 0.98, (name, magnitude)
    np.testing.assert_array_equal(our_image[keep], expected[keep],
                                  err_msg=f"{name} m={magnitude}")


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_nearest_matches_pil(cifar, name):
  check_nearest(name, cifar)


@pytest.mark.parametrize("name", ["rotate", "translate_x", "shear_y"])
def test_geometric_nearest_matches_pil_grey(cifar_grey, name):
  check_nearest(name, cifar_grey)


def bilinear_comparable(data, height: int, width: int) -> np.ndarray:
  """bool [H, W]: sources >= half a pixel from the image border (PIL == ours there)."""
  x_src, y_src = source_points(data, height, width)
  away = lambda v, edge: np.abs(v - edge) >= 0.5 + 1e-6
  return away(x_src, 0) & away(x_src, width) & away(y_src, 0) & away(y_src, height)


def bilinear_neighbours_equal(image: np.ndarray, data, height: int, width: int) -> np.ndarray:
  """bool [H, W, C]: the (edge-clamped) neighbours PIL interpolates between are all equal."""
  x_src, y_src = source_points(data, height, width)
  col0 = np.floor(x_src - 0.5).astype(int)
  row0 = np.floor(y_src - 0.5).astype(int)
  corner = lambda dr, dc: image[np.clip(row0 + dr, 0, height - 1),
                                np.clip(col0 + dc, 0, width - 1)]
  first = corner(0, 0)
  return (corner(0, 1) == first) & (corner(1, 0) == first) & (corner(1, 1) == first)


# Bilinear: the range ends and generic values (no integer pixel shifts).
BILINEAR_MAGNITUDES = {
    "shear_x": [-0.3, -0.2371, -0.1234, -0.04, 0.0531, 0.1, 0.2, 0.261, 0.3],
    "translate_x": [-0.45, -0.3313, -0.1234, -0.071, 0.0531, 0.1937, 0.2, 0.3707, 0.45],
    "rotate": [-30.0, -23.3, -11.3, -2.1, 4.7, 9.9, 17.0, 24.1, 30.0],
}
BILINEAR_MAGNITUDES["shear_y"] = BILINEAR_MAGNITUDES["shear_x"]
BILINEAR_MAGNITUDES["translate_y"] = BILINEAR_MAGNITUDES["translate_x"]


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_bilinear_matches_pil(cifar, name):
  magnitudes = BILINEAR_MAGNITUDES[name]
  images, options = to_unit(cifar), options_for(name, cifar)
  unrounded = run(name, images, magnitudes, options, interpolation="bilinear",
                  quantize=False) * 255
  quantized = levels_of(run(name, images, magnitudes, options, interpolation="bilinear"))
  for image, magnitude, our_unrounded, our_quantized in zip(cifar, magnitudes, unrounded,
                                                           quantized):
    m = f32(magnitude)
    data = PIL_AFFINE_DATA[name](m, HEIGHT, WIDTH)
    keep = bilinear_comparable(data, HEIGHT, WIDTH)
    assert keep.mean() > 0.4
    expected_uint8 = pil_geometric(name, image, m, Image.Resampling.BILINEAR, FILL_RGB)
    expected_float = np.stack(
        [pil_geometric(name, image[..., c].astype(np.float32), m, Image.Resampling.BILINEAR,
                       float(FILL_RGB[c])) for c in range(3)], axis=-1).astype(np.float64)
    np.testing.assert_allclose(our_unrounded[keep], expected_float[keep], atol=5e-3,
                               err_msg=f"{name} m={magnitude} quantize=False")
    near_integer = np.abs(expected_float - np.round(expected_float)) < 5e-3
    ambiguous = near_integer & ~bilinear_neighbours_equal(image, data, HEIGHT, WIDTH)
    difference = (our_quantized - expected_uint8)[keep]
    np.testing.assert_array_equal(difference[~ambiguous[keep]], 0,
                                  err_msg=f"{name} m={magnitude} quantize=True")
    assert np.abs(difference).max() <= 1


# ------------------------------------------------------------------ point and colour ops vs PIL


def pil_posterize(im: Image.Image, bits: float) -> Image.Image:
  """ImageOps.posterize(im, round(bits)); 0 bits is black (PIL >= 10 refuses 0)."""
  bits = round(bits)
  return ImageOps.posterize(im, bits) if bits >= 1 else im.point(lambda v: 0)


PIL_FULL_STRENGTH = {
    "auto_contrast": ImageOps.autocontrast,
    "invert": ImageOps.invert,
    "equalize": ImageOps.equalize,
    "flip_left_right": ImageOps.mirror,
    "flip_up_down": ImageOps.flip,
}
PIL_ENHANCERS = {
    "contrast": ImageEnhance.Contrast,
    "color": ImageEnhance.Color,
    "brightness": ImageEnhance.Brightness,
    "sharpness": ImageEnhance.Sharpness,
}


def pil_blend_inputs(name: str, im: Image.Image, partner: Image.Image):
  """(in1, in2) of the op as PIL's Image.blend(in1, in2, m): the enhancer's degenerate and the
  image, (image, PIL op(image)) for the blend-strength ops, (image, partner) for sample pairing."""
  if name in PIL_ENHANCERS:
    enhancer = PIL_ENHANCERS[name](im)
    return enhancer.degenerate, enhancer.image
  if name in PIL_FULL_STRENGTH:
    return im, PIL_FULL_STRENGTH[name](im)
  return im, partner


def blend_rounding_decides(in1: np.ndarray, in2: np.ndarray, factor: float) -> np.ndarray:
  """bool: pixels where the truncated blend in1 + f (in2 - in1) depends on float rounding.

  PIL (Blend.c) evaluates (float) in1 + f * (in2 - in1) in float32, two roundings; a build with
  fused multiply-adds rounds once; the exact value (float64 holds a 24-bit f times a 9-bit
  difference exactly) may differ from both. Where their clipped truncations disagree, the level
  is decided by float rounding, not by the maths.
  """
  difference = in2.astype(np.int64) - in1
  exact = in1 + np.float64(factor) * difference
  separate = np.float32(in1) + np.float32(factor) * np.float32(difference)
  fused = exact.astype(np.float32)
  level = lambda value: np.floor(np.clip(np.asarray(value, np.float64), 0, 255))
  return (level(exact) != level(separate)) | (level(exact) != level(fused))


def pil_reference(name: str, image: np.ndarray, magnitude: float,
                  partner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """PIL's uint8 result [H, W, C], and the bool mask of values allowed to differ by one level."""
  im = to_pil(image)
  exact = np.zeros(image.shape, bool)
  if name == "identity":
    return image, exact
  if name == "solarize":
    return from_pil(ImageOps.solarize(im, magnitude)), exact
  if name == "posterize":
    return from_pil(pil_posterize(im, magnitude)), exact
  in1, in2 = pil_blend_inputs(name, im, to_pil(partner))
  expected = from_pil(Image.blend(in1, in2, magnitude))
  if name in PIL_ENHANCERS:  # the spec's reference, literally
    np.testing.assert_array_equal(from_pil(PIL_ENHANCERS[name](im).enhance(magnitude)), expected)
  return expected, blend_rounding_decides(from_pil(in1), from_pil(in2), magnitude)


def check_against_pil(name: str, images: np.ndarray) -> None:
  """Ours (default options) == PIL within the module's tolerances, for every image."""
  magnitudes = MAGNITUDES[name]
  ours = levels_of(run(name, to_unit(images), magnitudes, options_for(name, to_unit(images))))
  failures, differing = [], []
  for image, partner, magnitude, our_image in zip(images, np.roll(images, 1, axis=0),
                                                  magnitudes, ours):
    expected, rounding_decides = pil_reference(name, image, f32(magnitude), partner)
    difference = our_image - expected
    bad = ((difference != 0) & ~rounding_decides) | (np.abs(difference) > 1)
    if bad.any():
      failures.append(f"m={magnitude}: {bad.sum()} of {bad.size} values, e.g. ours "
                      f"{our_image[bad][:6]} PIL {expected[bad][:6]}")
    differing.append(np.mean(difference != 0))
  assert not failures, f"{name} differs from PIL:\n" + "\n".join(failures)
  assert max(differing) < 0.01, differing


POINT_AND_COLOUR = ("identity", "solarize", "posterize", "sample_pairing") + ENHANCE + (
    BLEND_STRENGTH)


@pytest.mark.parametrize("name", POINT_AND_COLOUR)
def test_point_and_colour_ops_match_pil(cifar, name):
  check_against_pil(name, cifar)


@pytest.mark.parametrize("name", ["contrast", "color", "sharpness", "brightness", "auto_contrast",
                                  "equalize", "posterize", "solarize"])
def test_point_and_colour_ops_match_pil_grey(cifar_grey, name):
  check_against_pil(name, cifar_grey)


def test_auto_contrast_matches_pil_on_every_level():
  # Synthetic rows holding every level of a channel range [low, high], over a grid of ranges.
  # PIL maps v to int(v * scale + offset) with scale = 255 / (high - low), offset = -low * scale
  # in float64, which lands just below the exact integer for some (low, high, v): PIL-exact
  # means reproducing that.
  ranges = [(low, high) for low in (0, 1, 3, 7, 20, 60, 128)
            for high in (5, 37, 100, 173, 200, 231, 250, 254, 255) if high > low]
  images = np.stack([np.arange(256).clip(low, high) for low, high in ranges]).astype(np.uint8)
  images = images[:, None, :, None]  # [R, 1, 256, 1]
  ours = levels_of(run("auto_contrast", to_unit(images), np.ones(len(ranges)), {}))
  failures = []
  for (low, high), image, our_image in zip(ranges, images, ours):
    expected = from_pil(ImageOps.autocontrast(to_pil(image)))
    levels, first = np.unique(image[0, :, 0], return_index=True)
    bad = our_image[0, first, 0] != expected[0, first, 0]
    if bad.any():
      failures.append(f"low={low} high={high}: levels {levels[bad]} -> ours "
                      f"{our_image[0, first[bad], 0]}, PIL {expected[0, first[bad], 0]}")
  assert not failures, "auto_contrast differs from PIL:\n" + "\n".join(failures)


# ------------------------------------------------------------------------------------ cutout


def numpy_cutout(image: np.ndarray, side_fraction: float, center, fill) -> np.ndarray:
  """The spec's box: rows and columns in [c - s/2, c + s/2), s = side_fraction * H, set to fill."""
  height, width = image.shape[:2]
  half = f32(side_fraction) * height / 2
  rows, cols = np.arange(height), np.arange(width)
  inside_rows = (rows >= center[0] - half) & (rows < center[0] + half)
  inside_cols = (cols >= center[1] - half) & (cols < center[1] + half)
  box = inside_rows[:, None] & inside_cols[None, :]
  return np.where(box[..., None], np.asarray(fill, np.float64), image)


def test_cutout_matches_numpy_box(cifar):
  # Exact: integer centres, a fill on the uint8 grid; sides [0, 0.2] of the height.
  options = options_for("cutout", cifar)
  ours = levels_of(run("cutout", to_unit(cifar), MAGNITUDES["cutout"], options))
  for image, magnitude, center, our_image in zip(cifar, MAGNITUDES["cutout"],
                                                 options["centers_yx"], ours):
    expected = numpy_cutout(image, magnitude, center, FILL_RGB)
    np.testing.assert_array_equal(our_image, expected, err_msg=f"m={magnitude} c={center}")


def test_cutout_16_and_32_pixels(cifar_full):
  # The CIFAR Cutout sizes on 32 x 32: 16 px (0.5 of the height, 256 pixels when inside) and
  # 32 px (the whole image from the centre), plus AutoAugment's 0.2; the default fill 0.5
  # (127.5 levels, so within half a level of it).
  magnitudes = [16 / 32, 32 / 32, 16 / 32, 0.2, 16 / 32]
  centers = [[16, 16], [16, 16], [3, 28], [30, 2], [8, 24]]
  images = cifar_full[:5]
  ours = run("cutout", to_unit(images), magnitudes, {"centers_yx": centers})
  filled = np.abs(ours - 0.5) <= 0.5 / 255 + 1e-6
  for image, magnitude, center, our_image, our_filled in zip(images, magnitudes, centers, ours,
                                                             filled):
    box = numpy_cutout(np.zeros(image.shape[:2] + (1,)), magnitude, center, 1)[..., 0] == 1
    assert np.all(our_filled[box]), (magnitude, center)
    np.testing.assert_array_equal(levels_of(our_image)[~box], image[~box])
  assert filled[0].all(axis=-1).sum() == 256 and filled[1].all()


# ------------------------------------------------------------------------------------ identity


@pytest.mark.parametrize("name", [n for n, v in SPEC_IDENTITY.items() if v is not None])
def test_identity_magnitude_returns_input(cifar, name):
  # On the uint8 grid with quantize=True: bit for bit. Off the grid with quantize=False (bilinear
  # for geometric ops), in float64: the same maths without rounding, so the input; checked
  # through the weighted sum of the output with random weights (the gradient tests' compiled
  # loss), which any deviation of a pixel moves far beyond float64 rounding (1e-12).
  identity = ops.OPS.get(name).identity
  images = to_unit(cifar)
  np.testing.assert_array_equal(
      run(name, images, np.full(len(cifar), identity), options_for(name, images)), images,
      err_msg=name)
  with jax.enable_x64(True):
    off_grid = np.asarray(jax.random.uniform(jax.random.key(0), (3, HEIGHT, WIDTH, 3),
                                             jnp.float64))
    loss, _, _ = gradients(off_grid, name, np.full(3, identity), seed=4, quantize=False,
                           **bilinear_if_geometric(name))
    expected = np.sum(random_weights(4, off_grid.shape) * off_grid)
    np.testing.assert_allclose(loss(np.full(3, identity)), expected,
                               rtol=1e-12, err_msg=name)


def test_identity_op_ignores_magnitude(cifar):
  images = to_unit(cifar)
  np.testing.assert_array_equal(run("identity", images, MAGNITUDES["identity"], {}), images)


# ------------------------------------------------------------------------------ jit, vmap, loop


def check_batching(name: str, images: np.ndarray, magnitudes, options: dict) -> None:
  """Bit for bit: eager == jit; vmap of the one-image call == the batched call == a loop of
  one-image calls."""
  fn = ops.OPS.get(name).fn
  images, magnitudes = jnp.asarray(images, jnp.float32), jnp.asarray(magnitudes, jnp.float32)
  options = {key: jnp.asarray(value, jnp.float32) for key, value in options.items()}
  per_image = {key: value for key, value in options.items() if key in PER_IMAGE_OPTIONS}
  shared = {key: value for key, value in options.items() if key not in PER_IMAGE_OPTIONS}
  batched = np.asarray(jitted(name)(images, magnitudes, **options))
  np.testing.assert_array_equal(np.asarray(fn(images, magnitudes, **options)), batched,
                                err_msg=f"{name} eager")

  def one_image(image, magnitude, image_options):
    image_options = jax.tree.map(lambda value: value[None], image_options)
    return fn(image[None], magnitude[None], **image_options, **shared)[0]

  vmapped = jax.jit(jax.vmap(one_image))(images, magnitudes, per_image)
  np.testing.assert_array_equal(np.asarray(vmapped), batched, err_msg=f"{name} vmap")
  jit_one = jax.jit(one_image)
  loop = [jit_one(images[b], magnitudes[b], jax.tree.map(lambda value: value[b], per_image))
          for b in range(len(images))]
  np.testing.assert_array_equal(np.stack(loop), batched, err_msg=f"{name} loop")


@pytest.mark.parametrize("name", ALL_OPS)
def test_jit_eager_vmap_and_loop_agree(cifar, name):
  # Default options (quantize=True, 'nearest'): bit for bit, a different magnitude per image.
  images = to_unit(cifar)
  check_batching(name, images, MAGNITUDES[name], options_for(name, images))


# ---------------------------------------------------------------------------------- gradients
#
# In float64 (jax.enable_x64, as in test_hypergrad.py) on three CIFAR images (on the uint8
# grid), loss = sum(weights * op(images, magnitude)) with fixed random weights.

# Magnitudes for finite differences: generic, non-identity values (away from bilinear kinks at
# pixel-centre crossings and from the clip), enhance factors above 1 included.
GRADIENT_MAGNITUDES = {
    "shear_x": [-0.21, 0.137, 0.29], "shear_y": [0.183, -0.27, 0.061],
    "translate_x": [0.137, -0.283, 0.4123], "translate_y": [-0.0731, 0.3317, -0.19],
    "rotate": [-17.3, 8.81, 27.9],
    "contrast": [0.37, 1.23, 1.77], "color": [1.31, 0.43, 1.66],
    "brightness": [0.71, 1.37, 0.23], "sharpness": [1.81, 0.27, 1.43],
    "sample_pairing": [0.13, 0.61, 0.87],
    **{name: [0.3, 0.7, 0.55] for name in BLEND_STRENGTH},
    "posterize": [3.7, 1.2, 6.3], "solarize": [128.0, 77.5, 200.0], "cutout": [0.2, 0.13, 0.5],
    "identity": [0.0, 1.0, 2.0],
}
# For comparing quantize=True with quantize=False: enhance factors <= 1 interpolate, so nothing
# is clipped, and rounding the degenerate image (quantize=True) cannot change a clip branch.
QUANTIZE_COMPARABLE = {**GRADIENT_MAGNITUDES, **{name: [0.37, 0.83, 0.55] for name in ENHANCE}}
# Blends, linear in the magnitude: d out / d m = in2 - in1, exact with quantize=False.
MAGNITUDE_LINEAR = ENHANCE + ("sample_pairing",) + BLEND_STRENGTH
# With quantize=True these blend towards a rounded image (the degenerate, or auto_contrast's
# stretched levels), so d out / d m = in2 - in1 differs from quantize=False by that rounding.
ROUNDED_BLEND_END = ("contrast", "color", "sharpness", "auto_contrast")


@pytest.mark.parametrize("name", GEOMETRIC + MAGNITUDE_LINEAR)
def test_magnitude_gradient_matches_finite_differences(cifar, name):
  # quantize=False (and bilinear): the maths is smooth at these magnitudes, so central
  # differences (step 1e-6) are accurate to ~1e-8 relative.
  with jax.enable_x64(True):
    magnitudes = np.asarray(GRADIENT_MAGNITUDES[name], np.float64)
    loss, _, gradient = gradients(cifar[:3] / 255.0, name, magnitudes, seed=1, quantize=False,
                                  **bilinear_if_geometric(name))
    step = 1e-6
    for b, unit in enumerate(np.eye(len(magnitudes))):
      expected = (loss(magnitudes + step * unit) - loss(magnitudes - step * unit)) / (2 * step)
      np.testing.assert_allclose(gradient[b], expected, rtol=1e-6, atol=1e-6, err_msg=name)
    assert np.all(gradient != 0)


@pytest.mark.parametrize("name", STRAIGHT_THROUGH + ENHANCE)
def test_straight_through_magnitude_gradients(cifar, name):
  # quantize=True (the PIL-exact forward): every image's magnitude derivative is finite and
  # non-zero. The truncation is straight-through (gradient 1), so it equals the quantize=False
  # derivative, except where the blend's end is itself rounded.
  with jax.enable_x64(True):
    magnitudes = np.asarray(QUANTIZE_COMPARABLE[name], np.float64)
    _, _, gradient = gradients(cifar[:3] / 255.0, name, magnitudes, seed=2)
    assert np.all(np.isfinite(gradient)) and np.all(gradient != 0), (name, gradient)
    if name not in ROUNDED_BLEND_END:
      _, _, unquantized = gradients(cifar[:3] / 255.0, name, magnitudes, seed=2, quantize=False)
      np.testing.assert_allclose(gradient, unquantized, rtol=1e-9, err_msg=name)


@pytest.mark.parametrize("name", ALL_OPS)
def test_image_gradient_is_straight_through(cifar, name):
  # Default options ('nearest' for geometric ops). d round / dx := 1: on grid images the image
  # gradient with quantize=True equals the quantize=False one (the same maths without
  # rounding); finite and non-zero for every op.
  with jax.enable_x64(True):
    magnitudes = np.asarray(QUANTIZE_COMPARABLE[name], np.float64)
    _, gradient, _ = gradients(cifar[:3] / 255.0, name, magnitudes, seed=3)
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0), name
    if name != "identity":  # identity has no quantize option
      _, unquantized, _ = gradients(cifar[:3] / 255.0, name, magnitudes, seed=3, quantize=False)
      np.testing.assert_allclose(gradient, unquantized, rtol=1e-9, atol=1e-12, err_msg=name)


# ------------------------------------------------------------------------------- pad and crop


def test_pad_and_crop_matches_numpy_padding_and_slicing(cifar):
  # Reference: numpy pads each image by p pixels of the fill and slices H x W at the corner
  # round(offset * 2 p); exact (an integer shift of grid values).
  images = to_unit(cifar[:4])
  height, width = images.shape[1:3]
  paddings = np.array([0.0, 2.0, 4.0, 3.6], np.float32)  # 3.6 rounds to 4
  offsets = np.array([[0.3, 0.9], [0.0, 1.0], [0.5, 0.25], [1.0, 0.0]], np.float32)
  fill = np.asarray(FILL_RGB) / 255.0
  ours = jax.jit(ops.pad_and_crop)(images, paddings, offsets_yx=offsets, fill=fill)
  for b in range(len(images)):
    p = int(np.round(paddings[b]))
    padded = np.pad(cifar[b].astype(np.float64), ((p, p), (p, p), (0, 0)))
    padded[:p], padded[p + height:] = FILL_RGB, FILL_RGB
    padded[:, :p], padded[:, p + width:] = FILL_RGB, FILL_RGB
    row, col = (int(np.round(offsets[b, k] * 2 * p)) for k in range(2))
    np.testing.assert_array_equal(levels_of(np.asarray(ours[b])),
                                  padded[row:row + height, col:col + width], err_msg=str(b))
  identity = ops.pad_and_crop(images, paddings, offsets_yx=np.full((4, 2), 0.5, np.float32))
  np.testing.assert_array_equal(identity, images)
  with pytest.raises(ValueError, match="offsets_yx"):
    ops.pad_and_crop(images, paddings, offsets_yx=offsets[:2])


def test_cutout_magnitude_gradient_survives_an_empty_box(cifar):
  # At the identity (side 0) the hard box is empty; the straight-through gradient is that of
  # the soft box, which grows with the side: filling with 0.5 moves the image towards 0.5.
  images = to_unit(cifar[:2])
  centers = np.array([[13.0, 16.0], [5.0, 7.0]], np.float32)
  contrast_to_fill = lambda m: jnp.sum(jnp.abs(
      ops.cutout(images, m, centers_yx=centers, fill=0.5) - 0.5))
  for side in (0.0, 1e-3, 0.25):
    gradient = jax.grad(contrast_to_fill)(jnp.full((2,), side, jnp.float32))
    assert np.all(np.isfinite(gradient)) and np.all(gradient < 0), (side, gradient)
