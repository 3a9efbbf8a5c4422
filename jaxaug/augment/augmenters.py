"""Learnable augmenter networks of DABO (Mounsaveng et al., WACV 2021, sections 3.2 and 4.2).

An augmenter maps a noise vector, drawn per image, through an MLP to transformation
parameters; the transformations are not conditioned on the image. Every output
passes through tanh and is scaled by a configurable maximum around the identity:

  params = identity + maxima * tanh(mlp(noise))

Kinds and their parameters, in output order (translations and the affine matrix use
torch's `affine_grid` normalised convention, see `geometry.normalized_to_pixel`: the
output point (u, v) in [-1, 1]^2 samples the input at A (u, v) + t):

- translation (2): translation_x, translation_y = t, each in [-max_translation,
  max_translation] (fractions of the half-size; 0.25 is 4 px on 32 px).
- affine (6): theta = [[linear_xx, linear_xy, translation_x], [linear_yx, linear_yy,
  translation_y]], A = I + max_linear * tanh(.), t as for translation.
- color (4): brightness delta (0 +- max_brightness), contrast factor (1 +- max_contrast),
  saturation factor (1 +- max_saturation), hue delta in turns (0 +- max_hue); see
  `jaxaug.augment.transforms`.
- affine_color (10): the 6 affine parameters, then the 4 colour parameters.

Sizes (section 4.2; n = number of parameters): small, noise n -> n -> 10 n -> n;
medium, noise 100 -> 64 -> 32 -> n; large, noise 100 -> 512 -> 1024 -> 124 -> 512 -> n.
Hidden layers use leaky ReLU (slope 0.2) and He-normal weights (zero biases), so the
activations keep the unit second moment of the N(0, 1) noise; the output layer has zero
bias and He-normal weights scaled by init_scale, so at initialisation the raw (pre-tanh)
outputs have a standard deviation of about init_scale (default 0.1) across noise draws:
near the identity, but not at it, so gradients reach every layer.

A `symmetric` augmenter uses the odd part of the MLP, `(mlp(z) - mlp(-z)) / 2`, as
the raw output. The noise is symmetric, so each deviation from the identity is then
as likely as its opposite. The learned distribution stays centred on the identity
(the mean of every parameter is its identity value) and cannot become a
constant shift, zoom or colour cast that training images would have and test images
would not; it learns the spread and its correlations. This costs a second MLP pass.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxaug.augment import geometry
from jaxaug.augment import transforms
from jaxaug.registry import Registry

LEAKY_RELU_SLOPE = 0.2


@dataclasses.dataclass(frozen=True)
class AugmenterKind:
  """What an augmenter kind outputs and how the output transforms images.

  Attributes:
    param_names: names of the parameters, in output order.
    identity: value of each parameter that leaves images unchanged.
    bound_names: for each parameter, the `create_augmenter` keyword holding its maximum
      deviation from the identity.
    apply: (images float [B,H,W,C], params float [B, n]) -> augmented images [B,H,W,C].
  """

  param_names: tuple[str, ...]
  identity: tuple[float, ...]
  bound_names: tuple[str, ...]
  apply: Callable[[jax.Array, jax.Array], jax.Array]

  @property
  def n_params(self) -> int:
    return len(self.param_names)


AUGMENTERS: Registry[AugmenterKind] = Registry("augmenter")
# Size name -> function from the number of parameters n to (noise dimension, hidden widths).
AUGMENTER_SIZES: Registry[Callable[[int], tuple[int, tuple[int, ...]]]] = Registry("augmenter size")

AUGMENTER_SIZES.register("small")(lambda n: (n, (n, 10 * n)))
AUGMENTER_SIZES.register("medium")(lambda n: (100, (64, 32)))
AUGMENTER_SIZES.register("large")(lambda n: (100, (512, 1024, 124, 512)))

# Upper limits that keep each transformation meaningful: hue is periodic with period 1;
# contrast / saturation factors must stay >= 0; a brightness delta beyond 1 saturates every
# pixel; with each entry of A - I below 0.5 in size, det A > (1 - m)^2 - m^2 >= 0, so the
# warp can neither collapse nor mirror the image.
_BOUND_LIMITS = {"max_hue": 0.5, "max_contrast": 1.0, "max_saturation": 1.0,
                 "max_brightness": 1.0, "max_linear": 0.5}


def _warp_normalized(images: jax.Array, theta: jax.Array) -> jax.Array:
  """Bilinear, zero-filled warp by normalised matrices theta [B, 2, 3] (torch grid_sample)."""
  height, width = images.shape[1:3]
  return geometry.affine_warp(images, geometry.normalized_to_pixel(theta, height, width))


def _apply_translation(images: jax.Array, params: jax.Array) -> jax.Array:
  """Translates by params [B, 2] = (t_x, t_y), normalised units."""
  linear = jnp.broadcast_to(jnp.eye(2, dtype=params.dtype), (params.shape[0], 2, 2))
  return _warp_normalized(images, jnp.concatenate([linear, params[:, :, None]], axis=2))


def _apply_affine(images: jax.Array, params: jax.Array) -> jax.Array:
  """Warps by params [B, 6], the row-major normalised matrices theta [B, 2, 3]."""
  return _warp_normalized(images, params.reshape(-1, 2, 3))


def _apply_color(images: jax.Array, params: jax.Array) -> jax.Array:
  """Brightness, contrast, saturation, then hue, by params [B, 4] in that order."""
  images = transforms.adjust_brightness(images, params[:, 0])
  images = transforms.adjust_contrast(images, params[:, 1])
  images = transforms.adjust_saturation(images, params[:, 2])
  return transforms.adjust_hue(images, params[:, 3])


def _apply_affine_color(images: jax.Array, params: jax.Array) -> jax.Array:
  """The affine warp by params[:, :6], then colour by params[:, 6:], times the warped coverage.

  Warping first means the hypergradient never needs the warp's gradient with respect to
  its input image (a scatter-add; measured here to triple the augmenter's cost). The
  coverage (a channel of ones warped alongside) keeps pixels from outside the image
  black whatever the colour change, as colour-then-warp would; the orders differ only
  in the one-pixel fringe of partial coverage and in contrast's mean, which includes
  the black fill.
  """
  ones = jnp.ones_like(images[..., :1])
  warped = _apply_affine(jnp.concatenate([images, ones], axis=-1), params[:, :6])
  return _apply_color(warped[..., :-1], params[:, 6:]) * warped[..., -1:]


_TRANSLATION = (("translation_x", "translation_y"), (0.0, 0.0), ("max_translation",) * 2)
_AFFINE = (
    ("linear_xx", "linear_xy", "translation_x", "linear_yx", "linear_yy", "translation_y"),
    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    ("max_linear", "max_linear", "max_translation", "max_linear", "max_linear", "max_translation"),
)
_COLOR = (
    ("brightness", "contrast", "saturation", "hue"),
    (0.0, 1.0, 1.0, 0.0),
    ("max_brightness", "max_contrast", "max_saturation", "max_hue"),
)

AUGMENTERS.register("translation")(AugmenterKind(*_TRANSLATION, _apply_translation))
AUGMENTERS.register("affine")(AugmenterKind(*_AFFINE, _apply_affine))
AUGMENTERS.register("color")(AugmenterKind(*_COLOR, _apply_color))
AUGMENTERS.register("affine_color")(AugmenterKind(
    *(a + c for a, c in zip(_AFFINE, _COLOR)), _apply_affine_color))


class Augmenter(nnx.Module):
  """MLP from noise [B, noise_dim] to bounded transformation parameters [B, n_params].

  Attributes:
    kind: the augmenter kind's registry name (see the module docstring).
    noise_dim: size of the N(0, 1) noise vector drawn per image.
    n_params: number of transformation parameters.
  """

  def __init__(
      self,
      kind: str,
      noise_dim: int,
      hidden_sizes: tuple[int, ...],
      maxima: tuple[float, ...],
      *,
      init_scale: float,
      symmetric: bool = False,
      rngs: nnx.Rngs,
  ):
    """Builds the MLP; `maxima` [n_params] are the deviations allowed around the kind's identity."""
    self.kind = kind
    self.symmetric = symmetric
    self.noise_dim = noise_dim
    self.n_params = AUGMENTERS.get(kind).n_params
    if len(maxima) != self.n_params:
      raise ValueError(f"{kind} needs {self.n_params} maxima, got {maxima}")
    self.maxima = tuple(float(m) for m in maxima)
    widths = (noise_dim, *hidden_sizes)
    # He gain for leaky ReLU: keeps the second moment of the activations at that of the noise.
    gain = 2 / (1 + LEAKY_RELU_SLOPE**2)
    self.hidden = nnx.List([
        nnx.Linear(fan_in, fan_out, rngs=rngs,
                   kernel_init=nnx.initializers.variance_scaling(gain, "fan_in", "normal"))
        for fan_in, fan_out in zip(widths[:-1], widths[1:])
    ])
    self.output = nnx.Linear(
        widths[-1], self.n_params, rngs=rngs,
        kernel_init=nnx.initializers.variance_scaling(gain * init_scale**2, "fan_in", "normal"),
        bias_init=nnx.initializers.zeros_init())

  def _mlp(self, noise: jax.Array) -> jax.Array:
    hidden = noise
    for layer in self.hidden:
      hidden = jax.nn.leaky_relu(layer(hidden), LEAKY_RELU_SLOPE)
    return self.output(hidden)

  def __call__(self, noise: jax.Array) -> jax.Array:
    """Transformation parameters float [B, n_params] for noise float [B, noise_dim]."""
    if noise.ndim != 2 or noise.shape[1] != self.noise_dim:
      raise ValueError(f"noise must have shape [B, {self.noise_dim}], got {noise.shape}")
    raw = self._mlp(noise)
    if self.symmetric:
      raw = (raw - self._mlp(-noise)) / 2
    identity = jnp.asarray(AUGMENTERS.get(self.kind).identity, raw.dtype)
    return identity + jnp.asarray(self.maxima, raw.dtype) * jnp.tanh(raw)


def create_augmenter(
    kind: str,
    size: str,
    *,
    rngs: nnx.Rngs,
    max_translation: float = 0.25,
    max_linear: float = 0.25,
    max_brightness: float = 0.2,
    max_contrast: float = 0.3,
    max_saturation: float = 0.3,
    max_hue: float = 0.05,
    init_scale: float = 0.1,
    symmetric: bool = False,
) -> Augmenter:
  """Builds the augmenter of a kind and size; see the module docstring for both.

  Every bound is accepted for every kind (so one config can hold them all); a kind uses
  those of its parameters. Pass a config's bounds as `**config.augmenter.bounds`.

  Args:
    kind: 'translation', 'affine', 'color' or 'affine_color'.
    size: 'small', 'medium' or 'large'.
    rngs: initialisation randomness (uses the 'params' stream).
    max_translation: max |t| in normalised units (fraction of half the image size).
    max_linear: max deviation of each entry of the affine linear part from the identity.
    max_brightness: max |brightness delta|, intensity units.
    max_contrast: max |contrast factor - 1|, <= 1.
    max_saturation: max |saturation factor - 1|, <= 1.
    max_hue: max |hue delta|, turns, <= 0.5.
    init_scale: standard deviation of the raw (pre-tanh) outputs at initialisation, > 0.
    symmetric: use the odd part of the MLP, so the parameter distribution is symmetric
      around the identity (see the module docstring).

  Returns:
    An `Augmenter`.
  """
  spec = AUGMENTERS.get(kind)
  noise_dim, hidden_sizes = AUGMENTER_SIZES.get(size)(spec.n_params)
  bounds = dict(max_translation=max_translation, max_linear=max_linear,
                max_brightness=max_brightness, max_contrast=max_contrast,
                max_saturation=max_saturation, max_hue=max_hue)
  for name, value in bounds.items():
    limit = _BOUND_LIMITS.get(name, math.inf)
    if not 0 <= value <= limit:
      raise ValueError(f"{name} must be in [0, {limit}], got {value}")
  if not init_scale > 0:
    raise ValueError(f"init_scale must be > 0, got {init_scale}")
  maxima = tuple(float(bounds[name]) for name in spec.bound_names)
  return Augmenter(kind, noise_dim, hidden_sizes, maxima, init_scale=init_scale,
                   symmetric=symmetric, rngs=rngs)


def create_augmenter_defaults() -> dict[str, float | bool]:
  """`create_augmenter`'s keyword defaults (the `max_*` bounds, `init_scale`, `symmetric`).

  The single source of the defaults that `jaxaug.config` exposes under
  `config.bilevel.augmenter`, so that each can be overridden on the command line.
  """
  parameters = inspect.signature(create_augmenter).parameters.values()
  return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def apply_augmenter_params(kind: str, images: jax.Array, params: jax.Array) -> jax.Array:
  """Applies per-image transformation parameters of an augmenter kind.

  Differentiable in `images` and `params`; geometric kinds sample bilinearly with zero fill.

  Args:
    kind: augmenter kind name.
    images: float [B, H, W, C] in [0, 1] (C == 3 for colour kinds).
    params: float [B, n_params], as output by the kind's `Augmenter`.

  Returns:
    float [B, H, W, C].
  """
  spec = AUGMENTERS.get(kind)
  if params.shape != (images.shape[0], spec.n_params):
    raise ValueError(f"{kind} params must have shape ({images.shape[0]}, {spec.n_params}) for "
                     f"images {images.shape}, got {params.shape}")
  return spec.apply(images, params)


def augment_with(
    augmenter: Augmenter | tuple[nnx.GraphDef, nnx.State],
    images: jax.Array,
    rng: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Draws N(0, 1) noise per image, runs the augmenter and applies its parameters.

  Args:
    augmenter: an `Augmenter`, or its `nnx.split` (graphdef, state), e.g. inside `jax.grad`.
    images: float [B, H, W, C] in [0, 1].
    rng: PRNG key for the noise.

  Returns:
    (augmented images float [B, H, W, C], params float [B, n_params]).
  """
  if isinstance(augmenter, tuple):
    augmenter = nnx.merge(*augmenter)
  noise = jax.random.normal(rng, (images.shape[0], augmenter.noise_dim), images.dtype)
  params = augmenter(noise)
  return apply_augmenter_params(augmenter.kind, images, params), params


def describe_params(kind: str, params: jax.Array, *,
                    image_shape: tuple[int, int] | None = None) -> dict[str, jax.Array]:
  """Named float32 scalar summaries of a batch of parameters, for logging.

  For every parameter `<name>_mean` and `<name>_std` over the batch; for kinds with a
  translation, `translation_norm_mean` (mean Euclidean norm of t, normalised units); for
  kinds with an affine matrix, `linear_deviation_mean` (mean over the batch and the four
  entries of |A - I|). With `image_shape` (height, width), for kinds that move pixels,
  `displacement_px_mean`: how far the transformation moves a pixel, in pixels, averaged
  over the batch and an 8 x 8 grid of points spread over the image (a random crop of
  +-4 px, uniform in whole pixels, moves every pixel by 3.4 px on average). jit-safe.

  Args:
    kind: augmenter kind name.
    params: float [B, n_params].
    image_shape: (height, width) of the images, in pixels.

  Returns:
    dict of name -> float32 scalar.
  """
  spec = AUGMENTERS.get(kind)
  if params.ndim != 2 or params.shape[1] != spec.n_params:
    raise ValueError(f"{kind} params must have shape [B, {spec.n_params}], got {params.shape}")
  params = params.astype(jnp.float32)
  stats = {}
  for index, name in enumerate(spec.param_names):
    stats[f"{name}_mean"] = jnp.mean(params[:, index])
    stats[f"{name}_std"] = jnp.std(params[:, index])
  column = {name: params[:, index] for index, name in enumerate(spec.param_names)}
  if "translation_x" in column:
    norms = jnp.hypot(column["translation_x"], column["translation_y"])
    stats["translation_norm_mean"] = jnp.mean(norms)
  if "linear_xx" in column:
    deviations = [column["linear_xx"] - 1, column["linear_xy"],
                  column["linear_yx"], column["linear_yy"] - 1]
    stats["linear_deviation_mean"] = jnp.mean(jnp.abs(jnp.stack(deviations)))
  if image_shape is not None and "translation_x" in column:
    stats["displacement_px_mean"] = mean_displacement_px(kind, params, image_shape)
  return stats


def mean_displacement_px(kind: str, params: jax.Array, image_shape: tuple[int, int],
                         grid: int = 8) -> jax.Array:
  """Mean distance in pixels between where a pixel is sampled from and where it lands, over
  the batch of parameters [B, n_params] and a `grid` x `grid` lattice of points of the
  image (height, width); the translation (and affine) part of `kind` only."""
  spec = AUGMENTERS.get(kind)
  column = {name: params[:, index] for index, name in enumerate(spec.param_names)}
  zero, one = jnp.zeros_like(column["translation_x"]), jnp.ones_like(column["translation_x"])
  theta = jnp.stack([  # [B, 2, 3], normalised coordinates
      jnp.stack([column.get("linear_xx", one), column.get("linear_xy", zero),
                 column["translation_x"]], -1),
      jnp.stack([column.get("linear_yx", zero), column.get("linear_yy", one),
                 column["translation_y"]], -1)], 1)
  centres = (jnp.arange(grid) + 0.5) / grid * 2 - 1
  points = jnp.stack(jnp.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
  moved = jnp.einsum("bij,pj->bpi", theta[:, :, :2], points) + theta[:, None, :, 2]
  half_size = jnp.asarray([image_shape[1] / 2, image_shape[0] / 2], params.dtype)
  return jnp.mean(jnp.linalg.norm((moved - points) * half_size, axis=-1))


def magnitude_bounds(kind: str, magnitude: float) -> jax.Array:
  """The largest deviation from the identity per parameter of `kind` at `magnitude`, f32 [n]:
  `magnitude` times the augmenter's default bound of each parameter (`create_augmenter`).

  Raises ValueError unless 0 <= magnitude and every scaled bound stays within its limit
  (the range is in the message).
  """
  spec = AUGMENTERS.get(kind)
  defaults = create_augmenter_defaults()
  largest = min(_BOUND_LIMITS.get(name, math.inf) / defaults[name] for name in spec.bound_names)
  if (isinstance(magnitude, bool) or not isinstance(magnitude, (int, float))
      or not 0 <= magnitude <= largest):
    scale = ", ".join(f"{name}={defaults[name]}" for name in dict.fromkeys(spec.bound_names))
    raise ValueError(f"magnitude for kind {kind!r} must be a number in [0, {largest:g}] (at 1 "
                     f"each parameter deviates up to the augmenter's default bound: {scale}), "
                     f"got {magnitude!r}")
  return magnitude * jnp.asarray([defaults[name] for name in spec.bound_names], jnp.float32)


def random_params(rng: jax.Array, kind: str, magnitude: float, batch: int) -> jax.Array:
  """Per-image transformation parameters of `kind`, f32 [batch, n]: each parameter uniform
  in identity +- `magnitude_bounds(kind, magnitude)`, independently."""
  spec = AUGMENTERS.get(kind)
  bounds = magnitude_bounds(kind, magnitude)
  unit = jax.random.uniform(rng, (batch, spec.n_params), jnp.float32, -1.0, 1.0)
  return jnp.asarray(spec.identity, jnp.float32) + bounds * unit


def random_transform(kind: str, magnitude: float = 1.0) -> Callable[[jax.Array, jax.Array],
                                                                     jax.Array]:
  """The validated-magnitude sampler (DABO's Table 1; RandAugment-like): random
  transformations of an augmenter kind whose size one `magnitude` sets.

  Each image gets its own parameters, `random_params(rng, kind, magnitude, B)`, applied as
  the learned augmenter applies its own (`apply_augmenter_params`); magnitude 0 is the
  identity, 1 spans the augmenter's default bounds (e.g. 4 px of translation on 32 px).
  The fixed stage `random_transform('affine', 0.5)` of `jaxaug.augment.fixed`.

  Returns:
    `sample(rng, images f32 [B, H, W, C] in [0, 1]) -> images` (C == 3 for colour kinds).
  """
  magnitude_bounds(kind, magnitude)  # rejects an unknown kind or magnitude now

  def sample(rng: jax.Array, images: jax.Array) -> jax.Array:
    params = random_params(rng, kind, magnitude, images.shape[0]).astype(images.dtype)
    return apply_augmenter_params(kind, images, params)

  return sample
