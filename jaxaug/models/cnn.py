"""Shared layer helpers and the plain CNN classifiers (`badgan`, `small_cnn`).

Layer conventions follow PyTorch/torchvision so that parameter counts and initial
statistics match the reference implementations: bias-free convolutions with symmetric
padding `kernel_size // 2` and He-normal fan-out init, BatchNorm with PyTorch's
momentum 0.1 (Flax's 0.9) and epsilon 1e-5.

Precision: every helper and model takes `dtype`, the computation dtype of its
convolutions and batch norms (their inputs and outputs, i.e. the activations); None
computes in the dtype of the inputs and parameters (float32 normally). Parameters and
batch-norm statistics are stored in float32 whatever `dtype` is, batch norm computes
its statistics in float32, and the global average pooling and the dense head run in
float32, so logits are float32.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike as Dtype

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu").
KAIMING_NORMAL_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    dtype: Dtype | None = None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """A bias-free square convolution, padded by `kernel_size // 2` on every side.

  Maps [B, H, W, in_features] to [B, ceil(H / strides), ceil(W / strides), out_features]
  (for odd kernel sizes), as PyTorch's `Conv2d(..., padding=kernel_size // 2, bias=False)`;
  inputs and the float32 kernel are cast to `dtype` (None: no cast).
  """
  return nnx.Conv(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides=strides,
      padding=kernel_size // 2,
      use_bias=False,
      kernel_init=KAIMING_NORMAL_FAN_OUT,
      dtype=dtype,
      rngs=rngs,
  )


def batch_norm(num_features: int, *, dtype: Dtype | None = None, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm over the last axis with PyTorch's defaults (momentum 0.1, epsilon 1e-5).

  Call it as `bn(x, use_running_average=not train)`. Statistics are computed in (at least)
  float32 and kept in float32; the output is cast to `dtype` (None: the promoted dtype of
  the input and the float32 scale and bias).
  """
  return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def global_avg_pool(features: jax.Array) -> jax.Array:
  """Mean over the spatial axes in (at least) float32: [B, H, W, C] -> float32 [B, C]."""
  return jnp.mean(features, axis=(1, 2), dtype=jnp.promote_types(features.dtype, jnp.float32))


def check_images(images: jax.Array, in_channels: int) -> None:
  """Raises ValueError unless `images` is [B, H, W, in_channels] (static shape check)."""
  if images.ndim != 4 or images.shape[-1] != in_channels:
    raise ValueError(
        f"expected images of shape [B, H, W, {in_channels}], got shape {tuple(images.shape)}"
    )


class ConvBNAct(nnx.Module):
  """Convolution -> BatchNorm -> activation."""

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: int,
      *,
      strides: int = 1,
      activation: Callable[[jax.Array], jax.Array],
      dtype: Dtype | None = None,
      rngs: nnx.Rngs,
  ):
    self.conv = conv(in_features, out_features, kernel_size, strides=strides, dtype=dtype,
                     rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.activation = activation

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, in_features] -> [B, H / strides, W / strides, out_features] in `dtype`."""
    return self.activation(self.bn(self.conv(x), use_running_average=not train))


def leaky_relu_02(x: jax.Array) -> jax.Array:
  """Leaky ReLU with negative slope 0.2 (BadGAN's activation)."""
  return jax.nn.leaky_relu(x, negative_slope=0.2)


# (out_features, kernel_size, strides) of each conv.
ConvLayout = tuple[tuple[int, int, int], ...]

# The official BadGAN CIFAR classifier (kimiyoung/ssl_bad_gan, `Discriminative`).
BADGAN_LAYOUT: ConvLayout = (
    (96, 3, 1), (96, 3, 1), (96, 3, 2),
    (192, 3, 1), (192, 3, 1), (192, 3, 2),
    (192, 3, 1), (192, 1, 1), (192, 1, 1),
)  # fmt: skip

SMALL_CNN_LAYOUT: ConvLayout = ((16, 3, 1), (32, 3, 2), (64, 3, 2))

CNN6_LAYOUT: ConvLayout = (
    (32, 3, 1), (32, 3, 2), (64, 3, 1), (64, 3, 2), (128, 3, 1), (128, 3, 2),
)  # fmt: skip


class PlainCNN(nnx.Module):
  """Conv -> BatchNorm -> activation layers, global average pooling, a dense head."""

  def __init__(
      self,
      layout: ConvLayout,
      *,
      activation: Callable[[jax.Array], jax.Array],
      num_classes: int,
      in_channels: int,
      dtype: Dtype | None = None,
      rngs: nnx.Rngs,
  ):
    self.in_channels = in_channels
    layers = []
    in_features = in_channels
    for out_features, kernel_size, strides in layout:
      layers.append(
          ConvBNAct(
              in_features,
              out_features,
              kernel_size,
              strides=strides,
              activation=activation,
              dtype=dtype,
              rngs=rngs,
          )
      )
      in_features = out_features
    self.layers = nnx.List(layers)
    self.head = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """float32 [B, H, W, in_channels] standardised images -> float32 logits [B, num_classes]."""
    check_images(images, self.in_channels)
    x = images
    for layer in self.layers:
      x = layer(x, train=train)
    return self.head(global_avg_pool(x))


def badgan(
    *, num_classes: int, in_channels: int, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> PlainCNN:
  """The 9-convolution CIFAR classifier of BadGAN (Dai et al. 2017), as used by DABO.

  Layout of the official code: three 3x3 convs of 96 channels (the third with stride 2),
  three 3x3 convs of 192 (the third with stride 2), a 3x3 conv and two 1x1 convs of 192,
  global average pooling and a dense head; leaky ReLU of slope 0.2 after every conv.
  Differences: BatchNorm after each conv in place of weight normalisation; no input noise
  and no dropout (models here hold no RNG state); the last 3x3 conv is padded (the
  original's is not) so that any input size works.
  """
  return PlainCNN(
      BADGAN_LAYOUT,
      activation=leaky_relu_02,
      num_classes=num_classes,
      in_channels=in_channels,
      dtype=dtype,
      rngs=rngs,
  )


def small_cnn(
    *, num_classes: int, in_channels: int, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> PlainCNN:
  """A tiny CNN for CPU smoke tests: 3x3 convs of 16, 32 (stride 2) and 64 (stride 2)
  channels, each with BatchNorm and ReLU, global average pooling and a dense head."""
  return PlainCNN(
      SMALL_CNN_LAYOUT,
      activation=jax.nn.relu,
      num_classes=num_classes,
      in_channels=in_channels,
      dtype=dtype,
      rngs=rngs,
  )


def cnn6(
    *, num_classes: int, in_channels: int, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> PlainCNN:
  """A 6-convolution CIFAR CNN for reduced-data experiments on a CPU: pairs of 3x3 convs
  of 32, 64 and 128 channels, the second of each pair with stride 2, each with BatchNorm
  and ReLU, global average pooling and a dense head (289k parameters for 10 classes;
  ~18M multiply-adds per 32x32 image, 1/23 of `badgan`)."""
  return PlainCNN(
      CNN6_LAYOUT,
      activation=jax.nn.relu,
      num_classes=num_classes,
      in_channels=in_channels,
      dtype=dtype,
      rngs=rngs,
  )
