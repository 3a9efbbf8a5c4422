"""Online bilevel optimisation of a learned augmenter with truncated back-propagation (DABO).

Mounsaveng et al., "Learning Data Augmentation with Online Bilevel Optimization
for Image Classification", WACV 2021. Each train step:

1. the fixed augmentation (`config.augment`, e.g. a random flip) and then the
   augmenter network (noise -> bounded transformation parameters per image)
   transform T training batches;
2. the classifier takes T real optimiser updates on them (`hypergrad.unrolled_updates`,
   the same optax transform and state as any other update);
3. every `update_every` steps, the validation loss of the updated classifier on a
   held-out batch is differentiated back through the T updates into the
   augmenter's parameters, which take one optimiser step.

That is `hypergradient='unroll'`, the paper's. With `hypergradient='implicit'` (T = 1)
the augmenter's gradient is instead the implicit-function hypergradient at the current
classifier (Lorraine, Vicol and Duvenaud, AISTATS 2020; for augmentation, MADAO, Hataya
et al., arXiv 2006.07965): `-dL_V/dtheta . H^-1 . d2L_T/(dtheta dlambda)` with `H^-1`
approximated by `neumann_terms` (K) terms of the Neumann series at scale
`neumann_scale` (alpha) (`hypergrad.implicit_hypergradient`), on the step's training and
validation batches, before the classifier's update on that training batch. A one-step
unroll weighs the validation gradient by the learning rate alone (short-horizon bias:
it favours the augmentation whose training gradient points where the validation
gradient points now); the series weighs each curvature direction by up to alpha (K + 1).

config.bilevel: truncation (T), update_every, hypergradient ('unroll' | 'implicit'),
neumann_terms, neumann_scale, augmenter (kind, size, bounds, init_scale, symmetric),
optim (the augmenter's optimiser), second_order ('forward' | 'reverse', the unroll's),
remat.
The validation loss uses batch statistics (train-mode batch norm) without
keeping them. The augmenter's pieces (`augmenter_config`, `create_augmenter`,
`learned_augment`, `augment`, `summaries`, `export_policy`) also serve `invariant`.
With `config.dtype=bfloat16` the classifier's convolutions run in bfloat16;
the augmenter network, the augmentation ops and the hypergradient (accumulated through the
float32 parameters, optimiser states and images of the unroll) stay float32.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxaug import hypergrad
from jaxaug.augment import augmenters
from jaxaug.augment import learned
from jaxaug.methods import augmentation
from jaxaug.methods import contract
from jaxaug.methods import training


@struct.dataclass
class AugmenterSettings:
  """Static settings of a learned augmenter (hashable); shared with `invariant`."""
  kind: str = struct.field(pytree_node=False)
  noise_dim: int = struct.field(pytree_node=False)
  image_shape: tuple[int, int] = struct.field(pytree_node=False)  # (height, width), pixels
  steps_per_epoch: int = struct.field(pytree_node=False)  # rows of `trajectory` are epochs
  augmenter_json: str = struct.field(pytree_node=False)  # `_augmenter_settings`, for export
  learned_by: str = struct.field(pytree_node=False)  # how it is trained, for the export


HYPERGRADIENTS = ("unroll", "implicit")


@struct.dataclass
class Settings:
  """Static bilevel settings (hashable)."""
  update_every: int = struct.field(pytree_node=False)
  second_order: str = struct.field(pytree_node=False)
  remat: bool = struct.field(pytree_node=False)
  hypergradient: str = struct.field(pytree_node=False)
  neumann_terms: int = struct.field(pytree_node=False)
  neumann_scale: float = struct.field(pytree_node=False)


@struct.dataclass
class AugmenterState:
  """A classifier trained with an augmenter network (also `invariant`'s state)."""
  step: jax.Array
  classifier: training.Learner
  augmenter: training.Learner
  trajectory: jax.Array      # f32 [epochs, P]: the augmenter (flat) at the end of each epoch
  nonfinite_step: jax.Array  # first step with a non-finite loss or (hyper)gradient, -1 if none
  settings: training.Settings = struct.field(pytree_node=False)
  augmenter_settings: AugmenterSettings = struct.field(pytree_node=False)


@struct.dataclass
class State(AugmenterState):
  bilevel: Settings = struct.field(pytree_node=False)


SUMMARY_DRAWS = 512  # noise draws behind the summaries of the learned distribution


def augmenter_config() -> ml_collections.ConfigDict:
  """The `augmenter` and `optim` entries of a section of a method that trains an augmenter
  network (`config.bilevel`, `config.invariant`): its kind, size, bounds and optimiser."""
  defaults = augmenters.create_augmenter_defaults()
  return ml_collections.ConfigDict({
      "augmenter": {
          "kind": "affine_color",  # translation | affine | color | affine_color
          "size": "small",         # small | medium | large
          # largest deviation from the identity per parameter, e.g. max_translation
          "bounds": {name: value for name, value in defaults.items() if name.startswith("max_")},
          "init_scale": defaults["init_scale"],  # std of the pre-tanh outputs at initialisation
          "symmetric": defaults["symmetric"],    # deviations as likely as their opposites
      },
      # the augmenter's optimiser: the classifier's fields, Adam 1e-3, clipped, constant
      "optim": training.adam_optimizer(1e-3, grad_clip=1.0),
  })


def default_config() -> ml_collections.ConfigDict:
  """`config.bilevel`: truncation, update frequency, augmenter and its optimiser."""
  config = ml_collections.ConfigDict({
      "truncation": 1,          # T: classifier updates back-propagated through per augmenter update
      "update_every": 1,        # an augmenter update every this many train steps
      # unroll (through T classifier updates, the paper's) | implicit (implicit function
      # theorem at the current classifier, Neumann series; T = 1)
      "hypergradient": "unroll",
      "neumann_terms": 5,       # K: Hessian-vector products of the implicit hypergradient
      "neumann_scale": 0.02,    # alpha: below 2 / the training loss's largest Hessian eigenvalue
      "second_order": "forward",  # the unroll's: forward (forward-over-reverse, fast) | reverse
      "remat": False,           # rematerialise the unroll's inner steps: memory O(1) in T
  })
  config.update(augmenter_config())
  return config


def train_batches_per_step(config: ml_collections.ConfigDict) -> int:
  """T: the truncation, i.e. classifier updates (and training batches) per step."""
  truncation = config.bilevel.truncation
  training.check_integer("config.bilevel.truncation", truncation)
  return truncation


def uses_val_batch(config: ml_collections.ConfigDict) -> bool:
  """Yes: the augmenter learns from the validation loss."""
  del config
  return True


def _augmenter_settings(cfg: ml_collections.ConfigDict) -> dict:
  """What rebuilds the augmenter module (exported with its policy)."""
  return {"kind": cfg.augmenter.kind, "size": cfg.augmenter.size,
          "bounds": dict(cfg.augmenter.bounds), "init_scale": cfg.augmenter.init_scale,
          "symmetric": cfg.augmenter.symmetric}


def create_augmenter(section: str, config: ml_collections.ConfigDict, rng: jax.Array,
                     info: training.DataInfo, *, update_every: int, learned_by: str
                     ) -> tuple[training.Learner, AugmenterSettings, jax.Array]:
  """The augmenter network of `config.<section>` (`augmenter_config`) with its optimiser.

  Its optimiser schedule counts its own updates, one every `update_every` train steps
  (0, K, 2K, ...). `learned_by` says how it is trained (in the exported summary).
  Returns (learner, static settings, trajectory f32 [epochs, P] filled with the initial
  parameters).
  """
  cfg = config[section]
  channels = info.image_shape[-1]
  for name, registry in (("kind", augmenters.AUGMENTERS), ("size", augmenters.AUGMENTER_SIZES)):
    if cfg.augmenter[name] not in registry:
      raise ValueError(f"config.{section}.augmenter.{name}={cfg.augmenter[name]!r}; valid: "
                       f"{', '.join(registry.names())}")
  if "color" in cfg.augmenter.kind and channels != 3:
    raise ValueError(f"config.{section}.augmenter.kind={cfg.augmenter.kind!r} needs RGB images; "
                     f"these have {channels} channel(s): use 'affine' or 'translation'")
  module = augmenters.create_augmenter(cfg.augmenter.kind, cfg.augmenter.size,
                                       rngs=nnx.Rngs(params=rng),
                                       symmetric=cfg.augmenter.symmetric,
                                       init_scale=cfg.augmenter.init_scale,
                                       **cfg.augmenter.bounds)
  updates_per_epoch, updates = info.updates_every(update_every)
  tx = training.make_optimizer(cfg.optim, steps_per_epoch=updates_per_epoch, total_steps=updates)
  augmenter = training.Learner.create(module, tx)
  settings = AugmenterSettings(kind=cfg.augmenter.kind, noise_dim=module.noise_dim,
                               image_shape=tuple(info.image_shape[:2]),
                               steps_per_epoch=info.steps_per_epoch,
                               augmenter_json=json.dumps(_augmenter_settings(cfg), sort_keys=True),
                               learned_by=learned_by)
  return augmenter, settings, jnp.tile(_flat(augmenter), (info.num_epoch_slots, 1))


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: training.DataInfo) -> State:
  """Classifier, augmenter and their optimisers."""
  cfg = config.bilevel
  training.check_integer("config.bilevel.update_every", cfg.update_every)
  if cfg.second_order not in hypergrad.SECOND_ORDER_MODES:
    raise ValueError(f"unknown config.bilevel.second_order {cfg.second_order!r}; valid: "
                     f"{', '.join(hypergrad.SECOND_ORDER_MODES)}")
  if cfg.hypergradient not in HYPERGRADIENTS:
    raise ValueError(f"unknown config.bilevel.hypergradient {cfg.hypergradient!r}; valid: "
                     f"{', '.join(HYPERGRADIENTS)}")
  if cfg.hypergradient == "implicit":
    hypergrad.check_neumann(cfg.neumann_terms, cfg.neumann_scale, prefix="config.bilevel.")
    if cfg.truncation != 1:
      raise ValueError(f"config.bilevel.truncation={cfg.truncation} is the unroll's: "
                       f"hypergradient='implicit' takes one training batch per step (set "
                       f"truncation=1)")
  classifier_rng, augmenter_rng = jax.random.split(rng)
  augmenter, augmenter_settings, trajectory = create_augmenter(
      "bilevel", config, augmenter_rng, info, update_every=cfg.update_every,
      learned_by="online bilevel optimisation (the validation loss after T unrolled "
                 "classifier updates)")
  return State(
      step=jnp.zeros((), jnp.int32),
      classifier=training.create_classifier(config, classifier_rng, info),
      augmenter=augmenter,
      trajectory=trajectory,
      nonfinite_step=jnp.full((), -1, jnp.int32),
      settings=training.Settings.from_config(config, info),
      augmenter_settings=augmenter_settings,
      bilevel=Settings(update_every=cfg.update_every, second_order=cfg.second_order,
                       remat=cfg.remat, hypergradient=cfg.hypergradient,
                       neumann_terms=int(cfg.neumann_terms),
                       neumann_scale=float(cfg.neumann_scale)))


def _flat(augmenter: training.Learner) -> jax.Array:
  """The augmenter's parameters and other state as one vector [P] (`augmenter_template`
  unravels it)."""
  return ravel_pytree((augmenter.params, augmenter.rest))[0]


def record_trajectory(state: State, augmenter: training.Learner) -> jax.Array:
  """`state.trajectory` [epochs, P] with the row of `state.step`'s epoch set to `augmenter`."""
  return training.record_epoch(state.trajectory, state.step,
                             state.augmenter_settings.steps_per_epoch, _flat(augmenter))


def learned_augment(state: State, augmenter_params: nnx.State, images: jax.Array,
                     rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Augmenter applied to f32 [..., B, H, W, C]; returns (images, transformation params [N, P]).

  One noise vector (hence one transformation) per image; N is the number of images.
  `state` is any state with `augmenter` (this module's or `invariant`'s). The same
  function (`augmenters.augment_with`) replays an exported policy.
  """
  flat_images = images.reshape((-1,) + images.shape[-3:])
  augmented, params = augmenters.augment_with(
      (state.augmenter.graphdef, augmenter_params, state.augmenter.rest), flat_images, rng)
  return augmented.reshape(images.shape), params


def step_variant(config: ml_collections.ConfigDict, info: training.DataInfo):
  """'update' on the steps that update the augmenter (every `update_every`), else 'plain'."""
  del info
  every = config.bilevel.update_every
  return lambda step: "update" if step % every == 0 else "plain"


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array,
               variant: str | None = None):
  """T classifier updates on augmented train batches and, every `update_every` steps, one
  augmenter update along the hypergradient (`config.bilevel.hypergradient`).

  train_batch: image f32 [T, B, H, W, C] in [0, 1], label int [T, B].
  val_batch: image f32 [B', H, W, C], label [B'], disjoint from train_batch.
  variant: `step_variant`'s word for this step, or None to decide from `state.step`.
  """
  step = _implicit_step if state.bilevel.hypergradient == "implicit" else _unroll_step
  return step(state, train_batch, val_batch, rng, variant)


def _with_or_without_update(state: State, variant: str | None, with_update, without_update,
                            operand):
  """`with_update(operand)` on update steps, else `without_update(operand)`: chosen here
  when `variant` says which (or every step updates), else by `lax.cond` on `state.step`."""
  if variant is not None or state.bilevel.update_every == 1:
    return (without_update if variant == "plain" else with_update)(operand)
  return jax.lax.cond(state.step % state.bilevel.update_every == 0, with_update,
                      without_update, operand)


def _finish_step(state: State, classifier: training.Learner, augmenter: training.Learner,
                 metrics: dict, updates: jax.Array, val_loss: jax.Array,
                 hypergrad_norm: jax.Array):
  """The state after a step, and its metrics with the hypergradient's norm (on update steps)."""
  metrics.update(hypergrad_norm=contract.Sparse(hypergrad_norm, updates))
  nonfinite = training.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"],
                                     val_loss, hypergrad_norm)
  return state.replace(step=state.step + 1, classifier=classifier, augmenter=augmenter,
                       trajectory=record_trajectory(state, augmenter),
                       nonfinite_step=nonfinite), metrics


def _implicit_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array,
                   variant: str | None):
  """One classifier update; on update steps first the implicit hypergradient at the
  classifier before it (module docstring), from the same training and validation batches."""
  fixed_rng, noise_rng = jax.random.split(rng)
  flipped = augmentation.fixed_augment_stack(state.settings, fixed_rng, train_batch["image"],
                                       state.step)[0]
  labels = train_batch["label"][0]
  classifier, settings, cfg = state.classifier, state.settings, state.bilevel

  def augmented(augmenter_params):
    return learned_augment(state, augmenter_params, flipped, noise_rng)[0]

  def train_loss(params, rest, inputs):
    images, labels = inputs
    return training.classifier_loss(classifier, params, rest, images, labels, mean=settings.mean,
                                  std=settings.std)

  def with_augmenter_update(augmenter):
    images, images_vjp = jax.vjp(augmented, augmenter.params)
    (val_loss, (_, val_aux)), val_grads = jax.value_and_grad(train_loss, has_aux=True)(
        classifier.params, classifier.rest, (val_batch["image"], val_batch["label"]))
    grads, (image_cotangent, _), (_, rest, aux) = hypergrad.implicit_hypergradient(
        train_loss, classifier.params, classifier.rest, (images, labels), val_grads,
        terms=cfg.neumann_terms, scale=cfg.neumann_scale)
    hypergrads = images_vjp(image_cotangent)[0]
    scalars = (val_loss, val_aux.metrics["accuracy"], optax.tree.norm(hypergrads))
    return (grads, rest, aux.metrics, augmenter.apply_update(hypergrads),
            *(scalar.astype(jnp.float32) for scalar in scalars))

  def without_augmenter_update(augmenter):
    (_, (rest, aux)), grads = jax.value_and_grad(train_loss, has_aux=True)(
        classifier.params, classifier.rest, (augmented(augmenter.params), labels))
    zero = jnp.zeros((), jnp.float32)
    return grads, rest, aux.metrics, augmenter, zero, zero, zero

  updates = state.step % cfg.update_every == 0
  grads, rest, metrics, augmenter, val_loss, val_accuracy, hypergrad_norm = (
      _with_or_without_update(state, variant, with_augmenter_update, without_augmenter_update,
                              state.augmenter))
  metrics = dict(metrics, val_loss=contract.Sparse(val_loss, updates),
                 val_accuracy=contract.Sparse(val_accuracy, updates))
  return _finish_step(state, classifier.apply_update(grads, rest), augmenter, metrics, updates,
                      val_loss, hypergrad_norm)


def _unroll_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array,
                 variant: str | None):
  """T classifier updates, then (every `update_every` steps) the augmenter's update along the
  gradient of the validation loss through them."""
  fixed_rng, noise_rng = jax.random.split(rng)
  flipped = augmentation.fixed_augment_stack(state.settings, fixed_rng, train_batch["image"],
                                       state.step)
  settings = state.settings

  def val_loss_after_updates(augmenter_params):
    images, _ = learned_augment(state, augmenter_params, flipped, noise_rng)
    classifier, aux = training.classifier_updates(
        state.classifier, settings, images, train_batch["label"],
        second_order=state.bilevel.second_order, remat=state.bilevel.remat)
    val_loss, (_, val_aux) = training.classifier_loss(
        classifier, classifier.params, classifier.rest, val_batch["image"], val_batch["label"],
        mean=settings.mean, std=settings.std)
    return val_loss, (classifier, aux.metrics, val_aux.metrics["accuracy"])

  def with_augmenter_update(augmenter):
    (val_loss, aux), hypergrads = jax.value_and_grad(val_loss_after_updates, has_aux=True)(
        augmenter.params)
    return (augmenter.apply_update(hypergrads), val_loss, aux,
            optax.tree.norm(hypergrads).astype(jnp.float32))

  def without_augmenter_update(augmenter):
    val_loss, aux = val_loss_after_updates(augmenter.params)
    return augmenter, val_loss, aux, jnp.zeros((), jnp.float32)

  updates = state.step % state.bilevel.update_every == 0
  augmenter, val_loss, aux, hypergrad_norm = _with_or_without_update(
      state, variant, with_augmenter_update, without_augmenter_update, state.augmenter)
  classifier, metrics, val_accuracy = aux

  metrics = jax.tree.map(jnp.mean, metrics)
  metrics.update(val_loss=val_loss, val_accuracy=val_accuracy)
  return _finish_step(state, classifier, augmenter, metrics, updates, val_loss, hypergrad_norm)


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """Fixed then learned augmentation of f32 [B, H, W, C] images, as training sees them
  (also `invariant`'s)."""
  fixed_rng, noise_rng = jax.random.split(rng)
  flipped = augmentation.fixed_augment_stack(state.settings, fixed_rng, images[None], state.step)[0]
  return learned_augment(state, state.augmenter.params, flipped, noise_rng)[0]


def _transformation_draws(state: State) -> jax.Array:
  """The augmenter's transformation parameters for `SUMMARY_DRAWS` fixed noise draws, [N, P]."""
  noise = jax.random.normal(jax.random.PRNGKey(0),
                            (SUMMARY_DRAWS, state.augmenter_settings.noise_dim))
  params, _ = state.augmenter.apply(state.augmenter.params, state.augmenter.rest, noise)
  return params


def summaries(state: State) -> contract.Summaries:
  """Mean/std of each learned transformation parameter (`aug/...`) and their histograms,
  over `SUMMARY_DRAWS` noise draws (the same draws at every log step); also `invariant`'s."""
  params = _transformation_draws(state)
  names = augmenters.AUGMENTERS.get(state.augmenter_settings.kind).param_names
  described = augmenters.describe_params(state.augmenter_settings.kind, params,
                                         image_shape=state.augmenter_settings.image_shape)
  return contract.Summaries(
      scalars={f"aug/{name}": value for name, value in described.items()},
      histograms={f"aug/{name}": params[:, index] for index, name in enumerate(names)})


def export_policy(state: State) -> learned.Policy:
  """The augmenter at the end of each epoch (flat parameters, one schedule row per epoch),
  its kind, size and bounds (also `invariant`'s: any state with `augmenter`, `trajectory`
  and `augmenter_settings`)."""
  described = jax.device_get(augmenters.describe_params(
      state.augmenter_settings.kind, _transformation_draws(state),
      image_shape=state.augmenter_settings.image_shape))
  settings = json.loads(state.augmenter_settings.augmenter_json)
  return learned.Policy(
      family="bilevel", settings=settings,
      summary={"what": f"a {settings['kind']} augmenter network (noise -> transformation "
                       f"parameters per image), learned by "
                       f"{state.augmenter_settings.learned_by}",
               "final_parameter_statistics": {name: float(value)
                                              for name, value in described.items()}},
      arrays={"augmenter": np.asarray(jax.device_get(state.trajectory), np.float32)})


def augmenter_template(settings: dict) -> tuple[nnx.GraphDef, int, Callable]:
  """The augmenter module of exported `settings` (`_augmenter_settings`) as
  (graphdef, P, unravel), where `unravel(flat f32 [P]) -> (params, rest)` (`_flat`'s inverse)."""
  module = augmenters.create_augmenter(
      settings["kind"], settings["size"], rngs=nnx.Rngs(params=0),
      init_scale=settings["init_scale"], symmetric=settings["symmetric"], **settings["bounds"])
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  flat, unravel = ravel_pytree((params, rest))
  return graphdef, flat.shape[0], unravel


def replay_policy(policy: learned.Policy) -> learned.ProgressSampler:
  """`export_policy`'s augmenter replayed (`learned('<dir>')`, also `invariant`'s): array
  augmenter [R, P] (flat parameters at the end of each epoch); each image gets its own noise
  draw, as in training."""
  graphdef, size, unravel = augmenter_template(policy.settings)
  flat = np.asarray(policy.arrays["augmenter"], np.float32)
  if flat.ndim != 2 or flat.shape[1] != size:
    raise ValueError(f"bilevel policy: augmenter parameters {flat.shape} do not fit a "
                     f"{policy.settings['kind']} augmenter of size {policy.settings['size']} "
                     f"([rows, {size}])")

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array) -> jax.Array:
    params, rest = unravel(jnp.asarray(flat)[learned.schedule_row(flat.shape[0], progress)])
    return augmenters.augment_with((graphdef, params, rest), images, rng)[0]

  return sample


IMPLICIT_BENCH_UPDATE_EVERY = 4  # the implicit rows' cost is also given per step at this period


def bench_variants(config: ml_collections.ConfigDict) -> list[contract.BenchVariant]:
  """The unroll at T = 1, 2, 4 (and T = 1 by plain reverse-over-reverse autodiff, the
  reference), the implicit hypergradient's update step at K = 1, 5 and 20 Neumann terms, and its
  step without an update."""
  del config
  unroll = [contract.BenchVariant(f"bilevel_T{truncation}", {"bilevel.truncation": truncation})
            for truncation in (1, 2, 4)]
  implicit = {"bilevel.hypergradient": "implicit"}
  without = "bilevel_implicit_without_update"
  return unroll + [
      contract.BenchVariant("bilevel_T1_reverse_over_reverse",
                            {"bilevel.second_order": "reverse"}),
      contract.BenchVariant(without, {**implicit, "bilevel.update_every": 2}, timed_step=1),
      *(contract.BenchVariant(f"bilevel_implicit_K{terms}",
                              {**implicit, "bilevel.neumann_terms": terms},
                              amortise=(without, IMPLICIT_BENCH_UPDATE_EVERY))
        for terms in (1, 5, 20))]
