"""Pieces every method shares: a split NNX module with its optimiser, losses, evaluation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from flax import struct

from jaxaug import models
from jaxaug.augment import fixed

PyTree = Any
SCHEDULES = ("constant", "cosine", "step")


@struct.dataclass
class Learner:
  """An NNX module as pytrees (`params`, `rest` = batch stats etc.) plus its optax state.

  `graphdef` and `tx` are static: they are part of the jit cache key, not traced.
  """
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  params: nnx.State
  rest: nnx.State
  opt_state: optax.OptState

  @classmethod
  def create(cls, module: nnx.Module, tx: optax.GradientTransformation) -> "Learner":
    """Splits `module` into parameters and the rest, and initialises `tx` on the parameters."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return cls(graphdef=graphdef, tx=tx, params=params, rest=rest, opt_state=tx.init(params))

  def apply(self, params: nnx.State, rest: nnx.State, *args, **kwargs) -> tuple[Any, nnx.State]:
    """Calls the module with `params` and `rest`; returns (output, updated rest)."""
    module = nnx.merge(self.graphdef, params, rest, copy=True)
    output = module(*args, **kwargs)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return output, new_rest

  def apply_update(self, grads: nnx.State, rest: nnx.State | None = None) -> "Learner":
    """One optimiser step along `grads` (the same transform the unrolled look-ahead uses)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state,
                        rest=self.rest if rest is None else rest)


def learning_rate_schedule(optim: ml_collections.ConfigDict, *, steps_per_epoch: float,
                           total_steps: int) -> optax.Schedule:
  """Learning rate per optimiser update from `optim.{learning_rate, schedule, ...}`.

  schedule: 'constant'; 'cosine' (decay to 0 over `total_steps`); 'step' (multiply by
  `step_factor` at each epoch in `step_epochs`). `warmup_epochs` of linear warm-up first.
  """
  if optim.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {optim.schedule!r}; valid: {', '.join(SCHEDULES)}")
  base = optim.learning_rate
  warmup_steps = int(round(optim.get("warmup_epochs", 0) * steps_per_epoch))
  decay_steps = max(total_steps - warmup_steps, 1)
  if optim.schedule == "constant":
    main = optax.constant_schedule(base)
  elif optim.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, decay_steps)
  else:
    boundaries = {int(e * steps_per_epoch) - warmup_steps: optim.step_factor
                  for e in optim.step_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  if not warmup_steps:
    return main
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def make_optimizer(optim: ml_collections.ConfigDict, *, steps_per_epoch: float,
                   total_steps: int) -> optax.GradientTransformation:
  """SGD (momentum, Nesterov) or Adam with decoupled-from-loss L2 weight decay and a schedule.

  Weight decay is added to the gradient before momentum (`add_decayed_weights`),
  as PyTorch's SGD does, so the paper's settings carry over.
  """
  schedule = learning_rate_schedule(optim, steps_per_epoch=steps_per_epoch,
                                    total_steps=total_steps)
  if optim.name == "sgd":
    step = optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov)
  elif optim.name == "adam":
    step = optax.adam(schedule, b1=optim.get("b1", 0.9), b2=optim.get("b2", 0.999))
  else:
    raise ValueError(f"unknown optimizer {optim.name!r}; valid: adam, sgd")
  chain = [optax.add_decayed_weights(optim.weight_decay)] if optim.weight_decay else []
  if optim.get("grad_clip"):
    chain.insert(0, optax.clip_by_global_norm(optim.grad_clip))
  return optax.chain(*chain, step)


def standardize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """(images - mean) / std per channel; images f32 [..., C] in [0, 1]."""
  return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy; logits f32 [B, K], labels int [B]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of argmax predictions equal to `labels`."""
  return (logits.argmax(-1) == labels).mean()


def classifier_loss(classifier: Learner, params, rest, images, labels, *, mean, std,
                    train: bool = True):
  """Cross-entropy of the classifier on float images in [0, 1].

  Returns `(loss, (new_rest, {"loss", "accuracy"}))`, the shape `hypergrad` expects.
  """
  logits, new_rest = classifier.apply(params, rest, standardize(images, mean, std), train=train)
  loss = cross_entropy(logits, labels)
  return loss, (new_rest, {"loss": loss, "accuracy": accuracy(logits, labels)})


def eval_metrics(classifier: Learner, batch: dict, *, mean, std) -> dict[str, jax.Array]:
  """Sums over the real (mask=True) examples: `loss_sum`, `correct`, `count`.

  batch: image f32 [B, H, W, C] in [0, 1], label int [B], mask bool [B].
  Sums (not means) so that padded batches and shards add up exactly.
  """
  logits, _ = classifier.apply(classifier.params, classifier.rest,
                               standardize(batch["image"], mean, std), train=False)
  mask = batch["mask"].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {
      "loss_sum": (losses * mask).sum(),
      "correct": ((logits.argmax(-1) == batch["label"]) * mask).sum(),
      "count": mask.sum(),
  }


def first_nonfinite(step: jax.Array, previous: jax.Array, *values: jax.Array) -> jax.Array:
  """The first step at which any of `values` was not finite (-1 while none was)."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))
  return jnp.where((previous < 0) & ~finite, step, previous)


@struct.dataclass
class DataInfo:
  """What a method needs to know about the data to build its state (all static)."""
  num_classes: int = struct.field(pytree_node=False)
  image_shape: tuple[int, int, int] = struct.field(pytree_node=False)
  steps_per_epoch: int = struct.field(pytree_node=False)  # classifier updates per epoch


def create_classifier(config: ml_collections.ConfigDict, rng: jax.Array,
                      info: DataInfo) -> Learner:
  """The classifier `config.model` with its optimiser `config.optim`.

  The schedule counts optimiser updates: `config.num_epochs * info.steps_per_epoch`
  in all, whatever the number of updates a method makes per train step.
  """
  module = models.create_model(config.model, num_classes=info.num_classes,
                               in_channels=info.image_shape[-1],
                               rngs=nnx.Rngs(params=rng))
  total_updates = int(config.num_epochs * info.steps_per_epoch)
  tx = make_optimizer(config.optim, steps_per_epoch=info.steps_per_epoch,
                      total_steps=total_updates)
  return Learner.create(module, tx)


@struct.dataclass
class Settings:
  """Static, hashable per-run settings a step needs (read from the config at init)."""
  augment: str = struct.field(pytree_node=False)  # fixed augmentation spec (augment.fixed)
  mean: tuple[float, ...] = struct.field(pytree_node=False)
  std: tuple[float, ...] = struct.field(pytree_node=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, channels: int) -> "Settings":
    """Validates and broadcasts the per-channel mean/std to `channels`."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    for name, values in (("mean", mean), ("std", std)):
      if len(values) not in (1, channels):
        raise ValueError(f"config.data.{name}={values} must have 1 or {channels} entries")
    if min(std) <= 0:
      raise ValueError(f"config.data.std={std} must be positive")
    fixed.compose(config.augment)  # rejects unknown names now, not inside jit
    return cls(augment=config.augment, mean=mean * (channels // len(mean)),
               std=std * (channels // len(std)))


def fixed_augment_stack(settings: Settings, rng: jax.Array, images: jax.Array) -> jax.Array:
  """Applies the fixed augmentation to each of T stacked batches, f32 [T, B, H, W, C]."""
  sampler = fixed.compose(settings.augment)
  rngs = jax.random.split(rng, images.shape[0])
  # lax.map, not vmap: a vmapped lax.switch (space.apply on the CPU) would run every branch.
  return jax.lax.map(lambda args: sampler(*args), (rngs, images))
