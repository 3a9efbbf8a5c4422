"""Plain supervised training with a fixed augmentation (`none`, `predefined`, ...).

config.augment names the augmentation (see `jaxaug.augment.fixed`); the
validation batch is ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from jaxaug.methods import augmentation
from jaxaug.methods import contract
from jaxaug.methods import training


@struct.dataclass
class State:
  step: jax.Array
  classifier: training.Learner
  nonfinite_step: jax.Array  # first step with a non-finite loss, -1 if none
  settings: training.Settings = struct.field(pytree_node=False)


def default_config() -> ml_collections.ConfigDict:
  """No settings of its own: `config.augment` and `config.optim` say everything."""
  return ml_collections.ConfigDict()


def uses_val_batch(config: ml_collections.ConfigDict) -> bool:
  """No: the loop passes val_batch=None and reads no validation images."""
  del config
  return False


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: training.DataInfo) -> State:
  """Classifier and optimiser state."""
  return State(step=jnp.zeros((), jnp.int32),
               classifier=training.create_classifier(config, rng, info),
               nonfinite_step=jnp.full((), -1, jnp.int32),
               settings=training.Settings.from_config(config, info))


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """One update on train_batch (image f32 [1, B, H, W, C] in [0, 1], label [1, B])."""
  del val_batch
  images = augmentation.fixed_augment_stack(state.settings, rng, train_batch["image"], state.step)
  classifier, aux = training.classifier_updates(state.classifier, state.settings, images,
                                                train_batch["label"])
  metrics = jax.tree.map(jnp.mean, aux.metrics)
  nonfinite = training.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"])
  return state.replace(step=state.step + 1, classifier=classifier,
                       nonfinite_step=nonfinite), metrics


def bench_variants(config: ml_collections.ConfigDict) -> list[contract.BenchVariant]:
  """The fixed baselines: pad-crop + flip, and DABO's validated-magnitude row (the fixed
  stages, then a random transformation of bilevel's augmenter kind at magnitude 1)."""
  kind = config.bilevel.augmenter.kind
  return [contract.BenchVariant("predefined", {"augment": "predefined"}),
          contract.BenchVariant("random_transform", {
              "augment": f"{config.augment}+random_transform({kind!r}, 1.0)"})]
