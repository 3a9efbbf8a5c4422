"""OHL-Auto-Aug (Lin et al., ICCV 2019), the `reward='validation'` variant of `reinforce`.

The augmentation policy is a categorical distribution over augmentation elements,
softmax(theta) over E logits, learned online along with K copies of the classifier:

- K copies are stacked on a leading axis and trained with `vmap` (one program), each on
  the same training batch with its own draws: every image gets one element, an ordered
  pair of operations, drawn from the distribution.
- Each step every copy is scored on the step's validation batch; the accuracies are
  accumulated over the segment (an epoch).
- At the segment's end (inside `train_step`, on the step counter) a REINFORCE step on
  theta with advantage = each copy's validation accuracy minus the mean over the copies,
  and log p(copy) the mean log-probability of the elements the copy drew in the segment
  (the paper's sum over the trajectory, scaled by a constant, which Adam's step ignores);
  then every copy takes the weights (parameters, optimiser state, batch statistics) of the
  copy with the best accuracy.

Defaults. The paper's text available here gives the scheme (Figure 2: "REINFORCE
gradients with trajectory samples ... the network parameters with the highest accuracy
are broadcasted to other trajectory samples") but not its constants; these follow the
authors' released agent code and a public CIFAR-10 reimplementation, which agree:
36 operations (11 ops at levels 3, 6 and 9, plus AutoContrast, Equalize and Invert),
elements = the 36 x 36 ordered pairs, theta = 0 (uniform) at the start, Adam with
learning rate 0.05 and betas (0.5, 0.999), no entropy term, K = 8 copies, a segment of
one epoch. Levels follow this library's AutoAugment reference mapping (`space`).

Evaluation uses the copy with the best validation accuracy so far in the segment (after
a segment all copies are equal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from jaxaug.augment import learned
from jaxaug.augment import policies
from jaxaug.methods import common
from jaxaug.methods import supervised

# OHL's operations: these at three levels each, and the ops without a magnitude.
LEVELLED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Color", "Posterize",
                "Solarize", "Contrast", "Sharpness", "Brightness")
PLAIN_OPS = ("AutoContrast", "Equalize", "Invert")
LEVELS = (3, 6, 9)


def default_config() -> ml_collections.ConfigDict:
  """`config.reinforce.ohl` (see the module docstring for where the defaults come from)."""
  optim = common.adam_optimizer(0.05)
  optim.b1, optim.b2 = 0.5, 0.999
  return ml_collections.ConfigDict({
      "copies": 8,                  # K copies of the classifier (the paper's trajectories)
      "levelled_ops": LEVELLED_OPS,
      "plain_ops": PLAIN_OPS,
      "levels": LEVELS,
      "optim": optim,               # theta's, one step per segment
  })


def operation_table(cfg: ml_collections.ConfigDict) -> tuple[tuple[str, ...], np.ndarray]:
  """(op names, int32 [O, 2] table of (op index, level) per operation) of `config.reinforce.ohl`."""
  names = tuple(dict.fromkeys(tuple(cfg.levelled_ops) + tuple(cfg.plain_ops)))
  if not names:
    raise ValueError("config.reinforce.ohl needs at least one op (levelled_ops, plain_ops)")
  for level in cfg.levels:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 10:
      raise ValueError(f"config.reinforce.ohl.levels={tuple(cfg.levels)!r} must be integers in "
                       f"[0, 10]")
  rows = [(names.index(op), level) for op in cfg.levelled_ops for level in cfg.levels]
  rows += [(names.index(op), 0) for op in cfg.plain_ops]
  return names, np.asarray(rows, np.int32)


@struct.dataclass
class Settings:
  """Static OHL settings (hashable)."""
  names: tuple[str, ...] = struct.field(pytree_node=False)
  operations: tuple[tuple[int, int], ...] = struct.field(pytree_node=False)  # (op, level)
  copies: int = struct.field(pytree_node=False)
  steps_per_epoch: int = struct.field(pytree_node=False)
  augment_after: str = struct.field(pytree_node=False)
  strategy: str = struct.field(pytree_node=False)

  @property
  def num_elements(self) -> int:
    """E = O^2 ordered pairs of operations."""
    return len(self.operations) ** 2

  def element_ops(self, elements: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(op index [..., 2], level [..., 2]) of element indices [...]; see `policies.pair_ops`."""
    return policies.pair_ops(np.asarray(self.operations, np.int32), elements)

  def operation_labels(self) -> tuple[str, ...]:
    """'Op@level' (or 'Op') for each of the O operations."""
    return tuple(f"{self.names[op]}@{level}" if self.names[op] in LEVELLED_OPS else
                 self.names[op] for op, level in self.operations)


@struct.dataclass
class State:
  step: jax.Array
  classifiers: common.Learner  # every leaf stacked on a leading [K] axis
  distribution: common.Learner  # theta, f32 [E], with its Adam state
  counts: jax.Array            # f32 [K, E]: each copy's draws of each element in the segment
  correct: jax.Array           # f32 [K]: validation examples each copy got right in the segment
  seen: jax.Array              # f32 scalar: validation examples scored in the segment
  probability: jax.Array       # f32 [epochs, E]: softmax(theta) during each epoch
  rewards: jax.Array           # f32 [epochs, K]: each copy's validation accuracy of the epoch
  nonfinite_step: jax.Array
  settings: common.Settings = struct.field(pytree_node=False)
  ohl: Settings = struct.field(pytree_node=False)


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: common.DataInfo,
         reinforce_settings) -> State:
  """K equal copies of the classifier (the copies differ by their augmentation draws),
  theta = 0 and its optimiser. `reinforce_settings`: the validated `reinforce.Settings`."""
  cfg = config.reinforce.ohl
  copies = cfg.copies
  common.check_integer("config.reinforce.ohl.copies", copies, 2)
  names, table = operation_table(cfg)
  settings = Settings(names=names, operations=tuple(map(tuple, table.tolist())), copies=copies,
                      steps_per_epoch=info.steps_per_epoch,
                      augment_after=reinforce_settings.augment_after,
                      strategy=reinforce_settings.strategy)
  classifier = common.create_classifier(config, rng, info)
  theta = jnp.zeros((settings.num_elements,), jnp.float32)
  tx = common.make_optimizer(cfg.optim, steps_per_epoch=1.0,
                             total_steps=max(int(config.num_epochs), 1))
  epochs = info.num_epoch_slots
  return State(
      step=jnp.zeros((), jnp.int32),
      classifiers=jax.tree.map(lambda leaf: jnp.stack([leaf] * copies), classifier),
      distribution=common.Learner.of_params(theta, tx),
      counts=jnp.zeros((copies, settings.num_elements), jnp.float32),
      correct=jnp.zeros((copies,), jnp.float32),
      seen=jnp.zeros((), jnp.float32),
      probability=jnp.tile(jax.nn.softmax(theta), (epochs, 1)),
      rewards=jnp.zeros((epochs, copies), jnp.float32),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      settings=common.Settings.from_config(config, info),
      ohl=settings)


def augment_elements(state: State, rng: jax.Array, images: jax.Array,
                     elements: jax.Array) -> jax.Array:
  """`config.augment`, image b's element `elements[b]` (an ordered pair of operations),
  then `augment_after`; f32 [B, H, W, C] in [0, 1]."""
  op_index, level = state.ohl.element_ops(elements)
  return common.augment_around(
      state.settings, rng, images, state.step,
      common.sub_policy_augmenter(op_index, level, names=state.ohl.names,
                                  strategy=state.ohl.strategy),
      after=state.ohl.augment_after)


def update_copies(classifiers: common.Learner, settings: common.Settings, images: jax.Array,
                  labels: jax.Array) -> tuple[common.Learner, common.LossAux]:
  """One optimiser update of each of the K stacked copies on its own images [K, N, H, W, C]
  (labels int [N], shared), vmapped; returns the copies and their LossAux (leading [K, 1])."""
  def update(classifier, copy_images):
    return supervised.classifier_updates(classifier, settings, copy_images[None], labels[None])

  return jax.vmap(update)(classifiers, images)


def copy_correct(classifiers: common.Learner, settings: common.Settings,
                 batch: dict) -> jax.Array:
  """f32 [K]: the validation examples of `batch` (image [B', ...], label [B']) each copy
  classifies correctly (running batch statistics)."""
  batch = {**batch, "mask": jnp.ones(batch["label"].shape, bool)}
  return jax.vmap(lambda c: common.eval_metrics(c, batch, mean=settings.mean,
                                                std=settings.std)["correct"])(classifiers)


def end_segment(state: State) -> State:
  """The REINFORCE step on theta and the broadcast of the best copy; counters reset."""
  settings = state.ohl
  epoch = state.step // settings.steps_per_epoch
  accuracy = state.correct / jnp.maximum(state.seen, 1.0)
  advantage = accuracy - accuracy.mean()
  frequency = state.counts / jnp.maximum(state.counts.sum(1, keepdims=True), 1.0)

  def loss_fn(theta):
    log_prob = (frequency * jax.nn.log_softmax(theta)).sum(1)  # [K]
    return -(advantage * log_prob).mean()

  distribution = state.distribution.apply_update(jax.grad(loss_fn)(state.distribution.params))
  best = jnp.argmax(accuracy)
  classifiers = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf[best], leaf.shape),
                             state.classifiers)
  return state.replace(
      classifiers=classifiers, distribution=distribution,
      counts=jnp.zeros_like(state.counts), correct=jnp.zeros_like(state.correct),
      seen=jnp.zeros_like(state.seen),
      probability=state.probability.at[epoch + 1].set(jax.nn.softmax(distribution.params),
                                                      mode="drop"),
      rewards=state.rewards.at[epoch].set(accuracy, mode="drop"))


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """Each copy's update on the batch (image f32 [1, N, H, W, C], label [1, N]) with its own
  element draws; the validation batch scores the updated copies; at an epoch's last step,
  `end_segment`."""
  settings = state.ohl
  draw_rng, augment_rng = jax.random.split(rng)
  images, labels = train_batch["image"][0], train_batch["label"][0]
  copies, count = settings.copies, images.shape[0]
  elements = jax.random.categorical(draw_rng, state.distribution.params, shape=(copies, count))
  augmented = augment_elements(state, augment_rng, jnp.tile(images, (copies, 1, 1, 1)),
                               elements.reshape(-1))
  classifiers, aux = update_copies(state.classifiers, state.settings,
                                   augmented.reshape((copies, count) + images.shape[1:]), labels)
  counts = state.counts + jax.vmap(
      lambda e: jnp.bincount(e, length=settings.num_elements))(elements).astype(jnp.float32)
  correct = state.correct + copy_correct(classifiers, state.settings, val_batch)
  state = state.replace(classifiers=classifiers, counts=counts, correct=correct,
                        seen=state.seen + val_batch["label"].shape[0])
  epoch_ends = (state.step + 1) % settings.steps_per_epoch == 0
  accuracy = state.correct / state.seen
  state = jax.lax.cond(epoch_ends, end_segment, lambda s: s, state)
  metrics = jax.tree.map(jnp.mean, aux.metrics)  # over the copies
  metrics["best_copy_val_accuracy"] = common.Sparse(accuracy.max(), epoch_ends)
  nonfinite = common.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"],
                                     state.distribution.params)
  return state.replace(step=state.step + 1, nonfinite_step=nonfinite), metrics


def best_copy(state: State) -> common.Learner:
  """The copy with the best validation accuracy so far in the segment (copy 0 on ties)."""
  best = jnp.argmax(state.correct)
  return jax.tree.map(lambda leaf: leaf[best], state.classifiers)


def eval_step(state: State, batch: dict) -> dict:
  """Loss/accuracy sums of `best_copy` on a masked batch (see `common.eval_metrics`)."""
  return common.eval_metrics(best_copy(state), batch, mean=state.settings.mean,
                             std=state.settings.std)


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """What training sees: an element drawn from the current distribution per image."""
  draw_rng, augment_rng = jax.random.split(rng)
  elements = jax.random.categorical(draw_rng, state.distribution.params,
                                    shape=images.shape[:1])
  return augment_elements(state, augment_rng, images, elements)


def operation_probability(settings: Settings, probability: jax.Array) -> jax.Array:
  """f32 [..., O]: how often each operation is used, (first + second of the pair) / 2."""
  count = len(settings.operations)
  pairs = probability.reshape(probability.shape[:-1] + (count, count))
  return (pairs.sum(-1) + pairs.sum(-2)) / 2


def summaries(state: State) -> common.Summaries:
  """Each operation's probability (either place of the pair), the distribution's entropy
  relative to uniform, and the copies' validation accuracies of the last segment."""
  settings = state.ohl
  row = jnp.minimum(state.step // settings.steps_per_epoch, state.rewards.shape[0] - 1)
  log_probability = jax.nn.log_softmax(state.distribution.params)
  entropy = -(jnp.exp(log_probability) * log_probability).sum() / np.log(settings.num_elements)
  return common.Summaries(
      scalars={"ohl/relative_entropy": entropy},
      vectors={"ohl/operation_probability": operation_probability(
                   settings, jnp.exp(log_probability)),
               "ohl/reward": state.rewards[jnp.maximum(row - 1, 0)]},
      labels=(("ohl/operation_probability", settings.operation_labels()),
              ("ohl/reward", tuple(f"copy {k}" for k in range(settings.copies)))))


def export_policy(state: State) -> learned.Policy:
  """softmax(theta) during each epoch, replayable as family 'ohl'."""
  settings = state.ohl
  probability, rewards = jax.device_get((state.probability, state.rewards))
  final = operation_probability(settings, np.asarray(probability[-1]))
  return learned.Policy(
      family="ohl",
      settings={"names": list(settings.names),
                "operations": [list(row) for row in settings.operations]},
      summary={"what": "OHL-Auto-Aug's distribution over ordered pairs of operations "
                       "(element e = (operations[e // O], operations[e % O])), one row per "
                       "epoch of the search; rewards: each copy's validation accuracy",
               "final_operation_probability": dict(zip(settings.operation_labels(),
                                                       np.asarray(final).tolist()))},
      arrays={"probability": np.asarray(probability, np.float32),
              "rewards": np.asarray(rewards, np.float32)})
