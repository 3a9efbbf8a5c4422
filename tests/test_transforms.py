"""Tests of jaxaug.augment.geometry and jaxaug.augment.transforms against independent references.

References: PIL's Image.transform(AFFINE) on real CIFAR-10 images, a scipy map_coordinates
re-derivation of torch's affine_grid/grid_sample, numpy slicing, Python's colorsys, and
central finite differences in float64.
"""

import colorsys
import math
import re
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxaug.augment import geometry
from jaxaug.augment import transforms

from shared_data import CIFAR_TAR
CIFAR_CLASSES = ("airplane", "automobile", "bird")
# Crop the 32x32 images to a non-square size so that any swap of x/y or H/W shows.
HEIGHT, WIDTH = 27, 32


@pytest.fixture(scope="module")
def cifar_uint8(tmp_path_factory) -> np.ndarray:
  """Three real CIFAR-10 test images (one per class), uint8 [3, HEIGHT, WIDTH, 3]."""
  wanted = {f"cifar10/test/{name}/0000.jpg" for name in CIFAR_CLASSES}
  if not os.path.exists(CIFAR_TAR):
    pytest.skip(f"{CIFAR_TAR} is missing")
  directory = tmp_path_factory.mktemp("cifar")
  with tarfile.open(CIFAR_TAR) as archive:
    for member in archive:
      if member.name in wanted:
        archive.extract(member, directory, filter="data")
        wanted.remove(member.name)
        if not wanted:
          break
  images = [np.asarray(Image.open(directory / f"cifar10/test/{name}/0000.jpg").convert("RGB"))
            for name in CIFAR_CLASSES]
  return np.stack(images)[:, :HEIGHT, :WIDTH]


def pil_matrices() -> dict[str, np.ndarray]:
  """Pixel matrices [2, 3] (output -> input) exercising PIL's three affine code paths."""
  angle, scale = math.radians(20.0), 1.1
  cos, sin = math.cos(angle), math.sin(angle)
  linear = scale * np.array([[cos, -sin], [sin, cos]])
  centre = np.array([WIDTH / 2, HEIGHT / 2])
  rotation = np.concatenate([linear, (centre - linear @ centre + [1.3, -2.7])[:, None]], axis=1)
  return {
      "rotate_scale": rotation,
      "shear_x": np.array([[1.0, 0.3, -4.0], [0.0, 1.0, 0.0]]),
      "shear_y": np.array([[1.0, 0.0, 0.0], [-0.25, 1.0, 3.0]]),
      "integer_translation": np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -5.0]]),
      "fractional_translation": np.array([[1.0, 0.0, 2.4], [0.0, 1.0, -1.7]]),
      "zoom": np.array([[0.8, 0.0, 3.1], [0.0, 1.25, -2.2]]),
  }


def source_points(matrix: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Float64 source (x, y) [H, W] of every output pixel centre, in PIL pixel units."""
  y, x = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  return (matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2],
          matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2])


def pil_transform(image: np.ndarray, matrix: np.ndarray, resample, fill) -> np.ndarray:
  """PIL's Image.transform(AFFINE) of one uint8 RGB [H, W, 3] or float32 'F' [H, W] image."""
  height, width = image.shape[:2]
  out = Image.fromarray(image).transform((width, height), Image.Transform.AFFINE,
                                         tuple(matrix.ravel()), resample=resample, fillcolor=fill)
  return np.asarray(out)


jit_affine_warp = jax.jit(geometry.affine_warp, static_argnames="interpolation")


def warp(images: np.ndarray, matrix: np.ndarray, **kwargs) -> np.ndarray:
  """affine_warp of float images [B,H,W,C] by one matrix [2,3] shared by the batch."""
  matrices = np.broadcast_to(matrix, (images.shape[0], 2, 3)).astype(np.float32)
  return np.asarray(jit_affine_warp(jnp.asarray(images, jnp.float32), jnp.asarray(matrices),
                                    **kwargs))


def near_integer(values: np.ndarray, tolerance: float) -> np.ndarray:
  """Whether each value lies within `tolerance` of an integer."""
  return np.abs(values - np.round(values)) < tolerance


# ----------------------------------------------------------------------------- affine_warp vs PIL


@pytest.mark.parametrize("name", sorted(pil_matrices()))
def test_nearest_matches_pil(cifar_uint8, name):
  # PIL NEAREST = pixel floor(source); exact equality except where PIL's 16.16 fixed-point
  # matrix (used when the matrix has off-diagonal terms) and float32 may round a source
  # coordinate to the other side of a pixel edge: points within 1e-3 px of an edge are left
  # out (a few percent at most).
  matrix = pil_matrices()[name]
  fill = (10, 200, 77)
  ours = warp(cifar_uint8 / 255.0, matrix, interpolation="nearest",
              fill_value=np.array(fill) / 255.0)
  x_src, y_src = source_points(matrix, HEIGHT, WIDTH)
  unambiguous = ~(near_integer(x_src, 1e-3) | near_integer(y_src, 1e-3))
  assert unambiguous.mean() > 0.9
  for image, our_image in zip(cifar_uint8, ours):
    expected = pil_transform(image, matrix, Image.Resampling.NEAREST, fill)
    np.testing.assert_array_equal(np.round(our_image * 255)[unambiguous], expected[unambiguous])


def pil_bilinear_agrees(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
  """bool [H, W]: output pixels whose source is at least half a pixel from every image edge.

  Only there do PIL's BILINEAR (edge-clamped neighbours, fill only for sources outside the image)
  and ours (neighbours outside the image are the fill) agree; elsewhere they differ by design.
  """
  x_src, y_src = source_points(matrix, height, width)
  half_pixel_from = lambda values, edge: np.abs(values - edge) >= 0.5 + 1e-6
  return (half_pixel_from(x_src, 0) & half_pixel_from(x_src, width)
          & half_pixel_from(y_src, 0) & half_pixel_from(y_src, height))


@pytest.mark.parametrize("name", sorted(pil_matrices()))
def test_bilinear_matches_pil_uint8(cifar_uint8, name):
  # PIL interpolates in double and truncates to uint8, so PIL == floor(ours * 255) up to float32
  # rounding: 0 <= ours * 255 - PIL < 1 (+1e-3).
  matrix = pil_matrices()[name]
  fill = (10, 200, 77)
  ours = warp(cifar_uint8 / 255.0, matrix, fill_value=np.array(fill) / 255.0) * 255
  agree = pil_bilinear_agrees(matrix, HEIGHT, WIDTH)
  assert agree.mean() > 0.6
  for image, our_image in zip(cifar_uint8, ours):
    expected = pil_transform(image, matrix, Image.Resampling.BILINEAR, fill).astype(np.float64)
    difference = (our_image - expected)[agree]
    assert difference.min() >= -1e-3 and difference.max() < 1 + 1e-3


@pytest.mark.parametrize("name", sorted(pil_matrices()))
def test_bilinear_matches_pil_float(cifar_uint8, name):
  # PIL 'F' images are interpolated in double and stored as float32: no quantisation, so the
  # tolerance is float32 rounding of coordinates (~1e-5 px) times pixel differences.
  matrix = pil_matrices()[name]
  images = cifar_uint8 / 255.0
  fill = np.array([0.1, 0.5, 0.9])
  ours = warp(images, matrix, fill_value=fill)
  agree = pil_bilinear_agrees(matrix, HEIGHT, WIDTH)
  for image, our_image in zip(images, ours):
    for channel in range(3):
      expected = pil_transform(image[..., channel].astype(np.float32), matrix,
                               Image.Resampling.BILINEAR, float(fill[channel]))
      np.testing.assert_allclose(our_image[..., channel][agree], expected[agree], atol=2e-5)


# ----------------------------------------------------------------- normalised (torch) convention


def torch_grid_sample_reference(images: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """torch's grid_sample(x, affine_grid(theta)), bilinear, zero padding, align_corners=False.

  Re-derived with scipy: affine_grid puts output column j at u = (2 j + 1) / W - 1; grid_sample
  reads the input at index ((u' + 1) W - 1) / 2. scipy's mode='grid-constant' (not 'constant',
  which returns cval for any coordinate outside [0, n - 1] instead of interpolating with it) lets
  a neighbour outside the image contribute 0, as padding_mode='zeros' does.
  """
  batch, height, width, channels = images.shape
  v, u = np.meshgrid((2 * np.arange(height) + 1) / height - 1,
                     (2 * np.arange(width) + 1) / width - 1, indexing="ij")
  out = np.empty_like(images)
  for b in range(batch):
    u_src = theta[b, 0, 0] * u + theta[b, 0, 1] * v + theta[b, 0, 2]
    v_src = theta[b, 1, 0] * u + theta[b, 1, 1] * v + theta[b, 1, 2]
    columns, rows = ((u_src + 1) * width - 1) / 2, ((v_src + 1) * height - 1) / 2
    for c in range(channels):
      out[b, ..., c] = ndimage.map_coordinates(images[b, ..., c], [rows, columns], order=1,
                                               mode="grid-constant", cval=0.0)
  return out


def test_normalized_matches_torch_reference():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(5, 6, 9, 3))
  theta = np.tile(np.eye(2, 3), (5, 1, 1)) + np.concatenate(
      [0.3 * rng.normal(size=(5, 2, 2)), 0.4 * rng.normal(size=(5, 2, 1))], axis=2)
  theta[0, :, 2] = [0.9, -1.2]  # mostly outside the image
  theta[1] = [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # horizontal mirror
  matrices = geometry.normalized_to_pixel(jnp.asarray(theta, jnp.float32), 6, 9)
  ours = jit_affine_warp(jnp.asarray(images, jnp.float32), matrices)
  np.testing.assert_allclose(ours, torch_grid_sample_reference(images, theta), atol=1e-5)
  np.testing.assert_allclose(ours[1], images[1, :, ::-1], atol=1e-5)


# ------------------------------------------------------------------- affine_warp: exact properties


def random_images(seed: int, shape=(3, 5, 7, 2)) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), shape)


def test_identity_returns_input_exactly():
  images = random_images(0)
  identity = jnp.tile(jnp.eye(2, 3), (3, 1, 1))
  for interpolation in ("bilinear", "nearest"):
    np.testing.assert_array_equal(jit_affine_warp(images, identity, interpolation=interpolation),
                                  images)
  np.testing.assert_allclose(
      jit_affine_warp(images, geometry.normalized_to_pixel(identity, 5, 7)), images, atol=1e-6)


def test_integer_translation_is_a_shift_with_fill():
  images = np.asarray(random_images(1))
  fill = np.array([0.25, 0.75])
  matrix = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])  # out(y, x) = in(y - 1, x + 2)
  expected = np.broadcast_to(fill, images.shape).copy()
  expected[:, 1:, :-2] = images[:, :-1, 2:]
  for interpolation in ("bilinear", "nearest"):
    ours = warp(images, matrix, interpolation=interpolation, fill_value=fill)
    np.testing.assert_array_equal(ours, expected)


def random_matrices(seed: int, batch: int) -> jax.Array:
  noise = jax.random.normal(jax.random.key(seed), (batch, 2, 3)) * jnp.array([0.2, 0.2, 1.5])
  return jnp.eye(2, 3) + noise


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_jit_and_vmap_match_eager(interpolation):
  images, matrices = random_images(2), random_matrices(3, 3)
  warp_batch = lambda im, m: geometry.affine_warp(im, m, interpolation=interpolation,
                                                  fill_value=0.5)
  eager = warp_batch(images, matrices)
  np.testing.assert_allclose(jax.jit(warp_batch)(images, matrices), eager, atol=1e-6)
  one = lambda im, m: warp_batch(im[None], m[None])[0]
  np.testing.assert_allclose(jax.vmap(one)(images, matrices), eager, atol=1e-6)


def central_difference(f, x: np.ndarray, direction: np.ndarray, step: float = 1e-6) -> float:
  return (f(x + step * direction) - f(x - step * direction)) / (2 * step)


def test_affine_warp_gradients_match_finite_differences():
  # float64; random matrices put source points at generic positions, away from the kinks of
  # bilinear interpolation (pixel-centre crossings), so central differences are accurate.
  with jax.enable_x64(True):
    images = np.asarray(random_images(4), np.float64)
    matrices = np.asarray(random_matrices(5, 3), np.float64)
    weights = np.asarray(jax.random.normal(jax.random.key(6), images.shape), np.float64)
    fill = np.array([0.3, -0.7])

    @jax.jit
    def loss(im, m):
      return jnp.sum(weights * geometry.affine_warp(im, m, fill_value=fill))

    grad_images, grad_matrices = jax.grad(loss, argnums=(0, 1))(images, matrices)
    loss_of_matrices = lambda m: float(loss(images, m))
    for index in np.ndindex(matrices.shape):
      unit = np.zeros_like(matrices)
      unit[index] = 1.0
      expected = central_difference(loss_of_matrices, matrices, unit)
      np.testing.assert_allclose(grad_matrices[index], expected, rtol=1e-6, atol=1e-8)
    direction = np.random.default_rng(0).normal(size=images.shape)
    expected = central_difference(lambda im: float(loss(im, matrices)), images, direction)
    np.testing.assert_allclose(np.sum(grad_images * direction), expected, rtol=1e-6)
    # Forward mode too (hypergradients may use grad-of-jvp): jvp == the reverse-mode contraction.
    matrix_direction = np.random.default_rng(1).normal(size=matrices.shape)
    _, tangent = jax.jvp(loss, (images, matrices), (direction, matrix_direction))
    contraction = np.sum(grad_images * direction) + np.sum(grad_matrices * matrix_direction)
    np.testing.assert_allclose(tangent, contraction, rtol=1e-9)


def test_affine_warp_rejects_bad_input():
  images = random_images(0)
  identity = jnp.tile(jnp.eye(2, 3), (3, 1, 1))
  with pytest.raises(ValueError, match="bilinear, nearest"):
    geometry.affine_warp(images, identity, interpolation="bicubic")
  with pytest.raises(ValueError, match=r"\(3, 2, 3\)"):
    geometry.affine_warp(images, identity[:2])
  with pytest.raises(ValueError, match="fill_value"):
    geometry.affine_warp(images, identity, fill_value=jnp.zeros(3))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    geometry.affine_warp(images[0], identity)
  with pytest.raises(ValueError, match="uint8"):
    geometry.affine_warp(images.astype(jnp.uint8), identity)


# ---------------------------------------------------------------------------- flips, pad and crop


def test_flips_match_numpy():
  images = np.asarray(random_images(7, (4, 3, 5, 2)))
  flip = np.array([True, False, True, False])
  expected_lr = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
  expected_ud = np.where(flip[:, None, None, None], images[:, ::-1], images)
  np.testing.assert_array_equal(geometry.flip_left_right(images, flip), expected_lr)
  np.testing.assert_array_equal(geometry.flip_up_down(images, flip), expected_ud)
  np.testing.assert_array_equal(expected_lr[0, :, 0], images[0, :, -1])


def numpy_pad_and_crop(image: np.ndarray, offset: tuple[int, int], padding: int,
                       fill) -> np.ndarray:
  height, width, channels = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  padded[:padding] = padded[-padding:] = padded[:, :padding] = padded[:, -padding:] = fill
  return padded[offset[0]:offset[0] + height, offset[1]:offset[1] + width]


def test_pad_and_crop_matches_numpy():
  images = np.asarray(random_images(8, (5, 4, 6, 2)))
  offsets = np.array([[0, 0], [4, 4], [2, 2], [0, 3], [4, 1]])
  fill = np.array([0.2, 0.9])
  ours = geometry.pad_and_crop(images, offsets, padding=2, fill_value=fill)
  for image, offset, our_image in zip(images, offsets, ours):
    np.testing.assert_array_equal(our_image, numpy_pad_and_crop(image, offset, 2, fill))
  np.testing.assert_array_equal(ours[2], images[2])


# ---------------------------------------------------------------------------------- colour ops

COLOR_OPS = {
    "brightness": (transforms.adjust_brightness, 0.0),
    "contrast": (transforms.adjust_contrast, 1.0),
    "saturation": (transforms.adjust_saturation, 1.0),
    "hue": (transforms.adjust_hue, 0.0),
}


def numpy_color_reference(name: str, image: np.ndarray, amount: float) -> np.ndarray:
  """One image [H, W, 3] transformed by plain numpy / colorsys, clipped to [0, 1]."""
  if name == "brightness":
    out = image + amount
  elif name == "contrast":
    mean = image.mean(axis=(0, 1), keepdims=True)
    out = mean + amount * (image - mean)
  else:
    def per_pixel(rgb):
      h, s, v = colorsys.rgb_to_hsv(*rgb)
      if name == "saturation":
        s = min(max(s * amount, 0.0), 1.0)
      else:
        h = (h + amount) % 1.0
      return colorsys.hsv_to_rgb(h, s, v)
    out = np.apply_along_axis(per_pixel, -1, image)
  return np.clip(out, 0.0, 1.0)


COLOR_AMOUNTS = {
    "brightness": [-0.3, 0.15, 0.4],
    "contrast": [0.5, 1.3, 2.0],
    "saturation": [0.4, 1.3, 2.5],
    "hue": [-0.3, 0.05, 0.7],
}


@pytest.mark.parametrize("name", sorted(COLOR_OPS))
def test_color_op_matches_numpy_reference(cifar_uint8, name):
  op, _ = COLOR_OPS[name]
  real = cifar_uint8[:, :4, :5] / 255.0
  images = np.concatenate([real, np.asarray(random_images(9, (3, 4, 5, 3)))])
  amounts = np.array(COLOR_AMOUNTS[name] * 2)
  ours = op(jnp.asarray(images, jnp.float32), jnp.asarray(amounts, jnp.float32))
  for image, amount, our_image in zip(images, amounts, ours):
    np.testing.assert_allclose(our_image, numpy_color_reference(name, image, amount), atol=2e-6)
  assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(COLOR_OPS))
def test_color_op_identity(cifar_uint8, name):
  op, identity = COLOR_OPS[name]
  images = jnp.asarray(cifar_uint8 / 255.0, jnp.float32)
  np.testing.assert_allclose(op(images, jnp.full((3,), identity)), images, atol=1e-6)


@pytest.mark.parametrize("name", sorted(COLOR_OPS))
def test_color_op_jit_and_vmap_match_eager(name):
  op, _ = COLOR_OPS[name]
  images = random_images(10, (3, 4, 5, 3))
  amounts = jnp.asarray(COLOR_AMOUNTS[name], jnp.float32)
  eager = op(images, amounts)
  np.testing.assert_allclose(jax.jit(op)(images, amounts), eager, atol=1e-6)
  one = lambda im, a: op(im[None], a[None])[0]
  np.testing.assert_allclose(jax.vmap(one)(images, amounts), eager, atol=1e-6)


@pytest.mark.parametrize("name", sorted(COLOR_OPS))
def test_color_op_gradient_matches_finite_differences(name):
  # float64, random pixels and non-identity amounts: no pixel sits on a clip or hue-sector kink.
  op, _ = COLOR_OPS[name]
  with jax.enable_x64(True):
    images = np.asarray(random_images(11, (3, 4, 5, 3)), np.float64)
    weights = np.asarray(jax.random.normal(jax.random.key(12), images.shape), np.float64)
    amounts = np.asarray(COLOR_AMOUNTS[name], np.float64)
    loss = jax.jit(lambda a: jnp.sum(weights * op(images, a)))
    gradient = jax.grad(loss)(amounts)
    for b in range(3):
      unit = np.eye(3)[b]
      expected = central_difference(lambda a: float(loss(a)), amounts, unit)
      np.testing.assert_allclose(gradient[b], expected, rtol=1e-6, atol=1e-9)
    assert np.all(gradient != 0)


@pytest.mark.parametrize("name", sorted(COLOR_OPS))
def test_color_op_gradient_finite_on_grey_and_extreme_pixels(name):
  # Grey pixels make the HSV hue a 0/0; black and white pixels sit on the clip.
  op, identity = COLOR_OPS[name]
  images = jnp.array([[[[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 0.0, 0.3]]]])
  for amount in (identity, identity + 0.1):
    grad_images, grad_amount = jax.grad(lambda im, a: jnp.sum(op(im, a) ** 2), argnums=(0, 1))(
        images, jnp.array([amount]))
    assert np.all(np.isfinite(grad_images)) and np.all(np.isfinite(grad_amount))


def test_clip_gradient_is_one_on_closed_interval():
  values = jnp.array([-0.5, 0.0, 0.5, 1.0, 1.5])
  np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(transforms.clip_unit(v)))(values),
                                [0.0, 1.0, 1.0, 1.0, 0.0])
  # So at delta = 0 a white pixel passes the brightness gradient on; above 1 it does not.
  images = jnp.ones((1, 1, 1, 1))
  d_brightness = jax.grad(lambda d: jnp.sum(transforms.adjust_brightness(images, d)))
  assert float(d_brightness(jnp.array([0.0]))[0]) == 1.0
  assert float(d_brightness(jnp.array([0.1]))[0]) == 0.0


def test_color_op_rejects_bad_amount_shape():
  images = random_images(0, (3, 4, 5, 3))
  with pytest.raises(ValueError, match=r"\(3,\)"):
    transforms.adjust_hue(images, jnp.zeros(2))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    transforms.adjust_saturation(images[..., :2], jnp.ones(3))


# ------------------------------------------------------------------------------ random samplers


def indexed_images(batch: int, height: int, width: int) -> np.ndarray:
  """Identical images whose every pixel value is unique and positive, float32 [B, H, W, 1]."""
  image = (np.arange(height * width, dtype=np.float32) + 1) / (height * width + 1)
  return np.tile(image.reshape(1, height, width, 1), (batch, 1, 1, 1))


def test_random_flip_draws_per_image_and_is_reproducible():
  images = indexed_images(64, 3, 4)
  out = np.asarray(transforms.random_flip(jax.random.key(0), jnp.asarray(images), horizontal=True,
                                          vertical=True))
  candidates = {(h, v): images[0][::-1 if v else 1, ::-1 if h else 1]
                for h in (0, 1) for v in (0, 1)}
  drawn = [next(k for k, c in candidates.items() if np.array_equal(o, c)) for o in out]
  counts = {k: drawn.count(k) for k in candidates}
  assert all(count >= 5 for count in counts.values()), counts  # each combination ~16 of 64
  flip = lambda seed, vertical: np.asarray(transforms.random_flip(
      jax.random.key(seed), jnp.asarray(images), horizontal=True, vertical=vertical))
  np.testing.assert_array_equal(flip(0, True), out)
  assert not np.array_equal(flip(1, True), out)
  only_h = flip(0, False)
  assert all(np.array_equal(o, candidates[(h, 0)]) for o, (h, _) in zip(only_h, drawn))


def test_random_pad_and_crop_draws_uniform_per_image_offsets():
  padding, batch = 2, 200
  images = indexed_images(batch, 4, 5)
  crop = lambda seed: np.asarray(transforms.random_pad_and_crop(
      jax.random.key(seed), jnp.asarray(images), padding=padding))
  out = crop(0)
  offsets = [(oy, ox) for oy in range(2 * padding + 1) for ox in range(2 * padding + 1)]
  candidates = {o: numpy_pad_and_crop(images[0], o, padding, 0.0) for o in offsets}
  drawn = [next(o for o, c in candidates.items() if np.array_equal(image, c)) for image in out]
  assert set(drawn) == set(offsets)  # all 25 offsets, each expected 8 times in 200
  np.testing.assert_array_equal(crop(0), out)
  assert not np.array_equal(crop(1), out)


# ------------------------------------------------------------------------ random-resized crop

# (top, left, height, width) boxes inside a 27 x 32 image: shrunk, enlarged, square, thin,
# at the edges and inside, whole pixels.
CROP_BOXES = np.array([[0, 0, 27, 32], [5, 7, 10, 12], [2, 20, 25, 12], [26, 0, 1, 32],
                       [3, 4, 20, 6]], np.float32)


@pytest.mark.parametrize("size", [(24, 24), (13, 40), (27, 32)])
def test_resized_crop_matches_tf_image_resize_of_the_crop(cifar_uint8, size):
  tf = pytest.importorskip("tensorflow")
  image = cifar_uint8[0].astype(np.float32) / 255.0
  images = np.repeat(image[None], len(CROP_BOXES), axis=0)
  ours = np.asarray(geometry.resized_crop(jnp.asarray(images), jnp.asarray(CROP_BOXES),
                                          size=size))
  for box, our_image in zip(CROP_BOXES.astype(int), ours):
    top, left, height, width = box
    crop = image[top:top + height, left:left + width]
    expected = tf.image.resize(crop, size, method="bilinear", antialias=False).numpy()
    np.testing.assert_allclose(our_image, expected, atol=2e-6)


def test_resized_crop_of_an_output_sized_box_is_the_slice():
  images = random_images(0, (3, 9, 11, 2))
  boxes = jnp.array([[0, 0, 4, 5], [5, 6, 4, 5], [2, 3, 4, 5]], jnp.float32)
  out = np.asarray(geometry.resized_crop(images, boxes, size=(4, 5)))
  for image, (top, left, _, _), crop in zip(np.asarray(images), np.asarray(boxes, int), out):
    np.testing.assert_array_equal(crop, image[top:top + 4, left:left + 5])


def test_resized_crop_jit_and_vmap_match_eager():
  images = random_images(1, (4, 9, 11, 3))
  boxes = jnp.array([[0, 0, 9, 11], [1, 2, 5, 3], [4, 0, 5, 11], [0, 5, 9, 6]], jnp.float32)
  crop = lambda im, b: geometry.resized_crop(im, b, size=7)
  eager = crop(images, boxes)
  assert eager.shape == (4, 7, 7, 3)
  np.testing.assert_allclose(jax.jit(crop)(images, boxes), eager, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(lambda im, b: crop(im[None], b[None])[0])(images, boxes),
                             eager, atol=1e-6)


def test_resized_crop_rejects_bad_input():
  with pytest.raises(ValueError, match=r"boxes_yxhw must have shape \(3, 4\)"):
    geometry.resized_crop(random_images(0), jnp.zeros((3, 2)), size=4)
  with pytest.raises(ValueError, match="size must be positive, got 0"):
    geometry.resized_crop(random_images(0), jnp.ones((3, 4)), size=0)


def test_resized_crop_boxes_follow_torchvisions_rule():
  batch, height, width = 4000, 20, 30
  scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
  boxes = np.asarray(transforms.resized_crop_boxes(jax.random.key(0), batch, height, width,
                                                   scale=scale, ratio=ratio))
  top, left, crop_height, crop_width = boxes.T
  np.testing.assert_array_equal(boxes, np.round(boxes))  # whole pixels
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + crop_height <= height).all() and (left + crop_width <= width).all()
  assert (crop_height >= 1).all() and (crop_width >= 1).all()
  # Rounding to whole pixels moves the area and the ratio by at most half a pixel a side.
  area = crop_height * crop_width / (height * width)
  slack = lambda size: 1 + 1 / size
  assert (area <= scale[1] * slack(crop_height) * slack(crop_width)).all()
  assert (area >= scale[0] / (slack(crop_height) * slack(crop_width))).all()
  aspect = crop_width / crop_height
  assert (aspect <= ratio[1] * slack(crop_width) * slack(crop_height)).all()
  assert (aspect >= ratio[0] / (slack(crop_width) * slack(crop_height))).all()
  # Areas up to the largest box of ratio <= 4/3 (20 x 27, 90% of the 20 x 30 image) occur,
  # and small ones are more frequent (large ones that do not fit are drawn again): the mean is
  # below the mean of the scale interval.
  assert area.max() == 0.9 and area.min() < 0.1
  assert 0.3 < area.mean() < np.mean(scale)
  # Given its size, a box's offset is uniform over the positions that fit.
  full_height = crop_height == height
  assert full_height.any() and set(top[full_height]) == {0}
  sized = (crop_height == 10) & (crop_width == 10)
  positions = np.unique(top[sized] * 100 + left[sized])
  assert len(positions) > 0.5 * min(sized.sum(), 11 * 21)


def test_resized_crop_boxes_fall_back_to_the_clamped_centre_crop():
  # A 4 x 40 strip has no box of aspect ratio in [1, 2] and area >= 90%.
  boxes = np.asarray(transforms.resized_crop_boxes(jax.random.key(1), 3, 4, 40,
                                                   scale=(0.9, 1.0), ratio=(1.0, 2.0)))
  np.testing.assert_array_equal(boxes, np.tile([[0, 16, 4, 8]], (3, 1)))  # width 4 * 2, centred
  tall = np.asarray(transforms.resized_crop_boxes(jax.random.key(1), 2, 40, 4,
                                                  scale=(0.9, 1.0), ratio=(1.0, 2.0)))
  np.testing.assert_array_equal(tall, np.tile([[18, 0, 4, 4]], (2, 1)))  # height 4 / 1


def test_random_resized_crop_stage():
  from jaxaug.augment import fixed  # pylint: disable=g-import-not-at-top
  images = random_images(2, (5, 20, 30, 3))
  stage = fixed.compose("random_resized_crop(12)+hflip")
  out = stage(jax.random.key(0), images)
  assert out.shape == (5, 12, 12, 3)
  boxes = transforms.resized_crop_boxes(jax.random.key(3), 5, 20, 30)
  np.testing.assert_allclose(
      transforms.random_resized_crop(jax.random.key(3), images, size=12),
      geometry.resized_crop(images, boxes, size=12))
  for spec, message in (("random_resized_crop(0)", "size must be a positive integer, got 0"),
                        ("random_resized_crop(8, scale=(0.5, 2.0))", "at most 1"),
                        ("random_resized_crop(8, ratio=(2, 1))", "0 < low <= high")):
    with pytest.raises(ValueError, match=re.escape(message)):
      fixed.compose(spec)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_saturation_past_full_maps_the_minimum_channel_to_exactly_zero(dtype):
  # Once S * factor passes 1 the minimum channel is exactly 0 and has gradient exactly 0,
  # eager and jitted: a value of 0 up to rounding left the final clip's gradient to how
  # XLA rounded it in each fusion (jax 0.12: a jitted colour augmenter's gradient off).
  with jax.enable_x64(dtype == jnp.float64):
    rng = np.random.default_rng(0)
    low, high = rng.uniform(0.05, 0.3, (4, 16, 16)), rng.uniform(0.6, 0.95, (4, 16, 16))
    channels = np.stack([low, rng.uniform(low, high), high], axis=-1)
    images = jnp.asarray(rng.permuted(channels, axis=-1), dtype)  # spread >= 0.3, value <= 0.95
    factor = jnp.asarray([4.0, 5.0, 8.0, 20.0], dtype)  # so S * factor > 1 at every pixel
    lowest = jax.nn.one_hot(jnp.argmin(images, -1), 3, dtype=dtype)
    for name, fn in [("eager", transforms.adjust_saturation),
                     ("jit", jax.jit(transforms.adjust_saturation))]:
      out, vjp = jax.vjp(fn, images, factor)
      assert np.all(np.asarray(out)[np.asarray(lowest, bool)] == 0), name
      image_grad, factor_grad = vjp(lowest)
      assert np.all(np.asarray(image_grad) == 0) and np.all(np.asarray(factor_grad) == 0), name
