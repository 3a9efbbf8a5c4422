"""Plain supervised training with a fixed augmentation (`none`, `predefined`, ...).

config.augment names the augmentation (see `jaxaug.augment.fixed`); the
validation batch is ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from jaxaug import hypergrad
from jaxaug.methods import common


@struct.dataclass
class State:
  step: jax.Array
  classifier: common.Learner
  nonfinite_step: jax.Array  # first step with a non-finite loss, -1 if none
  settings: common.Settings = struct.field(pytree_node=False)


USES_VAL_BATCH = False  # the loop passes val_batch=None: no validation images read


def train_batches_per_step(config: ml_collections.ConfigDict) -> int:
  """One training batch per step."""
  del config
  return 1


def init(config: ml_collections.ConfigDict, rng: jax.Array, sample_batch: dict,
         info: common.DataInfo) -> State:
  """Classifier and optimiser state; `sample_batch` is unused beyond validation of shapes."""
  del sample_batch
  return State(step=jnp.zeros((), jnp.int32),
               classifier=common.create_classifier(config, rng, info),
               nonfinite_step=jnp.full((), -1, jnp.int32),
               settings=common.Settings.from_config(config, info.image_shape[-1]))


def classifier_updates(classifier: common.Learner, settings: common.Settings,
                       images: jax.Array, labels: jax.Array, **unroll_options):
  """Real optimiser updates on T stacked batches (images f32 [T, B, H, W, C], labels [T, B]).

  Returns `(classifier after T updates, per-update metrics [T])`; differentiable in
  `images` (see `hypergrad.unrolled_updates`, which also takes `unroll_options`).
  """
  def loss_fn(params, rest, inputs):
    return common.classifier_loss(classifier, params, rest, *inputs, mean=settings.mean,
                                  std=settings.std)

  (params, opt_state, rest), (_, metrics) = hypergrad.unrolled_updates(
      loss_fn, classifier.tx, classifier.params, classifier.opt_state, classifier.rest,
      (images, labels), **unroll_options)
  return classifier.replace(params=params, opt_state=opt_state, rest=rest), metrics


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """One update on train_batch (image f32 [1, B, H, W, C] in [0, 1], label [1, B])."""
  del val_batch
  images = common.fixed_augment_stack(state.settings, rng, train_batch["image"])
  classifier, metrics = classifier_updates(state.classifier, state.settings, images,
                                           train_batch["label"])
  metrics = jax.tree.map(jnp.mean, metrics)
  nonfinite = common.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"])
  return state.replace(step=state.step + 1, classifier=classifier,
                       nonfinite_step=nonfinite), metrics


def eval_step(state: State, batch: dict) -> dict:
  """Loss/accuracy sums of the classifier on a masked batch (see `common.eval_metrics`)."""
  return common.eval_metrics(state.classifier, batch, mean=state.settings.mean,
                             std=state.settings.std)


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """The fixed augmentation of f32 [B, H, W, C] images, as training sees them."""
  return common.fixed_augment_stack(state.settings, rng, images[None])[0]
