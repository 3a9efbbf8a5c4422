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




def default_config() -> ml_collections.ConfigDict:
  """No settings of its own: `config.augment` and `config.optim` say everything."""
  return ml_collections.ConfigDict()


def train_batches_per_step(config: ml_collections.ConfigDict) -> int:
  """One training batch per step."""
  del config
  return 1



def uses_val_batch(config: ml_collections.ConfigDict) -> bool:
  """No: the loop passes val_batch=None and reads no validation images."""
  del config
  return False

def init(config: ml_collections.ConfigDict, rng: jax.Array, info: common.DataInfo) -> State:
  """Classifier and optimiser state."""
  return State(step=jnp.zeros((), jnp.int32),
               classifier=common.create_classifier(config, rng, info),
               nonfinite_step=jnp.full((), -1, jnp.int32),
               settings=common.Settings.from_config(config, info))


def classifier_updates(classifier: common.Learner, settings: common.Settings,
                       images: jax.Array, labels: jax.Array, *,
                       model_kwargs: dict | None = None, **unroll_options):
  """Real optimiser updates on T stacked batches (images f32 [T, B, H, W, C], labels [T, B]).

  `model_kwargs`: per-update model keyword arguments, each with a leading [T] axis (HBA's
  `hyper`). Returns `(classifier after T updates, common.LossAux with leading [T])`;
  differentiable in `images` (see `hypergrad.unrolled_updates`, which also takes
  `unroll_options`).
  """
  def loss_fn(params, rest, inputs):
    images_t, labels_t, kwargs_t = inputs
    return common.classifier_loss(classifier, params, rest, images_t, labels_t,
                                  mean=settings.mean, std=settings.std, **kwargs_t)

  (params, opt_state, rest), (_, aux) = hypergrad.unrolled_updates(
      loss_fn, classifier.tx, classifier.params, classifier.opt_state, classifier.rest,
      (images, labels, model_kwargs or {}), **unroll_options)
  return classifier.replace(params=params, opt_state=opt_state, rest=rest), aux


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """One update on train_batch (image f32 [1, B, H, W, C] in [0, 1], label [1, B])."""
  del val_batch
  images = common.fixed_augment_stack(state.settings, rng, train_batch["image"], state.step)
  classifier, aux = classifier_updates(state.classifier, state.settings, images,
                                       train_batch["label"])
  metrics = jax.tree.map(jnp.mean, aux.metrics)
  nonfinite = common.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"])
  return state.replace(step=state.step + 1, classifier=classifier,
                       nonfinite_step=nonfinite), metrics


def eval_step(state: State, batch: dict) -> dict:
  """Loss/accuracy sums of the classifier on a masked batch (see `common.eval_metrics`)."""
  return common.eval_metrics(state.classifier, batch, mean=state.settings.mean,
                             std=state.settings.std)


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """The fixed augmentation of f32 [B, H, W, C] images, as training sees them."""
  return common.fixed_augment_stack(state.settings, rng, images[None], state.step)[0]


def summaries(state: State) -> common.Summaries:
  """Nothing is learned about augmentation."""
  del state
  return common.Summaries()


def export_policy(state: State) -> None:
  """Nothing is learned about augmentation."""
  del state
  return None
