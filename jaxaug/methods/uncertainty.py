"""Uncertainty-based sampling (Wu et al., "On the Generalization Effects of Linear
Transformations in Data Augmentation", ICML 2020, arXiv 2005.00695; HazyResearch's blog
"Automating the Art of Data Augmentation", part III): train on the augmentations the
classifier finds hardest.

Each step draws C random compositions of ops for every image, scores the C copies with the
current classifier (one forward pass in evaluation mode, no gradient), and takes the
classifier's update on k of the C copies of each image: drawn with probability proportional
to their loss (`selection='proportional'`), or the k with the highest loss ('hardest').
`config.augment` comes before the ops and `config.uncertainty.augment_after` after them.
Nothing is learned across steps; the summaries report how often each op is among the
selected copies.

The construction follows the authors' released code (the paper's text is not available
here): a composition is 2 ops drawn uniformly, with replacement, from AutoContrast,
Brightness, Color, Contrast, Cutout, Equalize, Invert, Posterize, Rotate, Sharpness,
ShearX, ShearY, Solarize, TranslateX and TranslateY, each applied with its own probability
drawn uniformly in [0, 1] at a level drawn uniformly over its range (levels 0-10 of the
AutoAugment reference mapping here); then random crop (pad 4), horizontal flip and Cutout
16 px; C = 4 candidates, k = 1 kept, drawn in proportion to the losses. Its Mixup, as an op
and after the composition, is left out (jaxaug trains on hard labels). In jaxaug's order
the crop and flip come first (`config.augment = "crop+hflip"`, as for the other policies)
and Cutout after the ops (`augment_after`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from jaxaug.augment import fixed
from jaxaug.augment import space
from jaxaug.methods import augmentation
from jaxaug.methods import contract
from jaxaug.methods import training


# The authors' released code's ops (its Mixup left out).
OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Cutout", "Equalize", "Invert",
       "Posterize", "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX",
       "TranslateY")
SELECTIONS = ("proportional", "hardest")


@struct.dataclass
class Settings:
  """Static settings (hashable)."""
  ops: tuple[str, ...] = struct.field(pytree_node=False)
  candidates: int = struct.field(pytree_node=False)  # C
  keep: int = struct.field(pytree_node=False)        # k
  depth: int = struct.field(pytree_node=False)
  num_levels: int = struct.field(pytree_node=False)
  random_probability: bool = struct.field(pytree_node=False)
  selection: str = struct.field(pytree_node=False)
  augment_after: str = struct.field(pytree_node=False)
  strategy: str = struct.field(pytree_node=False)


@struct.dataclass
class State:
  step: jax.Array
  classifier: training.Learner
  selected_ops: jax.Array  # f32 [ops]: how often each op was in a selected copy, all steps
  nonfinite_step: jax.Array
  settings: training.Settings = struct.field(pytree_node=False)
  uncertainty: Settings = struct.field(pytree_node=False)


def default_config() -> ml_collections.ConfigDict:
  """`config.uncertainty`: the authors' released code's construction (module docstring)."""
  return ml_collections.ConfigDict({
      "candidates": 4,          # C random compositions per image
      "keep": 1,                # k copies of each image trained on
      "selection": "proportional",  # proportional (to the loss) | hardest (top-k)
      "depth": 2,               # ops per composition
      "ops": OPS,
      "num_levels": 11,         # levels drawn uniformly in 0..num_levels-1 (11: the whole range)
      "random_probability": True,  # each op applied with a probability drawn in [0, 1]
      "augment_after": "cutout(16)",  # after the ops (config.augment comes before them)
      "strategy": "auto",       # space.apply: switch on CPU, select on accelerators
  })


def uses_val_batch(config: ml_collections.ConfigDict) -> bool:
  """No: the candidates are scored on the training batch."""
  del config
  return False


def _settings(cfg: ml_collections.ConfigDict) -> Settings:
  """The validated `config.uncertainty`; ValueError naming the first bad value."""
  for name in ("candidates", "keep", "depth", "num_levels"):
    training.check_integer(f"config.uncertainty.{name}", cfg[name])
  if cfg.keep > cfg.candidates:
    raise ValueError(f"config.uncertainty.keep={cfg.keep} must be <= candidates="
                     f"{cfg.candidates}")
  if cfg.num_levels > space.PARAMETER_MAX + 1:
    raise ValueError(f"config.uncertainty.num_levels={cfg.num_levels} must be <= "
                     f"{space.PARAMETER_MAX + 1}")
  if not cfg.ops or len(set(cfg.ops)) != len(cfg.ops):
    raise ValueError(f"config.uncertainty.ops must name distinct ops, got {cfg.ops!r}")
  space.entries(cfg.ops)
  if cfg.selection not in SELECTIONS:
    raise ValueError(f"unknown config.uncertainty.selection {cfg.selection!r}; valid: "
                     f"{', '.join(SELECTIONS)}")
  if cfg.strategy not in space.STRATEGIES:
    raise ValueError(f"unknown config.uncertainty.strategy {cfg.strategy!r}; valid: "
                     f"{', '.join(space.STRATEGIES)}")
  fixed.check_spec(cfg.augment_after, "config.uncertainty.augment_after")
  return Settings(ops=tuple(cfg.ops), candidates=cfg.candidates, keep=cfg.keep,
                  depth=cfg.depth, num_levels=cfg.num_levels,
                  random_probability=bool(cfg.random_probability), selection=cfg.selection,
                  augment_after=cfg.augment_after, strategy=cfg.strategy)


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: training.DataInfo) -> State:
  """Classifier and optimiser state."""
  settings = _settings(config.uncertainty)
  return State(step=jnp.zeros((), jnp.int32),
               classifier=training.create_classifier(config, rng, info),
               selected_ops=jnp.zeros((len(settings.ops),), jnp.float32),
               nonfinite_step=jnp.full((), -1, jnp.int32),
               settings=training.Settings.from_config(config, info),
               uncertainty=settings)


def draw_candidates(state: State, rng: jax.Array, images: jax.Array):
  """(augmented f32 [B, H, W, C], op_index int [B, depth]): a random composition per image."""
  settings = state.uncertainty
  op_rng, level_rng, probability_rng, augment_rng = jax.random.split(rng, 4)
  shape = (images.shape[0], settings.depth)
  op_index = jax.random.randint(op_rng, shape, 0, len(settings.ops))
  level = jax.random.randint(level_rng, shape, 0, settings.num_levels)
  probability = (jax.random.uniform(probability_rng, shape) if settings.random_probability
                 else jnp.ones(shape, jnp.float32))
  policy = augmentation.sub_policy_augmenter(op_index, level, probability, names=settings.ops,
                                       strategy=settings.strategy)
  return augmentation.augment_around(state.settings, augment_rng, images, state.step, policy,
                               after=settings.augment_after), op_index


def select_hardest(losses: jax.Array, keep: int) -> jax.Array:
  """int [keep, N]: for each example (column of `losses` [C, N]), the candidates with the
  `keep` highest losses, highest first."""
  return jax.lax.top_k(losses.T, keep)[1].T


def select_proportional(rng: jax.Array, losses: jax.Array, keep: int) -> jax.Array:
  """int [keep, N]: for each example (column of `losses` [C, N], positive), `keep` candidates
  drawn independently (with replacement) with probability proportional to their loss."""
  return jax.random.categorical(rng, jnp.log(losses).T, shape=(keep, losses.shape[1]))


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """Scores C candidates per image (image f32 [1, N, H, W, C], label [1, N]) and updates
  the classifier on k of each, selected by their loss (`config.uncertainty.selection`)."""
  del val_batch
  settings = state.uncertainty
  draw_rng, select_rng = jax.random.split(rng)
  images, labels = train_batch["image"][0], train_batch["label"][0]
  count, candidates = images.shape[0], settings.candidates
  augmented, op_index = draw_candidates(state, draw_rng,
                                        jnp.tile(images, (candidates, 1, 1, 1)))
  tiled_labels = jnp.tile(labels, candidates)
  classifier = state.classifier
  _, (_, scored) = training.classifier_loss(
      classifier, classifier.params, classifier.rest, jax.lax.stop_gradient(augmented),
      tiled_labels, mean=state.settings.mean, std=state.settings.std, train=False)
  losses = scored.per_example_loss.reshape(candidates, count)
  chosen = (select_hardest(losses, settings.keep) if settings.selection == "hardest"
            else select_proportional(select_rng, losses, settings.keep))  # [k, N]
  rows = (chosen * count + jnp.arange(count)).reshape(-1)         # into the C N copies
  classifier, aux = training.classifier_updates(
      classifier, state.settings, augmented[rows][None], tiled_labels[rows][None])
  selected_ops = state.selected_ops + jax.nn.one_hot(
      op_index[rows], len(settings.ops)).sum((0, 1))
  metrics = jax.tree.map(jnp.mean, aux.metrics)
  metrics["candidate_loss"] = losses.mean()  # before the update; `loss` is the selected ones'
  nonfinite = training.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"])
  return state.replace(step=state.step + 1, classifier=classifier, selected_ops=selected_ops,
                       nonfinite_step=nonfinite), metrics


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """One random candidate per image (before the selection), f32 [B, H, W, C]."""
  return draw_candidates(state, rng, images)[0]


def summaries(state: State) -> contract.Summaries:
  """The share of each op among the ops of the selected copies so far."""
  total = jnp.maximum(state.selected_ops.sum(), 1.0)
  return contract.Summaries(
      vectors={"uncertainty/selected_op_share": state.selected_ops / total},
      labels=(("uncertainty/selected_op_share", state.uncertainty.ops),))


def copies_per_example(config: ml_collections.ConfigDict) -> int:
  """C: every example's candidates are scored."""
  return config.uncertainty.candidates


def bench_variants(config: ml_collections.ConfigDict) -> list[contract.BenchVariant]:
  """A step scoring C = 4 candidates per example after crop + flip."""
  del config
  return [contract.BenchVariant("uncertainty_C4", {"augment": "crop+hflip",
                                                   "uncertainty.candidates": 4})]
