"""Tests for jaxaug.models.hyper: hyper-layers against references, exact equality with the
base at initialisation, the weight-sharing strategies' graph surgery (in call order),
HyperModel under jit / vmap / grad / split-merge, and error messages.

Real forward passes use small_cnn on 2 x 16 x 16 x 3 images; the bigger models are only
traced (nnx.eval_shape: nothing allocated or run).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxaug.models import create_model
from jaxaug.models.hyper import (
    DEFAULT_STRATEGY,
    HYPER_LAYER_TYPES,
    STRATEGIES,
    HyperBN,
    HyperConv,
    HyperLinear,
    HyperModel,
    count_hyper_layers,
    hyper_layer_paths,
    hyper_scope,
    make_hyper_model,
)

IMAGE_SHAPE = (2, 16, 16, 3)
HYPER_DIM = 4


def normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
  """float32 N(0, scale^2) samples, drawn with numpy (no XLA compilation per shape)."""
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def rngs(seed: int) -> nnx.Rngs:
  """Parameter keys of the "rbg" implementation: eager initialisation compiles one random
  op per parameter shape, and rbg's compile much faster on CPU than threefry's."""
  return nnx.Rngs(params=jax.random.key(seed, impl="rbg"))


def randomize_hyper(module: nnx.Module, seed: int, scale: float = 0.3) -> None:
  """Gives every V (and a_h / b_h) of the hyper-layers in `module` random values, in place."""
  for index, (_, node) in enumerate(nnx.iter_graph(module)):
    if isinstance(node, HYPER_LAYER_TYPES):
      kernel = node.hyper_proj.kernel
      kernel[...] = normal(seed + index, kernel.shape, scale)
      extra = node.hyper_affine if isinstance(node, HyperBN) else node.hyper_bias
      if extra is not None:
        extra[...] = 1.0 + normal(seed + 1000 + index, extra.shape, 0.5)


@functools.cache
def plain_model(name: str) -> nnx.Module:
  """A real 10-class RGB model per name, shared: callers mutate only clones."""
  return create_model(name, num_classes=10, in_channels=3, rngs=rngs(0))


@functools.cache
def abstract_model(name: str) -> nnx.Module:
  """The model with ShapeDtypeStruct leaves (nothing allocated). Shared: do not mutate."""
  return nnx.eval_shape(
      lambda: create_model(name, num_classes=10, in_channels=3, rngs=rngs(0))
  )


@functools.cache
def abstract_hyper_model(name: str, strategy: str) -> HyperModel:
  return nnx.eval_shape(
      lambda: make_hyper_model(
          create_model(name, num_classes=10, in_channels=3, rngs=rngs(0)),
          strategy,
          hyper_dim=HYPER_DIM,
          image_shape=IMAGE_SHAPE[1:],
          rngs=rngs(1),
      )
  )


def hyper_small_cnn(strategy: str = "conv+bn", *, seed: int | None = 7) -> HyperModel:
  """small_cnn with hyper-layers; random V (non-trivial) unless seed is None."""
  model = make_hyper_model(
      plain_model("small_cnn"),
      strategy,
      hyper_dim=HYPER_DIM,
      image_shape=IMAGE_SHAPE[1:],
      rngs=rngs(1),
  )
  if seed is not None:
    randomize_hyper(model, seed)
  return model


def conv_layer(*, use_bias: bool, strides: int = 1, seed: int = 0) -> nnx.Conv:
  conv = nnx.Conv(3, 5, (3, 3), strides=strides, padding=1, use_bias=use_bias,
                  rngs=rngs(seed))  # fmt: skip
  if use_bias:
    conv.bias[...] = normal(seed + 1, (5,))
  return conv


def batch_norm_layer(channels: int = 5, seed: int = 0) -> nnx.BatchNorm:
  """A PyTorch-style BatchNorm with non-trivial scale, bias and running statistics."""
  bn = nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs(seed))
  bn.scale[...] = 1.0 + normal(seed + 1, (channels,), 0.3)
  bn.bias[...] = normal(seed + 2, (channels,), 0.3)
  bn.mean[...] = normal(seed + 3, (channels,), 0.5)
  bn.var[...] = 0.5 + jnp.abs(normal(seed + 4, (channels,)))
  return bn


# ---------------------------------------------------------------------------------------
# Hyper-layers with V = 0 equal their base exactly.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [False, True])
def test_hyper_conv_at_init_equals_base(use_bias):
  base = conv_layer(use_bias=use_bias, strides=2)
  layer = HyperConv(nnx.clone(base), hyper_dim=HYPER_DIM, rngs=rngs(1))
  assert layer.hyper_weight.kernel.shape == base.kernel.shape
  assert layer.hyper_proj.kernel.shape == (HYPER_DIM, 10 if use_bias else 5)
  assert (layer.hyper_bias is not None) == use_bias
  np.testing.assert_array_equal(layer.hyper_proj.kernel[...], 0.0)
  x = normal(1, (2, 9, 9, 3))
  with hyper_scope(normal(2, (2, HYPER_DIM))):
    y = layer(x)
  np.testing.assert_array_equal(y, base(x))
  assert y.shape == (2, 5, 5, 5)


@pytest.mark.parametrize("use_bias", [False, True])
def test_hyper_linear_at_init_equals_base(use_bias):
  base = nnx.Linear(6, 3, use_bias=use_bias, rngs=rngs(0))
  layer = HyperLinear(nnx.clone(base), hyper_dim=HYPER_DIM, rngs=rngs(1))
  assert layer.hyper_proj.kernel.shape == (HYPER_DIM, 6 if use_bias else 3)
  x = normal(1, (2, 6))
  with hyper_scope(normal(2, (2, HYPER_DIM))):
    np.testing.assert_array_equal(layer(x), base(x))


@pytest.mark.parametrize("use_running_average", [False, True])
def test_hyper_bn_at_init_equals_base(use_running_average):
  base = batch_norm_layer()
  layer = HyperBN(nnx.clone(base), hyper_dim=HYPER_DIM, rngs=rngs(1))
  np.testing.assert_array_equal(layer.hyper_affine[...], 1.0)
  x = 2.0 + normal(1, (2, 4, 4, 5), 3.0)
  with hyper_scope(normal(2, (2, HYPER_DIM))):
    y = layer(x, use_running_average=use_running_average)
  np.testing.assert_array_equal(y, base(x, use_running_average=use_running_average))
  # The base's running statistics moved exactly as the plain layer's (or not at all).
  np.testing.assert_array_equal(layer.base.mean[...], base.mean[...])
  np.testing.assert_array_equal(layer.base.var[...], base.var[...])


# ---------------------------------------------------------------------------------------
# Hyper-layers against references, with random V.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [False, True])
def test_hyper_conv_matches_per_example_kernel_reference(use_bias):
  layer = HyperConv(conv_layer(use_bias=use_bias, strides=2), hyper_dim=HYPER_DIM,
                    rngs=rngs(1))  # fmt: skip
  randomize_hyper(layer, seed=3)
  x = normal(4, (3, 9, 9, 3))
  hyper = normal(5, (3, HYPER_DIM))
  with hyper_scope(hyper):
    y = layer(x)
  coeff = hyper @ layer.hyper_proj.kernel[...]  # [B, 2O] or [B, O]
  w_e, w_h = layer.base.kernel[...], layer.hyper_weight.kernel[...]
  for b in range(3):
    kernel = w_e + coeff[b, :5] * w_h  # diag(V h_b) W_h: scales output channel o
    expected = jax.lax.conv_general_dilated(
        x[b : b + 1], kernel, (2, 2), [(1, 1), (1, 1)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )[0]  # fmt: skip
    if use_bias:
      expected = expected + layer.base.bias[...] + coeff[b, 5:] * layer.hyper_bias[...]
    np.testing.assert_allclose(y[b], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_bias", [False, True])
def test_hyper_linear_matches_numpy(use_bias):
  layer = HyperLinear(nnx.Linear(6, 3, use_bias=use_bias, rngs=rngs(0)),
                      hyper_dim=HYPER_DIM, rngs=rngs(1))  # fmt: skip
  randomize_hyper(layer, seed=3)
  x, hyper = normal(4, (3, 6)), normal(5, (3, HYPER_DIM))
  with hyper_scope(hyper):
    y = layer(x)
  x, hyper = np.asarray(x, np.float64), np.asarray(hyper, np.float64)
  coeff = hyper @ np.asarray(layer.hyper_proj.kernel[...], np.float64)
  w_e = np.asarray(layer.base.kernel[...], np.float64)
  w_h = np.asarray(layer.hyper_weight.kernel[...], np.float64)
  expected = np.stack([x[b] @ (w_e + w_h * coeff[b, :3]) for b in range(3)])
  if use_bias:
    expected += np.asarray(layer.base.bias[...]) + coeff[:, 3:] * np.asarray(
        layer.hyper_bias[...]
    )
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_running_average", [False, True])
def test_hyper_bn_matches_numpy(use_running_average):
  base = batch_norm_layer()
  layer = HyperBN(nnx.clone(base), hyper_dim=HYPER_DIM, rngs=rngs(1))
  randomize_hyper(layer, seed=3)
  x, hyper = 2.0 + normal(4, (3, 4, 4, 5), 3.0), normal(5, (3, HYPER_DIM))
  with hyper_scope(hyper):
    y = layer(x, use_running_average=use_running_average)
  x64 = np.asarray(x, np.float64)
  if use_running_average:
    mean, var = np.asarray(base.mean[...], np.float64), np.asarray(base.var[...], np.float64)
  else:
    mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))  # biased
  x_hat = (x64 - mean) / np.sqrt(var + 1e-5)
  coeff = np.asarray(hyper, np.float64) @ np.asarray(layer.hyper_proj.kernel[...], np.float64)
  affine = np.asarray(layer.hyper_affine[...], np.float64)
  gamma = np.asarray(base.scale[...]) + coeff[:, :5] * affine[:5]  # [B, C]
  beta = np.asarray(base.bias[...]) + coeff[:, 5:] * affine[5:]
  expected = gamma[:, None, None, :] * x_hat + beta[:, None, None, :]
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  # Running statistics: updated from the batch as by the plain layer (train), else untouched.
  base(x, use_running_average=use_running_average)
  np.testing.assert_allclose(layer.base.mean[...], base.mean[...], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(layer.base.var[...], base.var[...], rtol=1e-6, atol=1e-6)


def test_hyper_bn_uses_the_base_default_mode():
  base = batch_norm_layer()
  base.use_running_average = True
  layer = HyperBN(nnx.clone(base), hyper_dim=HYPER_DIM, rngs=rngs(1))
  randomize_hyper(layer, seed=3)
  x, hyper = normal(4, (3, 4, 4, 5)), normal(5, (3, HYPER_DIM))
  with hyper_scope(hyper):
    np.testing.assert_array_equal(layer(x), layer(x, use_running_average=True))
    layer.base.use_running_average = None
    with pytest.raises(ValueError, match="use_running_average"):
      layer(x)


# ---------------------------------------------------------------------------------------
# Strategies: which layers become hyper-layers, in call order.
# ---------------------------------------------------------------------------------------


def count_layers(model: nnx.Module) -> dict[str, int]:
  """The model's own nnx.Conv / nnx.BatchNorm / nnx.Linear, before surgery."""
  counts = {"conv": 0, "bn": 0, "linear": 0}
  for _, node in nnx.iter_graph(model):
    for key, layer_type in (("conv", nnx.Conv), ("bn", nnx.BatchNorm), ("linear", nnx.Linear)):
      counts[key] += isinstance(node, layer_type)
  return counts


EXPECTED_HYPER = {  # strategy -> (HyperConv, HyperBN, HyperLinear) as functions of counts
    "conv+bn": lambda c: (c["conv"], c["bn"], 0),
    "conv": lambda c: (c["conv"], 0, 0),
    "bn": lambda c: (0, c["bn"], 0),
    "first_conv": lambda c: (1, 0, 0),
    "first_bn": lambda c: (0, 1, 0),
    "all": lambda c: (c["conv"], c["bn"], c["linear"]),
}


def test_strategies_constant():
  assert set(EXPECTED_HYPER) == set(STRATEGIES)
  assert DEFAULT_STRATEGY == "first_bn"


@pytest.mark.parametrize("name, convs, bns", [
    ("small_cnn", 3, 3), ("cnn6", 6, 6), ("resnet18", 20, 20), ("wrn40_2", 40, 37),
])  # fmt: skip
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_turns_exactly_the_named_layers_into_hyper_layers(name, convs, bns, strategy):
  counts = count_layers(abstract_model(name))
  assert (counts["conv"], counts["bn"], counts["linear"]) == (convs, bns, 1)
  model = abstract_hyper_model(name, strategy)
  expected = EXPECTED_HYPER[strategy](counts)
  assert count_hyper_layers(model) == dict(
      zip(("HyperConv", "HyperBN", "HyperLinear"), expected, strict=True)
  )
  # Every hyper-layer wraps the original layer type; no other plain layer was lost.
  assert len(model.hyper_paths) == sum(expected)
  for path in model.hyper_paths:
    node = model.model
    for key in path:
      node = node[key] if isinstance(key, int) else getattr(node, key)
    assert isinstance(node, HYPER_LAYER_TYPES)
  assert count_layers(model.model)["conv"] == counts["conv"] + expected[0]  # + W_h convs
  assert model.strategy == strategy and model.hyper_dim == HYPER_DIM


@pytest.mark.parametrize("name, first_conv, first_bn", [
    ("small_cnn", ("layers", 0, "conv"), ("layers", 0, "bn")),
    ("cnn6", ("layers", 0, "conv"), ("layers", 0, "bn")),
    ("resnet18", ("stem_conv",), ("stem_bn",)),
    ("wrn40_2", ("stem",), ("blocks", 0, "bn1")),
])  # fmt: skip
def test_first_strategies_pick_the_layer_nearest_the_input(name, first_conv, first_bn):
  model = abstract_model(name)
  # nnx.iter_graph's sorted-key order would pick other layers first for some models
  # (e.g. wrn40_2: 'blocks' < 'stem'; resnet18: 'blocks' < 'stem_bn').
  assert hyper_layer_paths(model, "first_conv", image_shape=(16, 16, 3)) == [first_conv]
  assert hyper_layer_paths(model, "first_bn", image_shape=(16, 16, 3)) == [first_bn]
  hyper_model = abstract_hyper_model(name, "first_conv")
  assert hyper_model.hyper_paths == (first_conv,)
  stem = hyper_model.model
  for key in first_conv:
    stem = stem[key] if isinstance(key, int) else getattr(stem, key)
  assert isinstance(stem, HyperConv) and isinstance(stem.base, nnx.Conv)


def test_paths_are_in_call_order():
  model = abstract_model("small_cnn")
  layers = [("layers", i, key) for i in range(3) for key in ("conv", "bn")]
  assert hyper_layer_paths(model, "conv+bn", image_shape=(16, 16, 3)) == layers
  assert hyper_layer_paths(model, "all", image_shape=(16, 16, 3)) == layers + [("head",)]
  wrn = hyper_layer_paths(abstract_model("wrn40_2"), "conv+bn", image_shape=(16, 16, 3))
  assert wrn[:4] == [("stem",), ("blocks", 0, "bn1"), ("blocks", 0, "conv1"), ("blocks", 0, "bn2")]
  assert wrn[-1] == ("bn",)


def test_surgery_keeps_base_parameters_and_leaves_the_model_unchanged():
  plain = plain_model("small_cnn")
  model = hyper_small_cnn("conv+bn", seed=None)
  assert count_hyper_layers(plain) == {"HyperConv": 0, "HyperBN": 0, "HyperLinear": 0}
  for index in range(3):
    layer = model.model.layers[index]
    assert isinstance(layer.conv, HyperConv) and isinstance(layer.bn, HyperBN)
    np.testing.assert_array_equal(layer.conv.base.kernel[...], plain.layers[index].conv.kernel[...])
    np.testing.assert_array_equal(layer.bn.base.scale[...], plain.layers[index].bn.scale[...])
  assert isinstance(model.model.head, nnx.Linear)


def test_shared_layer_is_replaced_everywhere():
  class Shared(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(3, 3, (3, 3), use_bias=False, rngs=rngs)
      self.again = self.conv

    def __call__(self, images, *, train):
      return jnp.mean(self.again(self.conv(images)), axis=(1, 2))

  model = make_hyper_model(Shared(rngs(0)), "conv", hyper_dim=2,
                           image_shape=(8, 8, 3), rngs=rngs(1))  # fmt: skip
  assert model.hyper_paths == (("again",),)  # iter_graph's path of the shared layer
  assert model.model.conv is model.model.again
  assert count_hyper_layers(model) == {"HyperConv": 1, "HyperBN": 0, "HyperLinear": 0}
  assert model(normal(0, (2, 8, 8, 3)), train=False, hyper=jnp.ones((2, 2))).shape == (2, 3)


# ---------------------------------------------------------------------------------------
# HyperModel behaviour.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hyper_model_at_init_equals_plain_model(strategy):
  plain = nnx.clone(plain_model("small_cnn"))
  model = hyper_small_cnn(strategy, seed=None)
  images, hyper = normal(1, IMAGE_SHAPE), normal(2, (2, HYPER_DIM), 3.0)
  np.testing.assert_array_equal(
      model(images, train=False, hyper=hyper), plain(images, train=False)
  )
  np.testing.assert_array_equal(model(images, train=True, hyper=hyper), plain(images, train=True))
  # Batch statistics were updated exactly as the plain model's.
  stats = nnx.state(model.model, nnx.BatchStat)
  plain_stats = nnx.state(plain, nnx.BatchStat)
  assert len(jax.tree.leaves(stats)) == len(jax.tree.leaves(plain_stats)) == 6
  for path, bn in nnx.iter_graph(plain):
    if isinstance(bn, nnx.BatchNorm):
      hyper_bn = model.model.layers[path[1]].bn
      hyper_bn = hyper_bn.base if isinstance(hyper_bn, HyperBN) else hyper_bn
      np.testing.assert_array_equal(hyper_bn.mean[...], bn.mean[...])
      np.testing.assert_array_equal(hyper_bn.var[...], bn.var[...])
      assert not np.allclose(bn.mean[...], 0.0)


def test_hyper_layers_keep_the_bfloat16_activations_of_a_bfloat16_model():
  plain = create_model("small_cnn", num_classes=10, in_channels=3, dtype="bfloat16", rngs=rngs(0))
  model = make_hyper_model(plain, "conv+bn", hyper_dim=HYPER_DIM, image_shape=IMAGE_SHAPE[1:],
                           rngs=rngs(1))
  images, hyper = normal(1, IMAGE_SHAPE), normal(2, (2, HYPER_DIM), 3.0)
  # V = 0: still exactly the plain model (the float32 modulation adds exact zeros).
  np.testing.assert_array_equal(model(images, train=False, hyper=hyper),
                                plain(images, train=False))
  randomize_hyper(model, 7)
  with hyper_scope(hyper):
    x = images
    for layer in model.model.layers:
      assert isinstance(layer.conv, HyperConv) and isinstance(layer.bn, HyperBN)
      convolved = layer.conv(x)
      assert convolved.dtype == jnp.bfloat16
      assert layer.bn(convolved, use_running_average=True).dtype == jnp.bfloat16
      x = layer(x, train=False)
  logits = model(images, train=False, hyper=hyper)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


def test_per_example_hyper_changes_only_that_example():
  model = hyper_small_cnn("conv+bn")
  images, hyper = normal(1, IMAGE_SHAPE), normal(2, (2, HYPER_DIM))
  # Eval mode: running statistics, so examples are not coupled through the batch.
  out = model(images, train=False, hyper=hyper)
  changed = model(images, train=False, hyper=hyper.at[0].add(1.0))
  assert not np.allclose(changed[0], out[0], atol=1e-4)
  np.testing.assert_array_equal(changed[1], out[1])


@pytest.mark.parametrize("strategy", ["first_bn", "first_conv", "conv+bn"])
def test_output_is_differentiable_wrt_hyper(strategy):
  model = hyper_small_cnn(strategy)
  images, hyper = normal(1, IMAGE_SHAPE), normal(2, (2, HYPER_DIM))

  def loss(hyper):
    return jnp.sum(jnp.square(model(images, train=False, hyper=hyper)))

  grad = jax.jit(jax.grad(loss))(hyper)
  assert grad.shape == hyper.shape
  assert np.all(np.isfinite(grad)) and np.all(np.any(grad != 0, axis=1))


def test_vmap_over_examples_matches_batched_call():
  model = hyper_small_cnn("conv+bn")
  images, hyper = normal(1, IMAGE_SHAPE), normal(2, (2, HYPER_DIM))

  def one(image, h):
    return model(image[None], train=False, hyper=h[None])[0]

  np.testing.assert_allclose(
      jax.vmap(one)(images, hyper), model(images, train=False, hyper=hyper),
      rtol=1e-5, atol=1e-5,
  )  # fmt: skip


def test_split_merge_under_jit_matches_eager_and_updates_batch_stats():
  model = hyper_small_cnn("conv+bn")
  eager = nnx.clone(model)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @functools.partial(jax.jit, static_argnames="train")
  def forward(params, rest, images, hyper, *, train):
    merged = nnx.merge(graphdef, params, rest)
    return merged(images, train=train, hyper=hyper), nnx.split(merged, nnx.Param, ...)[2]

  images, hyper = normal(1, IMAGE_SHAPE), normal(2, (2, HYPER_DIM))
  logits, same_rest = forward(params, rest, images, hyper, train=False)
  np.testing.assert_allclose(logits, eager(images, train=False, hyper=hyper), rtol=1e-5, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, same_rest, rest)
  logits, new_rest = forward(params, rest, images, hyper, train=True)
  np.testing.assert_allclose(logits, eager(images, train=True, hyper=hyper), rtol=1e-4, atol=1e-4)
  eager_rest = nnx.split(eager, nnx.Param, ...)[2]
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               new_rest, eager_rest)  # fmt: skip
  changed = jax.tree.map(lambda old, new: not np.allclose(old, new), rest, new_rest)
  assert all(jax.tree.leaves(changed))
  # The hyper-layers' parameters (V, W_h, a_h) are nnx.Params, trained with the model.
  param_paths = {path for path, _ in nnx.to_flat_state(params)}
  assert ("model", "layers", 0, "bn", "hyper_proj", "kernel") in param_paths
  assert ("model", "layers", 0, "conv", "hyper_weight", "kernel") in param_paths
  assert ("model", "layers", 0, "bn", "hyper_affine") in param_paths


# ---------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2,), (2, HYPER_DIM + 1), (3, HYPER_DIM), (2, HYPER_DIM, 1)])
def test_wrong_hyper_shape_raises(shape):
  model = hyper_small_cnn("first_bn", seed=None)
  with pytest.raises(ValueError, match=r"hyper must have shape \[B, hyper_dim\] = \[2, 4\]"):
    model(normal(1, IMAGE_SHAPE), train=False, hyper=jnp.zeros(shape))


def test_unknown_strategy_lists_valid_ones():
  for call in (
      lambda: hyper_layer_paths(abstract_model("small_cnn"), "bn+conv", image_shape=(16, 16, 3)),
      lambda: make_hyper_model(plain_model("small_cnn"), "bn+conv", hyper_dim=2,
                               image_shape=(16, 16, 3), rngs=rngs(0)),
  ):  # fmt: skip
    with pytest.raises(ValueError, match="bn\\+conv") as error:
      call()
    for strategy in STRATEGIES:
      assert strategy in str(error.value)


@pytest.mark.parametrize("hyper_dim", [0, -1])
def test_bad_hyper_dim_raises(hyper_dim):
  with pytest.raises(ValueError, match=f"hyper_dim.*{hyper_dim}"):
    make_hyper_model(plain_model("small_cnn"), "first_bn", hyper_dim=hyper_dim,
                     image_shape=(16, 16, 3), rngs=rngs(0))  # fmt: skip


def test_hyper_layer_outside_hyper_model_raises():
  model = hyper_small_cnn("first_conv", seed=None)
  with pytest.raises(RuntimeError, match="HyperConv called outside a HyperModel call"):
    model.model(normal(1, IMAGE_SHAPE), train=False)
  layer = HyperBN(batch_norm_layer(), hyper_dim=HYPER_DIM, rngs=rngs(1))
  with pytest.raises(RuntimeError, match="HyperBN called outside a HyperModel call"):
    layer(normal(1, (2, 3, 3, 5)), use_running_average=True)
  # The scope is reset after a call, also after a failing one.
  with pytest.raises(ValueError):
    model(normal(1, (2, 16, 16, 1)), train=False, hyper=jnp.zeros((2, HYPER_DIM)))
  with pytest.raises(RuntimeError, match="outside a HyperModel call"):
    model.model(normal(1, IMAGE_SHAPE), train=False)


def test_hyper_layer_batch_mismatch_raises():
  layer = HyperLinear(nnx.Linear(6, 3, rngs=rngs(0)), hyper_dim=HYPER_DIM,
                      rngs=rngs(1))  # fmt: skip
  with hyper_scope(jnp.zeros((3, HYPER_DIM))):
    with pytest.raises(ValueError, match=r"\[2, 4\].*\(3, 4\)"):
      layer(jnp.zeros((2, 6)))


def test_surgery_on_a_hyper_model_raises():
  with pytest.raises(ValueError, match="already contains hyper-layers"):
    make_hyper_model(hyper_small_cnn(seed=None), "conv", hyper_dim=2, image_shape=(16, 16, 3),
                     rngs=rngs(0))  # fmt: skip


def test_strategy_without_matching_layer_raises():
  class NoBatchNorm(nnx.Module):
    def __init__(self, rngs):
      self.head = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, images, *, train):
      return self.head(jnp.mean(images, axis=(1, 2)))

  with pytest.raises(ValueError, match="found no nnx.BatchNorm"):
    hyper_layer_paths(NoBatchNorm(rngs(0)), "first_bn", image_shape=(8, 8, 3))


@pytest.mark.parametrize("image_shape", [(16, 16), (16, 0, 3), (16.0, 16, 3), "abc"])
def test_bad_image_shape_raises(image_shape):
  with pytest.raises(ValueError, match="image_shape must be \\(H, W, C\\)"):
    hyper_layer_paths(abstract_model("small_cnn"), "conv", image_shape=image_shape)


def test_image_shape_accepts_numpy_ints():
  shape = np.array([16, 16, 3])
  assert hyper_layer_paths(abstract_model("small_cnn"), "first_conv", image_shape=shape) == [
      ("layers", 0, "conv")
  ]
