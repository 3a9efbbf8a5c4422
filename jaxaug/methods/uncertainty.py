"""Uncertainty-based sampling (HazyResearch, "Automating the Art of Data Augmentation",
part III): train on the augmentations the classifier finds hardest.

Each step draws C random compositions of ops for every image (each composition `depth`
ops of `config.uncertainty.ops`, each at a uniform level of the AutoAugment reference
mapping), scores the C copies with the current classifier (one forward pass in
evaluation mode, no gradient), and takes the classifier's update on the k copies of each
image with the highest loss (k N images). `config.augment` comes before the ops and
`config.uncertainty.augment_after` after them. Nothing is learned across steps; the
summaries report how often each op is among the selected copies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from jaxaug.augment import fixed
from jaxaug.augment import policies
from jaxaug.augment import space
from jaxaug.methods import common
from jaxaug.methods import supervised

USES_VAL_BATCH = False


@struct.dataclass
class Settings:
  """Static settings (hashable)."""
  ops: tuple[str, ...] = struct.field(pytree_node=False)
  candidates: int = struct.field(pytree_node=False)  # C
  keep: int = struct.field(pytree_node=False)        # k
  depth: int = struct.field(pytree_node=False)
  num_levels: int = struct.field(pytree_node=False)
  augment_after: str = struct.field(pytree_node=False)
  strategy: str = struct.field(pytree_node=False)


@struct.dataclass
class State:
  step: jax.Array
  classifier: common.Learner
  selected_ops: jax.Array  # f32 [ops]: how often each op was in a selected copy, all steps
  nonfinite_step: jax.Array
  settings: common.Settings = struct.field(pytree_node=False)
  uncertainty: Settings = struct.field(pytree_node=False)


def default_config() -> ml_collections.ConfigDict:
  """`config.uncertainty` (the blog gives no constants: C = 4 candidates, k = 1 kept,
  compositions of 2 ops, over the REINFORCE family's op library)."""
  return ml_collections.ConfigDict({
      "candidates": 4,          # C random compositions per image
      "keep": 1,                # k highest-loss copies of each image trained on
      "depth": 2,               # ops per composition
      "ops": policies.ADVERSARIAL_OPS,
      "num_levels": 10,         # levels drawn uniformly in 0..num_levels-1
      "augment_after": "none",  # after the ops (config.augment comes before them)
      "strategy": "auto",       # space.apply: switch on CPU, select on accelerators
  })


def train_batches_per_step(config: ml_collections.ConfigDict) -> int:
  """One training batch per step."""
  del config
  return 1


def _settings(cfg: ml_collections.ConfigDict) -> Settings:
  """The validated `config.uncertainty`; ValueError naming the first bad value."""
  for name in ("candidates", "keep", "depth", "num_levels"):
    common.check_integer(f"config.uncertainty.{name}", cfg[name])
  if cfg.keep > cfg.candidates:
    raise ValueError(f"config.uncertainty.keep={cfg.keep} must be <= candidates="
                     f"{cfg.candidates}")
  if cfg.num_levels > space.PARAMETER_MAX + 1:
    raise ValueError(f"config.uncertainty.num_levels={cfg.num_levels} must be <= "
                     f"{space.PARAMETER_MAX + 1}")
  if not cfg.ops or len(set(cfg.ops)) != len(cfg.ops):
    raise ValueError(f"config.uncertainty.ops must name distinct ops, got {cfg.ops!r}")
  space.entries(cfg.ops)
  if cfg.strategy not in space.STRATEGIES:
    raise ValueError(f"unknown config.uncertainty.strategy {cfg.strategy!r}; valid: "
                     f"{', '.join(space.STRATEGIES)}")
  fixed.compose(cfg.augment_after)
  return Settings(ops=tuple(cfg.ops), candidates=cfg.candidates, keep=cfg.keep,
                  depth=cfg.depth, num_levels=cfg.num_levels,
                  augment_after=cfg.augment_after, strategy=cfg.strategy)


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: common.DataInfo) -> State:
  """Classifier and optimiser state."""
  settings = _settings(config.uncertainty)
  return State(step=jnp.zeros((), jnp.int32),
               classifier=common.create_classifier(config, rng, info),
               selected_ops=jnp.zeros((len(settings.ops),), jnp.float32),
               nonfinite_step=jnp.full((), -1, jnp.int32),
               settings=common.Settings.from_config(config, info),
               uncertainty=settings)


def draw_candidates(state: State, rng: jax.Array, images: jax.Array):
  """(augmented f32 [B, H, W, C], op_index int [B, depth]): a random composition per image."""
  settings = state.uncertainty
  op_rng, level_rng, augment_rng = jax.random.split(rng, 3)
  shape = (images.shape[0], settings.depth)
  op_index = jax.random.randint(op_rng, shape, 0, len(settings.ops))
  level = jax.random.randint(level_rng, shape, 0, settings.num_levels)
  policy = common.sub_policy_augmenter(op_index, level, names=settings.ops,
                                       strategy=settings.strategy)
  return common.augment_around(state.settings, augment_rng, images, state.step, policy,
                               after=settings.augment_after), op_index


def select_hardest(losses: jax.Array, keep: int) -> jax.Array:
  """int [keep, N]: for each example (column of `losses` [C, N]), the candidates with the
  `keep` highest losses, highest first."""
  return jax.lax.top_k(losses.T, keep)[1].T


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """Scores C candidates per image (image f32 [1, N, H, W, C], label [1, N]) and updates
  the classifier on the k hardest of each."""
  del val_batch
  settings = state.uncertainty
  images, labels = train_batch["image"][0], train_batch["label"][0]
  count, candidates = images.shape[0], settings.candidates
  augmented, op_index = draw_candidates(state, rng,
                                        jnp.tile(images, (candidates, 1, 1, 1)))
  tiled_labels = jnp.tile(labels, candidates)
  classifier = state.classifier
  _, (_, scored) = common.classifier_loss(
      classifier, classifier.params, classifier.rest, jax.lax.stop_gradient(augmented),
      tiled_labels, mean=state.settings.mean, std=state.settings.std, train=False)
  losses = scored.per_example_loss.reshape(candidates, count)
  chosen = select_hardest(losses, settings.keep)                  # [k, N]
  rows = (chosen * count + jnp.arange(count)).reshape(-1)         # into the C N copies
  classifier, aux = supervised.classifier_updates(
      classifier, state.settings, augmented[rows][None], tiled_labels[rows][None])
  selected_ops = state.selected_ops + jax.nn.one_hot(
      op_index[rows], len(settings.ops)).sum((0, 1))
  metrics = jax.tree.map(jnp.mean, aux.metrics)
  metrics["candidate_loss"] = losses.mean()  # before the update; `loss` is the selected ones'
  nonfinite = common.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"])
  return state.replace(step=state.step + 1, classifier=classifier, selected_ops=selected_ops,
                       nonfinite_step=nonfinite), metrics


def eval_step(state: State, batch: dict) -> dict:
  """Loss/accuracy sums of the classifier on a masked batch (see `common.eval_metrics`)."""
  return common.eval_metrics(state.classifier, batch, mean=state.settings.mean,
                             std=state.settings.std)


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """One random candidate per image (before the selection), f32 [B, H, W, C]."""
  return draw_candidates(state, rng, images)[0]


def summaries(state: State) -> common.Summaries:
  """The share of each op among the ops of the selected copies so far."""
  total = jnp.maximum(state.selected_ops.sum(), 1.0)
  return common.Summaries(
      vectors={"uncertainty/selected_op_share": state.selected_ops / total},
      labels=(("uncertainty/selected_op_share", state.uncertainty.ops),))


def export_policy(state: State) -> None:
  """Nothing replayable is learned."""
  del state
  return None
