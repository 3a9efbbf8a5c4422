"""Hyper-layers for Hypernetwork-Based Augmentation (HBA, Chen and Chang, arXiv 2006.06320)
and the graph surgery that puts them into any registered model.

A hyper-layer is conditioned on a per-example vector of hyper-parameters h (float32
[B, D]), in the form of Self-Tuning Networks (MacKay et al. 2019): each output channel o of
a layer with weights W_e gets the weights W_e[o] + (V h)[o] * W_h[o], where W_h has W_e's
shape and V is a bias-free linear map D -> (number of modulated channels):

  HyperConv    y = base(x) + (V h)[:O] * conv(x, W_h)     (+ (V h)[O:] * b_h if base has a bias)
  HyperLinear  y = base(x) + (V h)[:O] * (x @ W_h)        (+ (V h)[O:] * b_h if base has a bias)
  HyperBN      y = base(x) + (V h)[:C] * a_h[:C] * xhat + (V h)[C:] * a_h[C:]
               i.e. per-example [gamma; beta](h) = [scale; bias] + (V h) * a_h.

Initialisation: V = 0, so that at initialisation every hyper-layer equals its base layer
exactly (the extra terms are exact zeros) and a HyperModel equals the plain model. b_h and
a_h start at ones: the gradient of V is proportional to b_h / a_h and the gradient of
b_h / a_h to V h, so if both started at zero neither would ever move. W_h starts random
(conv: He-normal fan-out, the repo's conv init `KAIMING_NORMAL_FAN_OUT`; linear: LeCun
normal, nnx.Linear's default), so V receives a non-zero gradient from the first step.
All these are nnx.Param, trained together with the base weights.

How h reaches the layers: models are called `model(images, *, train)` and know nothing of h.
`HyperModel(images, train=..., hyper=h)` sets a `contextvars.ContextVar` to h for the
duration of the call (`hyper_scope`), and hyper-layers read it. Everything happens at trace
time, so this works under jax.jit / jax.grad / jax.vmap and through nnx.split / nnx.merge.
A hyper-layer called outside `hyper_scope` raises RuntimeError.

Weight-sharing strategies of the HBA paper (`STRATEGIES`) choose which layers become
hyper-layers; `make_hyper_model` applies them to ANY model by graph surgery: the submodule
at each chosen graph path is replaced by a hyper wrapper holding the original as `base`.
"First" means first in CALL order (the layer nearest the input), found by tracing a
forward pass with jax.eval_shape (no compute, no memory) on a copy of the model whose
candidate layers are wrapped in call recorders; nnx.iter_graph's attribute order (sorted
keys: 'blocks' < 'bn' < 'head' < 'stem') does not give it.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxaug.models.cnn import KAIMING_NORMAL_FAN_OUT

# A graph path: attribute names (str) and nnx.List indices (int), as nnx.iter_graph yields.
Path = tuple[Any, ...]

# Which layers become hyper-layers (HBA's weight-sharing strategies, plus "all").
STRATEGIES = ("conv+bn", "conv", "bn", "first_conv", "first_bn", "all")
DEFAULT_STRATEGY = "first_bn"

# strategy -> (layer types made hyper, only the first one in call order?)
_STRATEGY_LAYERS: dict[str, tuple[tuple[type, ...], bool]] = {
    "conv+bn": ((nnx.Conv, nnx.BatchNorm), False),
    "conv": ((nnx.Conv,), False),
    "bn": ((nnx.BatchNorm,), False),
    "first_conv": ((nnx.Conv,), True),
    "first_bn": ((nnx.BatchNorm,), True),
    "all": ((nnx.Conv, nnx.BatchNorm, nnx.Linear), False),
}
_CANDIDATE_TYPES = (nnx.Conv, nnx.BatchNorm, nnx.Linear)

# Batch size of the abstract forward pass that finds the call order.
_TRACE_BATCH = 2

# The per-example hyper-parameters of the HyperModel call in progress (float [B, D]).
_HYPER: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "jaxaug_hyper", default=None
)
# The call-order log of `_call_order`'s abstract forward pass.
_CALL_LOG: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar(
    "jaxaug_hyper_call_log", default=None
)


# ----------------------------------------------------------------------------------------
# Passing h to the layers.
# ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def hyper_scope(hyper: jax.Array) -> Iterator[None]:
  """Makes `hyper` (float [B, D]) the hyper-parameters read by hyper-layers called inside
  the `with` block; the previous value is restored on exit (also on error).

  `HyperModel.__call__` uses it; call it directly only to run hyper-layers on their own.
  The value is read at trace time: enter the scope inside the jitted / differentiated
  function, with the traced `hyper`, not around a call to an already-jitted function.

  Raises:
    ValueError: `hyper` is not a 2-D floating-point array.
  """
  hyper = jnp.asarray(hyper)
  if hyper.ndim != 2 or not jnp.issubdtype(hyper.dtype, jnp.floating):
    raise ValueError(
        f"hyper must be a float array of shape [B, D], got shape {tuple(hyper.shape)} "
        f"and dtype {hyper.dtype}"
    )
  token = _HYPER.set(hyper)
  try:
    yield
  finally:
    _HYPER.reset(token)


def _current_hyper(layer: str, batch: int, hyper_dim: int) -> jax.Array:
  """The hyper-parameters of the enclosing `hyper_scope`, checked to be [batch, hyper_dim]."""
  hyper = _HYPER.get()
  if hyper is None:
    raise RuntimeError(
        f"{layer} called outside a HyperModel call: hyper-layers read the per-example "
        "hyper-parameters that HyperModel(images, train=..., hyper=...) provides. Call the "
        "HyperModel, not the model it wraps (or run the layer inside `hyper_scope(hyper)`)."
    )
  if hyper.shape != (batch, hyper_dim):
    raise ValueError(
        f"{layer} expects hyper of shape [B, D] = [{batch}, {hyper_dim}] (B = the layer "
        f"input's batch size), got {tuple(hyper.shape)}"
    )
  return hyper


def _per_example(coeff: jax.Array, ndim: int) -> jax.Array:
  """[B, K] -> [B, 1, ..., 1, K] with `ndim` axes, to broadcast over the spatial axes."""
  return coeff.reshape(coeff.shape[:1] + (1,) * (ndim - 2) + coeff.shape[1:])


def _check_hyper_dim(hyper_dim: int) -> None:
  if not isinstance(hyper_dim, int) or hyper_dim < 1:
    raise ValueError(f"hyper_dim must be an int >= 1, got {hyper_dim!r}")


def _zero_projection(hyper_dim: int, out_features: int, *, param_dtype, rngs: nnx.Rngs):
  """V: a bias-free linear map float [B, hyper_dim] -> [B, out_features], initialised to 0."""
  return nnx.Linear(
      hyper_dim,
      out_features,
      use_bias=False,
      kernel_init=nnx.initializers.zeros_init(),
      param_dtype=param_dtype,
      rngs=rngs,
  )


# ----------------------------------------------------------------------------------------
# Hyper-layers.
# ----------------------------------------------------------------------------------------


def _modulation(base: nnx.Conv | nnx.Linear, hyper_dim: int, *,
                rngs: nnx.Rngs) -> tuple[nnx.Param | None, nnx.Linear]:
  """(b_h: ones [O], or None if the base has no bias; V: zero linear D -> O, or 2O with b_h)."""
  has_bias = base.bias is not None
  hyper_bias = nnx.Param(jnp.ones((base.out_features,), base.param_dtype)) if has_bias else None
  hyper_proj = _zero_projection(hyper_dim, (2 if has_bias else 1) * base.out_features,
                                param_dtype=base.param_dtype, rngs=rngs)
  return hyper_bias, hyper_proj


def _modulated(layer: "HyperConv | HyperLinear", inputs: jax.Array, name: str) -> jax.Array:
  """base(x) + (V h)[:O] * W_h(x) (+ (V h)[O:] * b_h), per example, h from the scope; in the
  dtype of base(x) (the modulation is computed in the promoted dtype, e.g. float32)."""
  hyper = _current_hyper(name, inputs.shape[0], layer.hyper_dim)
  coeff = _per_example(layer.hyper_proj(hyper), inputs.ndim)
  out = layer.base.out_features
  base = layer.base(inputs)
  y = base + coeff[..., :out] * layer.hyper_weight(inputs)
  if layer.hyper_bias is not None:
    y = y + coeff[..., out:] * layer.hyper_bias[...]
  return y.astype(base.dtype)


class HyperConv(nnx.Module):
  """An nnx.Conv whose kernel is W_e + diag(V h) W_h per output channel (and, if the base
  has a bias, whose bias is b_e + (V h)[O:] * b_h).

  Attributes:
    base: the original nnx.Conv (W_e, b_e), unchanged.
    hyper_weight: a bias-free nnx.Conv with the base's kernel shape, strides, padding,
      dilations and groups, holding W_h (He-normal fan-out init by default).
    hyper_bias: b_h, float32 [O] of ones, or None if the base has no bias.
    hyper_proj: V, bias-free linear D -> O (2O with a bias), zero-initialised.

  Called as `layer(x)` inside `hyper_scope(h)`: float [B, *spatial, in_features] ->
  [B, *spatial_out, O], the base conv's output shape and dtype; h is float [B, D].
  """

  def __init__(
      self,
      base: nnx.Conv,
      *,
      hyper_dim: int,
      rngs: nnx.Rngs,
      kernel_init: nnx.Initializer = KAIMING_NORMAL_FAN_OUT,
  ):
    if not isinstance(base, nnx.Conv):
      raise TypeError(f"HyperConv wraps an nnx.Conv, got {type(base).__name__}")
    _check_hyper_dim(hyper_dim)
    self.base = base
    self.hyper_dim = hyper_dim
    self.hyper_weight = nnx.Conv(
        base.in_features,
        base.out_features,
        base.kernel_size,
        strides=base.strides,
        padding=base.padding,
        input_dilation=base.input_dilation,
        kernel_dilation=base.kernel_dilation,
        feature_group_count=base.feature_group_count,
        use_bias=False,
        mask=base.mask,
        dtype=base.dtype,
        param_dtype=base.param_dtype,
        precision=base.precision,
        kernel_init=kernel_init,
        conv_general_dilated=base.conv_general_dilated,
        promote_dtype=base.promote_dtype,
        preferred_element_type=base.preferred_element_type,
        rngs=rngs,
    )
    self.hyper_bias, self.hyper_proj = _modulation(base, hyper_dim, rngs=rngs)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """float [B, *spatial, in_features] -> [B, *spatial_out, out_features]."""
    num_spatial = len(self.base.kernel_size)
    if inputs.ndim != num_spatial + 2:
      raise ValueError(
          f"HyperConv expects inputs of shape [B, {num_spatial} spatial axes, C] (exactly one "
          f"batch axis), got shape {tuple(inputs.shape)}"
      )
    return _modulated(self, inputs, "HyperConv")


class HyperLinear(nnx.Module):
  """An nnx.Linear whose kernel is W_e + W_h diag(V h) per output unit (and, if the base
  has a bias, whose bias is b_e + (V h)[O:] * b_h).

  Attributes:
    base: the original nnx.Linear, unchanged.
    hyper_weight: a bias-free nnx.Linear of the base's shape holding W_h (LeCun normal).
    hyper_bias: b_h, float32 [O] of ones, or None if the base has no bias.
    hyper_proj: V, bias-free linear D -> O (2O with a bias), zero-initialised.

  Called as `layer(x)` inside `hyper_scope(h)`: float [B, ..., in_features] ->
  [B, ..., out_features]; h is float [B, D].
  """

  def __init__(
      self,
      base: nnx.Linear,
      *,
      hyper_dim: int,
      rngs: nnx.Rngs,
      kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
  ):
    if not isinstance(base, nnx.Linear):
      raise TypeError(f"HyperLinear wraps an nnx.Linear, got {type(base).__name__}")
    _check_hyper_dim(hyper_dim)
    self.base = base
    self.hyper_dim = hyper_dim
    self.hyper_weight = nnx.Linear(
        base.in_features,
        base.out_features,
        use_bias=False,
        dtype=base.dtype,
        param_dtype=base.param_dtype,
        precision=base.precision,
        kernel_init=kernel_init,
        dot_general=base.dot_general,
        promote_dtype=base.promote_dtype,
        preferred_element_type=base.preferred_element_type,
        rngs=rngs,
    )
    self.hyper_bias, self.hyper_proj = _modulation(base, hyper_dim, rngs=rngs)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """float [B, ..., in_features] -> [B, ..., out_features]."""
    if inputs.ndim < 2:
      raise ValueError(
          f"HyperLinear expects inputs of shape [B, ..., features], got shape "
          f"{tuple(inputs.shape)}"
      )
    return _modulated(self, inputs, "HyperLinear")


def _batch_stats(
    x: jax.Array, axes: tuple[int, ...], *, use_fast_variance: bool
) -> tuple[jax.Array, jax.Array]:
  """(mean, biased variance) over `axes`, computed (in >= float32) as nnx.BatchNorm does."""
  x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x, axes)
  if use_fast_variance:
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes) - jnp.square(mean))
  else:
    var = jnp.mean(jnp.square(x - jnp.mean(x, axes, keepdims=True)), axes)
  return mean, var


class HyperBN(nnx.Module):
  """An nnx.BatchNorm (channel axis last) with per-example affine parameters
  [gamma; beta](h) = [scale; bias] + (V h) * a_h.

  Computed as base(x) + (V h)[:C] * a_h[:C] * xhat + (V h)[C:] * a_h[C:], with xhat the
  input normalised by the statistics the base uses: the batch's mean and biased variance
  over every axis but the last in training mode, the base's running `mean` / `var` in eval
  mode (read before the base is called); epsilon is the base's. The base is called exactly
  once, so its running statistics update as they would without the wrapper. With V = 0
  the output equals the base's exactly. The modulation is computed in (at least) float32
  and the sum cast to the base's output dtype (bfloat16 under a bfloat16 base).

  Attributes:
    base: the original nnx.BatchNorm, unchanged.
    hyper_affine: a_h, float32 [2C] of ones (scale part, then bias part).
    hyper_proj: V, bias-free linear D -> 2C, zero-initialised.

  Called as `layer(x, use_running_average=...)` inside `hyper_scope(h)`: float
  [B, ..., C] -> [B, ..., C]; h is float [B, D].
  """

  def __init__(self, base: nnx.BatchNorm, *, hyper_dim: int, rngs: nnx.Rngs):
    if not isinstance(base, nnx.BatchNorm):
      raise TypeError(f"HyperBN wraps an nnx.BatchNorm, got {type(base).__name__}")
    _check_hyper_dim(hyper_dim)
    if base.axis_name is not None:
      raise ValueError(
          f"HyperBN does not support BatchNorm with axis_name={base.axis_name!r} "
          "(cross-device statistics); only axis_name=None"
      )
    self.base = base
    self.hyper_dim = hyper_dim
    channels = base.num_features
    self.hyper_affine = nnx.Param(jnp.ones((2 * channels,), base.param_dtype))
    self.hyper_proj = _zero_projection(
        hyper_dim, 2 * channels, param_dtype=base.param_dtype, rngs=rngs
    )

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """float [B, ..., C] -> [B, ..., C]; `use_running_average` defaults to the base's."""
    base = self.base
    if use_running_average is None:
      use_running_average = base.use_running_average
    if use_running_average is None:
      raise ValueError(
          "HyperBN needs use_running_average: pass it to the call or set it on the base "
          "BatchNorm (e.g. model.train() / model.eval())"
      )
    axes = base.axis if isinstance(base.axis, Iterable) else (base.axis,)
    if x.ndim < 2 or {axis % x.ndim for axis in axes} != {x.ndim - 1}:
      raise ValueError(
          f"HyperBN supports BatchNorm over the last axis of [B, ..., C] inputs only; got "
          f"axis={base.axis} for input shape {tuple(x.shape)}"
      )
    hyper = _current_hyper("HyperBN", x.shape[0], self.hyper_dim)
    if use_running_average:
      mean, var = base.mean[...], base.var[...]
    else:
      mean, var = _batch_stats(
          x, tuple(range(x.ndim - 1)), use_fast_variance=base.use_fast_variance
      )
    y = base(x, use_running_average=use_running_average)
    x_hat = (x - mean) * jax.lax.rsqrt(var + base.epsilon)
    coeff = _per_example(self.hyper_proj(hyper), x.ndim)
    channels = base.num_features
    affine = self.hyper_affine[...]
    return (y + coeff[..., :channels] * affine[:channels] * x_hat + (
        coeff[..., channels:] * affine[channels:]
    )).astype(y.dtype)


HYPER_LAYER_TYPES = (HyperConv, HyperBN, HyperLinear)


class HyperModel(nnx.Module):
  """A classifier some of whose layers are hyper-layers, fed per-example hyper-parameters.

  Attributes:
    model: the wrapped model (after surgery), called as `model(images, train=...)`.
    hyper_dim: D, the number of hyper-parameters per example.
    strategy: the weight-sharing strategy that chose the hyper-layers (or None).
    hyper_paths: graph paths (inside `model`) of the hyper-layers, in call order.
  """

  def __init__(
      self,
      model: nnx.Module,
      *,
      hyper_dim: int,
      strategy: str | None = None,
      hyper_paths: Iterable[Path] = (),
  ):
    _check_hyper_dim(hyper_dim)
    self.model = model
    self.hyper_dim = hyper_dim
    self.strategy = strategy
    self.hyper_paths = tuple(tuple(path) for path in hyper_paths)

  def __call__(self, images: jax.Array, *, train: bool, hyper: jax.Array) -> jax.Array:
    """float32 [B, H, W, C] images and float [B, hyper_dim] hyper-parameters -> the
    wrapped model's output (float32 logits [B, num_classes]).

    Raises:
      ValueError: `hyper` is not a float [B, hyper_dim] array with B = images.shape[0].
    """
    hyper = jnp.asarray(hyper)
    batch = images.shape[0] if images.ndim else None
    if hyper.ndim != 2 or hyper.shape != (batch, self.hyper_dim):
      raise ValueError(
          f"hyper must have shape [B, hyper_dim] = [{batch}, {self.hyper_dim}] (B = "
          f"images.shape[0]; images shape {tuple(images.shape)}), got {tuple(hyper.shape)}"
      )
    with hyper_scope(hyper):
      return self.model(images, train=train)


# ----------------------------------------------------------------------------------------
# Graph surgery.
# ----------------------------------------------------------------------------------------


def count_hyper_layers(model: nnx.Module) -> dict[str, int]:
  """Number of HyperConv / HyperBN / HyperLinear modules in `model` (shared ones once):
  {"HyperConv": n, "HyperBN": n, "HyperLinear": n}."""
  counts = {layer_type.__name__: 0 for layer_type in HYPER_LAYER_TYPES}
  for _, node in nnx.iter_graph(model):
    if isinstance(node, HYPER_LAYER_TYPES):
      counts[type(node).__name__] += 1
  return counts


def _check_strategy(strategy: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(
        f"unknown hyper-layer strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
    )


def _get_child(node: Any, key: Any) -> Any:
  if isinstance(node, (nnx.List, nnx.Dict, list, dict)):
    return node[key]
  return getattr(node, key)


def _set_child(node: Any, key: Any, value: Any) -> None:
  if isinstance(node, (nnx.List, nnx.Dict, list, dict)):
    node[key] = value
  elif isinstance(node, nnx.Module) and isinstance(key, str):
    setattr(node, key, value)
  else:
    raise ValueError(
        f"cannot replace the layer under key {key!r} of a {type(node).__name__}: only "
        "Module attributes and nnx.List / nnx.Dict / list / dict items can be replaced"
    )


def _get_path(root: Any, path: Path) -> Any:
  node = root
  for key in path:
    node = _get_child(node, key)
  return node


def _set_path(root: Any, path: Path, value: Any) -> None:
  _set_child(_get_path(root, path[:-1]), path[-1], value)


def _candidate_paths(model: nnx.Module) -> dict[int, list[Path]]:
  """id(layer) -> every graph path of each nnx.Conv / BatchNorm / Linear in `model` (more
  than one if the layer is shared), the first being nnx.iter_graph's.

  Raises:
    ValueError: `model` already contains hyper-layers.
  """
  paths: dict[int, list[Path]] = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, (HyperModel, *HYPER_LAYER_TYPES)):
      raise ValueError(
          f"the model already contains hyper-layers ({type(node).__name__} at {path}); "
          "apply make_hyper_model to a plain model"
      )
    if isinstance(node, _CANDIDATE_TYPES):
      paths[id(node)] = [path]
  for duplicates in nnx.find_duplicates(
      model, only=lambda _, node: isinstance(node, _CANDIDATE_TYPES)
  ):
    node = _get_path(model, duplicates[0])
    first = paths[id(node)][0]
    paths[id(node)] = [first] + [path for path in duplicates if path != first]
  return paths


class _CallRecorder(nnx.Module):
  """Wraps a layer; appends `path` to the active call log the first time it is called."""

  def __init__(self, layer: nnx.Module, path: Path):
    self.layer = layer
    self.path = path

  def __call__(self, *args, **kwargs):
    log = _CALL_LOG.get()
    if log is not None and self.path not in log:
      log.append(self.path)
    return self.layer(*args, **kwargs)


def _call_order(model: nnx.Module, shape: tuple[int, int, int]) -> list[Path]:
  """Paths of the nnx.Conv / BatchNorm / Linear layers of `model` in the order a training
  forward pass on float32 [2, H, W, C] images, (H, W, C) = shape, first calls them (layers
  never called are left out).

  The pass is traced with jax.eval_shape (shapes only: nothing is computed or allocated)
  on a copy of the model merged inside the trace, each candidate layer wrapped in a call
  recorder; `model` itself is not touched.
  """
  try:
    image_shape = tuple(operator.index(size) for size in shape)
  except TypeError:
    image_shape = None
  if image_shape is None or len(image_shape) != 3 or min(image_shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C) of positive ints, got {shape!r}")
  candidates = _candidate_paths(model)
  graphdef, state = nnx.split(model)
  abstract_state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state)
  images = jax.ShapeDtypeStruct((_TRACE_BATCH, *image_shape), jnp.float32)

  def forward(state, images):
    copy = nnx.merge(graphdef, state)
    for paths in candidates.values():
      recorder = _CallRecorder(_get_path(copy, paths[0]), paths[0])
      for path in paths:
        _set_path(copy, path, recorder)
    copy(images, train=True)

  log: list[Path] = []
  token = _CALL_LOG.set(log)
  try:
    jax.eval_shape(forward, abstract_state, images)
  finally:
    _CALL_LOG.reset(token)
  return log


def hyper_layer_paths(
    model: nnx.Module, strategy: str = DEFAULT_STRATEGY, *, image_shape: tuple[int, int, int]
) -> list[Path]:
  """The graph paths of the layers of `model` that `strategy` makes hyper-layers, in call
  order (a shared layer is listed once, at nnx.iter_graph's path).

  Args:
    model: a model called as `model(images, *, train)`, e.g. from `create_model`.
    strategy: one of STRATEGIES. "conv+bn": every nnx.Conv and nnx.BatchNorm; "conv" /
      "bn": every nnx.Conv / nnx.BatchNorm; "first_conv" / "first_bn": the first one called
      in a forward pass (the layer nearest the input); "all": every nnx.Conv,
      nnx.BatchNorm and nnx.Linear. Layers the forward pass never calls are left out.
    image_shape: (H, W, C) of the model's input images, for the abstract forward pass.

  Raises:
    ValueError: unknown strategy (the message lists the valid ones), bad image_shape, a
      model that already has hyper-layers, or no layer of the strategy's type.
  """
  _check_strategy(strategy)
  layer_types, first_only = _STRATEGY_LAYERS[strategy]
  model_paths = _call_order(model, image_shape)
  selected = [path for path in model_paths if isinstance(_get_path(model, path), layer_types)]
  if not selected:
    names = " / ".join(f"nnx.{layer_type.__name__}" for layer_type in layer_types)
    raise ValueError(
        f"strategy {strategy!r} found no {names} called in the forward pass of "
        f"{type(model).__name__}"
    )
  return selected[:1] if first_only else selected


def _hyper_layer(layer: nnx.Module, *, hyper_dim: int, rngs: nnx.Rngs) -> nnx.Module:
  """The hyper wrapper of an nnx.Conv / BatchNorm / Linear."""
  if isinstance(layer, nnx.Conv):
    return HyperConv(layer, hyper_dim=hyper_dim, rngs=rngs)
  if isinstance(layer, nnx.BatchNorm):
    return HyperBN(layer, hyper_dim=hyper_dim, rngs=rngs)
  if isinstance(layer, nnx.Linear):
    return HyperLinear(layer, hyper_dim=hyper_dim, rngs=rngs)
  raise TypeError(f"no hyper-layer for {type(layer).__name__}")


def make_hyper_model(
    model: nnx.Module,
    strategy: str = DEFAULT_STRATEGY,
    *,
    hyper_dim: int,
    image_shape: tuple[int, int, int],
    rngs: nnx.Rngs,
) -> HyperModel:
  """Turns the layers `strategy` selects into hyper-layers, by graph surgery on a copy of
  `model`, and wraps it in a HyperModel.

  The copy (nnx.clone: it shares the parameter arrays, no memory is copied) has the
  submodule at each of `hyper_layer_paths(model, strategy, image_shape=image_shape)`
  replaced by a HyperConv / HyperBN / HyperLinear holding the original as `base`; `model`
  itself is left unchanged. At initialisation (V = 0) the HyperModel's output equals
  `model`'s exactly, for any hyper.

  Args:
    model: a model called as `model(images, *, train)`, e.g. from `create_model`.
    strategy: one of STRATEGIES (see `hyper_layer_paths`); default "first_bn".
    hyper_dim: D >= 1, the number of hyper-parameters per example.
    image_shape: (H, W, C) of the input images.
    rngs: initialisation keys of the new parameters (`rngs.params`).

  Returns:
    A HyperModel called as `hyper_model(images, train=..., hyper=...)` with float32
    images [B, H, W, C] and hyper float [B, hyper_dim].

  Raises:
    ValueError: as `hyper_layer_paths`, or hyper_dim < 1.
  """
  _check_strategy(strategy)
  _check_hyper_dim(hyper_dim)
  paths = hyper_layer_paths(model, strategy, image_shape=image_shape)
  model = nnx.clone(model)
  all_paths = _candidate_paths(model)
  for path in paths:  # in call order, so the keys are drawn in a stable order
    layer = _get_path(model, path)
    wrapper = _hyper_layer(layer, hyper_dim=hyper_dim, rngs=rngs)
    for shared_path in all_paths[id(layer)]:
      _set_path(model, shared_path, wrapper)
  return HyperModel(model, hyper_dim=hyper_dim, strategy=strategy, hyper_paths=paths)


__all__ = [
    "DEFAULT_STRATEGY",
    "HYPER_LAYER_TYPES",
    "STRATEGIES",
    "HyperBN",
    "HyperConv",
    "HyperLinear",
    "HyperModel",
    "count_hyper_layers",
    "hyper_layer_paths",
    "hyper_scope",
    "make_hyper_model",
]
