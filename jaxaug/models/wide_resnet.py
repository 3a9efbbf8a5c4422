"""Wide ResNets (Zagoruyko & Komodakis 2016) with pre-activation blocks, laid out as the
standard PyTorch implementation (xternalz/WideResNet-pytorch) without dropout.

`dtype` is the computation dtype of the convolutions and batch norms (see `jaxaug.models.cnn`).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.typing import DTypeLike as Dtype

from jaxaug.models.cnn import batch_norm, check_images, conv, global_avg_pool


class WideBlock(nnx.Module):
  """Pre-activation block: BN-ReLU-conv3x3 (with stride), BN-ReLU-conv3x3, plus a shortcut.

  Where the width changes the shortcut is a bias-free 1x1 conv (with stride) of the
  pre-activated input; otherwise it is the identity on the raw input.
  """

  def __init__(self, in_features: int, out_features: int, strides: int, *,
               dtype: Dtype | None = None, rngs: nnx.Rngs):
    self.bn1 = batch_norm(in_features, dtype=dtype, rngs=rngs)
    self.conv1 = conv(in_features, out_features, 3, strides=strides, dtype=dtype, rngs=rngs)
    self.bn2 = batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.conv2 = conv(out_features, out_features, 3, dtype=dtype, rngs=rngs)
    self.shortcut = (
        None
        if in_features == out_features
        else conv(in_features, out_features, 1, strides=strides, dtype=dtype, rngs=rngs)
    )

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, in_features] -> [B, H / strides, W / strides, out_features]."""
    use_running_average = not train
    activated = jax.nn.relu(self.bn1(x, use_running_average=use_running_average))
    y = self.conv1(activated)
    y = self.conv2(jax.nn.relu(self.bn2(y, use_running_average=use_running_average)))
    residual = x if self.shortcut is None else self.shortcut(activated)
    return y + residual


class WideResNet(nnx.Module):
  """WRN-depth-widen_factor: a 3x3 conv of 16, three groups of (depth - 4) / 6 WideBlocks of
  16k, 32k, 64k channels (k = widen_factor; stride 1, 2, 2), BN-ReLU, global average
  pooling and a dense head."""

  def __init__(
      self,
      depth: int,
      widen_factor: int,
      *,
      num_classes: int,
      in_channels: int,
      dtype: Dtype | None = None,
      rngs: nnx.Rngs,
  ):
    if depth < 10 or (depth - 4) % 6 != 0:
      raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n >= 1, got {depth}")
    if widen_factor < 1:
      raise ValueError(f"Wide-ResNet widen_factor must be >= 1, got {widen_factor}")
    self.in_channels = in_channels
    blocks_per_group = (depth - 4) // 6
    self.stem = conv(in_channels, 16, 3, dtype=dtype, rngs=rngs)
    blocks = []
    in_features = 16
    for group, group_strides in enumerate((1, 2, 2)):
      out_features = 16 * widen_factor * 2**group
      for index in range(blocks_per_group):
        strides = group_strides if index == 0 else 1
        blocks.append(WideBlock(in_features, out_features, strides, dtype=dtype, rngs=rngs))
        in_features = out_features
    self.blocks = nnx.List(blocks)
    self.bn = batch_norm(in_features, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """float32 [B, H, W, in_channels] standardised images -> float32 logits [B, num_classes]."""
    check_images(images, self.in_channels)
    x = self.stem(images)
    for block in self.blocks:
      x = block(x, train=train)
    x = jax.nn.relu(self.bn(x, use_running_average=not train))
    return self.head(global_avg_pool(x))


def wrn28_10(
    *, num_classes: int, in_channels: int, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> WideResNet:
  """WRN-28-10: 36,479,194 parameters for 10 classes and 3 input channels."""
  return WideResNet(28, 10, num_classes=num_classes, in_channels=in_channels, dtype=dtype,
                    rngs=rngs)


def wrn40_2(
    *, num_classes: int, in_channels: int, dtype: Dtype | None = None, rngs: nnx.Rngs
) -> WideResNet:
  """WRN-40-2: 2,243,546 parameters for 10 classes and 3 input channels."""
  return WideResNet(40, 2, num_classes=num_classes, in_channels=in_channels, dtype=dtype,
                    rngs=rngs)
