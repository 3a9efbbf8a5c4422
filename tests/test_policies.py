"""Tests of jaxaug.augment.policies and the spec parser of jaxaug.augment.fixed.

Op frequencies: `space.apply` is replaced by a recorder, so each test sees which op and
magnitude every image got in every layer over many draws. Frequencies are compared with
the probabilities restated from the papers (or with an independent Python simulation of
PBA's algorithm) at 5 binomial standard deviations: with fixed seeds the tests are
deterministic, and a correct sampler would fail one comparison with probability ~6e-7.
"""

import collections
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaug import train
from jaxaug.augment import fixed
from jaxaug.augment import policies
from jaxaug.augment import space
from jaxaug.augment import transforms
from test_space import REFERENCE, SIGNED
from test_train import assert_final_evaluation_is_the_result
from test_train import smoke_config

DRAWS = 20000
SIGMAS = 5


class Recorder:
  """Stands in for `space.apply`: records each layer's names, ops and magnitudes."""

  def __init__(self):
    self.layers = []

  def __call__(self, images, op_index, magnitude, rng=None, *, names, **options):
    del rng, options
    self.layers.append((tuple(names), np.asarray(op_index), np.asarray(magnitude)))
    return images

  def names(self, layer):
    """The op name each image got in `layer`: str array [B]."""
    names, op_index, _ = self.layers[layer]
    return np.array(names)[op_index]


@pytest.fixture
def recorder(monkeypatch):
  recorder = Recorder()
  monkeypatch.setattr(space, "apply", recorder)
  return recorder


def draw(sampler, shape=(DRAWS, 4, 4, 1), seed=0):
  return sampler(jax.random.key(seed), jnp.zeros(shape))


def assert_frequency(observed, expected, count, what):
  sigma = np.sqrt(max(expected * (1 - expected), 1e-12) / count)
  assert abs(observed - expected) <= SIGMAS * sigma, (what, observed, expected)


def assert_signs(recorder, layer):
  """Signed ops are negative half of the time, unsigned ones never (magnitudes > 0 here)."""
  names, _, magnitude = recorder.layers[layer]
  name = recorder.names(layer)
  signed = np.isin(name, list(SIGNED)) & (magnitude != 0)
  if signed.any():
    assert_frequency(np.mean(magnitude[signed] < 0), 0.5, signed.sum(), "sign")
  assert np.all(magnitude[~np.isin(name, list(SIGNED))] >= 0)


@pytest.mark.parametrize("policy", sorted(policies.AUTOAUGMENT_POLICIES))
def test_autoaugment_sub_policy_pairs_and_magnitudes(recorder, policy):
  draw(policies.autoaugment(policy))
  assert len(recorder.layers) == 2
  # P(layer 0 = a, layer 1 = b): a sub-policy uniformly, each op with its probability.
  expected = collections.Counter()
  sub_policies = policies.AUTOAUGMENT_POLICIES[policy]
  for (name0, p0, _), (name1, p1, _) in sub_policies:
    for a, pa in ((name0, p0), ("Identity", 1 - p0)):
      for b, pb in ((name1, p1), ("Identity", 1 - p1)):
        expected[a, b] += pa * pb / len(sub_policies)
  observed = collections.Counter(zip(recorder.names(0), recorder.names(1)))
  assert set(observed) <= {pair for pair, p in expected.items() if p > 0}
  for pair, probability in expected.items():
    assert_frequency(observed[pair] / DRAWS, probability, DRAWS, pair)
  for layer in range(2):
    allowed = collections.defaultdict(set)
    for sub_policy in sub_policies:
      name, _, level = sub_policy[layer]
      allowed[name].add(round(REFERENCE[name](level or 0), 5))
    for name, magnitude in zip(recorder.names(layer), recorder.layers[layer][2]):
      if name != "Identity":  # ignores its magnitude
        assert round(abs(float(magnitude)), 5) in allowed[name], (layer, name, magnitude)
    assert_signs(recorder, layer)


@pytest.mark.parametrize("num_ops,magnitude", [(2, 9), (3, 10), (1, 0.5)])
def test_randaugment_ops_uniform_at_the_reference_magnitude(recorder, num_ops, magnitude):
  draw(policies.randaugment(num_ops, magnitude))
  assert len(recorder.layers) == num_ops
  paper_ops = {"Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color",
               "Posterize", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
               "TranslateX", "TranslateY"}
  for layer in range(num_ops):
    name = recorder.names(layer)
    assert set(name) == paper_ops
    for op in paper_ops:
      assert_frequency(np.mean(name == op), 1 / 14, DRAWS, (layer, op))
      np.testing.assert_allclose(np.abs(recorder.layers[layer][2][name == op]),
                                 REFERENCE[op](magnitude), rtol=1e-6, atol=1e-6)
    assert_signs(recorder, layer)
  if num_ops > 1:  # independent layers: the same op in both for about 1 / 14 of the images
    assert_frequency(np.mean(recorder.names(0) == recorder.names(1)), 1 / 14, DRAWS, "repeat")


# torchvision's TrivialAugmentWide magnitude of bin b (0..30), unsigned; translations in pixels.
TRIVIAL_WIDE = {
    "Identity": lambda b: 0.0, "AutoContrast": lambda b: 1.0, "Equalize": lambda b: 1.0,
    "ShearX": lambda b: 0.99 * b / 30, "ShearY": lambda b: 0.99 * b / 30,
    # torchvision shifts by int(magnitude) pixels.
    "TranslateX": lambda b: float(int(32.0 * b / 30)),
    "TranslateY": lambda b: float(int(32.0 * b / 30)),
    "Rotate": lambda b: 135.0 * b / 30,
    "Brightness": lambda b: 1 + 0.99 * b / 30, "Color": lambda b: 1 + 0.99 * b / 30,
    "Contrast": lambda b: 1 + 0.99 * b / 30, "Sharpness": lambda b: 1 + 0.99 * b / 30,
    "Posterize": lambda b: 8 - round(b / 5), "Solarize": lambda b: 255.0 - 255.0 * b / 30,
}
TRIVIAL_SIGNED = SIGNED | {"Brightness", "Color", "Contrast", "Sharpness"}


def test_trivial_augment_wide_ops_bins_and_signs(recorder):
  width = 4
  draw(policies.trivial_augment_wide(), shape=(DRAWS, width, width, 1))
  (names, op_index, magnitude), = recorder.layers
  name = recorder.names(0)
  assert set(names) == set(TRIVIAL_WIDE)
  for op, magnitude_of_bin in TRIVIAL_WIDE.items():
    mine = magnitude[name == op] * (width if op.startswith("Translate") else 1)
    assert_frequency(mine.size / DRAWS, 1 / 14, DRAWS, op)
    identity = 1.0 if op in ("Brightness", "Color", "Contrast", "Sharpness") else 0.0
    unsigned = identity + np.abs(mine - identity)
    if op == "Posterize":  # drawn on the grid 8 - b / 5; ops.posterize rounds the bits
      bins = (8 - unsigned) * 5
      np.testing.assert_allclose(bins, np.round(bins), atol=1e-4)
      bins = np.round(bins).astype(int)
      np.testing.assert_array_equal(np.round(unsigned), [magnitude_of_bin(b) for b in bins])
    else:
      grid = np.array([magnitude_of_bin(b) for b in range(31)])
      bins = np.abs(unsigned[:, None] - grid[None, :]).argmin(axis=1)
      np.testing.assert_allclose(unsigned, grid[bins], atol=1e-5)
    if op not in ("Identity", "AutoContrast", "Equalize"):
      # Uniform bins: mean (30 / 2) within 5 sigma (sd of the uniform on 0..30 is sqrt(80)).
      assert abs(bins.mean() - 15) <= SIGMAS * np.sqrt(80 / bins.size), (op, bins.mean())
    if op in TRIVIAL_SIGNED:
      assert_frequency(np.mean(mine < identity), 0.5, mine.size, op)


def simulate_pba(probability, count_probabilities, draws, seed):
  """PBA's algorithm 1 in plain Python: per image the applied entries, in order."""
  generator = random.Random(seed)
  applied = []
  for _ in range(draws):
    count = generator.choices(range(len(count_probabilities)), count_probabilities)[0]
    order = list(range(len(probability)))
    generator.shuffle(order)
    chosen = []
    for entry in order:
      if count == 0:
        break
      if generator.random() < probability[entry]:
        chosen.append(entry)
        count -= 1
    applied.append(chosen)
  return applied


def test_pba_matches_a_simulation_of_its_algorithm(recorder):
  names = policies.PBA_ENTRIES
  rng = np.random.default_rng(0)
  probability = rng.uniform(0, 0.3, len(names))
  probability[:3] = [0.0, 1.0, 0.9]
  magnitude = 0.01 * (1 + np.arange(len(names)))  # distinct: identifies the entry applied
  policies.pba_augment(jax.random.key(1), jnp.zeros((DRAWS, 2, 2, 1)), probability, magnitude,
                       names=names)
  assert len(recorder.layers) == 2
  ours = [[] for _ in range(DRAWS)]
  for layer in range(2):
    name = recorder.names(layer)
    entry = np.rint(np.abs(recorder.layers[layer][2]) / 0.01).astype(int) - 1
    for image in np.flatnonzero(name != "Identity"):
      assert names[entry[image]] == name[image]
      ours[image].append(entry[image])
  reference = simulate_pba(probability, policies.PBA_COUNT_PROBABILITIES, DRAWS, seed=2)

  def compare(statistic, what):
    """Two-sample comparison of the frequency of `statistic(applied entries)` being true."""
    p_ours = np.mean([statistic(a) for a in ours])
    p_reference = np.mean([statistic(a) for a in reference])
    pooled = (p_ours + p_reference) / 2
    sigma = np.sqrt(max(pooled * (1 - pooled), 1e-12) * 2 / DRAWS)
    assert abs(p_ours - p_reference) <= SIGMAS * sigma, (what, p_ours, p_reference)

  for count in range(3):
    compare(lambda applied: len(applied) == count, f"{count} ops")
  for entry in range(len(names)):
    compare(lambda applied: entry in applied, f"entry {entry} applied")
    compare(lambda applied: applied[:1] == [entry], f"entry {entry} first")
  assert not any(0 in applied for applied in ours)  # probability 0: never
  assert_signs(recorder, 0)


def test_pba_per_image_probabilities(recorder):
  probability = np.zeros((4000, len(policies.PBA_ENTRIES)))
  probability[2000:] = 1.0  # every entry applies: the count alone decides
  policies.pba_augment(jax.random.key(0), jnp.zeros((4000, 2, 2, 1)), probability, 1.0)
  applied = sum((recorder.names(layer) != "Identity").astype(int) for layer in range(2))
  assert np.all(applied[:2000] == 0)
  for count, p in enumerate(policies.PBA_COUNT_PROBABILITIES):
    assert_frequency(np.mean(applied[2000:] == count), p, 2000, count)


def real_images(batch=6, size=8, seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3))
  pixels[batch // 2:] = pixels[0]  # identical images must still get independent draws
  return jnp.asarray(pixels / 255.0, jnp.float32)


@pytest.mark.parametrize("spec", ["autoaugment_cifar10",
                                  "trivialaugment_wide+cutout(4)+color_jitter(0.4, 0.4, 0.4, 0.1)"])
def test_policy_reproducible_per_key_and_independent_per_image(spec):
  images = real_images(batch=16)
  sample = jax.jit(fixed.compose(spec))
  out = sample(jax.random.key(0), images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  np.testing.assert_array_equal(out, sample(jax.random.key(0), images))
  assert not np.array_equal(out, sample(jax.random.key(1), images))
  copies = np.asarray(out[8:])  # eight augmentations of the same image
  assert len({copy.tobytes() for copy in copies}) > 1


def test_cutout_square_clipped_at_the_border():
  size, side, level = 12, 4, 204
  images = jnp.full((300, size, size, 3), level / 255, jnp.float32)
  out = np.asarray(jax.jit(policies.cutout(side, fill=0.25))(jax.random.key(0), images)) * 255
  boxes = set()
  for image in out:
    rows, cols = np.nonzero(np.abs(image - level).max(axis=-1) > 0.5)
    np.testing.assert_allclose(image[rows, cols], round(0.25 * 255), atol=1e-3)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert rows.size == (bottom - top) * (right - left)  # one full rectangle
    # [c - 2, c + 2) in each axis, clipped by the image: 4 pixels unless at the border.
    assert bottom - top == side or top == 0 or bottom == size
    assert right - left == side or left == 0 or right == size
    boxes.add((top, bottom, left, right))
  assert len(boxes) > 60  # centres uniform over 144 pixels: many distinct boxes


def test_color_jitter_brightness_factor_range():
  images = real_images(batch=400, size=4)
  out = jax.jit(policies.color_jitter(0.4, 0, 0, 0))(jax.random.key(0), images)
  # PIL's Brightness truncates v * f to 8 bits: v * f lies in [out, out + 1) levels.
  levels, result = np.asarray(images) * 255, np.asarray(out) * 255
  bright = levels > 50
  lower = np.where(bright, result / np.where(bright, levels, 1), 1)
  factors = [lower[b][bright[b]].max() for b in range(len(levels))]
  assert min(factors) >= 0.6 - 1e-3 and max(factors) <= 1.4 + 1e-3
  assert max(factors) > 1.3 and min(factors) < 0.7  # uniform on [0.6, 1.4]: reaches the ends


def test_parse_good_specs():
  assert fixed.parse("autoaugment_cifar10+cutout(16)") == [
      fixed.Stage("autoaugment_cifar10", (), {}), fixed.Stage("cutout", (16,), {})]
  assert fixed.parse(" randaugment(2, 9) ") == [fixed.Stage("randaugment", (2, 9), {})]
  assert fixed.parse("cutout(20, fill=(0.5, 0.4, 0.3))+crop+hflip") == [
      fixed.Stage("cutout", (20,), {"fill": (0.5, 0.4, 0.3)}), fixed.Stage("crop", (), {}),
      fixed.Stage("hflip", (), {})]
  assert fixed.parse("autoaugment_svhn(interpolation='bilinear')") == [
      fixed.Stage("autoaugment_svhn", (), {"interpolation": "bilinear"})]
  for spec in ("none", "hflip", "vflip", "crop", "predefined", "crop+hflip",
               "autoaugment_cifar10+cutout", "randaugment(2, 9)+cutout(16)",
               "autoaugment_imagenet+color_jitter", "trivialaugment_wide", "crop(2)"):
    fixed.compose(spec)


def test_existing_names_unchanged():
  images = real_images()
  rng = jax.random.key(3)
  crop_then_flip = fixed.compose("crop+hflip")(rng, images)
  expected = transforms.random_flip(
      jax.random.fold_in(rng, 1),
      transforms.random_pad_and_crop(jax.random.fold_in(rng, 0), images, padding=4),
      horizontal=True, vertical=False)
  np.testing.assert_array_equal(crop_then_flip, expected)
  np.testing.assert_array_equal(fixed.compose("predefined")(rng, images),  # a one-stage spec
                                fixed.compose("crop+hflip")(jax.random.fold_in(rng, 0), images))
  np.testing.assert_array_equal(fixed.compose("none")(rng, images), images)


@pytest.mark.parametrize("spec,message", [
    ("randaugment(2, 9", "malformed augmentation spec 'randaugment\\(2, 9'"),
    ("randaugment(n)", "must be Python literals"),
    ("randaugment(*(2, 9))", "unpacks"),
    ("crop-hflip", "not a name or a call"),
    ("1+crop", "not a name or a call"),
    ("", "empty"),
    ("crop+warp(3)", "unknown augmentation 'warp'.*autoaugment_cifar10.*randaugment"),
    ("randaugment(2, 11)", "magnitude must be a number in \\[0, 10\\], got 11"),
    ("randaugment(2.5)", "num_ops must be an integer"),
    ("cutout(16, 2)", "cutout\\(16, 2\\).*bad arguments for 'cutout'"),
    ("cutout(size=-1)", "size must be a number.*-1"),
    ("crop(padding=-4)", "-4"),
    ("color_jitter(hue=0.7)", "hue.*0.7"),
    ("autoaugment_cifar10(interpolation='cubic')", "cubic"),
])
def test_bad_specs_are_rejected(spec, message):
  with pytest.raises(ValueError, match=message):
    fixed.compose(spec)


@pytest.mark.slow
def test_supervised_end_to_end_with_a_policy(tmp_path):
  config = smoke_config("supervised", {"augment": "trivialaugment_wide+cutout(4)",
                                       "num_epochs": 1, "data.train_examples": 64})
  results = train.train_and_evaluate(config, str(tmp_path))
  records = [line for line in open(tmp_path / "metrics.jsonl")]
  assert records and all("nan" not in line.lower() for line in records)
  assert_final_evaluation_is_the_result([json.loads(line) for line in records], results)


def test_pba_spec_applies_every_entry_at_the_reference_level(recorder):
  # "pba(1, 7)": every entry passes its coin, so the count decides how many ops apply, and
  # each applied op has the AutoAugment reference magnitude of level 7 (up to the sign flip,
  # a reflection about the op's identity).
  draw(fixed.compose("pba(1.0, 7)"))
  applied = sum((recorder.names(layer) != "Identity").astype(int) for layer in range(2))
  for count, p in enumerate(policies.PBA_COUNT_PROBABILITIES):
    assert_frequency(np.mean(applied == count), p, DRAWS, count)
  for layer in range(2):
    names, magnitude = recorder.names(layer), recorder.layers[layer][2]
    for name in set(names) - {"Identity"}:
      entry = space.SPACE.get(name)
      expected = float(entry.level_to_magnitude(jnp.float32(7)))
      identity = entry.identity or 0.0
      np.testing.assert_allclose(np.abs(magnitude[names == name] - identity),
                                 abs(expected - identity), rtol=1e-6, err_msg=name)


def test_pba_spec_with_probability_zero_is_the_identity():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 6, 6, 3)) / 255.0,
                       jnp.float32)
  out = jax.jit(fixed.compose("pba(0.0, 5)"))(jax.random.key(1), images)
  np.testing.assert_array_equal(out, images)
  with pytest.raises(ValueError, match="level"):
    fixed.compose("pba(0.5, 11)")


def test_apply_sub_policies_equals_each_op_image_by_image():
  """Per-image ops and levels (probability 1) give what the op of `ops` gives that image."""
  from jaxaug.augment import ops
  names = tuple(name for name in space.NAMES if name not in ("Cutout", "SamplePairing"))
  count = len(names)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2 * count, 12, 12, 3)).astype(np.float32) / 255
  op_index = np.stack([np.arange(2 * count) % count,
                       np.full(2 * count, names.index("Identity"))], axis=1)
  level = rng.integers(0, space.PARAMETER_MAX + 1, op_index.shape)
  probability = np.stack([np.ones(2 * count), np.zeros(2 * count)], axis=1)
  out = np.asarray(jax.jit(policies.apply_sub_policies, static_argnames="names")(
      jax.random.key(0), jnp.asarray(images), op_index, level, probability, names=names))
  reference = {}  # each op under jit: one program per op, not op by op
  for b in range(2 * count):
    entry = space.SPACE.get(names[op_index[b, 0]])
    magnitude = float(entry.level_to_magnitude(jnp.float32(level[b, 0])))
    candidates = [magnitude, -magnitude] if entry.signed else [magnitude]
    fn = reference.setdefault(entry.op, jax.jit(ops.OPS.get(entry.op).fn))
    expected = [np.asarray(fn(images[b:b + 1], jnp.array([m], jnp.float32)))[0]
                for m in candidates]
    assert any(np.allclose(out[b], e, atol=1e-6) for e in expected), (b, names[op_index[b, 0]])


def test_apply_sub_policies_draws_each_op_with_its_probability(recorder):
  batch = 4000
  op_index = np.tile([[1, 2]], (batch, 1))
  probability = np.tile([[0.3, 0.8]], (batch, 1))
  names = ("Rotate", "Solarize", "Color")
  policies.apply_sub_policies(jax.random.key(1), jnp.zeros((batch, 4, 4, 1)), op_index,
                              np.full((batch, 2), 5), probability, names=names)
  for layer, (name, p) in enumerate((("Solarize", 0.3), ("Color", 0.8))):
    assert_frequency(np.mean(recorder.names(layer) == name), p, batch, name)
    assert set(recorder.names(layer)) == {name, "Identity"}
  with pytest.raises(ValueError, match="share one shape"):
    policies.apply_sub_policies(jax.random.key(1), jnp.zeros((3, 4, 4, 1)), op_index[:3],
                                np.zeros((3, 1)), probability[:3], names=names)
