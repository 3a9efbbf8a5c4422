"""Fixed augmentation policies over a batch, each draw independent per image.

Factories (`autoaugment`, `randaugment`, `trivial_augment_wide`, `cutout`,
`color_jitter`) validate their arguments and return a sampler
`(rng, images [B, H, W, C] float32 in [0, 1]) -> images`, jit- and vmap-safe. The
samplers draw which op each image gets, its magnitude and sign; `space.apply` runs
a whole layer (one op per image) as one program. `pba_augment` is the PBA
augmentation function, parametrised by per-entry probability and magnitude arrays
(traceable, so HBA can learn them).

Magnitudes. AutoAugment and RandAugment levels go through the AutoAugment reference
mapping (`space`: 10 levels, its quirks included, e.g. Posterize 4 - int(0.4 level)
bits); RandAugment's M is on the paper's 10-level scale (torchvision uses 31 levels
and other ranges). TrivialAugment follows torchvision's TrivialAugmentWide (31 bins).

Options shared by the policies: `interpolation` ('nearest' as PIL and torchvision,
or 'bilinear'), `fill` (value in [0, 1], scalar or per channel, of pixels warped in
from outside; the AutoAugment reference's effective fill is the dataset mean, see
`space`), `quantize` (PIL's 8-bit rounding, see `ops`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxaug.augment import geometry
from jaxaug.augment import ops
from jaxaug.augment import space
from jaxaug.augment import transforms

Sampler = Callable[[jax.Array, jax.Array], jax.Array]
# A sub-policy: (AutoAugment op name, probability, level in 0..9 or None if the op has none).
SubPolicy = tuple[tuple[str, float, int | None], ...]

# AutoAugment (Cubuk et al., 2019), appendix: the 25 sub-policies found on each dataset (the
# same lists as torchvision's AutoAugmentPolicy).
AUTOAUGMENT_POLICIES: dict[str, tuple[SubPolicy, ...]] = {
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
}

# RandAugment (Cubuk et al., 2020), the paper's 14 ops (its figure 2).
RANDAUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color",
                   "Posterize", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY")

# TrivialAugment wide (Mueller & Hutter, 2021; torchvision's TrivialAugmentWide): op name ->
# (magnitude at bin 0, at the last bin, signed). Translations are in pixels (absolute, as
# there), Posterize in bits (`ops.posterize` rounds), enhance ops are factors (signed: 1 -/+ d).
TRIVIAL_AUGMENT_WIDE: dict[str, tuple[float, float, bool]] = {
    "Identity": (0.0, 0.0, False),
    "ShearX": (0.0, 0.99, True),
    "ShearY": (0.0, 0.99, True),
    "TranslateX": (0.0, 32.0, True),
    "TranslateY": (0.0, 32.0, True),
    "Rotate": (0.0, 135.0, True),
    "Brightness": (1.0, 1.99, True),
    "Color": (1.0, 1.99, True),
    "Contrast": (1.0, 1.99, True),
    "Sharpness": (1.0, 1.99, True),
    "Posterize": (8.0, 2.0, False),
    "Solarize": (255.0, 0.0, False),
    "AutoContrast": (1.0, 1.0, False),
    "Equalize": (1.0, 1.0, False),
}
TRIVIAL_AUGMENT_BINS = 31

# PBA (Ho et al., 2019): the number of ops applied to an image and its probabilities, and the
# 15 ops of its search space; its policy holds each op twice.
PBA_COUNT_PROBABILITIES = (0.2, 0.3, 0.5)
PBA_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
           "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
           "Cutout")
PBA_ENTRIES = PBA_OPS + PBA_OPS

# Adversarial AutoAugment (Zhang et al., 2020), section 3.1: its 16 ops (AutoAugment's without
# probabilities), each at one of 10 levels of the reference mapping.
ADVERSARIAL_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast",
                   "Invert", "Equalize", "Solarize", "Posterize", "Contrast", "Color",
                   "Brightness", "Sharpness", "Cutout", "SamplePairing")


def _layer_options(interpolation: str, fill: float | Sequence[float],
                   quantize: bool) -> dict[str, object]:
  """Validated keyword options of `space.apply` shared by the policies."""
  geometry.SAMPLERS.get(interpolation)
  return {"interpolation": interpolation, "fill": fill, "quantize": bool(quantize)}


def _apply_layer(rng: jax.Array, images: jax.Array, op_index: jax.Array, magnitude: jax.Array,
                 *, names: Sequence[str], signed: Sequence[bool] | None = None,
                 **options) -> jax.Array:
  """One op per image: draws the signs of `magnitude` [B] (unsigned), then `space.apply`."""
  sign_rng, apply_rng = jax.random.split(rng)
  magnitude = space.random_sign(sign_rng, op_index, magnitude, names=names, signed=signed)
  return space.apply(images, op_index, magnitude, apply_rng, names=names, **options)


def _check_number(name: str, value, low: float, high: float, *, integer: bool = False) -> None:
  """Raises ValueError unless `value` is a (integer, if asked) number in [low, high]."""
  kinds = (int,) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
    kind = "an integer" if integer else "a number"
    raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


def apply_sub_policies(rng: jax.Array, images: jax.Array, op_index: jax.Array, level: jax.Array,
                       probability: jax.Array, *, names: Sequence[str],
                       interpolation: str = "nearest", fill: float | Sequence[float] = 0.0,
                       quantize: bool = True, strategy: str = "auto") -> jax.Array:
  """AutoAugment-style sub-policies with per-image ops, levels and probabilities, traced.

  Image b gets its L ops in order: op `names[op_index[b, l]]` is applied with probability
  `probability[b, l]` at the magnitude of the discrete `level[b, l]` under the AutoAugment
  reference mapping (`space.SpaceEntry.level_to_magnitude`, read from a table of every op
  at every level), with a random sign for the geometric ops. One XLA program for the
  whole batch: the arrays may be traced, so a controller can emit them (REINFORCE) and the
  fixed policies use the same code.

  Args:
    rng: PRNG key.
    images: float32 [B, H, W, C] in [0, 1].
    op_index: int [B, L], indices into `names`.
    level: int [B, L], levels in 0..PARAMETER_MAX (ignored by ops without a magnitude).
    probability: float [B, L] in [0, 1].
    names: the op names (`space.SPACE`), distinct; 'Identity' is added if absent.
    interpolation, fill, quantize: see the module docstring.
    strategy: how `space.apply` runs the non-geometric ops ('auto', 'select', 'switch').

  Returns:
    float32 [B, H, W, C] in [0, 1].
  """
  names = tuple(names)
  if "Identity" not in names:
    names += ("Identity",)
  entries = space.entries(names)
  batch = images.shape[0]
  shapes = {jnp.shape(op_index), jnp.shape(level), jnp.shape(probability)}
  if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] != batch:
    raise ValueError(f"op_index, level and probability must share one shape [B={batch}, L], got "
                     f"{jnp.shape(op_index)}, {jnp.shape(level)}, {jnp.shape(probability)}")
  options = _layer_options(interpolation, fill, quantize) | {"strategy": strategy}
  # [len(names), PARAMETER_MAX + 1]: every op's magnitude at every level, constants
  table = jnp.stack([entry.level_to_magnitude(np.arange(space.PARAMETER_MAX + 1))
                     for entry in entries])
  level = jnp.clip(jnp.asarray(level, jnp.int32), 0, space.PARAMETER_MAX)
  for layer in range(op_index.shape[1]):
    coin_rng, layer_rng = jax.random.split(jax.random.fold_in(rng, layer))
    applied = jax.random.uniform(coin_rng, (batch,)) < probability[:, layer]
    index = jnp.where(applied, op_index[:, layer], names.index("Identity"))
    magnitude = table[op_index[:, layer], level[:, layer]]
    images = _apply_layer(layer_rng, images, index, magnitude, names=names, **options)
  return images


def choose_sub_policies(rng: jax.Array, sub_policies: jax.Array,
                        group: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each image's sub-policy, drawn uniformly from the S sub-policies of its group's policy.

  Args:
    rng: PRNG key.
    sub_policies: int [G, S, L, 2], G policies of S sub-policies of L (op index, level) pairs.
    group: int [B], the policy of each image.

  Returns:
    (op_index int [B, L], level int [B, L]), the arguments of `apply_sub_policies`.
  """
  if jnp.ndim(sub_policies) != 4 or jnp.shape(sub_policies)[-1] != 2:
    raise ValueError(f"sub_policies must be [G, S, L, 2] (op index, level), got shape "
                     f"{jnp.shape(sub_policies)}")
  chosen = jax.random.randint(rng, jnp.shape(group), 0, sub_policies.shape[1])
  pairs = jnp.asarray(sub_policies)[group, chosen]
  return pairs[..., 0], pairs[..., 1]


def pair_ops(operations: np.ndarray, elements: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The ordered pairs of operations that `elements` index (OHL-Auto-Aug's elements).

  Args:
    operations: int [O, 2], (op index, level) of each operation.
    elements: int [...], each e in [0, O^2): the pair (operations[e // O], operations[e % O]).

  Returns:
    (op_index int [..., 2], level int [..., 2]), the arguments of `apply_sub_policies`.
  """
  count = operations.shape[0]
  pairs = jnp.asarray(operations, jnp.int32)[jnp.stack([elements // count, elements % count], -1)]
  return pairs[..., 0], pairs[..., 1]


def autoaugment(policy: str = "cifar10", *, interpolation: str = "nearest",
                fill: float | Sequence[float] = 0.0, quantize: bool = True) -> Sampler:
  """A sampler of the published AutoAugment policy `policy` ('cifar10', 'svhn', 'imagenet').

  Each image gets one of the 25 sub-policies uniformly; each of its two ops is applied
  with its probability, at the magnitude of its level under the reference mapping
  (`space.SpaceEntry.level_to_magnitude`), with a random sign for the geometric ops
  (`apply_sub_policies`).

  Returns:
    `sample(rng, images float32 [B, H, W, C] in [0, 1]) -> images`.
  """
  if policy not in AUTOAUGMENT_POLICIES:
    raise ValueError(f"unknown AutoAugment policy {policy!r}; valid: "
                     f"{', '.join(sorted(AUTOAUGMENT_POLICIES))}")
  sub_policies = AUTOAUGMENT_POLICIES[policy]
  used = {name for sub_policy in sub_policies for name, _, _ in sub_policy} | {"Identity"}
  names = tuple(name for name in space.NAMES if name in used)
  op_index = np.array([[names.index(name) for name, _, _ in sub] for sub in sub_policies])
  probability = np.array([[p for _, p, _ in sub] for sub in sub_policies], np.float32)
  level = np.array([[level or 0 for _, _, level in sub] for sub in sub_policies], np.int32)
  _layer_options(interpolation, fill, quantize)

  def sample(rng: jax.Array, images: jax.Array) -> jax.Array:
    choice_rng, layers_rng = jax.random.split(rng)
    chosen = jax.random.randint(choice_rng, images.shape[:1], 0, len(sub_policies))
    return apply_sub_policies(layers_rng, images, jnp.asarray(op_index)[chosen],
                              jnp.asarray(level)[chosen], jnp.asarray(probability)[chosen],
                              names=names, interpolation=interpolation, fill=fill,
                              quantize=quantize)

  return sample


def randaugment(num_ops: int = 2, magnitude: float = 9, *, interpolation: str = "nearest",
                fill: float | Sequence[float] = 0.0, quantize: bool = True) -> Sampler:
  """A RandAugment(N = `num_ops`, M = `magnitude`) sampler, the paper's version.

  Each of the N layers applies, to every image, an op drawn uniformly (with
  replacement) from the paper's 14 (`RANDAUGMENT_OPS`), always, at magnitude M. M is
  on the paper's 10-level scale, mapped to each op's magnitude by the AutoAugment
  reference (`space`; PARAMETER_MAX = 10, translate M/32 of the image); geometric ops
  get a random sign. (torchvision instead uses 31 levels and its own ranges.)

  Args:
    num_ops: N >= 0.
    magnitude: M in [0, 10], may be fractional.

  Returns:
    `sample(rng, images float32 [B, H, W, C] in [0, 1]) -> images`.
  """
  _check_number("num_ops", num_ops, 0, math.inf, integer=True)
  _check_number("magnitude", magnitude, 0, space.PARAMETER_MAX)
  options = _layer_options(interpolation, fill, quantize)

  def sample(rng: jax.Array, images: jax.Array) -> jax.Array:
    table = jnp.stack([space.SPACE.get(name).level_to_magnitude(magnitude)
                       for name in RANDAUGMENT_OPS])
    for layer in range(num_ops):
      op_rng, layer_rng = jax.random.split(jax.random.fold_in(rng, layer))
      index = jax.random.randint(op_rng, images.shape[:1], 0, len(RANDAUGMENT_OPS))
      images = _apply_layer(layer_rng, images, index, table[index], names=RANDAUGMENT_OPS,
                            **options)
    return images

  return sample


def trivial_augment_wide(*, interpolation: str = "nearest", fill: float | Sequence[float] = 0.0,
                         quantize: bool = True) -> Sampler:
  """A TrivialAugment (wide) sampler: one op per image, uniform op and uniform magnitude bin.

  The op is uniform over `TRIVIAL_AUGMENT_WIDE`, the bin uniform over 0..30, the
  magnitude linear in the bin between the table's ends; signed ops are reflected about
  their identity with probability 1/2. Translations of 32 pixels whatever the image size.

  Returns:
    `sample(rng, images float32 [B, H, W, C] in [0, 1]) -> images`.
  """
  names = tuple(TRIVIAL_AUGMENT_WIDE)
  start, stop, signed = (np.array(column) for column in zip(*TRIVIAL_AUGMENT_WIDE.values()))
  options = _layer_options(interpolation, fill, quantize)

  def sample(rng: jax.Array, images: jax.Array) -> jax.Array:
    _, height, width, _ = images.shape
    pixels = np.array([{"TranslateX": width, "TranslateY": height}.get(name, 1) for name in names])
    op_rng, bin_rng, layer_rng = jax.random.split(rng, 3)
    index = jax.random.randint(op_rng, images.shape[:1], 0, len(names))
    level = jax.random.randint(bin_rng, images.shape[:1], 0, TRIVIAL_AUGMENT_BINS)
    last = TRIVIAL_AUGMENT_BINS - 1
    # Interpolated as (start (last - level) + stop level) / last: exact where the result is
    # an integer (Solarize's thresholds), so 8-bit comparisons match torchvision's.
    magnitude = (jnp.asarray(start, jnp.float32)[index] * (last - level)
                 + jnp.asarray(stop, jnp.float32)[index] * level) / last
    # torchvision shifts by int(magnitude) pixels.
    is_translation = jnp.asarray(pixels > 1)[index]
    magnitude = jnp.where(is_translation, jnp.trunc(magnitude), magnitude)
    magnitude = magnitude / jnp.asarray(pixels, jnp.float32)[index]
    return _apply_layer(layer_rng, images, index, magnitude, names=names, signed=tuple(signed),
                        **options)

  return sample


def pba_augment(
    rng: jax.Array,
    images: jax.Array,
    probability: jax.Array,
    magnitude: jax.Array,
    *,
    names: Sequence[str] = PBA_ENTRIES,
    count_probabilities: Sequence[float] = PBA_COUNT_PROBABILITIES,
    interpolation: str = "nearest",
    fill: float | Sequence[float] = 0.0,
    quantize: bool = True,
) -> jax.Array:
  """The PBA augmentation function (Ho et al., 2019, algorithm 1), also HBA's.

  Per image: draw a count n from `count_probabilities` (P(n = k) = count_probabilities[k]),
  shuffle the K entries, walk through them applying each with its probability, and
  stop once n have been applied (or the entries run out). Signed ops (`space`) get a
  random sign.

  Args:
    rng: PRNG key.
    images: float32 [B, H, W, C] in [0, 1].
    probability: float [K] or [B, K] (or a scalar), each entry's probability of being applied.
    magnitude: float [K] or [B, K] (or a scalar), each entry's unsigned magnitude in its op's unit
      (`space.SPACE[name].level_to_magnitude(level)` for PBA's discrete levels).
    names: the K entries' `space` names, repeats allowed (PBA holds each op twice).
    count_probabilities: probabilities of applying 0, 1, 2, ... ops; static.
    interpolation, fill, quantize: see the module docstring.
    strategy: how `space.apply` runs the non-geometric ops ('auto', 'select', 'switch').

  Returns:
    float32 [B, H, W, C] in [0, 1].
  """
  names = tuple(names)
  counts = np.asarray(count_probabilities, np.float64)
  if counts.ndim != 1 or counts.size < 1 or np.any(counts < 0) or abs(counts.sum() - 1) > 1e-6:
    raise ValueError(f"count_probabilities must be probabilities summing to 1, "
                     f"got {count_probabilities}")
  options = _layer_options(interpolation, fill, quantize)
  distinct = tuple(dict.fromkeys(names + ("Identity",)))
  space.entries(distinct)
  batch, entries = images.shape[0], len(names)
  for name, values in (("probability", probability), ("magnitude", magnitude)):
    if jnp.shape(values) not in ((), (entries,), (batch, entries)):
      raise ValueError(f"{name} must be a scalar or have shape ({entries},) or "
                       f"({batch}, {entries}) for "
                       f"{entries} entries and {batch} images, got {jnp.shape(values)}")
  probability = jnp.broadcast_to(jnp.asarray(probability, jnp.float32), (batch, entries))
  magnitude = jnp.broadcast_to(jnp.asarray(magnitude, jnp.float32), (batch, entries))
  op_of_entry = jnp.asarray([distinct.index(name) for name in names])
  count_rng, order_rng, coin_rng, layers_rng = jax.random.split(rng, 4)
  count = jax.random.choice(count_rng, counts.size, (batch,), p=jnp.asarray(counts, jnp.float32))
  order = jnp.argsort(jax.random.uniform(order_rng, (batch, entries)), axis=1)
  applied = (jax.random.uniform(coin_rng, (batch, entries))
             < jnp.take_along_axis(probability, order, axis=1))
  applied_so_far = jnp.cumsum(applied, axis=1)
  for layer in range(counts.size - 1):
    # The (layer + 1)-th applied entry in the shuffled order, if the count reaches it.
    is_next = applied & (applied_so_far == layer + 1)
    entry = jnp.take_along_axis(order, jnp.argmax(is_next, axis=1)[:, None], axis=1)[:, 0]
    active = jnp.any(is_next, axis=1) & (count > layer)
    index = jnp.where(active, op_of_entry[entry], distinct.index("Identity"))
    entry_magnitude = jnp.take_along_axis(magnitude, entry[:, None], axis=1)[:, 0]
    images = _apply_layer(jax.random.fold_in(layers_rng, layer), images, index, entry_magnitude,
                          names=distinct, **options)
  return images


def cutout(size: float = 16, *, fill: float | Sequence[float] = 0.5,
           quantize: bool = True) -> Sampler:
  """A Cutout sampler (DeVries & Taylor, 2017): a `size` x `size` pixel square per image.

  The centre is uniform over the pixels; the square is clipped by the image border.
  The papers use 16 on CIFAR and 20 on SVHN. (The references fill with the dataset mean,
  0 after standardisation; `fill` is in [0, 1] image units.)

  Returns:
    `sample(rng, images float32 [B, H, W, C] in [0, 1]) -> images`.
  """
  _check_number("size", size, 0, math.inf)

  def sample(rng: jax.Array, images: jax.Array) -> jax.Array:
    batch, height = images.shape[:2]
    return ops.cutout(images, jnp.full((batch,), size / height),
                      centers_yx=space.random_cutout_centers(rng, images), fill=fill,
                      quantize=quantize)

  return sample


def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.0, *, quantize: bool = True) -> Sampler:
  """A colour-jitter sampler (torchvision ColorJitter's ranges, in a fixed order).

  Brightness, contrast and saturation factors are uniform in [max(0, 1 - x), 1 + x]
  (PIL's Brightness, Contrast and Color enhance ops), the hue shift uniform in
  [-hue, hue] turns (`transforms.adjust_hue`, needs RGB); applied in this order. A 0
  disables its jitter.

  Returns:
    `sample(rng, images float32 [B, H, W, C] in [0, 1]) -> images`.
  """
  for name, value in (("brightness", brightness), ("contrast", contrast),
                      ("saturation", saturation)):
    _check_number(name, value, 0, math.inf)
  _check_number("hue", hue, 0, 0.5)
  enhance = ((ops.brightness, brightness), (ops.contrast, contrast), (ops.color, saturation))

  def sample(rng: jax.Array, images: jax.Array) -> jax.Array:
    batch = images.shape[0]
    for index, (op, amount) in enumerate(enhance):
      if amount:
        factor = jax.random.uniform(jax.random.fold_in(rng, index), (batch,),
                                    minval=max(0.0, 1.0 - amount), maxval=1.0 + amount)
        images = op(images, factor, quantize=quantize)
    if hue:
      shift = jax.random.uniform(jax.random.fold_in(rng, len(enhance)), (batch,),
                                 minval=-hue, maxval=hue)
      images = transforms.adjust_hue(images, shift)
    return images

  return sample


def pba(probability: float = 0.5, level: float = 5, *, interpolation: str = "nearest",
        fill: float | Sequence[float] = 0.0, quantize: bool = True) -> Sampler:
  """The PBA augmentation function with one probability and level for all 30 entries.

  A fixed, selectable form of `pba_augment` (e.g. the spec `"pba(0.3, 5)"`): every entry
  of `PBA_ENTRIES` is applied with `probability`, at `level` on the AutoAugment
  reference's 10-level scale (`space`), until the drawn count of ops is reached. PBA's
  learned schedules and HBA set per-entry values through `pba_augment` instead.

  Args:
    probability: in [0, 1].
    level: in [0, 10], may be fractional.

  Returns:
    `sample(rng, images float32 [B, H, W, C] in [0, 1]) -> images`.
  """
  _check_number("probability", probability, 0, 1)
  _check_number("level", level, 0, space.PARAMETER_MAX)
  magnitudes = np.array([float(space.SPACE.get(name).level_to_magnitude(jnp.float32(level)))
                         for name in PBA_ENTRIES], np.float32)

  def sample(rng: jax.Array, images: jax.Array) -> jax.Array:
    return pba_augment(rng, images, jnp.full(len(PBA_ENTRIES), probability, jnp.float32),
                       magnitudes, interpolation=interpolation, fill=fill, quantize=quantize)

  return sample
