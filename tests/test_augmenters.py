"""Tests of jaxaug.augment.augmenters: the DABO augmenter networks.

Layer sizes, parameter counts, identities and bounds are restated here from the paper
(section 4.2) and the task's defaults, not read from the module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxaug.augment import augmenters
from jaxaug.augment import transforms

N_PARAMS = {"translation": 2, "affine": 6, "color": 4, "affine_color": 10}
# Widths from the noise input to the output, for n transformation parameters (paper, section 4.2).
LAYER_WIDTHS = {
    "small": lambda n: [n, n, 10 * n, n],
    "medium": lambda n: [100, 64, 32, n],
    "large": lambda n: [100, 512, 1024, 124, 512, n],
}
AFFINE_IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
COLOR_IDENTITY = [0.0, 1.0, 1.0, 0.0]
IDENTITY = {
    "translation": [0.0, 0.0],
    "affine": AFFINE_IDENTITY,
    "color": COLOR_IDENTITY,
    "affine_color": AFFINE_IDENTITY + COLOR_IDENTITY,
}
CUSTOM_BOUNDS = dict(max_translation=0.1, max_linear=0.05, max_brightness=0.3, max_contrast=0.5,
                     max_saturation=0.2, max_hue=0.1)


def maxima(kind: str, bounds: dict) -> np.ndarray:
  """The allowed deviation from the identity of each parameter of `kind`, in output order."""
  t, a = bounds["max_translation"], bounds["max_linear"]
  affine = [a, a, t, a, a, t]
  color = [bounds[f"max_{name}"] for name in ("brightness", "contrast", "saturation", "hue")]
  return np.array({"translation": [t, t], "affine": affine, "color": color,
                   "affine_color": affine + color}[kind])


def count_parameters(module: nnx.Module) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def build(kind: str, size: str, seed: int = 0, **bounds) -> augmenters.Augmenter:
  """create_augmenter initialised under one jit (eager nnx init compiles each op per shape)."""
  create = lambda: augmenters.create_augmenter(kind, size, rngs=nnx.Rngs(seed), **bounds)
  return nnx.merge(nnx.graphdef(nnx.eval_shape(create)), jax.jit(lambda: nnx.state(create()))())


def random_images(seed: int, shape=(6, 8, 10, 3)) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), shape)


@pytest.mark.parametrize("size", sorted(LAYER_WIDTHS))
@pytest.mark.parametrize("kind", sorted(N_PARAMS))
def test_builds_with_paper_layer_sizes(kind, size):
  # Abstract build (shapes only): eager initialisation would compile every op for every shape.
  n = N_PARAMS[kind]
  widths = LAYER_WIDTHS[size](n)
  noise_shape = (5, widths[0])
  def build_and_run():
    augmenter = augmenters.create_augmenter(kind, size, rngs=nnx.Rngs(0))
    return augmenter, augmenter(jnp.zeros(noise_shape))

  augmenter, params = nnx.eval_shape(build_and_run)
  assert augmenter.noise_dim == widths[0] and augmenter.n_params == n
  assert count_parameters(augmenter) == sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
  # Layer by layer (the count alone does not see the order of the small net's n and 10 n).
  kernels = [leaf.shape for path, leaf in jax.tree.leaves_with_path(nnx.state(augmenter, nnx.Param))
             if "kernel" in jax.tree_util.keystr(path)]
  assert kernels == list(zip(widths[:-1], widths[1:]))
  assert params.shape == (5, n) and params.dtype == jnp.float32


@pytest.mark.parametrize("kind", sorted(N_PARAMS))
def test_outputs_bounded_and_start_near_identity_with_spread(kind):
  augmenter = build(kind, "medium", **CUSTOM_BOUNDS)
  bound = maxima(kind, CUSTOM_BOUNDS)
  noise = jax.random.normal(jax.random.key(2), (512, 100))
  relative = (np.asarray(augmenter(noise)) - IDENTITY[kind]) / bound
  assert np.all(np.abs(relative).mean(axis=0) < 0.3)  # near the identity ...
  assert np.all(relative.std(axis=0) > 0.01)  # ... but each parameter varies with the noise
  deviation = np.abs(np.asarray(augmenter(1e6 * noise)) - IDENTITY[kind])
  assert np.all(deviation <= bound * (1 + 1e-6))
  # Huge noise saturates tanh: the bounds are reached, so they are the ones in force.
  np.testing.assert_allclose(deviation.max(axis=0), bound, rtol=1e-3)


def test_symmetric_augmenter_deviations_are_odd_in_the_noise():
  """symmetric=True: params(-z) - identity == -(params(z) - identity), with the same weights."""
  noise = jax.random.normal(jax.random.key(3), (256, 100))
  symmetric = build("affine_color", "medium", symmetric=True, **CUSTOM_BOUNDS)
  plain = build("affine_color", "medium", **CUSTOM_BOUNDS)
  identity = np.array(IDENTITY["affine_color"])
  plus = np.asarray(symmetric(noise)) - identity
  minus = np.asarray(symmetric(-noise)) - identity
  np.testing.assert_allclose(plus, -minus, atol=1e-6)
  assert np.all((plus / maxima("affine_color", CUSTOM_BOUNDS)).std(axis=0) > 0.01)  # varies
  # The same weights (same seed): the symmetric output is tanh of the odd part of the raw one.
  raw = lambda z: np.arctanh((np.asarray(plain(z)) - identity) / maxima("affine_color", CUSTOM_BOUNDS))
  expected = np.tanh((raw(noise) - raw(-noise)) / 2) * maxima("affine_color", CUSTOM_BOUNDS)
  np.testing.assert_allclose(plus, expected, rtol=1e-4, atol=1e-6)
  # The plain augmenter is not odd (the check above can fail).
  plain_plus = np.asarray(plain(noise)) - identity
  assert np.abs(plain_plus + (np.asarray(plain(-noise)) - identity)).max() > 1e-3


# affine_color covers the affine and color kinds.
@pytest.mark.parametrize("kind", ["translation", "affine_color"])
def test_gradient_reaches_every_weight_and_matches_finite_differences(kind):
  # Whole pipeline (MLP, tanh bounds, affine warp, colour ops) in float64, at the default
  # initialisation; the finite difference is along a random direction in weight space.
  with jax.enable_x64(True):
    graphdef, state = nnx.split(build(kind, "small", seed=9))
    state = jax.tree.map(lambda leaf: leaf.astype(jnp.float64), state)
    images = np.asarray(random_images(10, (3, 6, 7, 3)), np.float64)
    weights = np.asarray(jax.random.normal(jax.random.key(11), images.shape), np.float64)
    augment = lambda s: augmenters.augment_with((graphdef, s), images, jax.random.key(12))[0]
    loss = lambda s: jnp.sum(weights * augment(s))
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, gradient = value_and_grad(state)
    for leaf in jax.tree.leaves(gradient):
      assert np.all(np.isfinite(leaf)) and np.any(leaf != 0)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(0)
    direction = jax.tree.unflatten(treedef, [rng.normal(size=leaf.shape) for leaf in leaves])
    step = 1e-6
    shifted = lambda sign: jax.tree.map(lambda s, d: s + sign * step * d, state, direction)
    value = lambda s: float(value_and_grad(s)[0])
    finite_difference = (value(shifted(1)) - value(shifted(-1))) / (2 * step)
    analytic = sum(float(jnp.sum(g * d))
                   for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction)))
    np.testing.assert_allclose(analytic, finite_difference, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(N_PARAMS))
def test_identity_params_return_input(kind):
  images = random_images(13)
  identity = jnp.tile(jnp.asarray(IDENTITY[kind], jnp.float32), (images.shape[0], 1))
  apply = jax.jit(augmenters.apply_augmenter_params, static_argnums=0)
  np.testing.assert_allclose(apply(kind, images, identity), images, atol=1e-5)


def test_translation_and_affine_follow_affine_grid_convention():
  images = np.asarray(random_images(14))
  height, width = images.shape[1:3]
  # t = (2 px, -1 px) in normalised units: output (i, j) samples input (i - 1, j + 2); zero fill.
  params = np.tile([2 * 2 / width, -2 * 1 / height], (images.shape[0], 1)).astype(np.float32)
  expected = np.zeros_like(images)
  expected[:, 1:, :-2] = images[:, :-1, 2:]
  translated = augmenters.apply_augmenter_params("translation", jnp.asarray(images), params)
  np.testing.assert_allclose(translated, expected, atol=1e-5)
  mirror = np.tile([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0], (images.shape[0], 1)).astype(np.float32)
  mirrored = augmenters.apply_augmenter_params("affine", jnp.asarray(images), mirror)
  np.testing.assert_allclose(mirrored, images[:, :, ::-1], atol=1e-5)


def test_color_columns_and_order():
  images = random_images(15)
  batch = images.shape[0]
  amounts = {"brightness": 0.1, "contrast": 1.4, "saturation": 0.6, "hue": 0.2}
  ops = {"brightness": transforms.adjust_brightness, "contrast": transforms.adjust_contrast,
         "saturation": transforms.adjust_saturation, "hue": transforms.adjust_hue}
  composed = images
  for column, name in enumerate(("brightness", "contrast", "saturation", "hue")):
    only_this = np.tile(COLOR_IDENTITY, (batch, 1)).astype(np.float32)
    only_this[:, column] = amounts[name]
    single = jnp.full((batch,), amounts[name])
    np.testing.assert_allclose(augmenters.apply_augmenter_params("color", images, only_this),
                               ops[name](images, single), atol=1e-5)
    composed = ops[name](composed, single)
  all_columns = jnp.tile(jnp.asarray([amounts[name] for name in amounts]), (batch, 1))
  color = augmenters.apply_augmenter_params("color", images, all_columns)
  np.testing.assert_allclose(color, composed, atol=1e-5)
  affine = jnp.tile(jnp.asarray([0.9, 0.1, 0.05, -0.1, 1.1, -0.1]), (batch, 1))
  both = jnp.concatenate([affine, all_columns], axis=1)
  # Warp first, then colour, then zero where the warp sampled outside (its coverage).
  warped = augmenters.apply_augmenter_params("affine", images, affine)
  coverage = augmenters.apply_augmenter_params("affine", jnp.ones_like(images), affine)
  expected = augmenters.apply_augmenter_params("color", warped, all_columns) * coverage
  np.testing.assert_allclose(augmenters.apply_augmenter_params("affine_color", images, both),
                             expected, atol=1e-5)
  assert float(jnp.min(coverage)) == 0.0  # the test matrix does sample outside the image


def test_augment_with_draws_per_image_and_is_reproducible():
  augmenter = build("affine_color", "medium", seed=16)
  images = random_images(17)
  out, params = augmenters.augment_with(augmenter, images, jax.random.key(18))
  assert out.shape == images.shape and params.shape == (images.shape[0], 10)
  assert len({tuple(row) for row in np.asarray(params)}) == images.shape[0]  # one draw per image
  split = nnx.split(augmenter)
  jitted = jax.jit(augmenters.augment_with)(split, images, jax.random.key(18))
  for ours, reference in zip(jitted, (out, params)):
    np.testing.assert_allclose(ours, reference, atol=1e-5)
  _, other = augmenters.augment_with(augmenter, images, jax.random.key(19))
  assert not np.allclose(other, params)


def test_describe_params_matches_numpy():
  rng = np.random.default_rng(0)
  params = (np.array(IDENTITY["affine_color"]) + 0.2 * rng.normal(size=(32, 10))).astype(np.float32)
  stats = jax.jit(augmenters.describe_params, static_argnums=0)("affine_color", jnp.asarray(params))
  names = ["linear_xx", "linear_xy", "translation_x", "linear_yx", "linear_yy", "translation_y",
           "brightness", "contrast", "saturation", "hue"]
  expected = {}
  for column, name in enumerate(names):
    expected[f"{name}_mean"] = params[:, column].mean()
    expected[f"{name}_std"] = params[:, column].std()
  expected["translation_norm_mean"] = np.sqrt(params[:, 2] ** 2 + params[:, 5] ** 2).mean()
  expected["linear_deviation_mean"] = np.abs(params[:, [0, 1, 3, 4]] - [1, 0, 0, 1]).mean()
  assert set(stats) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(stats[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
  assert set(augmenters.describe_params("color", jnp.ones((4, 4)))) == {
      f"{n}_{s}" for n in ("brightness", "contrast", "saturation", "hue") for s in ("mean", "std")}


def test_rejects_bad_names_bounds_and_shapes():
  rngs = nnx.Rngs(0)
  with pytest.raises(ValueError, match="affine, affine_color, color, translation"):
    augmenters.create_augmenter("rotation", "small", rngs=rngs)
  with pytest.raises(ValueError, match="large, medium, small"):
    augmenters.create_augmenter("affine", "huge", rngs=rngs)
  with pytest.raises(ValueError, match="max_translation.*-0.1"):
    augmenters.create_augmenter("affine", "small", rngs=rngs, max_translation=-0.1)
  with pytest.raises(ValueError, match="max_hue.*0.7"):
    augmenters.create_augmenter("color", "small", rngs=rngs, max_hue=0.7)
  with pytest.raises(ValueError, match="max_contrast.*1.5"):
    augmenters.create_augmenter("color", "small", rngs=rngs, max_contrast=1.5)
  with pytest.raises(ValueError, match=r"max_linear must be in \[0, 0.5\], got 0.6"):
    augmenters.create_augmenter("affine", "small", rngs=rngs, max_linear=0.6)
  with pytest.raises(ValueError, match="max_brightness.*1.2"):
    augmenters.create_augmenter("color", "small", rngs=rngs, max_brightness=1.2)
  augmenter = nnx.eval_shape(
      lambda: augmenters.create_augmenter("affine", "small", rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"\[B, 6\]"):
    augmenter(jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"\(6, 6\)"):
    augmenters.apply_augmenter_params("affine", random_images(0), jnp.zeros((6, 2)))
  with pytest.raises(ValueError, match=r"\[B, 2\]"):
    augmenters.describe_params("translation", jnp.zeros((6, 10)))


# The augmenter's default bounds (create_augmenter's keyword defaults), restated.
DEFAULT_BOUNDS = dict(max_translation=0.25, max_linear=0.25, max_brightness=0.2,
                      max_contrast=0.3, max_saturation=0.3, max_hue=0.05)


@pytest.mark.parametrize("kind", sorted(N_PARAMS))
def test_random_transform_at_magnitude_zero_is_the_identity(kind):
  from jaxaug.augment import fixed
  images = random_images(21)
  params = augmenters.random_params(jax.random.key(0), kind, 0.0, images.shape[0])
  np.testing.assert_array_equal(params, np.tile(IDENTITY[kind], (images.shape[0], 1)))
  sample = jax.jit(fixed.compose(f"random_transform({kind!r}, 0)"))
  np.testing.assert_allclose(sample(jax.random.key(1), images), images, atol=1e-5)


@pytest.mark.parametrize("kind,magnitude", [("translation", 3.0), ("affine", 2.0),
                                            ("color", 0.5), ("affine_color", 1.0)])
def test_random_transform_draws_are_uniform_within_the_scaled_bounds(kind, magnitude):
  from scipy import stats
  params = np.asarray(augmenters.random_params(jax.random.key(2), kind, magnitude, 4000))
  half_width = magnitude * maxima(kind, DEFAULT_BOUNDS)
  deviation = params - np.asarray(IDENTITY[kind])
  assert np.all(np.abs(deviation) <= half_width * (1 + 1e-6))
  for column, width in enumerate(half_width):  # each parameter uniform on [-w, w] (KS test)
    uniform = stats.uniform(-width, 2 * width)
    assert stats.kstest(deviation[:, column], uniform.cdf).pvalue > 1e-3
  assert abs(np.corrcoef(deviation[:, 0], deviation[:, -1])[0, 1]) < 0.1  # drawn independently
  # The stage applies the parameters it draws, per image.
  images = random_images(22)
  sampler = augmenters.random_transform(kind, magnitude)
  expected = augmenters.apply_augmenter_params(
      kind, images, augmenters.random_params(jax.random.key(3), kind, magnitude, images.shape[0]))
  np.testing.assert_allclose(sampler(jax.random.key(3), images), expected, atol=1e-6)


def test_random_transform_rejects_bad_kinds_and_magnitudes():
  with pytest.raises(ValueError, match="unknown augmenter 'rotation'; valid augmenter names"):
    augmenters.random_transform("rotation", 1.0)
  # max_linear = 0.25 * magnitude must stay within 0.5
  with pytest.raises(ValueError, match=r"for kind 'affine' must be a number in \[0, 2\].*got 2.5"):
    augmenters.random_transform("affine", 2.5)
  with pytest.raises(ValueError, match=r"must be a number in \[0, inf\].*got -0.1"):
    augmenters.random_transform("translation", -0.1)
  with pytest.raises(ValueError, match="got '1'"):
    augmenters.random_transform("color", "1")


def test_mean_displacement_in_pixels():
  """A translation by t (normalised) moves every pixel by |t| * size / 2; a zoom by s moves a
  point p (normalised) by |s - 1| |p| * size / 2, averaged here over the 8 x 8 grid by hand."""
  translation = jnp.array([[0.25, 0.0], [0.0, -0.5]])  # 4 px, then 8 px on 32 x 32
  np.testing.assert_allclose(
      augmenters.mean_displacement_px("translation", translation, (32, 32)), 6.0, rtol=1e-6)
  identity = jnp.array([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
  assert float(augmenters.mean_displacement_px("affine", identity, (32, 32))) == 0.0
  zoom = jnp.array([[1.1, 0.0, 0.0, 0.0, 1.1, 0.0]])
  centres = (np.arange(8) + 0.5) / 8 * 2 - 1
  radius = np.hypot(*np.meshgrid(centres, centres))
  np.testing.assert_allclose(augmenters.mean_displacement_px("affine", zoom, (32, 32)),
                             np.mean(0.1 * radius * 16), rtol=1e-5)
  described = augmenters.describe_params("affine", zoom, image_shape=(32, 32))
  assert "displacement_px_mean" in described
  assert "displacement_px_mean" not in augmenters.describe_params("affine", zoom)
