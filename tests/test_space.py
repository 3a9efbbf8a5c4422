"""Tests of jaxaug.augment.space: reference level mapping, logit parametrisation, dispatcher.

The level formulas and ranges are restated here from tensorflow/models research/autoaugment
`augmentation_transforms.py` (Python floats, `int()` truncation) and HBA's table 7, not read
from the module. The dispatcher is compared with a loop applying `ops.*` image by image.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from jaxaug.augment import ops
from jaxaug.augment import space

REFERENCE_MAX_LEVEL = 10


def float_parameter(level, maxval):
  return level * maxval / REFERENCE_MAX_LEVEL


def int_parameter(level, maxval):
  return int(level * maxval / REFERENCE_MAX_LEVEL)


# AutoAugment name -> the reference's magnitude for a level, in ops' units (pixels of 32 / 32).
REFERENCE = {
    "ShearX": lambda level: float_parameter(level, 0.3),
    "ShearY": lambda level: float_parameter(level, 0.3),
    "TranslateX": lambda level: int_parameter(level, 10) / 32,
    "TranslateY": lambda level: int_parameter(level, 10) / 32,
    "Rotate": lambda level: int_parameter(level, 30),
    "AutoContrast": lambda level: 1.0,
    "Invert": lambda level: 1.0,
    "Equalize": lambda level: 1.0,
    "Solarize": lambda level: 256 - int_parameter(level, 256),
    "Posterize": lambda level: 4 - int_parameter(level, 4),
    "Contrast": lambda level: float_parameter(level, 1.8) + 0.1,
    "Color": lambda level: float_parameter(level, 1.8) + 0.1,
    "Brightness": lambda level: float_parameter(level, 1.8) + 0.1,
    "Sharpness": lambda level: float_parameter(level, 1.8) + 0.1,
    "Cutout": lambda level: int_parameter(level, 20) / 32,
    "SamplePairing": lambda level: float_parameter(level, 0.4),  # AutoAugment paper, table 1
    "Identity": lambda level: 0.0,
    "FlipLR": lambda level: 1.0,
    "FlipUD": lambda level: 1.0,
}
HBA_RANGES = {  # HBA appendix A, table 7 (SamplePairing: AutoAugment paper)
    "ShearX": (0, 0.3), "ShearY": (0, 0.3), "TranslateX": (0, 0.45), "TranslateY": (0, 0.45),
    "Rotate": (0, 30), "Solarize": (0, 255), "Posterize": (0, 8), "Contrast": (0.1, 1.9),
    "Color": (0.1, 1.9), "Brightness": (0.1, 1.9), "Sharpness": (0.1, 1.9), "Cutout": (0, 0.2),
    "SamplePairing": (0, 0.4),
}
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def uint8_images(seed, shape=(40, 12, 10, 3)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape) / 255.0, jnp.float32)


def test_names_cover_the_search_space():
  assert set(space.NAMES) == set(REFERENCE) == set(space.SPACE.names())
  assert all(space.SPACE.get(name).op in ops.OPS for name in space.NAMES)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_level_to_magnitude_matches_the_reference(name):
  levels = [0, 1, 2.5, 5, 5.5, 7, 9, 10]  # the ends 0 and PARAMETER_MAX, 9 (the policies' top)
  entry = space.SPACE.get(name)
  mapped = np.asarray(entry.level_to_magnitude(jnp.asarray(levels)))
  np.testing.assert_allclose(mapped, [REFERENCE[name](level) for level in levels], rtol=1e-6,
                             atol=1e-6)
  assert entry.magnitude_range == HBA_RANGES.get(name)
  assert entry.signed == (name in SIGNED)


def test_logit_parametrisation_round_trips():
  low, high = 0.1, 1.9
  values = np.linspace(low, high, 11)[1:-1]
  unbounded = space.to_unbounded(jnp.asarray(values), low, high)
  np.testing.assert_allclose(unbounded, scipy.special.logit((values - low) / (high - low)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(space.from_unbounded(unbounded, low, high), values, rtol=1e-6)
  assert float(space.to_unbounded(1.0, low, high)) == pytest.approx(0.0, abs=1e-6)
  wide = space.from_unbounded(jnp.asarray([-50.0, 0.0, 50.0]), 0.0, 255.0)
  np.testing.assert_allclose(wide, [0.0, 127.5, 255.0], atol=1e-4)
  with pytest.raises(ValueError, match="low=2.*high=1"):
    space.to_unbounded(1.5, 2, 1)


@functools.cache
def jitted_op(name):
  """`ops.<name>`, jitted (each op then compiles once for the single-image shape)."""
  static = ("interpolation",) if name in ops.GEOMETRIC_MATRICES else ()
  return jax.jit(ops.OPS.get(name).fn, static_argnames=static)


def loop_reference(images, op_index, magnitude, rng, names, **options):
  """`ops.<op>` on each image alone, with the draws that `apply` documents for its rng."""
  centers = space.random_cutout_centers(jax.random.fold_in(rng, 0), images)
  partners = space.random_partners(jax.random.fold_in(rng, 1), images)
  out = []
  for b in range(images.shape[0]):
    op = space.SPACE.get(names[int(op_index[b])]).op
    keywords = {key: options[key] for key in ("interpolation", "fill")
                if op in ops.GEOMETRIC_MATRICES}
    if op == "cutout":
      keywords = {"centers_yx": centers[b:b + 1], "fill": options["cutout_fill"]}
    if op == "sample_pairing":
      keywords = {"partners": partners[b:b + 1]}
    out.append(jitted_op(op)(images[b:b + 1], magnitude[b:b + 1], **keywords))
  return np.concatenate(out)


def assert_equal_up_to_one_level(ours, reference, max_fraction=0.01):
  """Equal, except that a few values may differ by one 8-bit level.

  PIL truncates float32 blends and bilinear sums to 8 bits; XLA fuses them (e.g. into
  fused multiply-adds) differently in a batched and in a one-image program, which can move
  a value within float32 rounding of an integer level across it (see `ops`).
  """
  difference = np.abs(np.asarray(ours) - np.asarray(reference))
  assert difference.max() <= 1 / 255 + 1e-6, difference.max()
  assert np.mean(difference > 0) <= max_fraction, np.mean(difference > 0)


@pytest.mark.parametrize("strategy", ["select", "switch"])
def test_dispatcher_equals_each_op_applied_alone(strategy):
  images = uint8_images(0)
  batch = images.shape[0]
  op_index = jnp.asarray(np.arange(batch) % len(space.NAMES))  # every op, twice or more
  levels = np.random.default_rng(1).uniform(0, 10, batch)
  magnitude = jnp.asarray([float(space.SPACE.get(space.NAMES[int(i)]).level_to_magnitude(level))
                           for i, level in zip(op_index, levels)])
  magnitude = space.random_sign(jax.random.key(2), op_index, magnitude)
  rng = jax.random.key(3)
  options = dict(interpolation="nearest", fill=(0.2, 0.4, 0.6), cutout_fill=0.25)
  apply = jax.jit(lambda *args: space.apply(*args, strategy=strategy, **options))
  ours = apply(images, op_index, magnitude, rng)
  assert_equal_up_to_one_level(ours, loop_reference(images, op_index, magnitude, rng,
                                                    space.NAMES, **options))
  assert not np.array_equal(ours, images)


@pytest.mark.parametrize("strategy", ["select", "switch"])
def test_dispatcher_on_a_subset_bilinear_and_unknown_indices(strategy):
  names = ("Color", "Identity", "Rotate", "TranslateY")
  images = uint8_images(4, (8, 9, 9, 3))
  op_index = jnp.asarray([0, 1, 2, 3, 2, 0, -1, 4])  # -1 and 4 are outside: unchanged
  magnitude = jnp.asarray([1.7, 0.0, -25.0, 0.2, 12.5, 0.3, 9.0, 9.0])
  options = dict(interpolation="bilinear", fill=0.0, cutout_fill=0.5)
  ours = jax.jit(lambda *args: space.apply(*args, names=names, strategy=strategy,
                                            interpolation="bilinear"))(images, op_index, magnitude)
  known = np.arange(6)
  assert_equal_up_to_one_level(
      ours[known], loop_reference(images[known], op_index[known], magnitude[known],
                                  jax.random.key(0), names, **options))
  np.testing.assert_array_equal(ours[6:], images[6:])


def test_dispatcher_gradients_are_finite():
  images = uint8_images(5, (19, 6, 6, 3))
  op_index = jnp.arange(19)
  # Valid for each image's own op, but NaN in Posterize's gradient (2^300 bits): under
  # 'select' an op must not see the magnitudes of the images it does not own.
  magnitude = jnp.full((19,), -300.0).at[space.NAMES.index("Posterize")].set(4.0)

  def loss(images, magnitude):
    out = space.apply(images, op_index, magnitude, jax.random.key(0), strategy="select",
                      interpolation="bilinear")
    return jnp.sum(out * jnp.linspace(0, 1, out.size).reshape(out.shape))

  image_grad, magnitude_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(images, magnitude)
  assert np.all(np.isfinite(image_grad)) and np.all(np.isfinite(magnitude_grad))
  assert np.any(image_grad != 0)


def test_random_sign_flips_signed_ops_about_their_identity():
  names = ("Rotate", "Brightness", "Posterize")
  count = 6000
  op_index = jnp.asarray(np.arange(count) % 3)
  magnitude = jnp.asarray(np.tile([10.0, 1.5, 4.0], count // 3))
  signed = space.random_sign(jax.random.key(0), op_index, magnitude, names=names)
  rotate = np.asarray(signed[0::3])
  assert set(np.unique(rotate)) == {-10.0, 10.0}
  flipped = np.mean(rotate < 0)
  assert abs(flipped - 0.5) < 5 * np.sqrt(0.25 / rotate.size)  # 5 sigma, binomial
  np.testing.assert_array_equal(signed[1::3], 1.5)  # Brightness is unsigned in the reference
  np.testing.assert_array_equal(signed[2::3], 4.0)
  # TrivialAugment signs enhance factors: the reflection of 1 + d about the identity 1 is 1 - d.
  custom = space.random_sign(jax.random.key(0), op_index, magnitude, names=names,
                             signed=(False, True, False))
  assert set(np.round(np.unique(custom[1::3]), 5)) == {0.5, 1.5}


def test_rejects_bad_input():
  images = uint8_images(6, (4, 5, 5, 3))
  index = jnp.zeros(4, jnp.int32)
  with pytest.raises(ValueError, match="unknown search-space op 'Warp'.*ShearX"):
    space.apply(images, index, jnp.zeros(4), names=("Warp",))
  with pytest.raises(ValueError, match="distinct"):
    space.apply(images, index, jnp.zeros(4), names=("Rotate", "Rotate"))
  with pytest.raises(ValueError, match=r"op_index must have shape \(4,\)"):
    space.apply(images, jnp.zeros(3, jnp.int32), jnp.zeros(4))
  with pytest.raises(ValueError, match="integer"):
    space.apply(images, jnp.zeros(4), jnp.zeros(4))
  with pytest.raises(ValueError, match="rng.*cutout"):
    space.apply(images, index, jnp.zeros(4), names=("Cutout",))
  with pytest.raises(ValueError, match="strategy 'fast'"):
    space.apply(images, index, jnp.zeros(4), names=("Rotate",), strategy="fast")
  with pytest.raises(ValueError, match="interpolation 'cubic'"):
    space.apply(images, index, jnp.zeros(4), names=("Rotate",), interpolation="cubic")
