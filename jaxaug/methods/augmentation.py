"""The fixed augmentations around a method's own: `config.augment` on stacked batches, a
policy between a fixed spec before and after it, per-image sub-policies."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxaug.augment import fixed
from jaxaug.augment import policies
from jaxaug.methods.training import Settings


def fixed_augment_stack(settings: Settings, rng: jax.Array, images: jax.Array,
                        step: jax.Array | int = 0, *, spec: str | None = None) -> jax.Array:
  """Applies the fixed augmentation to each of T stacked batches, f32 [T, B, H, W, C].

  `spec` is a `jaxaug.augment.fixed` spec, `settings.augment` (`config.augment`) by
  default. `step` (the train step) sets the training progress that scheduled stages
  (`learned(...)`) follow.
  """
  sampler = fixed.compose(settings.augment if spec is None else spec)
  rngs = jax.random.split(rng, images.shape[0])
  progress = settings.progress(jnp.asarray(step))
  # lax.map, not vmap: a vmapped lax.switch (space.apply on the CPU) would run every branch.
  return jax.lax.map(lambda args: sampler(*args, progress=progress), (rngs, images))


def augment_around(settings: Settings, rng: jax.Array, images: jax.Array,
                   step: jax.Array | int, policy: Callable[[jax.Array, jax.Array], jax.Array]
                   | None, *, after: str) -> jax.Array:
  """`config.augment`, then `policy(rng, images)` (skipped if None), then the fixed spec
  `after`: the standard augmentation around a learned policy (e.g. crop + flip before,
  Cutout after), f32 [B, H, W, C] in [0, 1]."""
  before_rng, policy_rng, after_rng = jax.random.split(rng, 3)
  images = fixed_augment_stack(settings, before_rng, images[None], step)[0]
  if policy is not None:
    images = policy(policy_rng, images)
  return fixed_augment_stack(settings, after_rng, images[None], step, spec=after)[0]


def sub_policy_augmenter(op_index: jax.Array, level: jax.Array,
                         probability: jax.Array | None = None, *, names: tuple[str, ...],
                         strategy: str = "auto") -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`(rng, images) -> images` applying image b's ops `op_index[b]` at `level[b]` (int
  [B, L]), each with its `probability[b]` (f32 [B, L]; None: always), with
  `policies.apply_sub_policies`."""
  if probability is None:
    probability = jnp.ones(op_index.shape, jnp.float32)

  def apply(rng: jax.Array, images: jax.Array) -> jax.Array:
    return policies.apply_sub_policies(rng, images, op_index, level, probability, names=names,
                                       strategy=strategy)
  return apply
