"""Adversarial AutoAugment (Zhang et al., ICLR 2020, arXiv 1912.11188): a REINFORCE
controller that samples the augmentation policies the classifier finds hardest.

An LSTM controller (`jaxaug.models.controller`) samples M policies at each epoch start.
Each step repeats the batch of N examples M times on the device; copy m of each example
gets a sub-policy of policy m, and the classifier takes one update on all N x M images
(the learning rate as for N). The mean training loss of each policy's copies is
accumulated over the epoch; at the epoch's last step (inside `train_step`) the rewards,
these epoch means normalised across the M, drive a REINFORCE step that raises the
probability of the high-loss policies (with an entropy bonus), and the next M policies
are sampled. The reward is the training loss: the method reads no validation batch, so it
can train on the whole training set (`config.data.val_fraction = 0`, as the paper does and
configs/cifar10_adversarial_autoaugment.py sets; with a fraction > 0 that part is held out
and only evaluated).

Where each setting comes from (the paper, section 3 and 4.1, unless said otherwise):

- a policy is Q = 5 sub-policies of 2 operations, each an (op, magnitude) pair over the 16
  ops of `policies.ADVERSARIAL_OPS`; "removing the probability of each operation": every
  op of a drawn sub-policy is applied;
- "For each image in a mini-batch, only one sub-policy will be randomly selected": drawn
  uniformly here;
- magnitudes: "discretized uniformly into 10 values ... set in a moderate range", with no
  table of ranges (its footnote points to AutoAugment): levels 0-9 of the AutoAugment
  reference mapping (`space`);
- the controller: one-layer LSTM, hidden 100, embedding 32, Adam 3.5e-4, entropy weight
  1e-5; "the basic architecture will be repeated Q times", each repetition from a fresh
  state (`config.reinforce.controller.carry_state`, see `jaxaug.models.controller`);
- the reward: the training loss "a moving average over ... an epoch", "normalize[d] among
  M instances" (the paper gives no formula: (loss - mean) / std here), one controller step
  per epoch;
- crop + flip before the policy (`config.augment`), Cutout 16 after it
  (`config.reinforce.augment_after`); M = 8.

`config.reinforce.policies` gives the paper's ablation: 'adversarial' (the controller),
'random' (uniform policies, no controller step) or 'fixed' (no policy: the M copies get
only the fixed augmentation).

The policies sampled for each epoch, the controller's softmax outputs on them and the
rewards are kept in the state; `export_policy` writes them, and `learned('<dir>')`
replays the sampled sub-policies (family 'reinforce'). OHL-Auto-Aug, the validation-reward
member of the family, is its own method (`jaxaug.methods.ohl`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from flax import struct

from jaxaug.augment import fixed
from jaxaug.augment import learned
from jaxaug.augment import policies
from jaxaug.augment import space
from jaxaug.methods import augmentation
from jaxaug.methods import contract
from jaxaug.methods import training
from jaxaug.models import controller as controller_lib

REWARDS = ("adversarial",)
POLICY_MODES = ("adversarial", "random", "fixed")


@struct.dataclass
class Settings:
  """Static settings of the adversarial variant (hashable)."""
  ops: tuple[str, ...] = struct.field(pytree_node=False)
  num_levels: int = struct.field(pytree_node=False)
  num_policies: int = struct.field(pytree_node=False)       # M
  sub_policies: int = struct.field(pytree_node=False)       # S
  ops_per_sub_policy: int = struct.field(pytree_node=False)  # L
  policies: str = struct.field(pytree_node=False)           # adversarial | random | fixed
  entropy_weight: float = struct.field(pytree_node=False)
  carry_state: bool = struct.field(pytree_node=False)  # the controller's, across sub-policies
  augment_after: str = struct.field(pytree_node=False)
  strategy: str = struct.field(pytree_node=False)
  steps_per_epoch: int = struct.field(pytree_node=False)

  @property
  def operations(self) -> int:
    """Tokens pairs per policy, S x L."""
    return self.sub_policies * self.ops_per_sub_policy


@struct.dataclass
class State:
  step: jax.Array
  classifier: training.Learner
  controller: training.Learner   # the LSTM and its Adam state
  policies: jax.Array          # int32 [M, S * L, 2]: this epoch's policies, (op, level) pairs
  loss_sum: jax.Array          # f32 [M]: each policy's mean training loss, summed over the epoch's steps
  sampled: jax.Array           # int32 [epochs, M, S * L, 2]: the policies of each epoch
  op_probability: jax.Array    # f32 [epochs, ops]: the controller's op softmax, mean over an epoch's policies
  level_probability: jax.Array  # f32 [epochs, levels]: the same for levels
  rewards: jax.Array           # f32 [epochs, M]: the normalised rewards at the end of each epoch
  nonfinite_step: jax.Array    # first step with a non-finite loss, -1 if none
  settings: training.Settings = struct.field(pytree_node=False)
  reinforce: Settings = struct.field(pytree_node=False)


def default_config() -> ml_collections.ConfigDict:
  """`config.reinforce`: the Adversarial AutoAugment paper's settings (module docstring)."""
  return ml_collections.ConfigDict({
      "reward": "adversarial",      # the training loss (OHL-Auto-Aug's reward: method=ohl)
      "policies": "adversarial",    # adversarial | random | fixed: the ablation, section 4.4
      "num_policies": 8,            # M: policies per epoch, copies of each batch
      "sub_policies": 5,            # per policy
      "ops_per_sub_policy": 2,
      "ops": policies.ADVERSARIAL_OPS,
      "num_levels": 10,             # levels 0..9 of the AutoAugment reference mapping
      # carry_state: one LSTM state through all sub-policies (a departure; default: each
      # sub-policy starts afresh)
      "controller": {"hidden": 100, "embedding": 32, "carry_state": False},
      "entropy_weight": 1e-5,       # the paper's entropy term, which keeps the controller exploring
      "optim": training.adam_optimizer(3.5e-4),  # the controller's
      "augment_after": "cutout(16)",  # after the policy (config.augment comes before it)
      "strategy": "auto",           # space.apply: switch on CPU, select on accelerators
  })


def uses_val_batch(config: ml_collections.ConfigDict) -> bool:
  """No: the reward is the training loss (so `config.data.val_fraction` may be 0)."""
  del config
  return False


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  """ValueError naming the first bad value of `config.reinforce`."""
  if cfg.reward == "validation":
    raise ValueError("config.reinforce.reward='validation' (OHL-Auto-Aug) is its own method: "
                     "use --config.method=ohl (settings in config.ohl)")
  choices = {"reward": REWARDS, "policies": POLICY_MODES, "strategy": space.STRATEGIES}
  for name, valid in choices.items():
    if cfg[name] not in valid:
      raise ValueError(f"unknown config.reinforce.{name} {cfg[name]!r}; valid: {', '.join(valid)}")
  for name in ("num_policies", "sub_policies", "ops_per_sub_policy", "num_levels"):
    training.check_integer(f"config.reinforce.{name}", cfg[name])
  if not 1 <= cfg.num_levels <= space.PARAMETER_MAX + 1:
    raise ValueError(f"config.reinforce.num_levels={cfg.num_levels} must lie in "
                     f"[1, {space.PARAMETER_MAX + 1}] (levels of the reference mapping)")
  if not cfg.ops or len(set(cfg.ops)) != len(cfg.ops):
    raise ValueError(f"config.reinforce.ops must name distinct ops, got {cfg.ops!r}")
  space.entries(cfg.ops)  # unknown names: ValueError listing the valid ones
  if not cfg.entropy_weight >= 0:
    raise ValueError(f"config.reinforce.entropy_weight={cfg.entropy_weight!r} must be >= 0")


def _settings(config: ml_collections.ConfigDict, info: training.DataInfo) -> Settings:
  """The validated static settings of `config.reinforce`."""
  cfg = config.reinforce
  _check_config(cfg)
  fixed.check_spec(cfg.augment_after, "config.reinforce.augment_after")
  return Settings(ops=tuple(cfg.ops), num_levels=cfg.num_levels, num_policies=cfg.num_policies,
                  sub_policies=cfg.sub_policies, ops_per_sub_policy=cfg.ops_per_sub_policy,
                  policies=cfg.policies, entropy_weight=float(cfg.entropy_weight),
                  carry_state=bool(cfg.controller.carry_state), augment_after=cfg.augment_after,
                  strategy=cfg.strategy, steps_per_epoch=info.steps_per_epoch)


def create_controller(config: ml_collections.ConfigDict, rng: jax.Array,
                      settings: Settings) -> training.Learner:
  """The LSTM controller (`config.reinforce.controller`) with its optimiser, stepped once an
  epoch."""
  cfg = config.reinforce
  module = controller_lib.Controller(num_ops=len(settings.ops), num_levels=settings.num_levels,
                                     hidden=cfg.controller.hidden,
                                     embedding=cfg.controller.embedding,
                                     rngs=nnx.Rngs(params=rng))
  tx = training.make_optimizer(cfg.optim, steps_per_epoch=1.0,
                             total_steps=max(int(config.num_epochs), 1))
  return training.Learner.create(module, tx)


def sample_policies(controller: training.Learner, settings: Settings, rng: jax.Array):
  """M policies for an epoch: (tokens int32 [M, S * L, 2], op softmax mean [ops], level
  softmax mean [levels]). 'random' and 'fixed' draw uniformly (the means are uniform)."""
  count, operations = settings.num_policies, settings.operations
  if settings.policies == "adversarial":
    rollout, _ = controller.apply(controller.params, controller.rest, rng, count, operations,
                                  ops_per_sub_policy=settings.ops_per_sub_policy,
                                  carry_state=settings.carry_state)
    return (rollout.tokens, rollout.op_probs.mean((0, 1)), rollout.level_probs.mean((0, 1)))
  op_rng, level_rng = jax.random.split(rng)
  tokens = jnp.stack([
      jax.random.randint(op_rng, (count, operations), 0, len(settings.ops), jnp.int32),
      jax.random.randint(level_rng, (count, operations), 0, settings.num_levels, jnp.int32)], -1)
  return (tokens, jnp.full((len(settings.ops),), 1 / len(settings.ops)),
          jnp.full((settings.num_levels,), 1 / settings.num_levels))


def reinforce_loss(log_prob: jax.Array, entropy: jax.Array, advantage: jax.Array,
                   entropy_weight: float) -> jax.Array:
  """The REINFORCE surrogate to minimise: -mean(advantage * log p) - w * mean(entropy).

  log_prob, entropy: f32 [n] per sample; advantage: f32 [n], treated as constant. Its
  gradient raises the log-probability of samples with positive advantage, and the entropy.
  """
  advantage = jax.lax.stop_gradient(advantage)
  return -(advantage * log_prob).mean() - entropy_weight * entropy.mean()


def controller_step(controller: training.Learner, settings: Settings, tokens: jax.Array,
                    advantage: jax.Array) -> tuple[training.Learner, jax.Array]:
  """One REINFORCE step of the controller towards the policies `tokens` [M, S * L, 2] with
  high `advantage` [M]; returns (controller, mean token entropy before the step)."""
  count, operations = tokens.shape[:2]

  def loss_fn(params):
    rollout, _ = controller.apply(params, controller.rest, None, count, operations, tokens,
                                  ops_per_sub_policy=settings.ops_per_sub_policy,
                                  carry_state=settings.carry_state)
    loss = reinforce_loss(rollout.log_prob.sum((1, 2)), rollout.entropy.sum((1, 2)), advantage,
                          settings.entropy_weight)
    return loss, rollout.entropy.mean()

  grads, entropy = jax.grad(loss_fn, has_aux=True)(controller.params)
  return controller.apply_update(grads), entropy


def normalise(values: jax.Array) -> jax.Array:
  """(values - mean) / std across the last axis (0 where all are equal)."""
  centred = values - values.mean(-1, keepdims=True)
  std = values.std(-1, keepdims=True)
  return jnp.where(std > 0, centred / jnp.where(std > 0, std, 1.0), 0.0)


def init(config: ml_collections.ConfigDict, rng: jax.Array, info: training.DataInfo):
  """Classifier, controller and the first epoch's policies."""
  settings = _settings(config, info)
  classifier_rng, controller_rng, policy_rng = jax.random.split(rng, 3)
  controller = create_controller(config, controller_rng, settings)
  tokens, op_probability, level_probability = sample_policies(controller, settings, policy_rng)
  epochs = info.num_epoch_slots
  return State(
      step=jnp.zeros((), jnp.int32),
      classifier=training.create_classifier(config, classifier_rng, info),
      controller=controller,
      policies=tokens,
      loss_sum=jnp.zeros((settings.num_policies,), jnp.float32),
      sampled=jnp.zeros((epochs,) + tokens.shape, jnp.int32).at[0].set(tokens),
      op_probability=jnp.tile(op_probability, (epochs, 1)),
      level_probability=jnp.tile(level_probability, (epochs, 1)),
      rewards=jnp.zeros((epochs, settings.num_policies), jnp.float32),
      nonfinite_step=jnp.full((), -1, jnp.int32),
      settings=training.Settings.from_config(config, info),
      reinforce=settings)


def augment_copies(settings: training.Settings, reinforce: Settings, rng: jax.Array,
                   images: jax.Array, tokens: jax.Array, group: jax.Array,
                   step: jax.Array) -> jax.Array:
  """`config.augment`, then image b's sub-policy drawn from policy `group[b]` of `tokens`
  [G, S * L, 2] (none with policies='fixed'), then `augment_after`; f32 [B, H, W, C]."""
  choice_rng, augment_rng = jax.random.split(rng)
  policy = None
  if reinforce.policies != "fixed":
    sub_policies = tokens.reshape(tokens.shape[0], reinforce.sub_policies,
                                  reinforce.ops_per_sub_policy, 2)
    op_index, level = policies.choose_sub_policies(choice_rng, sub_policies, group)
    policy = augmentation.sub_policy_augmenter(op_index, level, names=reinforce.ops,
                                         strategy=reinforce.strategy)
  return augmentation.augment_around(settings, augment_rng, images, step, policy,
                               after=reinforce.augment_after)


def _end_epoch(state: State, loss_sum: jax.Array, rng: jax.Array):
  """The epoch-boundary work: rewards, a controller step ('adversarial'), the next policies."""
  settings = state.reinforce
  epoch = state.step // settings.steps_per_epoch
  rewards = normalise(loss_sum / settings.steps_per_epoch)
  controller, entropy = state.controller, jnp.zeros((), jnp.float32)
  if settings.policies == "adversarial":
    controller, entropy = controller_step(controller, settings, state.policies, rewards)
  tokens, op_probability, level_probability = sample_policies(controller, settings, rng)
  following = epoch + 1  # rows past the last epoch are dropped
  return state.replace(
      controller=controller, policies=tokens, loss_sum=jnp.zeros_like(loss_sum),
      sampled=state.sampled.at[following].set(tokens, mode="drop"),
      op_probability=state.op_probability.at[following].set(op_probability, mode="drop"),
      level_probability=state.level_probability.at[following].set(level_probability,
                                                                  mode="drop"),
      rewards=state.rewards.at[epoch].set(rewards, mode="drop")), entropy.astype(jnp.float32)


def train_step(state: State, train_batch: dict, val_batch: None, rng: jax.Array):
  """One classifier update on the M augmented copies of the batch (image f32 [1, N, H, W, C]
  in [0, 1], label [1, N]); at an epoch's last step, the controller step and new policies."""
  del val_batch
  settings = state.reinforce
  augment_rng, epoch_rng = jax.random.split(rng)
  images, labels = train_batch["image"][0], train_batch["label"][0]
  count = images.shape[0]
  copies = settings.num_policies
  group = jnp.repeat(jnp.arange(copies), count)  # copy m is rows m N .. (m + 1) N - 1
  augmented = augment_copies(state.settings, settings, augment_rng,
                             jnp.tile(images, (copies, 1, 1, 1)), state.policies, group,
                             state.step)
  classifier, aux = training.classifier_updates(state.classifier, state.settings,
                                                  augmented[None], jnp.tile(labels, copies)[None])
  loss_sum = state.loss_sum + aux.per_example_loss[0].reshape(copies, count).mean(1)
  state = state.replace(classifier=classifier, loss_sum=loss_sum)
  epoch_ends = (state.step + 1) % settings.steps_per_epoch == 0
  state, entropy = jax.lax.cond(
      epoch_ends, lambda s: _end_epoch(s, s.loss_sum, epoch_rng),
      lambda s: (s, jnp.zeros((), jnp.float32)), state)
  metrics = jax.tree.map(jnp.mean, aux.metrics)
  metrics["controller_entropy"] = contract.Sparse(entropy, epoch_ends
                                                & (settings.policies == "adversarial"))
  nonfinite = training.first_nonfinite(state.step, state.nonfinite_step, metrics["loss"],
                                     jax.tree.leaves(state.controller.params)[0])
  return state.replace(step=state.step + 1, nonfinite_step=nonfinite), metrics


def augment(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """What training sees: image b as a copy of policy b mod M, f32 [B, H, W, C]."""
  group = jnp.arange(images.shape[0]) % state.reinforce.num_policies
  return augment_copies(state.settings, state.reinforce, rng, images, state.policies, group,
                        state.step)




def summaries(state: State) -> contract.Summaries:
  """The controller's op and level probabilities (the paper's fig. 6) and the last rewards."""
  settings = state.reinforce
  if settings.policies == "fixed":
    return contract.Summaries()
  row = training.epoch_row(state.step, settings.steps_per_epoch, state.rewards.shape[0])
  last_rewards = state.rewards[jnp.maximum(row - 1, 0)]
  return contract.Summaries(
      scalars={"reinforce/reward_spread": last_rewards.max() - last_rewards.min()},
      vectors={"reinforce/op_probability": state.op_probability[row],
               "reinforce/level_probability": state.level_probability[row],
               "reinforce/reward": last_rewards},
      labels=(("reinforce/op_probability", settings.ops),
              ("reinforce/level_probability",
               tuple(f"level {level}" for level in range(settings.num_levels))),
              ("reinforce/reward",
               tuple(f"policy {m}" for m in range(settings.num_policies)))))


def export_policy(state: State) -> learned.Policy | None:
  """The sub-policies sampled for each epoch (replayable, family 'reinforce'), with the
  controller's distributions and the rewards; None with policies='fixed'."""
  settings = state.reinforce
  if settings.policies == "fixed":
    return None
  sampled, op_probability, level_probability, rewards = jax.device_get(
      (state.sampled, state.op_probability, state.level_probability, state.rewards))
  epochs = sampled.shape[0]
  sub_policies = sampled.reshape(epochs, settings.num_policies * settings.sub_policies,
                                 settings.ops_per_sub_policy, 2)
  return learned.Policy(
      family="reinforce",
      settings={"names": list(settings.ops)},
      summary={"what": "the sub-policies sampled for each epoch of the search (one row per "
                       "epoch: M policies x S sub-policies of L (op, level) pairs, applied "
                       "without probabilities), the controller's mean softmax over ops and "
                       "levels on them, and the normalised rewards at the epoch's end",
               "policies": settings.policies,
               "num_policies": settings.num_policies,
               "final_op_probability": dict(zip(settings.ops,
                                                np.asarray(op_probability[-1]).tolist()))},
      arrays={"sub_policies": np.asarray(sub_policies, np.int32),
              "op_probability": np.asarray(op_probability, np.float32),
              "level_probability": np.asarray(level_probability, np.float32),
              "rewards": np.asarray(rewards, np.float32)})


def reward_features(sub_policies: np.ndarray, rewards: np.ndarray, *, num_ops: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Each policy's content and reward, centred within each epoch (the rewards are normalised
  among an epoch's M policies, so only differences within an epoch carry information).

  Args:
    sub_policies: int [E, M * S, L, 2], (op index, level) of the sub-policies of epoch e's
      M policies (policy m's are rows m * S .. (m + 1) * S), as `export_policy` writes them.
    rewards: float [E, M], the rewards of epoch e's policies.
    num_ops: the number of operations op indices count in.

  Returns:
    features float64 [E, M, num_ops + 1] (the policy's count of each op, then its mean
    level) and targets float64 [E, M] (its reward).
  """
  epochs, num_policies = rewards.shape
  ops = sub_policies[..., 0].reshape(epochs, num_policies, -1)
  levels = sub_policies[..., 1].reshape(epochs, num_policies, -1)
  features = np.concatenate([(ops[..., None] == np.arange(num_ops)).sum(2),
                             levels.mean(-1, keepdims=True)], -1).astype(np.float64)
  features -= features.mean(1, keepdims=True)
  return features, rewards.astype(np.float64) - rewards.mean(1, keepdims=True)


def reward_coefficients(runs: Sequence[tuple[np.ndarray, np.ndarray]], *, num_ops: int
                        ) -> np.ndarray:
  """float64 [num_ops + 1]: the least-squares fit of a policy's reward on its content
  (`reward_features`), pooled over `runs` ((sub_policies, rewards) pairs): the reward's
  change per occurrence of each op, then per level of the mean level. A policy's op counts
  sum to S x L, so only differences between the ops' values are identified; these (the
  minimum-norm fit) sum to 0 over the ops."""
  pairs = [reward_features(tokens, rewards, num_ops=num_ops) for tokens, rewards in runs]
  features = np.concatenate([f.reshape(-1, num_ops + 1) for f, _ in pairs])
  targets = np.concatenate([t.reshape(-1) for _, t in pairs])
  return np.linalg.lstsq(features, targets, rcond=None)[0]


def reward_predictability(sub_policies: np.ndarray, rewards: np.ndarray, *,
                          num_ops: int) -> float:
  """How much of the reward the policies' content predicts: the leave-one-epoch-out R^2 of
  a least-squares fit of each policy's reward on its op counts and mean magnitude level
  (`reward_features`, arguments as there).

  A diagnostic of the controller's signal: near or below 0 when the rewards carry no
  information about what the policies hold, towards 1 when they are a linear function of it.

  Returns:
    1 - (sum of squared errors predicting each epoch from a fit on the others) / (sum of
    squares).
  """
  features, targets = reward_features(sub_policies, rewards, num_ops=num_ops)
  errors = []
  for epoch in range(len(targets)):
    others = np.arange(len(targets)) != epoch
    coefficients, *_ = np.linalg.lstsq(features[others].reshape(-1, features.shape[-1]),
                                       targets[others].reshape(-1), rcond=None)
    errors.append(targets[epoch] - features[epoch] @ coefficients)
  return float(1 - np.sum(np.square(errors)) / np.sum(np.square(targets)))


def replay_policy(policy: learned.Policy) -> learned.ProgressSampler:
  """`export_policy`'s sub-policies replayed (`learned('<dir>')`): array sub_policies int
  [R, S, L, 2] ((op index into settings names, level) pairs); each image gets one of its
  row's S sub-policies uniformly, its ops applied always."""
  names = tuple(policy.settings["names"])
  space.entries(names)  # unknown names: ValueError listing the valid ones
  sub_policies = np.asarray(policy.arrays["sub_policies"], np.int32)
  if sub_policies.ndim != 4 or sub_policies.shape[-1] != 2:
    raise ValueError(f"reinforce policy: sub_policies {sub_policies.shape} must be "
                     f"[rows, S, L, 2]")
  if sub_policies[..., 0].max() >= len(names) or sub_policies.min() < 0:
    raise ValueError(f"reinforce policy: op indices must lie in [0, {len(names)})")

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array) -> jax.Array:
    choice_rng, apply_rng = jax.random.split(rng)
    row = jnp.asarray(sub_policies)[learned.schedule_row(sub_policies.shape[0], progress)]
    op_index, level = policies.choose_sub_policies(
        choice_rng, row[None], jnp.zeros(images.shape[:1], jnp.int32))
    return augmentation.sub_policy_augmenter(op_index, level, names=names)(apply_rng, images)

  return sample


def copies_per_example(config: ml_collections.ConfigDict) -> int:
  """M: each example is trained on once per policy."""
  return config.reinforce.num_policies


def bench_variants(config: ml_collections.ConfigDict) -> list[contract.BenchVariant]:
  """The paper's step: M = 8 copies, crop + flip before the policy, Cutout after it."""
  del config
  return [contract.BenchVariant("adversarial_M8", {
      "augment": "crop+hflip", "reinforce.augment_after": "cutout(16)",
      "reinforce.num_policies": 8})]
