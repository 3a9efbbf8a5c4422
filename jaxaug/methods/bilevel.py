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

config.bilevel: truncation (T), update_every (K), augmenter (kind, size, bounds,
init_scale, symmetric), optim (the augmenter's optimiser), second_order ('forward' |
'reverse'), remat.
The validation loss uses batch statistics (train-mode batch norm) without
keeping them. The augmenter's pieces (`augmenter_config`, `create_augmenter`,
`learned_augment`, `augment`, `summaries`, `export_policy`) also serve `invariant`.
With `config.dtype=bfloat16` the classifier's convolutions run in bfloat16;
the augmenter network, the augmentation ops and the hypergradient (accumulated through the
float32 parameters, optimiser states and images of the unroll) stay float32.
"""

from __future__ import annotations

import json

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
from jaxaug.methods import common
from jaxaug.methods import supervised


@struct.dataclass
class AugmenterSettings:
  """Static settings of a learned augmenter (hashable); shared with `invariant`."""
  kind: str = struct.field(pytree_node=False)
  noise_dim: int = struct.field(pytree_node=False)
  steps_per_epoch: int = struct.field(pytree_node=False)  # rows of `trajectory` are epochs
  augmenter_json: str = struct.field(pytree_node=False)  # `_augmenter_settings`, for export
  learned_by: str = struct.field(pytree_node=False)  # how it is trained, for the export


@struct.dataclass
class Settings:
  """Static bilevel settings (hashable)."""
  update_every: int = struct.field(pytree_node=False)
  second_order: str = struct.field(pytree_node=False)
  remat: bool = struct.field(pytree_node=False)


@struct.dataclass
class State:
  step: jax.Array
  classifier: common.Learner
  augmenter: common.Learner
  trajectory: jax.Array      # f32 [epochs, P]: the augmenter (flat) at the end of each epoch
  nonfinite_step: jax.Array  # first step with a non-finite loss or hypergradient, -1 if none
  settings: common.Settings = struct.field(pytree_node=False)
  augmenter_settings: AugmenterSettings = struct.field(pytree_node=False)
  bilevel: Settings = struct.field(pytree_node=False)


USES_VAL_BATCH = True  # the augmenter learns from the validation loss
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
      "optim": common.adam_optimizer(1e-3, grad_clip=1.0),
  })


def default_config() -> ml_collections.ConfigDict:
  """`config.bilevel`: truncation, update frequency, augmenter and its optimiser."""
  config = ml_collections.ConfigDict({
      "truncation": 1,          # T: classifier updates back-propagated through per augmenter update
      "update_every": 1,        # K: augmenter update every K train steps
      "second_order": "forward",  # forward (forward-over-reverse, fast) | reverse (plain autodiff)
      "remat": False,           # rematerialise inner steps: memory O(1) in T
  })
  config.update(augmenter_config())
  return config


def train_batches_per_step(config: ml_collections.ConfigDict) -> int:
  """T: the truncation, i.e. classifier updates (and training batches) per step."""
  truncation = config.bilevel.truncation
  common.check_integer("config.bilevel.truncation", truncation)
  return truncation


def _augmenter_settings(cfg: ml_collections.ConfigDict) -> dict:
  """What rebuilds the augmenter module (exported with its policy)."""
  return {"kind": cfg.augmenter.kind, "size": cfg.augmenter.size,
          "bounds": dict(cfg.augmenter.bounds), "init_scale": cfg.augmenter.init_scale,
          "symmetric": cfg.augmenter.symmetric}


def create_augmenter(section: str, config: ml_collections.ConfigDict, rng: jax.Array,
                     info: common.DataInfo, *, update_every: int, learned_by: str
                     ) -> tuple[common.Learner, AugmenterSettings, jax.Array]:
  """The augmenter network of `config.<section>` (`augmenter_config`) with its optimiser.

  Its optimiser schedule counts its own updates, one every `update_every` train steps
  (0, K, 2K, ...). `learned_by` says how it is trained (in the exported summary).
  Returns (learner, static settings, trajectory f32 [epochs, P] filled with the initial
  parameters).
  """
  cfg = config[section]
  channels = info.image_shape[-1]
  if "color" in cfg.augmenter.kind and channels != 3:
    raise ValueError(f"config.{section}.augmenter.kind={cfg.augmenter.kind!r} needs RGB images; "
                     f"these have {channels} channel(s): use 'affine' or 'translation'")
  module = augmenters.create_augmenter(cfg.augmenter.kind, cfg.augmenter.size,
                                       rngs=nnx.Rngs(params=rng),
                                       symmetric=cfg.augmenter.symmetric,
                                       init_scale=cfg.augmenter.init_scale,
                                       **cfg.augmenter.bounds)
  updates_per_epoch, updates = info.updates_every(update_every)
  tx = common.make_optimizer(cfg.optim, steps_per_epoch=updates_per_epoch, total_steps=updates)
  augmenter = common.Learner.create(module, tx)
  settings = AugmenterSettings(kind=cfg.augmenter.kind, noise_dim=module.noise_dim,
                               steps_per_epoch=info.steps_per_epoch,
                               augmenter_json=json.dumps(_augmenter_settings(cfg), sort_keys=True),
                               learned_by=learned_by)
  return augmenter, settings, jnp.tile(_flat(augmenter), (info.num_epoch_slots, 1))


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: common.DataInfo) -> State:
  """Classifier, augmenter and their optimisers."""
  cfg = config.bilevel
  common.check_integer("config.bilevel.update_every", cfg.update_every)
  if cfg.second_order not in hypergrad.SECOND_ORDER_MODES:
    raise ValueError(f"unknown config.bilevel.second_order {cfg.second_order!r}; valid: "
                     f"{', '.join(hypergrad.SECOND_ORDER_MODES)}")
  classifier_rng, augmenter_rng = jax.random.split(rng)
  augmenter, augmenter_settings, trajectory = create_augmenter(
      "bilevel", config, augmenter_rng, info, update_every=cfg.update_every,
      learned_by="online bilevel optimisation (the validation loss after T unrolled "
                 "classifier updates)")
  return State(
      step=jnp.zeros((), jnp.int32),
      classifier=common.create_classifier(config, classifier_rng, info),
      augmenter=augmenter,
      trajectory=trajectory,
      nonfinite_step=jnp.full((), -1, jnp.int32),
      settings=common.Settings.from_config(config, info),
      augmenter_settings=augmenter_settings,
      bilevel=Settings(update_every=cfg.update_every, second_order=cfg.second_order,
                       remat=cfg.remat))


def _flat(augmenter: common.Learner) -> jax.Array:
  """The augmenter's parameters and other state as one vector [P] (`learned.bilevel_template`
  unravels it)."""
  return ravel_pytree((augmenter.params, augmenter.rest))[0]


def record_trajectory(state: State, augmenter: common.Learner) -> jax.Array:
  """`state.trajectory` [epochs, P] with the row of `state.step`'s epoch set to `augmenter`."""
  return common.record_epoch(state.trajectory, state.step,
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


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """T classifier updates on augmented train batches, then (every K steps) one augmenter update.

  train_batch: image f32 [T, B, H, W, C] in [0, 1], label int [T, B].
  val_batch: image f32 [B', H, W, C], label [B'], disjoint from train_batch.
  """
  fixed_rng, noise_rng = jax.random.split(rng)
  flipped = common.fixed_augment_stack(state.settings, fixed_rng, train_batch["image"],
                                       state.step)
  settings = state.settings

  def val_loss_after_updates(augmenter_params):
    images, _ = learned_augment(state, augmenter_params, flipped, noise_rng)
    classifier, aux = supervised.classifier_updates(
        state.classifier, settings, images, train_batch["label"],
        second_order=state.bilevel.second_order, remat=state.bilevel.remat)
    val_loss, (_, val_aux) = common.classifier_loss(
        classifier, classifier.params, classifier.rest, val_batch["image"], val_batch["label"],
        mean=settings.mean, std=settings.std)
    return val_loss, (classifier, aux.metrics, val_aux.metrics["accuracy"])

  def with_augmenter_update(augmenter):
    (val_loss, aux), hypergrads = jax.value_and_grad(val_loss_after_updates, has_aux=True)(
        augmenter.params)
    return augmenter.apply_update(hypergrads), val_loss, aux, optax.global_norm(hypergrads)

  def without_augmenter_update(augmenter):
    val_loss, aux = val_loss_after_updates(augmenter.params)
    return augmenter, val_loss, aux, jnp.zeros((), jnp.float32)

  updates = state.step % state.bilevel.update_every == 0
  if state.bilevel.update_every == 1:
    augmenter, val_loss, aux, hypergrad_norm = with_augmenter_update(state.augmenter)
  else:
    augmenter, val_loss, aux, hypergrad_norm = jax.lax.cond(
        updates, with_augmenter_update, without_augmenter_update, state.augmenter)
  classifier, metrics, val_accuracy = aux

  metrics = jax.tree.map(jnp.mean, metrics)
  metrics.update(val_loss=val_loss, val_accuracy=val_accuracy,
                 hypergrad_norm=common.Sparse(hypergrad_norm, updates))
  nonfinite = common.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"],
                                     val_loss, hypergrad_norm)
  return state.replace(step=state.step + 1, classifier=classifier, augmenter=augmenter,
                       trajectory=record_trajectory(state, augmenter),
                       nonfinite_step=nonfinite), metrics


def eval_step(state: State, batch: dict) -> dict:
  """Loss/accuracy sums of the classifier on a masked batch (see `common.eval_metrics`)."""
  return common.eval_metrics(state.classifier, batch, mean=state.settings.mean,
                             std=state.settings.std)


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """Fixed then learned augmentation of f32 [B, H, W, C] images, as training sees them
  (also `invariant`'s)."""
  fixed_rng, noise_rng = jax.random.split(rng)
  flipped = common.fixed_augment_stack(state.settings, fixed_rng, images[None], state.step)[0]
  return learned_augment(state, state.augmenter.params, flipped, noise_rng)[0]


def _transformation_draws(state: State) -> jax.Array:
  """The augmenter's transformation parameters for `SUMMARY_DRAWS` fixed noise draws, [N, P]."""
  noise = jax.random.normal(jax.random.PRNGKey(0),
                            (SUMMARY_DRAWS, state.augmenter_settings.noise_dim))
  params, _ = state.augmenter.apply(state.augmenter.params, state.augmenter.rest, noise)
  return params


def summaries(state: State) -> common.Summaries:
  """Mean/std of each learned transformation parameter (`aug/...`) and their histograms,
  over `SUMMARY_DRAWS` noise draws (the same draws at every log step); also `invariant`'s."""
  params = _transformation_draws(state)
  names = augmenters.AUGMENTERS.get(state.augmenter_settings.kind).param_names
  described = augmenters.describe_params(state.augmenter_settings.kind, params)
  return common.Summaries(
      scalars={f"aug/{name}": value for name, value in described.items()},
      histograms={f"aug/{name}": params[:, index] for index, name in enumerate(names)})


def export_policy(state: State) -> learned.Policy:
  """The augmenter at the end of each epoch (flat parameters, one schedule row per epoch),
  its kind, size and bounds (also `invariant`'s: any state with `augmenter`, `trajectory`
  and `augmenter_settings`)."""
  described = jax.device_get(augmenters.describe_params(state.augmenter_settings.kind,
                                                        _transformation_draws(state)))
  settings = json.loads(state.augmenter_settings.augmenter_json)
  return learned.Policy(
      family="bilevel", settings=settings,
      summary={"what": f"a {settings['kind']} augmenter network (noise -> transformation "
                       f"parameters per image), learned by "
                       f"{state.augmenter_settings.learned_by}",
               "final_parameter_statistics": {name: float(value)
                                              for name, value in described.items()}},
      arrays={"augmenter": np.asarray(jax.device_get(state.trajectory), np.float32)})

