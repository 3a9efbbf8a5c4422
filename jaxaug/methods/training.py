"""What every method trains with: a split NNX module with its optimiser, the classifier's
loss, updates and evaluation, the run's counts (`DataInfo`) and settings, numeric checks."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from flax import struct

from jaxaug import hypergrad
from jaxaug import models
from jaxaug.augment import fixed

PyTree = Any


SCHEDULES = ("constant", "cosine", "step")


@struct.dataclass
class Learner:
  """Trained parameters (any pytree) with their optax state, and optionally the NNX module.

  `Learner.create(module, tx)` splits an NNX module into `params` (nnx.Param) and `rest`
  (batch statistics etc.); `Learner.of_params(params, tx)` holds a plain pytree (e.g. a
  vector of hyper-parameters) with no module. `graphdef` and `tx` are static: they are part
  of the jit cache key, not traced.
  """
  graphdef: nnx.GraphDef | None = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  params: PyTree
  rest: PyTree
  opt_state: optax.OptState

  @classmethod
  def create(cls, module: nnx.Module, tx: optax.GradientTransformation) -> "Learner":
    """Splits `module` into parameters and the rest, and initialises `tx` on the parameters."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return cls(graphdef=graphdef, tx=tx, params=params, rest=rest, opt_state=tx.init(params))

  @classmethod
  def of_params(cls, params: PyTree, tx: optax.GradientTransformation) -> "Learner":
    """A Learner of a plain pytree of parameters (no module; `apply` is not available)."""
    return cls(graphdef=None, tx=tx, params=params, rest=None, opt_state=tx.init(params))

  def apply(self, params: PyTree, rest: PyTree, *args, **kwargs) -> tuple[Any, PyTree]:
    """Calls the module with `params` and `rest`; returns (output, updated rest).

    Keyword arguments reach the module (e.g. `train=`, or HBA's `hyper=`).
    """
    if self.graphdef is None:
      raise TypeError("this Learner holds plain parameters, not a module: nothing to apply")
    module = nnx.merge(self.graphdef, params, rest, copy=True)
    output = module(*args, **kwargs)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return output, new_rest

  def apply_update(self, grads: PyTree, rest: PyTree | None = None) -> "Learner":
    """One optimiser step along `grads` (the same transform the unrolled look-ahead uses)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state,
                        rest=self.rest if rest is None else rest)


def default_optimizer() -> ml_collections.ConfigDict:
  """The classifier's optimiser: SGD, Nesterov momentum 0.9, weight decay 5e-4, cosine."""
  return ml_collections.ConfigDict({
      "name": "sgd",            # sgd | adam
      "learning_rate": 0.1,
      "momentum": 0.9,
      "nesterov": True,
      "weight_decay": 5e-4,     # L2 added to the gradient (PyTorch SGD semantics)
      "grad_clip": 0.0,         # global-norm clip; 0 disables
      "schedule": "cosine",     # constant | cosine | step
      "warmup_epochs": 0.0,
      "step_epochs": (60, 120, 160),  # for schedule=step
      "step_factor": 0.2,             # for schedule=step
  })


def adam_optimizer(learning_rate: float, *, grad_clip: float = 0.0) -> ml_collections.ConfigDict:
  """An optimiser section with every field of `default_optimizer`: Adam, constant rate."""
  return ml_collections.ConfigDict(default_optimizer().to_dict() | {
      "name": "adam", "learning_rate": learning_rate, "momentum": 0.0, "nesterov": False,
      "weight_decay": 0.0, "grad_clip": grad_clip, "schedule": "constant"})


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


def check_optimizer(optim: ml_collections.ConfigDict, *, name: str) -> None:
  """ValueError, naming the key as `name`.key with its value, for an optimiser section whose
  values `make_optimizer` would take without complaint but train wrongly: an unknown name or
  schedule, a learning rate that is not a finite number >= 0 (0 freezes what it trains), a
  momentum outside [0, 1), a negative weight decay, clip norm or warm-up."""
  def fail(key, requirement):
    raise ValueError(f"{name}.{key}={optim[key]!r} must be {requirement}")

  if optim.name not in ("adam", "sgd"):
    fail("name", "one of adam, sgd")
  if optim.schedule not in SCHEDULES:
    fail("schedule", f"one of {', '.join(SCHEDULES)}")
  rate = optim.learning_rate
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < math.inf:
    fail("learning_rate", "a finite number >= 0")
  if not 0 <= (optim.momentum or 0.0) < 1:
    fail("momentum", "in [0, 1)")
  for key in ("weight_decay", "grad_clip", "warmup_epochs"):
    if (optim.get(key) or 0.0) < 0:
      fail(key, ">= 0")


def optimizer_sections(config: ml_collections.ConfigDict,
                       prefix: str = "config") -> list[tuple[str, ml_collections.ConfigDict]]:
  """(dotted name, section) of every optimiser section of `config`: the ones keyed `optim`."""
  sections = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      if key == "optim":
        sections.append((f"{prefix}.{key}", value))
      else:
        sections += optimizer_sections(value, f"{prefix}.{key}")
  return sections


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


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of argmax predictions equal to `labels`."""
  return (logits.argmax(-1) == labels).mean()


@struct.dataclass
class LossAux:
  """What `classifier_loss` returns beside the mean loss (per update; stacked [T] by unrolls)."""
  metrics: dict[str, jax.Array]  # batch means: "loss", "accuracy"
  per_example_loss: jax.Array    # f32 [B]


def classifier_loss(classifier: Learner, params, rest, images, labels, *, mean, std,
                    train: bool = True, **model_kwargs):
  """Cross-entropy of the classifier on float images [B, H, W, C] in [0, 1], labels int [B].

  `model_kwargs` reach the model (e.g. HBA's per-example `hyper=` [B, D]).
  Returns `(mean loss, (new_rest, LossAux))`, the shape `hypergrad` expects.
  """
  logits, new_rest = classifier.apply(params, rest, standardize(images, mean, std), train=train,
                                      **model_kwargs)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  loss = losses.mean()
  return loss, (new_rest, LossAux(metrics={"loss": loss, "accuracy": accuracy(logits, labels)},
                                  per_example_loss=losses))


def eval_metrics(classifier: Learner, batch: dict, *, mean, std,
                 **model_kwargs) -> dict[str, jax.Array]:
  """Sums over the real (mask=True) examples: `loss_sum`, `correct`, `count`.

  batch: image f32 [B, H, W, C] in [0, 1], label int [B], mask bool [B]. `model_kwargs`
  reach the model. Sums (not means) so that padded batches and shards add up exactly.
  """
  logits, _ = classifier.apply(classifier.params, classifier.rest,
                               standardize(batch["image"], mean, std), train=False,
                               **model_kwargs)
  mask = batch["mask"].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {
      "loss_sum": (losses * mask).sum(),
      "correct": ((logits.argmax(-1) == batch["label"]) * mask).sum(),
      "count": mask.sum(),
  }


def classifier_updates(classifier: Learner, settings: "Settings",
                       images: jax.Array, labels: jax.Array, *,
                       model_kwargs: dict | None = None, **unroll_options):
  """Real optimiser updates on T stacked batches (images f32 [T, B, H, W, C], labels [T, B]).

  `model_kwargs`: per-update model keyword arguments, each with a leading [T] axis (HBA's
  `hyper`). Returns `(classifier after T updates, LossAux with leading [T])`;
  differentiable in `images` (see `hypergrad.unrolled_updates`, which also takes
  `unroll_options`).
  """
  def loss_fn(params, rest, inputs):
    images_t, labels_t, kwargs_t = inputs
    return classifier_loss(classifier, params, rest, images_t, labels_t,
                                  mean=settings.mean, std=settings.std, **kwargs_t)

  (params, opt_state, rest), (_, aux) = hypergrad.unrolled_updates(
      loss_fn, classifier.tx, classifier.params, classifier.opt_state, classifier.rest,
      (images, labels, model_kwargs or {}), **unroll_options)
  return classifier.replace(params=params, opt_state=opt_state, rest=rest), aux


def check_integer(name: str, value, minimum: int = 1) -> None:
  """ValueError unless `value` (the config value `name`, e.g. 'config.hba.update_every') is an
  integer (not a bool) >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def first_nonfinite(step: jax.Array, previous: jax.Array, *values: jax.Array) -> jax.Array:
  """The first step at which any of `values` was not finite (-1 while none was)."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))
  return jnp.where((previous < 0) & ~finite, step, previous)


@struct.dataclass
class DataInfo:
  """Every count a method needs, computed once by the trainer (`DataInfo.create`); static.

  A train step takes `batches_per_step` training batches (T for `bilevel`), so an epoch
  has `steps_per_epoch = batches_per_epoch // batches_per_step` train steps (the pipeline
  makes `batches_per_epoch` a multiple of `batches_per_step`) and the run
  `total_steps = ceil(num_epochs * steps_per_epoch)`; the classifier takes
  `updates_per_epoch = steps_per_epoch * batches_per_step` optimiser updates per epoch.
  """
  num_classes: int = struct.field(pytree_node=False)
  image_shape: tuple[int, int, int] = struct.field(pytree_node=False)
  batches_per_epoch: int = struct.field(pytree_node=False)
  batches_per_step: int = struct.field(pytree_node=False)
  steps_per_epoch: int = struct.field(pytree_node=False)
  total_steps: int = struct.field(pytree_node=False)
  num_epochs: float = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, num_classes: int, image_shape: tuple[int, int, int], batches_per_epoch: int,
             batches_per_step: int = 1, num_epochs: float) -> "DataInfo":
    """The counts of a run; ValueError unless an epoch holds at least one train step."""
    if batches_per_step < 1 or batches_per_epoch < batches_per_step:
      raise ValueError(f"an epoch of {batches_per_epoch} batches holds no train step of "
                       f"{batches_per_step} batches")
    if not num_epochs > 0:
      raise ValueError(f"num_epochs must be > 0, got {num_epochs}")
    steps_per_epoch = batches_per_epoch // batches_per_step
    return cls(num_classes=num_classes, image_shape=tuple(image_shape),
               batches_per_epoch=batches_per_epoch, batches_per_step=batches_per_step,
               steps_per_epoch=steps_per_epoch,
               total_steps=int(math.ceil(num_epochs * steps_per_epoch)), num_epochs=num_epochs)

  @property
  def updates_per_epoch(self) -> int:
    """Classifier optimiser updates per epoch (one per training batch)."""
    return self.steps_per_epoch * self.batches_per_step

  @property
  def num_epoch_slots(self) -> int:
    """Epochs that hold at least one step (rows of per-epoch records): ceil(num_epochs)."""
    return int(math.ceil(self.total_steps / self.steps_per_epoch))

  def updates_every(self, every: int, *, from_step: int = 0) -> tuple[float, int]:
    """(updates per epoch, updates in all) of something updated on the steps s >= from_step
    with s % every == 0 (an augmenter, HBA's lambda): what its optimiser schedule counts."""
    first = -(-from_step // every) * every
    total = -(-(self.total_steps - first) // every)
    return self.steps_per_epoch / every, max(total, 1)


def epoch_row(step: jax.Array, steps_per_epoch: int, rows: int) -> jax.Array:
  """The row of per-epoch records [rows, ...] that train step `step` belongs to (the last
  row for steps past `rows` epochs)."""
  return jnp.minimum(step // steps_per_epoch, rows - 1)


def record_epoch(rows: jax.Array, step: jax.Array, steps_per_epoch: int,
                 value: jax.Array) -> jax.Array:
  """`rows` [R, ...] with the row of `step`'s epoch (`epoch_row`) set to `value`. Called
  after every step, a row ends up holding the epoch's last value."""
  return rows.at[epoch_row(step, steps_per_epoch, rows.shape[0])].set(value.astype(rows.dtype))


def create_classifier(config: ml_collections.ConfigDict, rng: jax.Array, info: DataInfo, *,
                      wrap: Callable[[nnx.Module], nnx.Module] | None = None) -> Learner:
  """The classifier `config.model`, computing in `config.dtype`, with its optimiser
  `config.optim` (parameters and optimiser state float32 whatever `config.dtype` is).

  The schedule counts optimiser updates: `info.updates_per_epoch` per epoch,
  `info.total_steps * info.batches_per_step` in all. `wrap` may turn the model into
  another module before it is split (HBA's hyper-layers).
  """
  module = models.create_model(config.model, num_classes=info.num_classes,
                               in_channels=info.image_shape[-1], dtype=config.dtype,
                               rngs=nnx.Rngs(params=rng))
  if wrap is not None:
    module = wrap(module)
  tx = make_optimizer(config.optim, steps_per_epoch=info.updates_per_epoch,
                      total_steps=info.total_steps * info.batches_per_step)
  return Learner.create(module, tx)


@struct.dataclass
class Settings:
  """Static, hashable per-run settings a step needs (read from the config at init)."""
  augment: str = struct.field(pytree_node=False)  # fixed augmentation spec (augment.fixed)
  mean: tuple[float, ...] = struct.field(pytree_node=False)
  std: tuple[float, ...] = struct.field(pytree_node=False)
  total_steps: int = struct.field(pytree_node=False)  # for the training progress

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, info: DataInfo) -> "Settings":
    """Validates and broadcasts the per-channel mean/std to the images' channels."""
    channels = info.image_shape[-1]
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    for name, values in (("mean", mean), ("std", std)):
      if len(values) not in (1, channels):
        raise ValueError(f"config.data.{name}={values} must have 1 or {channels} entries")
    if min(std) <= 0:
      raise ValueError(f"config.data.std={std} must be positive")
    fixed.check_spec(config.augment, "config.augment")  # unknown names, bad policy folders
    return cls(augment=config.augment, mean=mean * (channels // len(mean)),
               std=std * (channels // len(std)), total_steps=info.total_steps)

  def progress(self, step: jax.Array) -> jax.Array:
    """Fraction of training done before `step`, f32 in [0, 1] (for scheduled augmentations)."""
    return jnp.clip(step / self.total_steps, 0.0, 1.0).astype(jnp.float32)
