"""ResNets (He et al. 2016): the CIFAR ResNet-18 of kuangliu/pytorch-cifar and
torchvision's ImageNet ResNet-50 (v1.5: the stride sits on the 3x3 conv of a bottleneck).

`dtype` is the computation dtype of the convolutions and batch norms (see `jaxaug.models.cnn`).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx
from jax.typing import DTypeLike as Dtype

from jaxaug.models.cnn import batch_norm, check_images, conv, global_avg_pool

STAGE_WIDTHS = (64, 128, 256, 512)


class Projection(nnx.Module):
  """Shortcut that changes width or resolution: 1x1 conv (with stride) -> BatchNorm."""

  def __init__(self, in_features: int, out_features: int, strides: int, *,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, 1, strides=strides, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, in_features] -> [B, H / strides, W / strides, out_features]."""
    return self.bn(self.conv(x), use_running_average=not train)


def shortcut(
    in_features: int, out_features: int, strides: int, *, dtype: Dtype | None = None,
    rngs: nnx.Rngs
) -> Projection | None:
  """A Projection where the residual branch changes the shape, else None (identity)."""
  if strides == 1 and in_features == out_features:
    return None
  return Projection(in_features, out_features, strides, dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers (the first with stride) plus a shortcut, then ReLU."""

  expansion = 1

  def __init__(self, in_features: int, features: int, strides: int, *,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    self.conv1 = conv(in_features, features, 3, strides=strides, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(features, dtype=dtype, rngs=rngs)
    self.conv2 = conv(features, features, 3, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(features, dtype=dtype, rngs=rngs)
    self.shortcut = shortcut(in_features, features, strides, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, in_features] -> [B, H / strides, W / strides, features]."""
    use_running_average = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=use_running_average))
    y = self.bn2(self.conv2(y), use_running_average=use_running_average)
    residual = x if self.shortcut is None else self.shortcut(x, train=train)
    return jax.nn.relu(y + residual)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (with stride), 1x1 expand by 4, each with BN, plus a shortcut, then ReLU."""

  expansion = 4

  def __init__(self, in_features: int, features: int, strides: int, *,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    out_features = features * self.expansion
    self.conv1 = conv(in_features, features, 1, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(features, dtype=dtype, rngs=rngs)
    self.conv2 = conv(features, features, 3, strides=strides, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(features, dtype=dtype, rngs=rngs)
    self.conv3 = conv(features, out_features, 1, dtype=dtype, rngs=rngs)
    self.bn3 = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.shortcut = shortcut(in_features, out_features, strides, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, in_features] -> [B, H / strides, W / strides, 4 * features]."""
    use_running_average = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=use_running_average))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=use_running_average))
    y = self.bn3(self.conv3(y), use_running_average=use_running_average)
    residual = x if self.shortcut is None else self.shortcut(x, train=train)
    return jax.nn.relu(y + residual)


class ResNet(nnx.Module):
  """Stem, four stages of residual blocks (widths 64..512, stride 2 from the second stage
  on), global average pooling and a dense head.

  `imagenet_stem=False` is the CIFAR stem (3x3 conv, stride 1, no max-pool);
  `imagenet_stem=True` is a 7x7 stride-2 conv followed by a 3x3 stride-2 max-pool.
  """

  def __init__(
      self,
      block: type[BasicBlock] | type[Bottleneck],
      stage_sizes: Sequence[int],
      *,
      imagenet_stem: bool,
      num_classes: int,
      in_channels: int,
      dtype: Dtype | None = None,
      rngs: nnx.Rngs,
  ):
    self.in_channels = in_channels
    self.imagenet_stem = imagenet_stem
    stem_features = STAGE_WIDTHS[0]
    self.stem_conv = conv(
        in_channels,
        stem_features,
        7 if imagenet_stem else 3,
        strides=2 if imagenet_stem else 1,
        dtype=dtype,
        rngs=rngs,
    )
    self.stem_bn = batch_norm(stem_features, dtype=dtype, rngs=rngs)
    blocks = []
    in_features = stem_features
    for stage, (features, num_blocks) in enumerate(zip(STAGE_WIDTHS, stage_sizes, strict=True)):
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        blocks.append(block(in_features, features, strides, dtype=dtype, rngs=rngs))
        in_features = features * block.expansion
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """float32 [B, H, W, in_channels] standardised images -> float32 logits [B, num_classes]."""
    check_images(images, self.in_channels)
    x = jax.nn.relu(self.stem_bn(self.stem_conv(images), use_running_average=not train))
    if self.imagenet_stem:
      x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train=train)
    return self.head(global_avg_pool(x))


def resnet18(
    *, num_classes: int, in_channels: int, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> ResNet:
  """kuangliu/pytorch-cifar ResNet-18: CIFAR stem, BasicBlock x [2, 2, 2, 2].

  11,173,962 parameters for 10 classes and 3 input channels.
  """
  return ResNet(
      BasicBlock,
      (2, 2, 2, 2),
      imagenet_stem=False,
      num_classes=num_classes,
      in_channels=in_channels,
      dtype=dtype,
      rngs=rngs,
  )


def resnet50(
    *, num_classes: int, in_channels: int, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> ResNet:
  """torchvision ResNet-50: ImageNet stem, Bottleneck x [3, 4, 6, 3].

  25,557,032 parameters for 1000 classes and 3 input channels.
  """
  return ResNet(
      Bottleneck,
      (3, 4, 6, 3),
      imagenet_stem=True,
      num_classes=num_classes,
      in_channels=in_channels,
      dtype=dtype,
      rngs=rngs,
  )
