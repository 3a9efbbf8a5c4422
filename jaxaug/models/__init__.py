"""Flax NNX image classifiers behind a name registry.

Every model maps float32 standardised images [B, H, W, in_channels] (any H, W >= 1) to
float32 logits [B, num_classes] as `model(images, train=...)`. BatchNorm running
statistics (nnx.BatchStat) are updated only when `train=True`; models hold no RNG state
and no dropout, so `nnx.split(model, nnx.Param, ...)` / `nnx.merge` give pure functions.

Precision (`DTYPES`, `config.dtype`): "float32" computes in the dtype of the inputs and
parameters; "bfloat16" casts the input images and the weights to bfloat16 at each
convolution, so convolutions and activations are bfloat16. Either way the parameters and
batch-norm statistics are float32, batch norm computes its statistics in float32, and the
pooling and dense head run in float32, so logits (and losses) are float32.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxaug.models import cnn, resnet, wide_resnet
from jaxaug.registry import Registry

MODELS = Registry("model")
MODELS.register("badgan")(cnn.badgan)
MODELS.register("small_cnn")(cnn.small_cnn)
MODELS.register("cnn6")(cnn.cnn6)
MODELS.register("resnet18")(resnet.resnet18)
MODELS.register("resnet50")(resnet.resnet50)
MODELS.register("wrn28_10")(wide_resnet.wrn28_10)
MODELS.register("wrn40_2")(wide_resnet.wrn40_2)

# config.dtype -> the computation dtype the layers cast to (None: no cast).
DTYPES = Registry("dtype")
DTYPES.register("float32")(None)
DTYPES.register("bfloat16")(jnp.bfloat16)


def create_model(
    name: str, *, num_classes: int, rngs: nnx.Rngs, in_channels: int = 3,
    dtype: str = "float32"
) -> nnx.Module:
  """Builds the classifier registered as `name`.

  Args:
    name: one of `MODELS.names()`.
    num_classes: number of output logits, >= 2.
    rngs: parameter initialisation keys (`rngs.params`).
    in_channels: channels of the input images, >= 1.
    dtype: one of `DTYPES.names()`, the computation dtype of the convolutions and
      activations (see the module docstring); parameters are float32 either way.

  Returns:
    An nnx.Module called as `model(images, *, train: bool)`: float32 [B, H, W, in_channels]
    -> float32 logits [B, num_classes].

  Raises:
    ValueError: unknown name or dtype (the message lists the valid ones), num_classes < 2
      or in_channels < 1.
  """
  build = MODELS.get(name)
  compute_dtype = DTYPES.get(dtype)
  if num_classes <= 1:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  if in_channels < 1:
    raise ValueError(f"in_channels must be >= 1, got {in_channels}")
  return build(num_classes=num_classes, in_channels=in_channels, dtype=compute_dtype, rngs=rngs)


__all__ = ["DTYPES", "MODELS", "create_model"]
