"""OHL-Auto-Aug (Lin et al., "Online Hyper-parameter Learning for Auto-Augmentation
Strategy", ICCV 2019, arXiv 1905.07373): a distribution over augmentation elements learned by
REINFORCE from the validation accuracy of K copies of the classifier.

The augmentation policy is a categorical distribution over augmentation elements,
softmax(theta) over E logits, learned online along with K copies of the classifier:

- the copies are stacked on a leading axis and trained with `vmap` (one program), each on
  the same training batches with its own draws: every image gets one element, an ordered
  pair of operations, drawn from the distribution. One trajectory is one epoch of steps.
- At the trajectory's last step (inside `train_step`, on the step counter) each copy's
  weights are scored on the same held-out validation images, the step's validation batch
  (`config.val_batch_size` images, a fixed set for the trajectory). A REINFORCE step on
  theta follows, with advantage = each copy's accuracy minus the mean over the copies and
  log p(copy) the mean log-probability of the elements the copy drew in the trajectory (the
  sum over the trajectory scaled by a constant, which Adam's step ignores); then every copy
  takes the weights (parameters, optimiser state, batch statistics) of the most accurate
  copy.

What the paper states and what this follows. Its Figure 2: "In the inner loop, the network
parameters are trained using standard SGD with augmentation sampling. In the outer loop,
augmentation policy distribution parameters are trained using REINFORCE gradients with
trajectory samples. At each time step, the network parameters with the highest accuracy
are broadcasted to other trajectory samples"; theta is updated once per trajectory of inner
steps, and the outer objective is validation accuracy. Scoring each copy's weights at the
end of its trajectory (not its accuracy summed over the steps) is this library's reading of
that scheme. The constants are not in the text available here; they follow the authors'
released agent code and a public CIFAR-10 reimplementation, which agree: 36 operations (11
ops at levels 3, 6 and 9, plus AutoContrast, Equalize and Invert), elements = the 36 x 36
ordered pairs, theta = 0 (uniform) at the start, Adam with learning rate 0.05 and betas
(0.5, 0.999), no entropy term, K = 8 copies. Levels follow this library's AutoAugment
reference mapping (`space`). `config.augment` (crop + flip) comes before the element and
`config.ohl.augment_after` after it.

Evaluation uses copy 0 (all copies are equal after each trajectory).

config.ohl: copies, levelled_ops, plain_ops, levels, optim (theta's), augment_after,
strategy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from jaxaug.augment import fixed
from jaxaug.augment import learned
from jaxaug.augment import policies
from jaxaug.augment import space
from jaxaug.methods import augmentation
from jaxaug.methods import contract
from jaxaug.methods import training

# OHL's operations: these at three levels each, and the ops without a magnitude.
LEVELLED_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Color", "Posterize",
                "Solarize", "Contrast", "Sharpness", "Brightness")
PLAIN_OPS = ("AutoContrast", "Equalize", "Invert")
LEVELS = (3, 6, 9)


def default_config() -> ml_collections.ConfigDict:
  """`config.ohl` (see the module docstring for where the defaults come from)."""
  optim = training.adam_optimizer(0.05)
  optim.b1, optim.b2 = 0.5, 0.999
  return ml_collections.ConfigDict({
      "copies": 8,                  # K copies of the classifier (the paper's trajectory samples)
      "levelled_ops": LEVELLED_OPS,
      "plain_ops": PLAIN_OPS,
      "levels": LEVELS,
      "optim": optim,               # theta's, one step per trajectory (epoch)
      "augment_after": "cutout(16)",  # after the element (config.augment comes before it)
      "strategy": "auto",           # space.apply: switch on CPU, select on accelerators
  })


def uses_val_batch(config: ml_collections.ConfigDict) -> bool:
  """Yes: the copies are scored on the validation batch of each trajectory's last step."""
  del config
  return True


def operation_table(cfg: ml_collections.ConfigDict) -> tuple[tuple[str, ...], np.ndarray]:
  """(op names, int32 [O, 2] table of (op index, level) per operation) of `config.ohl`."""
  names = tuple(dict.fromkeys(tuple(cfg.levelled_ops) + tuple(cfg.plain_ops)))
  if not names:
    raise ValueError("config.ohl needs at least one op (levelled_ops, plain_ops)")
  space.entries(names)  # unknown names: ValueError listing the valid ones
  for level in cfg.levels:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 10:
      raise ValueError(f"config.ohl.levels={tuple(cfg.levels)!r} must be integers in [0, 10]")
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
  classifiers: training.Learner  # every leaf stacked on a leading [K] axis
  distribution: training.Learner  # theta, f32 [E], with its Adam state
  counts: jax.Array            # f32 [K, E]: each copy's draws of each element in the trajectory
  probability: jax.Array       # f32 [epochs, E]: softmax(theta) during each epoch
  rewards: jax.Array           # f32 [epochs, K]: each copy's validation accuracy at the epoch's end
  nonfinite_step: jax.Array
  settings: training.Settings = struct.field(pytree_node=False)
  ohl: Settings = struct.field(pytree_node=False)


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: training.DataInfo) -> State:
  """K equal copies of the classifier (the copies differ by their augmentation draws),
  theta = 0 and its optimiser."""
  cfg = config.ohl
  copies = cfg.copies
  training.check_integer("config.ohl.copies", copies, 2)
  if cfg.strategy not in space.STRATEGIES:
    raise ValueError(f"unknown config.ohl.strategy {cfg.strategy!r}; valid: "
                     f"{', '.join(space.STRATEGIES)}")
  fixed.check_spec(cfg.augment_after, "config.ohl.augment_after")
  names, table = operation_table(cfg)
  settings = Settings(names=names, operations=tuple(map(tuple, table.tolist())), copies=copies,
                      steps_per_epoch=info.steps_per_epoch, augment_after=cfg.augment_after,
                      strategy=cfg.strategy)
  classifier = training.create_classifier(config, rng, info)
  theta = jnp.zeros((settings.num_elements,), jnp.float32)
  tx = training.make_optimizer(cfg.optim, steps_per_epoch=1.0,
                             total_steps=max(int(config.num_epochs), 1))
  epochs = info.num_epoch_slots
  return State(
      step=jnp.zeros((), jnp.int32),
      classifiers=jax.tree.map(lambda leaf: jnp.stack([leaf] * copies), classifier),
      distribution=training.Learner.of_params(theta, tx),
      counts=jnp.zeros((copies, settings.num_elements), jnp.float32),
      probability=jnp.tile(jax.nn.softmax(theta), (epochs, 1)),
      rewards=jnp.zeros((epochs, copies), jnp.float32),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      settings=training.Settings.from_config(config, info),
      ohl=settings)


def augment_elements(state: State, rng: jax.Array, images: jax.Array,
                     elements: jax.Array) -> jax.Array:
  """`config.augment`, image b's element `elements[b]` (an ordered pair of operations),
  then `augment_after`; f32 [B, H, W, C] in [0, 1]."""
  op_index, level = state.ohl.element_ops(elements)
  return augmentation.augment_around(
      state.settings, rng, images, state.step,
      augmentation.sub_policy_augmenter(op_index, level, names=state.ohl.names,
                                  strategy=state.ohl.strategy),
      after=state.ohl.augment_after)


def update_copies(classifiers: training.Learner, settings: training.Settings, images: jax.Array,
                  labels: jax.Array) -> tuple[training.Learner, training.LossAux]:
  """One optimiser update of each of the K stacked copies on its own images [K, N, H, W, C]
  (labels int [N], shared), vmapped; returns the copies and their LossAux (leading [K, 1])."""
  def update(classifier, copy_images):
    return training.classifier_updates(classifier, settings, copy_images[None], labels[None])

  return jax.vmap(update)(classifiers, images)


def copy_accuracy(classifiers: training.Learner, settings: training.Settings,
                  batch: dict) -> jax.Array:
  """f32 [K]: each copy's accuracy on the validation `batch` (image [B', ...], label [B']),
  in evaluation mode (running batch statistics)."""
  batch = {**batch, "mask": jnp.ones(batch["label"].shape, bool)}
  sums = jax.vmap(lambda c: training.eval_metrics(c, batch, mean=settings.mean,
                                                std=settings.std))(classifiers)
  return sums["correct"] / sums["count"]


def end_trajectory(state: State, val_batch: dict) -> tuple[State, jax.Array]:
  """Scores each copy on `val_batch`, then `learn_from_accuracy`; returns (state, the
  copies' accuracies f32 [K])."""
  accuracy = copy_accuracy(state.classifiers, state.settings, val_batch)
  return learn_from_accuracy(state, accuracy), accuracy


def reinforce_gradient(theta: jax.Array, counts: jax.Array, accuracy: jax.Array) -> jax.Array:
  """f32 [E]: the gradient in theta [E] of -mean_k(advantage_k log p(copy k)), advantage =
  `accuracy` [K] minus its mean, log p(copy k) = the mean log-probability under softmax(theta)
  of the elements copy k drew in the trajectory (`counts` [K, E])."""
  advantage = accuracy - accuracy.mean()
  frequency = counts / jnp.maximum(counts.sum(1, keepdims=True), 1.0)

  def loss_fn(theta):
    log_prob = (frequency * jax.nn.log_softmax(theta)).sum(1)  # [K]
    return -(advantage * log_prob).mean()

  return jax.grad(loss_fn)(theta)


def uninformed_probability(optim: ml_collections.ConfigDict, *, copies: int, num_elements: int,
                           draws: int, trajectories: int, rng: jax.Array) -> jax.Array:
  """f32 [trajectories, E]: softmax(theta) after each of `trajectories` REINFORCE steps whose
  rewards carry no information: each of the `copies` draws `draws` elements from the current
  distribution and gets an accuracy drawn uniformly in [0, 1], independent of them. With the
  optimiser `optim` (a `config.ohl.optim`) and theta = 0 at the start, as in the method: the
  reference for how far from uniform the distribution moves without a signal (Adam scales
  each element's step to about the learning rate, whatever the gradient's size)."""
  tx = training.make_optimizer(optim, steps_per_epoch=1.0, total_steps=trajectories)
  theta = jnp.zeros((num_elements,), jnp.float32)

  def trajectory(learner: training.Learner, rng: jax.Array):
    draw_rng, reward_rng = jax.random.split(rng)
    elements = jax.random.categorical(draw_rng, learner.params, shape=(copies, draws))
    counts = jax.vmap(lambda row: jnp.bincount(row, length=num_elements))(elements)
    accuracy = jax.random.uniform(reward_rng, (copies,))
    learner = learner.apply_update(
        reinforce_gradient(learner.params, counts.astype(jnp.float32), accuracy))
    return learner, jax.nn.softmax(learner.params)

  _, rows = jax.lax.scan(trajectory, training.Learner.of_params(theta, tx),
                         jax.random.split(rng, trajectories))
  return rows


def learn_from_accuracy(state: State, accuracy: jax.Array) -> State:
  """The REINFORCE step on theta with advantage = `accuracy` [K] minus its mean, every copy
  set to the most accurate one, the trajectory's counts reset and the epoch's rows written."""
  settings = state.ohl
  epoch = state.step // settings.steps_per_epoch
  distribution = state.distribution.apply_update(
      reinforce_gradient(state.distribution.params, state.counts, accuracy))
  best = jnp.argmax(accuracy)
  classifiers = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf[best], leaf.shape),
                             state.classifiers)
  return state.replace(
      classifiers=classifiers, distribution=distribution, counts=jnp.zeros_like(state.counts),
      probability=state.probability.at[epoch + 1].set(jax.nn.softmax(distribution.params),
                                                      mode="drop"),
      rewards=state.rewards.at[epoch].set(accuracy, mode="drop"))


def train_step(state: State, train_batch: dict, val_batch: dict, rng: jax.Array):
  """Each copy's update on the batch (image f32 [1, N, H, W, C], label [1, N]) with its own
  element draws; at an epoch's last step, `end_trajectory` on the validation batch."""
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
  state = state.replace(classifiers=classifiers, counts=counts)
  trajectory_ends = (state.step + 1) % settings.steps_per_epoch == 0
  state, accuracy = jax.lax.cond(
      trajectory_ends, lambda s: end_trajectory(s, val_batch),
      lambda s: (s, jnp.zeros((copies,), jnp.float32)), state)
  metrics = jax.tree.map(jnp.mean, aux.metrics)  # over the copies
  metrics["best_copy_val_accuracy"] = contract.Sparse(accuracy.max(), trajectory_ends)
  metrics["copy_val_accuracy_spread"] = contract.Sparse(accuracy.max() - accuracy.min(),
                                                      trajectory_ends)
  nonfinite = training.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"],
                                     state.distribution.params)
  return state.replace(step=state.step + 1, nonfinite_step=nonfinite), metrics


def eval_step(state: State, batch: dict) -> dict:
  """Loss/accuracy sums of copy 0 on a masked batch (see `training.eval_metrics`)."""
  copy = jax.tree.map(lambda leaf: leaf[0], state.classifiers)
  return training.eval_metrics(copy, batch, mean=state.settings.mean, std=state.settings.std)


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


def summaries(state: State) -> contract.Summaries:
  """Each operation's probability (either place of the pair), the distribution's entropy
  relative to uniform and its largest element's probability over the uniform share, and the
  copies' validation accuracies at the end of the last trajectory."""
  settings = state.ohl
  row = training.epoch_row(state.step, settings.steps_per_epoch, state.rewards.shape[0])
  log_probability = jax.nn.log_softmax(state.distribution.params)
  entropy = -(jnp.exp(log_probability) * log_probability).sum() / np.log(settings.num_elements)
  return contract.Summaries(
      scalars={"ohl/relative_entropy": entropy,
               "ohl/largest_over_uniform": jnp.exp(log_probability.max()) * settings.num_elements},
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


def replay_policy(policy: learned.Policy) -> learned.ProgressSampler:
  """`export_policy`'s distributions replayed (`learned('<dir>')`): array probability
  [R, O^2] over the ordered pairs of settings operations [O, 2] ((op index into names,
  level)); each image gets a pair drawn from its row's distribution."""
  names = tuple(policy.settings["names"])
  space.entries(names)  # unknown names: ValueError listing the valid ones
  operations = np.asarray(policy.settings["operations"], np.int32)
  probability = np.asarray(policy.arrays["probability"], np.float32)
  if operations.ndim != 2 or operations.shape[1] != 2 or operations[:, 0].max() >= len(names):
    raise ValueError(f"ohl policy: operations {operations.shape} must be [O, 2] (op index "
                     f"into {len(names)} names, level)")
  if probability.ndim != 2 or probability.shape[1] != operations.shape[0] ** 2:
    raise ValueError(f"ohl policy: probability {probability.shape} must be "
                     f"[rows, {operations.shape[0] ** 2}]")
  log_probability = np.log(np.maximum(probability, 1e-30))

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array) -> jax.Array:
    draw_rng, apply_rng = jax.random.split(rng)
    row = jnp.asarray(log_probability)[learned.schedule_row(probability.shape[0], progress)]
    op_index, level = policies.pair_ops(
        operations, jax.random.categorical(draw_rng, row, shape=images.shape[:1]))
    return augmentation.sub_policy_augmenter(op_index, level, names=names)(apply_rng, images)

  return sample


def copies_per_example(config: ml_collections.ConfigDict) -> int:
  """K: each copy of the classifier trains on every example."""
  return config.ohl.copies


def bench_variants(config: ml_collections.ConfigDict) -> list[contract.BenchVariant]:
  """A step of K = 4 copies, crop + flip before the element, Cutout after it."""
  del config
  return [contract.BenchVariant("ohl_K4", {"augment": "crop+hflip",
                                           "ohl.augment_after": "cutout(16)", "ohl.copies": 4})]
