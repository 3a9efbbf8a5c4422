"""Tests for jaxaug.models: registry, shapes, exact parameter counts, BatchNorm modes, split/merge.

Big models are checked abstractly (nnx.eval_shape / jax.make_jaxpr: nothing allocated or
run); real forward passes use the cheap models, compiled once each.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxaug.models import MODELS, create_model

ALL_MODELS = ("badgan", "cnn6", "resnet18", "resnet50", "small_cnn", "wrn28_10", "wrn40_2")
# Models cheap enough on a 2-core CPU to build and run for real; the ResNets are checked by
# tracing only (their blocks reuse the same conv / BatchNorm helpers).
CHEAP_MODELS = ("small_cnn", "badgan", "wrn40_2")
# One batch shape for every real forward pass, so that each model compiles once.
IMAGE_SHAPE = (2, 16, 16, 3)


def num_elements(state: nnx.State) -> int:
  """Total number of scalars in the arrays (or ShapeDtypeStructs) of `state`."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state))


@functools.cache
def abstract_model(
    name: str, num_classes: int = 10, in_channels: int = 3, dtype: str = "float32"
) -> nnx.Module:
  """The model with ShapeDtypeStruct leaves: nothing is allocated or computed. Shared: do
  not mutate."""
  return nnx.eval_shape(
      lambda: create_model(
          name, num_classes=num_classes, in_channels=in_channels, dtype=dtype, rngs=nnx.Rngs(0)
      )
  )


def jaxpr_equations(jaxpr) -> list:
  """Every equation of `jaxpr` (a Jaxpr or ClosedJaxpr), including those of the jaxprs nested
  in its equations' parameters (jit, cond branches, scan bodies, custom_vjp calls)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  equations = []
  for equation in jaxpr.eqns:
    equations.append(equation)
    for value in equation.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
          equations.extend(jaxpr_equations(sub))
  return equations


def conv_dtypes(jaxpr) -> list[tuple[str, ...]]:
  """(operand dtypes..., output dtype) of every convolution in `jaxpr`, nested ones included."""
  return [
      tuple(str(var.aval.dtype) for var in (*equation.invars, *equation.outvars))
      for equation in jaxpr_equations(jaxpr)
      if equation.primitive.name == "conv_general_dilated"
  ]


def functional_forward(graphdef: nnx.GraphDef):
  """The pure step a trainer writes: (params, rest, images, train) -> (logits, new rest)."""

  def forward(params, rest, images, *, train):
    model = nnx.merge(graphdef, params, rest)
    logits = model(images, train=train)
    return logits, nnx.split(model, nnx.Param, ...)[2]

  return forward


def random_images(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
  """Standard-normal float32 images (already 'standardised')."""
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@functools.cache
def built_model(name: str) -> nnx.Module:
  """One real 10-class RGB model per name, shared by tests; callers mutate only clones.

  An "rbg" key: its random ops compile much faster on CPU than threefry's, and eager
  initialisation compiles one per parameter shape.
  """
  return create_model(name, num_classes=10, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))


@functools.cache
def compiled_forward(name: str):
  """(params, rest, jitted functional_forward) of `built_model(name)`."""
  graphdef, params, rest = nnx.split(built_model(name), nnx.Param, ...)
  forward = jax.jit(functional_forward(graphdef), static_argnames="train")
  return params, rest, forward


def test_registered_names():
  assert MODELS.names() == sorted(ALL_MODELS)


# Reference parameter counts: resnet18 from kuangliu/pytorch-cifar (11,173,962 for CIFAR-10,
# 11,220,132 for CIFAR-100), resnet50 from torchvision (25,557,032), wrn28_10 from the
# standard PyTorch WRN (36,479,194 for CIFAR-10, 36,536,884 for CIFAR-100). wrn40_2 by hand
# from the paper's layout (k=2, n=6 blocks per group, widths 16/32/64/128):
#   stem 3*16*9 = 432; group 1: 14,432 + 5 * 18,560 = 107,232; group 2: 57,536 + 5 * 73,984
#   = 427,456; group 3: 229,760 + 5 * 295,424 = 1,706,880; final BN 256; dense 128*10 + 10
#   = 1,290; total 2,243,546.
@pytest.mark.parametrize(
    "name, num_classes, in_channels, expected",
    [
        ("resnet18", 10, 3, 11_173_962),
        ("resnet18", 100, 3, 11_220_132),
        ("resnet18", 10, 1, 11_173_962 - 2 * 64 * 3 * 3),
        ("resnet50", 1000, 3, 25_557_032),
        ("wrn28_10", 10, 3, 36_479_194),
        ("wrn28_10", 100, 3, 36_536_884),
        ("wrn40_2", 10, 3, 2_243_546),
    ],
)
def test_parameter_count_matches_reference(name, num_classes, in_channels, expected):
  model = abstract_model(name, num_classes, in_channels)
  assert num_elements(nnx.state(model, nnx.Param)) == expected


def plain_cnn_parameter_count(layout, in_channels: int, num_classes: int) -> int:
  """Bias-free k x k convs, each followed by BatchNorm (scale + bias), then a dense head."""
  count = 0
  for out_features, kernel_size in layout:
    count += kernel_size * kernel_size * in_channels * out_features + 2 * out_features
    in_channels = out_features
  return count + in_channels * num_classes + num_classes


@pytest.mark.parametrize(
    "name, layout",
    [
        # BadGAN (Dai et al. 2017) CIFAR classifier: 3x conv3x3 96, 3x conv3x3 192,
        # conv3x3 192, conv1x1 192, conv1x1 192.
        ("badgan", [(96, 3)] * 3 + [(192, 3)] * 4 + [(192, 1)] * 2),
        ("small_cnn", [(16, 3), (32, 3), (64, 3)]),
        ("cnn6", [(32, 3), (32, 3), (64, 3), (64, 3), (128, 3), (128, 3)]),
    ],
)
def test_plain_cnn_parameter_count(name, layout):
  model = abstract_model(name, num_classes=7, in_channels=2)
  assert num_elements(nnx.state(model, nnx.Param)) == plain_cnn_parameter_count(
      layout, in_channels=2, num_classes=7
  )


@pytest.mark.parametrize("name", ALL_MODELS)
def test_running_stats_are_not_params(name):
  model = abstract_model(name)
  batch_norms = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)]
  assert batch_norms
  features = sum(bn.num_features for bn in batch_norms)
  # mean + var per feature are BatchStats; scale + bias per feature are Params.
  assert num_elements(nnx.state(model, nnx.BatchStat)) == 2 * features
  assert sum(num_elements(nnx.state(bn, nnx.Param)) for bn in batch_norms) == 2 * features
  # Nothing but Params and BatchStats: no RNG state, no other variables.
  _, _, _, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  assert num_elements(other) == 0


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("image_shape, num_classes", [((2, 32, 32, 3), 10), ((3, 9, 1, 1), 4)])
def test_traced_step_shapes_and_batch_stat_writes(name, image_shape, num_classes):
  # Traced, not run. 9x1 images: odd sizes and 1-pixel maps at every stride. With
  # train=False every BatchStat output is its input passed through untouched; with
  # train=True every one is recomputed.
  model = abstract_model(name, num_classes, in_channels=image_shape[-1])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  images = jax.ShapeDtypeStruct(image_shape, jnp.float32)
  num_params = len(jax.tree.leaves(params))
  num_stats = len(jax.tree.leaves(rest))
  for train in (False, True):
    jaxpr = jax.make_jaxpr(functools.partial(functional_forward(graphdef), train=train))(
        params, rest, images
    ).jaxpr
    logits = jaxpr.outvars[0].aval
    assert logits.shape == (image_shape[0], num_classes)
    assert logits.dtype == jnp.float32
    stats_in = jaxpr.invars[num_params : num_params + num_stats]
    stats_out = jaxpr.outvars[1:]
    untouched = [out is stat for out, stat in zip(stats_out, stats_in, strict=True)]
    assert untouched == [not train] * num_stats


@pytest.mark.parametrize("name", CHEAP_MODELS)
def test_logits_shape_and_dtype(name):
  params, rest, forward = compiled_forward(name)
  logits, _ = forward(params, rest, random_images(IMAGE_SHAPE), train=False)
  assert logits.shape == (2, 10)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_bfloat16_convolutions_with_float32_parameters_statistics_and_logits(name):
  # Traced, not run. dtype="bfloat16": every convolution takes and gives bfloat16 (the
  # activations), while parameters, running statistics (read and written) and logits are
  # float32. dtype="float32" (the control): every convolution is float32.
  for dtype, conv_dtype in (("float32", "float32"), ("bfloat16", "bfloat16")):
    model = abstract_model(name, dtype=dtype)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert {leaf.dtype for leaf in jax.tree.leaves((params, rest))} == {jnp.dtype(jnp.float32)}
    images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(functools.partial(functional_forward(graphdef), train=True))(
        params, rest, images
    )
    convs = conv_dtypes(jaxpr)
    assert convs and set(convs) == {(conv_dtype,) * 3}, set(convs)
    assert {var.aval.dtype for var in jaxpr.jaxpr.outvars} == {jnp.dtype(jnp.float32)}


def test_bfloat16_logits_are_close_to_float32_logits():
  # The same float32 parameters (same init key) run in both dtypes. bfloat16 keeps 8
  # significant bits (unit roundoff u = 2^-9): each of small_cnn's 3 conv + BN layers rounds
  # its input, weights and output once, so the logits move by a few u of their scale
  # (measured: 0.6 u of the largest logit); the bound is 8 u, and the difference must not
  # be 0 (bfloat16 is really used).
  images = random_images(IMAGE_SHAPE, seed=4)
  logits = {}
  for dtype in ("float32", "bfloat16"):
    model = create_model("small_cnn", num_classes=10, dtype=dtype,
                         rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    logits[dtype] = np.asarray(model(images, train=True))
  assert logits["bfloat16"].dtype == np.float32
  error = np.abs(logits["bfloat16"] - logits["float32"]).max()
  assert 0 < error <= 2**-6 * np.abs(logits["float32"]).max()


def test_unknown_dtype_lists_valid_names():
  with pytest.raises(ValueError, match="unknown dtype 'float16'.*bfloat16, float32"):
    create_model("small_cnn", num_classes=10, dtype="float16", rngs=nnx.Rngs(0))


def test_conv_init_is_kaiming_normal_fan_out():
  # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (k * k * out)).
  kernel = np.asarray(built_model("small_cnn").layers[2].conv.kernel[...])
  assert kernel.shape == (3, 3, 32, 64)
  expected_std = np.sqrt(2.0 / (3 * 3 * 64))
  assert np.std(kernel) == pytest.approx(expected_std, rel=0.03)
  assert abs(np.mean(kernel)) < 0.05 * expected_std
  # An untruncated normal has ~4.6% of its mass beyond 2 std.
  assert np.mean(np.abs(kernel) > 2 * expected_std) > 0.03


@pytest.mark.parametrize("name", CHEAP_MODELS)
def test_eval_mode_is_deterministic_and_leaves_batch_stats(name):
  params, rest, forward = compiled_forward(name)
  images = random_images(IMAGE_SHAPE)
  first, first_rest = forward(params, rest, images, train=False)
  second, _ = forward(params, rest, images, train=False)
  np.testing.assert_array_equal(first, second)
  jax.tree.map(np.testing.assert_array_equal, first_rest, rest)
  # Running statistics, not batch statistics: changing the second image leaves the first's logits.
  other = images.at[1].set(random_images(IMAGE_SHAPE[1:], seed=5))
  np.testing.assert_allclose(
      forward(params, rest, other, train=False)[0][0], first[0], rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("name", CHEAP_MODELS)
def test_train_mode_updates_every_batch_stat(name):
  params, rest, forward = compiled_forward(name)
  images = random_images(IMAGE_SHAPE)
  first, new_rest = forward(params, rest, images, train=True)
  changed = jax.tree.map(lambda old, new: not np.allclose(old, new), rest, new_rest)
  assert all(jax.tree.leaves(changed))
  # Batch statistics in training: the logits of an image depend on the rest of the batch.
  other = images.at[1].set(random_images(IMAGE_SHAPE[1:], seed=5))
  assert not np.allclose(forward(params, rest, other, train=True)[0][0], first[0])


def numpy_conv_same(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Stride-1 cross-correlation with zero padding k // 2: [B, H, W, C] x [k, k, C, O]."""
  size = kernel.shape[0]
  pad = size // 2
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  height, width = images.shape[1:3]
  out = np.zeros(images.shape[:3] + kernel.shape[-1:], np.float64)
  for dy in range(size):
    for dx in range(size):
      window = padded[:, dy : dy + height, dx : dx + width, :]
      out += np.einsum("bhwc,co->bhwo", window, kernel[dy, dx])
  return out


def test_train_mode_running_mean_uses_pytorch_momentum():
  params, rest, forward = compiled_forward("small_cnn")
  images = random_images(IMAGE_SHAPE, seed=3)
  _, new_rest = forward(params, rest, images, train=True)
  first = nnx.merge(nnx.graphdef(built_model("small_cnn")), params, new_rest).layers[0]
  conv_out = numpy_conv_same(np.asarray(images, np.float64), np.asarray(first.conv.kernel[...]))
  # PyTorch momentum 0.1: running_mean = 0.9 * 0 + 0.1 * batch_mean.
  np.testing.assert_allclose(
      first.bn.mean[...], 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )


@pytest.mark.parametrize("name", CHEAP_MODELS)
def test_split_merge_under_jit_matches_eager(name):
  params, rest, forward = compiled_forward(name)
  eager = nnx.clone(built_model(name))
  images = random_images(IMAGE_SHAPE, seed=1)
  eval_logits, _ = forward(params, rest, images, train=False)
  np.testing.assert_allclose(eval_logits, eager(images, train=False), rtol=1e-5, atol=1e-5)
  train_logits, train_rest = forward(params, rest, images, train=True)
  np.testing.assert_allclose(train_logits, eager(images, train=True), rtol=1e-4, atol=1e-4)
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
      train_rest,
      nnx.split(eager, nnx.Param, ...)[2],
  )


def test_gradient_through_split_params():
  params, rest, _ = compiled_forward("small_cnn")
  graphdef = nnx.graphdef(built_model("small_cnn"))
  images = random_images(IMAGE_SHAPE, seed=2)
  labels = jnp.array([1, 7], jnp.int32)

  def loss(params, rest):
    # copy=True: jax.grad closes over `rest`, so its Variables belong to the outer (jit)
    # trace and BatchNorm could not update them in place.
    logits = nnx.merge(graphdef, params, rest, copy=True)(images, train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  grads = jax.jit(jax.grad(loss))(params, rest)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree.leaves(grads))


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="resnet19") as error:
    create_model("resnet19", num_classes=10, rngs=nnx.Rngs(0))
  for name in ALL_MODELS:
    assert name in str(error.value)


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_num_classes_below_two_raises(num_classes):
  with pytest.raises(ValueError, match=f"num_classes.*{num_classes}"):
    create_model("small_cnn", num_classes=num_classes, rngs=nnx.Rngs(0))


def test_in_channels_below_one_raises():
  with pytest.raises(ValueError, match="in_channels.*0"):
    create_model("small_cnn", num_classes=10, in_channels=0, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (8, 8, 3)])
def test_wrong_image_shape_raises(shape):
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    built_model("small_cnn")(jnp.zeros(shape), train=False)
