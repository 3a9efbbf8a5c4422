"""Fixed (non-learned) augmentations, named by string and composed with '+'.

Each entry is a sampler `(rng, images) -> images` over a batch, float32 NHWC in
[0, 1], with independent draws per image. `compose("crop+hflip")` chains entries
left to right. `"predefined"` is the standard CIFAR recipe (pad 4, random crop,
horizontal flip) that every paper compares against.
"""

from __future__ import annotations

from typing import Callable

import jax

from jaxaug.augment import transforms
from jaxaug.registry import Registry

Sampler = Callable[[jax.Array, jax.Array], jax.Array]
FIXED: Registry[Sampler] = Registry("augmentation")


@FIXED.register("none")
def identity(rng: jax.Array, images: jax.Array) -> jax.Array:
  """No augmentation."""
  del rng
  return images


@FIXED.register("hflip")
def random_hflip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Horizontal flip with probability 1/2 per image."""
  return transforms.random_flip(rng, images, horizontal=True, vertical=False)


@FIXED.register("vflip")
def random_vflip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Vertical flip with probability 1/2 per image."""
  return transforms.random_flip(rng, images, horizontal=False, vertical=True)


@FIXED.register("crop")
def random_crop(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Zero-pad by 4 pixels and crop back at a uniform offset per image."""
  return transforms.random_pad_and_crop(rng, images, padding=4)


@FIXED.register("predefined")
def predefined(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Pad-4 random crop then horizontal flip: the standard CIFAR augmentation."""
  return compose("crop+hflip")(rng, images)


def compose(spec: str) -> Sampler:
  """The sampler for `spec`, names from `FIXED` joined by '+', applied left to right.

  Each stage gets its own key folded from `rng`, so stages draw independently.
  """
  samplers = [FIXED.get(name.strip()) for name in spec.split("+")]

  def apply(rng: jax.Array, images: jax.Array) -> jax.Array:
    for index, sampler in enumerate(samplers):
      images = sampler(jax.random.fold_in(rng, index), images)
    return images

  return apply
