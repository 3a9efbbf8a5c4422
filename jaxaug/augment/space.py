"""The AutoAugment / HBA search space: ops by AutoAugment name, ranges, levels, dispatcher.

`SPACE` maps each AutoAugment operation name to a `SpaceEntry`: the op of
`jaxaug.augment.ops` it runs, its magnitude range and unit (HBA, table 7; the
AutoAugment paper's table 1 for SamplePairing), whether samplers flip the sign of
its magnitude at random, and the AutoAugment reference mapping of a discrete level
to the op's magnitude.

Reference levels. The policies of AutoAugment (and PBA, which reuses its code) were
searched with tensorflow/models research/autoaugment `augmentation_transforms.py`,
where a level lies in [0, PARAMETER_MAX = 10] (policies use 0..9) and is scaled
linearly, `level * maxval / 10`, truncated to an integer for some ops. Its quirks,
followed here:
- Posterize keeps 4 - int(level * 4 / 10) bits: 4 bits at level 0 down to 1 bit at
  level 9 (the paper's table says [4, 8] bits; torchvision maps levels to 8..4 bits).
- Solarize uses the threshold 256 - int(level * 256 / 10): level 0 is the identity.
- Translate moves by int(level) pixels of the reference's 32 x 32 images; here that
  is the fraction int(level) / 32 of the image size, so it scales with the image.
- Rotate uses int(level * 3) degrees; shear level * 0.03; the enhance ops the factor
  0.1 + level * 0.18 (never flipped: below 1 and above 1 are both reachable).
- Cutout has side int(level * 2) pixels of 32, as a fraction of the height.
- Geometric ops get a random sign (done by the samplers, `random_sign`).
- AutoContrast, Invert, Equalize, the flips ignore the level: strength 1 (PIL's op).
SamplePairing is not in the reference code; its level is scaled to the paper's
[0, 0.4] like the other float parameters.

Not followed: the reference warps RGBA images whose transparent fill becomes the
dataset mean after its un-normalisation, and its Cutout paints the same mean; here
the fill is an argument (`fill`, `cutout_fill`).

`apply` is the batched dispatcher: a different op and magnitude per image in one XLA
program with no Python branching on data. The geometric ops of the batch are merged
into one `affine_warp` (one matrix per image, the identity for the others); the other
ops are either all computed on the whole batch and selected per image with
`jnp.where` (accelerators), or run image by image under `lax.switch` (CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxaug.augment import geometry
from jaxaug.augment import ops
from jaxaug.registry import Registry

PARAMETER_MAX = 10        # levels lie in [0, PARAMETER_MAX] (AutoAugment reference)
REFERENCE_IMAGE_SIZE = 32  # the reference's translate and cutout are pixels of 32 x 32 images

# The canonical order of the entries; `apply`'s default `names`.
NAMES = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Invert",
         "Equalize", "Solarize", "Posterize", "Contrast", "Color", "Brightness", "Sharpness",
         "Cutout", "SamplePairing", "Identity", "FlipLR", "FlipUD")


@dataclasses.dataclass(frozen=True)
class SpaceEntry:
  """One operation of the search space.

  Attributes:
    op: the name of the op in `ops.OPS`.
    magnitude_range: (low, high) in the op's unit (HBA table 7), or None for ops
      without a magnitude (these run at strength 1).
    unit: the unit of the magnitude, in words.
    signed: whether samplers flip the magnitude about the op's identity at random
      (probability 1/2), as the reference does for the geometric ops.
    level_to_magnitude: the reference map of levels (float array, any shape, in
      [0, PARAMETER_MAX]) to unsigned magnitudes (float32, same shape).
  """

  op: str
  magnitude_range: tuple[float, float] | None
  unit: str
  signed: bool
  level_to_magnitude: Callable[[jax.Array], jax.Array]

  @property
  def info(self) -> ops.OpInfo:
    """The op's `ops.OpInfo` (function, differentiability, identity magnitude)."""
    return ops.OPS.get(self.op)

  @property
  def identity(self) -> float:
    """The magnitude that leaves an image unchanged (0 for `identity`, which ignores it)."""
    identity = self.info.identity
    return 0.0 if identity is None else identity


SPACE: Registry[SpaceEntry] = Registry("search-space op")


def _float_parameter(level: jax.Array, maxval: float) -> jax.Array:
  """The reference's `float_parameter`: level * maxval / PARAMETER_MAX, float32."""
  return jnp.asarray(level, jnp.float32) * maxval / PARAMETER_MAX


def _int_parameter(level: jax.Array, maxval: float) -> jax.Array:
  """The reference's `int_parameter`: level * maxval / PARAMETER_MAX truncated, float32."""
  return jnp.trunc(_float_parameter(level, maxval))


def _constant(value: float) -> Callable[[jax.Array], jax.Array]:
  """A level map that ignores the level and returns `value` (float32, the level's shape)."""
  return lambda level: jnp.full(jnp.shape(level), value, jnp.float32)


def _register(name: str, op: str, magnitude_range: tuple[float, float] | None, unit: str,
              signed: bool, level_to_magnitude: Callable[[jax.Array], jax.Array]) -> None:
  """Adds the entry `name` to `SPACE`."""
  SPACE.register(name)(SpaceEntry(op, magnitude_range, unit, signed, level_to_magnitude))


_FULL_STRENGTH = "blend strength in [0, 1], runs at 1 (PIL's op)"
_register("ShearX", "shear_x", (0.0, 0.3), "shear factor", True,
          lambda level: _float_parameter(level, 0.3))
_register("ShearY", "shear_y", (0.0, 0.3), "shear factor", True,
          lambda level: _float_parameter(level, 0.3))
_register("TranslateX", "translate_x", (0.0, 0.45), "fraction of the image width", True,
          lambda level: _int_parameter(level, 10) / REFERENCE_IMAGE_SIZE)
_register("TranslateY", "translate_y", (0.0, 0.45), "fraction of the image height", True,
          lambda level: _int_parameter(level, 10) / REFERENCE_IMAGE_SIZE)
_register("Rotate", "rotate", (0.0, 30.0), "degrees counter-clockwise", True,
          lambda level: _int_parameter(level, 30))
_register("AutoContrast", "auto_contrast", None, _FULL_STRENGTH, False, _constant(1.0))
_register("Invert", "invert", None, _FULL_STRENGTH, False, _constant(1.0))
_register("Equalize", "equalize", None, _FULL_STRENGTH, False, _constant(1.0))
_register("Solarize", "solarize", (0.0, 255.0), "threshold in uint8 levels", False,
          lambda level: 256 - _int_parameter(level, 256))
_register("Posterize", "posterize", (0.0, 8.0), "bits kept", False,
          lambda level: 4 - _int_parameter(level, 4))
for _name in ("Contrast", "Color", "Brightness", "Sharpness"):
  _register(_name, _name.lower(), (0.1, 1.9), "enhance factor", False,
            lambda level: _float_parameter(level, 1.8) + 0.1)
del _name
_register("Cutout", "cutout", (0.0, 0.2), "square side, fraction of the image height", False,
          lambda level: _int_parameter(level, 20) / REFERENCE_IMAGE_SIZE)
_register("SamplePairing", "sample_pairing", (0.0, 0.4), "weight of the partner image", False,
          lambda level: _float_parameter(level, 0.4))
_register("Identity", "identity", None, "ignored", False, _constant(0.0))
_register("FlipLR", "flip_left_right", None, _FULL_STRENGTH, False, _constant(1.0))
_register("FlipUD", "flip_up_down", None, _FULL_STRENGTH, False, _constant(1.0))


def to_unbounded(value: jax.Array, low: jax.Array | float, high: jax.Array | float) -> jax.Array:
  """The logit parametrisation of a value in [low, high] (HBA, after STN).

  logit((value - low) / (high - low)); -inf at `low`, +inf at `high`. Inverse of
  `from_unbounded`. Arrays broadcast together.

  Args:
    value: float array in [low, high].
    low, high: bounds, low < high (scalars or arrays broadcasting with `value`).

  Returns:
    float array, the broadcast shape.
  """
  _check_bounds(low, high)
  return jax.scipy.special.logit((jnp.asarray(value) - low) / (high - low))


def from_unbounded(unbounded: jax.Array, low: jax.Array | float,
                   high: jax.Array | float) -> jax.Array:
  """low + (high - low) sigmoid(unbounded): an unbounded real mapped into (low, high).

  Args:
    unbounded: float array.
    low, high: bounds, low < high (scalars or arrays broadcasting with `unbounded`).

  Returns:
    float array in (low, high), the broadcast shape.
  """
  _check_bounds(low, high)
  return low + (high - low) * jax.nn.sigmoid(jnp.asarray(unbounded))


def _check_bounds(low, high) -> None:
  """Raises ValueError if scalar bounds are not ordered (arrays are not checked)."""
  if isinstance(low, (int, float)) and isinstance(high, (int, float)) and not low < high:
    raise ValueError(f"bounds must satisfy low < high, got low={low}, high={high}")


def entries(names: Sequence[str]) -> list[SpaceEntry]:
  """The entries of `names` (unknown names raise, listing the valid ones); distinct names."""
  names = tuple(names)
  if len(set(names)) != len(names) or not names:
    raise ValueError(f"names must be distinct and non-empty, got {names}")
  return [SPACE.get(name) for name in names]


def random_sign(rng: jax.Array, op_index: jax.Array, magnitude: jax.Array, *,
                names: Sequence[str] = NAMES, signed: Sequence[bool] | None = None) -> jax.Array:
  """Reflects each signed op's magnitude about its identity with probability 1/2.

  m -> 2 i - m where i is the op's identity magnitude: -m for the geometric ops
  (identity 0), 2 - m for enhance factors (identity 1; TrivialAugment signs these).

  Args:
    rng: PRNG key.
    op_index: int [B], index into `names` of each image's op.
    magnitude: float [B], unsigned magnitudes in the ops' units.
    names: the op names `op_index` refers to (distinct `SPACE` names).
    signed: one bool per name; None takes each entry's `signed`.

  Returns:
    float [B].
  """
  table = entries(names)
  signed = [entry.signed for entry in table] if signed is None else list(signed)
  if len(signed) != len(table):
    raise ValueError(f"signed must have one entry per name ({len(table)}), got {len(signed)}")
  magnitude = jnp.asarray(magnitude, jnp.float32)
  flip = (jax.random.bernoulli(rng, 0.5, jnp.shape(op_index))
          & jnp.asarray(signed, bool)[op_index])
  identity = jnp.asarray([entry.identity for entry in table], jnp.float32)[op_index]
  return jnp.where(flip, 2 * identity - magnitude, magnitude)


def random_cutout_centers(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Cutout centres uniform over the pixels (the reference's draw): float32 [B, 2] (row, col)."""
  batch, height, width, _ = images.shape
  return jax.random.randint(rng, (batch, 2), 0, jnp.array([height, width])).astype(jnp.float32)


def random_partners(rng: jax.Array, images: jax.Array) -> jax.Array:
  """A SamplePairing partner for each image, drawn uniformly from the batch: [B, H, W, C]."""
  batch = images.shape[0]
  return images[jax.random.randint(rng, (batch,), 0, batch)]


# A branch of the dispatcher: (images [n,H,W,C], magnitude [n], per-image extras) -> images.
Branch = Callable[[jax.Array, jax.Array, dict[str, jax.Array]], jax.Array]
STRATEGIES = ("auto", "select", "switch")


def _unchanged(images: jax.Array, magnitude: jax.Array, extras: dict[str, jax.Array]) -> jax.Array:
  """The identity branch."""
  del magnitude, extras
  return images


def _op_branch(entry: SpaceEntry, *, quantize: bool, cutout_fill: float | jax.Array) -> Branch:
  """The branch running `entry`'s non-geometric op; Cutout and SamplePairing read extras."""
  if entry.op == "cutout":
    return lambda images, magnitude, extras: ops.cutout(
        images, magnitude, centers_yx=extras["centers_yx"], fill=cutout_fill, quantize=quantize)
  if entry.op == "sample_pairing":
    return lambda images, magnitude, extras: ops.sample_pairing(
        images, magnitude, partners=extras["partners"], quantize=quantize)
  return lambda images, magnitude, extras: entry.info.fn(images, magnitude, quantize=quantize)


def _select(images: jax.Array, chosen: jax.Array, magnitude: jax.Array,
            extras: dict[str, jax.Array], branches: list[tuple[Branch, float]]) -> jax.Array:
  """Every branch on the whole batch, each image's result picked with `jnp.where`.

  A branch sees its identity magnitude on the images it does not own.
  """
  out = images
  for index, (branch, identity) in enumerate(branches):
    if branch is _unchanged:
      continue
    owned = chosen == index
    result = branch(images, jnp.where(owned, magnitude, identity), extras)
    out = jnp.where(owned[:, None, None, None], result, out)
  return out


def _switch(images: jax.Array, chosen: jax.Array, magnitude: jax.Array,
            extras: dict[str, jax.Array], branches: list[tuple[Branch, float]]) -> jax.Array:
  """A loop over the images, each running only its own branch (`lax.switch`)."""
  on_one_image = [
      lambda image, m, extra, branch=branch: branch(
          image[None], m[None], jax.tree.map(lambda v: v[None], extra))[0]
      for branch, _ in branches]
  return jax.lax.map(lambda args: jax.lax.switch(args[0], on_one_image, *args[1:]),
                     (chosen, images, magnitude, extras))


def apply(
    images: jax.Array,
    op_index: jax.Array,
    magnitude: jax.Array,
    rng: jax.Array | None = None,
    *,
    names: Sequence[str] = NAMES,
    interpolation: str = "nearest",
    fill: float | jax.Array = 0.0,
    cutout_fill: float | jax.Array = 0.5,
    quantize: bool = True,
    strategy: str = "auto",
) -> jax.Array:
  """Applies op `names[op_index[b]]` with `magnitude[b]` to each image b, in one XLA program.

  Equals `ops.<op>(images[b:b+1], magnitude[b:b+1], ...)` image by image. The
  geometric ops are merged into one `affine_warp` (a matrix per image). Only the ops
  in `names` are compiled, so a sampler passes the names it can draw. An index
  outside [0, len(names)) leaves its image unchanged.

  Strategies (static; the results agree, up to the one-level float32 rounding of
  blends and bilinear sums that `ops` documents, as XLA fuses differently):
  - 'select': every op on the whole batch, each image's result picked with
    `jnp.where`; each op sees its identity magnitude on the images it does not own,
    so gradients stay finite. Wide, branch-free: for GPUs and TPUs.
  - 'switch': `lax.map` over the images, each running only its own op
    (`lax.switch`). About 7x faster on a CPU for 14 ops. Under `vmap` the switch
    becomes a select of every op per image, slower than 'select'.
  - 'auto': 'switch' when the default backend is the CPU, else 'select'.

  Args:
    images: float [B, H, W, C] in [0, 1].
    op_index: int [B], index into `names`.
    magnitude: float [B], signed magnitudes in each op's unit (`SPACE` entries).
    rng: PRNG key, needed only if `names` has 'Cutout' or 'SamplePairing': the centres
      are `random_cutout_centers(fold_in(rng, 0), images)`, the partners
      `random_partners(fold_in(rng, 1), images)`.
    names: distinct `SPACE` names, static.
    interpolation: 'nearest' (PIL, the reference) or 'bilinear' for the geometric ops.
    fill: value in [0, 1] (scalar or [C]) of pixels warped in from outside the image.
    cutout_fill: value in [0, 1] (scalar or [C]) of the Cutout square.
    quantize: 8-bit semantics (see `ops`).
    strategy: 'auto', 'select' or 'switch'.

  Returns:
    float [B, H, W, C] in [0, 1].
  """
  table = entries(names)
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
  if strategy == "auto":
    strategy = "switch" if jax.default_backend() == "cpu" else "select"
  geometry.SAMPLERS.get(interpolation)
  images = jnp.asarray(images)
  geometry._check_images(images)  # pylint: disable=protected-access
  op_index = jnp.asarray(op_index)
  magnitude = jnp.asarray(magnitude, images.dtype)
  geometry._check_per_image(op_index, images, "op_index")  # pylint: disable=protected-access
  geometry._check_per_image(magnitude, images, "magnitude")  # pylint: disable=protected-access
  if not jnp.issubdtype(op_index.dtype, jnp.integer):
    raise ValueError(f"op_index must be an integer array, got {op_index.dtype}")
  ops_used = {entry.op for entry in table}
  if ops_used & {"cutout", "sample_pairing"} and rng is None:
    raise ValueError(f"apply needs an rng for {sorted(ops_used & {'cutout', 'sample_pairing'})}")

  extras = {}
  if "cutout" in ops_used:
    extras["centers_yx"] = random_cutout_centers(jax.random.fold_in(rng, 0), images)
  if "sample_pairing" in ops_used:
    extras["partners"] = random_partners(jax.random.fold_in(rng, 1), images)
  _, height, width, _ = images.shape
  geometric = [index for index, entry in enumerate(table) if entry.op in ops.GEOMETRIC_MATRICES]
  if geometric:  # one pixel matrix per image: its op's, the identity for the others
    matrices = jnp.broadcast_to(jnp.eye(2, 3, dtype=images.dtype), (images.shape[0], 2, 3))
    for index in geometric:
      own = ops.GEOMETRIC_MATRICES[table[index].op](magnitude, height, width)
      matrices = jnp.where((op_index == index)[:, None, None], own, matrices)
    extras["matrices"] = matrices

  # Branch 0 leaves an image unchanged (Identity, unknown indices); the geometric ops share
  # one warp branch; every other op has its own.
  warp = lambda images, magnitude, extras: ops.warp(
      images, extras["matrices"], interpolation=interpolation, fill=fill, quantize=quantize)
  branches: list[tuple[Branch, float]] = [(_unchanged, 0.0)] + [(warp, 0.0)] * bool(geometric)
  branch_of_op = []
  for entry in table:
    if entry.op == "identity":
      branch_of_op.append(0)
    elif entry.op in ops.GEOMETRIC_MATRICES:
      branch_of_op.append(1)
    else:
      branch_of_op.append(len(branches))
      branches.append((_op_branch(entry, quantize=quantize, cutout_fill=cutout_fill),
                       entry.identity))
  known = (op_index >= 0) & (op_index < len(table))
  chosen = jnp.where(known, jnp.asarray(branch_of_op)[jnp.clip(op_index, 0, len(table) - 1)], 0)
  combine = _switch if strategy == "switch" else _select
  return combine(images, chosen, magnitude, extras, branches)
