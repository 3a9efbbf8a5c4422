"""The REINFORCE family: controller, REINFORCE step, Adversarial AutoAugment's M copies,
OHL's K vmapped copies, uncertainty-based sampling, and their policy replay."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxaug import train
from jaxaug.augment import learned
from jaxaug.augment import policies
from jaxaug.config import default_config
from jaxaug.methods import training
from jaxaug.methods import ohl
from jaxaug.methods import reinforce
from jaxaug.methods import uncertainty
from jaxaug.models import controller as controller_lib
from test_train import assert_final_evaluation_is_the_result
from test_train import smoke_config

IMAGE_SHAPE = (8, 8, 3)
# Ops whose result depends on nothing but the image and level (no sign, no partner, no
# random centre): permuting the policies then permutes the images between the copies.
DETERMINISTIC_OPS = ("Invert", "Equalize", "AutoContrast", "Posterize", "Solarize", "Contrast",
                     "Color", "Brightness")


def _controller(num_ops=16, num_levels=10, seed=0):
  return controller_lib.Controller(num_ops=num_ops, num_levels=num_levels,
                                   rngs=nnx.Rngs(params=seed))


def _settings(**changes):
  values = dict(ops=policies.ADVERSARIAL_OPS, num_levels=10, num_policies=4, sub_policies=5,
                ops_per_sub_policy=2, policies="adversarial", entropy_weight=1e-5,
                carry_state=False, augment_after="none", strategy="auto", steps_per_epoch=10)
  return reinforce.Settings(**(values | changes))


def test_rollout_log_probs_are_the_log_of_the_softmax_outputs_of_the_sampled_tokens():
  controller = _controller()
  sampled = controller(jax.random.PRNGKey(0), 64, 10)
  assert sampled.tokens.shape == (64, 10, 2)
  np.testing.assert_allclose(sampled.op_probs.sum(-1), 1, rtol=1e-5)
  np.testing.assert_allclose(sampled.level_probs.sum(-1), 1, rtol=1e-5)
  op_token, level_token = np.asarray(sampled.tokens[..., 0]), np.asarray(sampled.tokens[..., 1])
  np.testing.assert_allclose(
      sampled.log_prob[..., 0],
      np.log(np.take_along_axis(np.asarray(sampled.op_probs), op_token[..., None], -1)[..., 0]),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      sampled.log_prob[..., 1],
      np.log(np.take_along_axis(np.asarray(sampled.level_probs), level_token[..., None],
                                -1)[..., 0]), rtol=1e-5, atol=1e-6)
  probs = np.asarray(sampled.op_probs)
  np.testing.assert_allclose(sampled.entropy[..., 0], -(probs * np.log(probs)).sum(-1),
                             rtol=1e-5)
  # scoring the sampled tokens (teacher forcing) gives the same numbers
  scored = controller(None, 64, 10, sampled.tokens)
  np.testing.assert_array_equal(scored.tokens, sampled.tokens)
  np.testing.assert_allclose(scored.log_prob, sampled.log_prob, rtol=1e-6)
  # later tokens depend on the earlier ones (autoregressive): the softmax differs by sample
  assert np.ptp(np.asarray(sampled.op_probs[:, 1]), axis=0).max() > 1e-4


def test_rollout_samples_at_the_rates_of_its_softmax():
  controller = _controller(num_ops=4, num_levels=3)
  sampled = jax.jit(lambda key: controller(key, 20000, 1))(jax.random.PRNGKey(1))
  first_op = np.asarray(sampled.tokens[:, 0, 0])
  expected = np.asarray(sampled.op_probs[0, 0])  # the first softmax has no history
  frequency = np.bincount(first_op, minlength=4) / first_op.size
  np.testing.assert_allclose(frequency, expected, atol=4 * np.sqrt(0.25 / first_op.size))


def test_rollout_rejects_tokens_of_the_wrong_shape():
  with pytest.raises(ValueError, match=r"tokens must have shape \(2, 3, 2\)"):
    _controller()(None, 2, 3, jnp.zeros((2, 4, 2), jnp.int32))
  with pytest.raises(ValueError, match="needs an rng"):
    _controller()(None, 2, 3)


@pytest.mark.parametrize("carry_state", [False, True])
def test_each_sub_policy_starts_afresh_unless_the_state_is_carried(carry_state):
  """Adversarial AutoAugment's controller repeated per sub-policy: the softmax outputs of a
  sub-policy do not depend on the tokens of the sub-policies before it (with carry_state,
  they do), and every sub-policy of a policy has the same first softmax."""
  controller = _controller()
  sampled = controller(jax.random.PRNGKey(0), 8, 10, ops_per_sub_policy=2,
                       carry_state=carry_state)
  changed = sampled.tokens.at[:, :2].set((sampled.tokens[:, :2] + 1) % 10)  # sub-policy 0
  scored = controller(None, 8, 10, changed, ops_per_sub_policy=2, carry_state=carry_state)
  later_equal = np.allclose(scored.op_probs[:, 2:], sampled.op_probs[:, 2:], atol=1e-6)
  firsts = np.asarray(sampled.op_probs[:, ::2])  # the first op softmax of each sub-policy
  assert later_equal != carry_state
  assert np.allclose(firsts, firsts[:, :1], atol=1e-6) != carry_state
  # within a sub-policy the second op still depends on the first (autoregressive)
  assert np.ptp(np.asarray(sampled.op_probs[:, 1]), axis=0).max() > 1e-4
  with pytest.raises(ValueError, match="10 operations do not split into sub-policies of 3"):
    controller(jax.random.PRNGKey(0), 2, 10, ops_per_sub_policy=3)


def _learner(module, learning_rate):
  return training.Learner.create(module, optax.adam(learning_rate))


def test_reinforce_steps_converge_to_the_best_arm_of_a_bandit():
  """Arms = the op of a one-operation policy; reward known per arm; no noise."""
  arm_rewards = jnp.array([0.1, 0.9, 0.3, 0.5])
  settings = _settings(ops=("Invert", "Equalize", "AutoContrast", "Contrast"), num_levels=2,
                       entropy_weight=0.0, num_policies=16, sub_policies=1,
                       ops_per_sub_policy=1)
  controller = _learner(_controller(num_ops=4, num_levels=2), 0.05)

  @jax.jit
  def one_round(controller, key):
    rollout, _ = controller.apply(controller.params, controller.rest, key, 16, 1)
    rewards = arm_rewards[rollout.tokens[:, 0, 0]]
    controller, _ = reinforce.controller_step(controller, settings, rollout.tokens,
                                              reinforce.normalise(rewards))
    return controller

  for i in range(150):
    controller = one_round(controller, jax.random.PRNGKey(i))
  rollout, _ = controller.apply(controller.params, controller.rest, jax.random.PRNGKey(0), 1, 1)
  assert float(rollout.op_probs[0, 0, 1]) > 0.9, rollout.op_probs[0, 0]


@pytest.mark.slow  # a property of the controller's loss, second to its REINFORCE step
def test_the_entropy_term_raises_the_entropy():
  settings = _settings(entropy_weight=1.0)
  controller = _learner(_controller(), 1e-2)
  tokens = controller.apply(controller.params, controller.rest, jax.random.PRNGKey(0), 8, 10,
                            ops_per_sub_policy=2)[0].tokens

  @jax.jit
  def scored(controller):  # as controller_step scores them: sub-policies of 2 operations
    return controller.apply(controller.params, controller.rest, None, 8, 10, tokens,
                            ops_per_sub_policy=2)[0]

  entropy = lambda controller: float(scored(controller).entropy.mean())
  controller_step = jax.jit(reinforce.controller_step)
  updated, reported = controller_step(controller, settings, tokens, jnp.zeros(8))
  assert float(reported) == pytest.approx(entropy(controller), rel=1e-5)
  assert entropy(updated) > entropy(controller)
  # the REINFORCE term alone raises the log-probability of the positive-advantage policy
  settings = _settings(entropy_weight=0.0)
  advantage = jnp.array([1.0, -1.0, 0, 0, 0, 0, 0, 0])
  before = scored(controller)
  updated, _ = controller_step(controller, settings, tokens, advantage)
  after = scored(updated)
  gain = np.asarray(after.log_prob.sum((1, 2)) - before.log_prob.sum((1, 2)))
  assert gain[0] > 0 > gain[1]


def test_normalise_centres_and_scales_across_the_policies():
  np.testing.assert_allclose(reinforce.normalise(jnp.array([1.0, 2.0, 3.0])),
                             np.array([-1, 0, 1]) / np.std([-1, 0, 1]), rtol=1e-6)
  np.testing.assert_array_equal(reinforce.normalise(jnp.full(3, 2.0)), np.zeros(3))


def test_choose_sub_policies_takes_each_image_from_its_groups_policy_uniformly():
  # policy g's sub-policy s holds ops (g, s) and levels (s, g)
  groups, subs = 3, 5
  table = np.stack(np.broadcast_arrays(*np.meshgrid(np.arange(groups), np.arange(subs),
                                                    indexing="ij")), -1)  # [G, S, 2]
  sub_policies = np.stack([table, table[..., ::-1]], -1)  # [G, S, L=2, 2]
  group = np.arange(30000) % groups
  op_index, level = policies.choose_sub_policies(jax.random.PRNGKey(0), sub_policies, group)
  op_index, level = np.asarray(op_index), np.asarray(level)
  np.testing.assert_array_equal(op_index[:, 0], group)
  np.testing.assert_array_equal(level[:, 1], group)
  np.testing.assert_array_equal(op_index[:, 1], level[:, 0])  # one sub-policy, both layers
  counts = np.bincount(op_index[:, 1], minlength=subs) / group.size
  np.testing.assert_allclose(counts, 1 / subs, atol=0.015)


def _config(method="reinforce", **reinforce_changes):
  config = default_config()
  config.method = method
  config.model = "small_cnn"
  config.augment = "none"
  config.num_epochs = 2
  config.reinforce.num_policies = 3
  config.reinforce.augment_after = "none"
  config.ohl.copies = 3
  config.ohl.augment_after = "none"
  for key, value in reinforce_changes.items():
    config.reinforce[key] = value
  return config


def _info(steps_per_epoch=10):
  return training.DataInfo.create(num_classes=4, image_shape=IMAGE_SHAPE,
                                batches_per_epoch=steps_per_epoch, num_epochs=2)


def _batch(batch=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (1, batch) + IMAGE_SHAPE).astype(np.float32) / 255,
          "label": rng.integers(0, 4, (1, batch)).astype(np.int32)}


@pytest.mark.slow  # a symmetry check; the copies' update and losses are checked by the next tests
def _press_r2(features, targets):
  """Leave-one-group-out R^2 from one fit (the block PRESS identity): group g's held-out
  residuals are (I - H_gg)^-1 e_g, H the hat matrix and e the residuals of the full fit."""
  groups, size, width = features.shape
  flat = features.reshape(-1, width)
  hat = flat @ np.linalg.pinv(flat)
  residuals = targets.reshape(-1) - hat @ targets.reshape(-1)
  held_out = [np.linalg.solve(np.eye(size) - hat[g * size:(g + 1) * size, g * size:(g + 1) * size],
                              residuals[g * size:(g + 1) * size]) for g in range(groups)]
  return 1 - np.sum(np.square(held_out)) / np.sum(np.square(targets))


def test_reward_predictability_is_the_leave_one_epoch_out_r2_of_the_policies_content():
  """Rewards made from the policies' op counts and levels plus noise are predicted; rewards
  drawn apart from the policies are not; the value is the block PRESS identity's."""
  rng = np.random.default_rng(0)
  epochs, num_policies, sub_policies, length, num_ops = 40, 4, 5, 2, 6
  tokens = np.stack([rng.integers(0, num_ops, (epochs, num_policies * sub_policies, length)),
                     rng.integers(0, 10, (epochs, num_policies * sub_policies, length))], -1)
  counts = np.stack([(tokens[..., 0] == k).reshape(epochs, num_policies, -1).sum(-1)
                     for k in range(num_ops)], -1)
  mean_level = tokens[..., 1].reshape(epochs, num_policies, -1).mean(-1)
  weights = np.append(rng.normal(size=num_ops), 0.3)
  signal = counts @ weights[:-1] + weights[-1] * mean_level
  noisy = signal + 0.3 * signal.std() * rng.normal(size=signal.shape)
  noisy -= noisy.mean(1, keepdims=True)
  predicted = reinforce.reward_predictability(tokens, noisy, num_ops=num_ops)
  assert 0.8 < predicted < 1
  # without noise the fit gives the weights back, up to a constant added to every op's (the
  # op counts of a policy sum to S x L, so only differences between ops are identified)
  fitted = reinforce.reward_coefficients([(tokens[:20], signal[:20]), (tokens[20:], signal[20:])],
                                         num_ops=num_ops)
  np.testing.assert_allclose(fitted[:-1] - fitted[:-1].mean(), weights[:-1] - weights[:-1].mean(),
                             atol=1e-9)
  np.testing.assert_allclose(fitted[-1], weights[-1], atol=1e-9)
  features = np.concatenate([counts, mean_level[..., None]], -1).astype(float)
  assert predicted == pytest.approx(_press_r2(features - features.mean(1, keepdims=True), noisy),
                                    abs=1e-9)
  unrelated = rng.normal(size=(epochs, num_policies))
  assert reinforce.reward_predictability(tokens, unrelated, num_ops=num_ops) < 0.05


def test_permuting_the_policies_permutes_their_accumulated_losses_and_nothing_else():
  config = _config(ops=DETERMINISTIC_OPS)
  state = reinforce.init(config, jax.random.PRNGKey(0), _info())
  rng = np.random.default_rng(1)
  # every sub-policy of a policy alike, so which one an image draws does not matter
  pairs = np.stack([rng.integers(0, len(DETERMINISTIC_OPS), (3, 2)),
                    rng.integers(0, 10, (3, 2))], -1)  # [M, L, 2]
  tokens = jnp.asarray(np.repeat(pairs[:, None], 5, 1).reshape(3, 10, 2), jnp.int32)
  permutation = np.array([2, 0, 1])
  step = jax.jit(reinforce.train_step)
  batch = _batch()
  after, _ = step(state.replace(policies=tokens), batch, None, jax.random.PRNGKey(3))
  permuted, _ = step(state.replace(policies=tokens[permutation]), batch, None,
                     jax.random.PRNGKey(3))
  assert np.ptp(np.asarray(after.loss_sum)) > 1e-3  # the policies do differ
  np.testing.assert_allclose(permuted.loss_sum, after.loss_sum[permutation], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(permuted.classifier), jax.tree.leaves(after.classifier)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(permuted.controller), jax.tree.leaves(after.controller)):
    np.testing.assert_array_equal(a, b)


def test_the_classifier_takes_one_update_on_all_m_copies():
  """With policies='fixed' and no augmentation, the step is a plain update on the batch
  repeated M times, which equals the update on the batch (same mean gradient, same
  batch statistics)."""
  config = _config(policies="fixed")
  state = reinforce.init(config, jax.random.PRNGKey(0), _info())
  batch = _batch()
  after, metrics = jax.jit(reinforce.train_step)(state, batch, None, jax.random.PRNGKey(3))
  expected, aux = jax.jit(training.classifier_updates)(state.classifier, state.settings,
                                                         jnp.asarray(batch["image"]),
                                                         jnp.asarray(batch["label"]))
  for a, b in zip(jax.tree.leaves(after.classifier), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(after.loss_sum, np.full(3, aux.metrics["loss"][0]), rtol=1e-5)
  assert float(metrics["loss"]) == pytest.approx(float(aux.metrics["loss"][0]), rel=1e-5)


def test_the_epoch_boundary_steps_the_controller_and_samples_new_policies():
  config = _config()
  state = reinforce.init(config, jax.random.PRNGKey(0), _info(steps_per_epoch=2))
  step = jax.jit(reinforce.train_step)
  first, metrics = step(state, _batch(), None, jax.random.PRNGKey(1))
  assert not bool(metrics["controller_entropy"].present)
  np.testing.assert_array_equal(first.policies, state.policies)
  second, metrics = step(first, _batch(seed=1), None, jax.random.PRNGKey(2))
  assert bool(metrics["controller_entropy"].present)
  # the same two steps in an epoch that goes on accumulate the losses the rewards came from
  no_boundary = first.replace(reinforce=first.reinforce.replace(steps_per_epoch=100))
  accumulated, _ = step(no_boundary, _batch(seed=1), None, jax.random.PRNGKey(2))
  np.testing.assert_allclose(second.rewards[0], reinforce.normalise(accumulated.loss_sum / 2),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(second.loss_sum, np.zeros(3))
  np.testing.assert_array_equal(second.sampled[0], state.policies)
  np.testing.assert_array_equal(second.sampled[1], second.policies)
  assert not np.array_equal(second.policies, state.policies)
  # the controller took the REINFORCE step towards those rewards on the epoch's policies
  expected, _ = jax.jit(reinforce.controller_step)(first.controller, first.reinforce,
                                                   first.policies, second.rewards[0])
  for a, b in zip(jax.tree.leaves(second.controller.params), jax.tree.leaves(expected.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # the classifier does not depend on where the epoch ends
  for a, b in zip(jax.tree.leaves(second.classifier), jax.tree.leaves(accumulated.classifier)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _ohl_state(steps_per_epoch=10, copies=3):
  config = _config("ohl")
  config.ohl.copies = copies
  return ohl.init(config, jax.random.PRNGKey(0), _info(steps_per_epoch))


def _distinct_copies(state):
  """The copies made different (copy k's parameters scaled by 1 + k / 10)."""
  scale = 1 + jnp.arange(state.ohl.copies) / 10
  params = jax.tree.map(lambda leaf: leaf * scale.reshape((-1,) + (1,) * (leaf.ndim - 1)),
                        state.classifiers.params)
  return state.replace(classifiers=state.classifiers.replace(params=params))


def test_ohl_vmapped_copies_equal_separate_single_copy_updates():
  state = _distinct_copies(_ohl_state())
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((3, 8) + IMAGE_SHAPE), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, 8), jnp.int32)
  stacked, aux = jax.jit(ohl.update_copies)(state.classifiers, state.settings, images, labels)
  val = {"image": images[0], "label": labels}
  accuracy = jax.jit(ohl.copy_accuracy)(stacked, state.settings, val)
  single_update = jax.jit(training.classifier_updates)
  eval_metrics = jax.jit(functools.partial(training.eval_metrics, mean=state.settings.mean,
                                           std=state.settings.std))
  for k in range(3):
    single = jax.tree.map(lambda leaf: leaf[k], state.classifiers)
    expected, expected_aux = single_update(single, state.settings, images[k][None], labels[None])
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda leaf: leaf[k], stacked)),
                    jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux.per_example_loss[k], expected_aux.per_example_loss, rtol=1e-5)
    sums = eval_metrics(expected, {**val, "mask": np.ones(8, bool)})
    assert float(accuracy[k]) == pytest.approx(float(sums["correct"]) / 8)


def test_ohl_trajectory_end_broadcasts_the_best_copy_and_steps_towards_its_elements():
  state = _distinct_copies(_ohl_state())
  elements = state.ohl.num_elements
  counts = np.zeros((3, elements), np.float32)
  counts[0, 5], counts[1, 7], counts[2, 9] = 10, 10, 10  # each copy drew one element
  state = state.replace(counts=jnp.asarray(counts), step=jnp.asarray(9))
  ended = jax.jit(ohl.learn_from_accuracy)(state, jnp.array([0.3, 0.9, 0.6]))
  best = jax.tree.map(lambda leaf: leaf[1], state.classifiers)
  for leaf, expected in zip(jax.tree.leaves(ended.classifiers), jax.tree.leaves(best)):
    for k in range(3):
      np.testing.assert_array_equal(leaf[k], expected)
  np.testing.assert_allclose(ended.rewards[0], [0.3, 0.9, 0.6], rtol=1e-6)
  probability = np.asarray(jax.nn.softmax(ended.distribution.params))
  np.testing.assert_allclose(ended.probability[1], probability, rtol=1e-6)
  # advantage: +0.3 for copy 1's element, -0.3 for copy 0's, 0 for copy 2's
  assert probability[7] > probability[9] > probability[5]
  assert float(ended.counts.sum()) == 0


def test_ohl_reinforce_gradient_is_the_closed_form():
  """d/dtheta of sum_e f_e log softmax(theta)_e is f - p (the frequencies sum to 1), so the
  gradient is -mean_k(advantage_k (f_k - p))."""
  rng = np.random.default_rng(0)
  theta = rng.normal(size=12).astype(np.float32)
  counts = rng.integers(0, 5, size=(3, 12)).astype(np.float32)
  accuracy = np.array([0.2, 0.7, 0.4], np.float32)
  frequency = counts / counts.sum(1, keepdims=True)
  p = np.exp(theta) / np.exp(theta).sum()
  advantage = accuracy - accuracy.mean()
  expected = -(advantage[:, None] * (frequency - p)).mean(0)
  np.testing.assert_allclose(ohl.reinforce_gradient(theta, counts, accuracy), expected,
                             atol=1e-6)


def test_ohl_uninformed_probability_takes_adams_steps_on_noise():
  """Adam's first step is about -lr sign(gradient) (less where the gradient is near Adam's
  epsilon): after it, the log-probabilities lie on a grid of spacing lr, 2 lr from the
  lowest to the highest; later rows drift further from uniform on noise alone."""
  optim = ohl.default_config().optim
  rows = np.asarray(ohl.uninformed_probability(
      optim, copies=4, num_elements=100, draws=300, trajectories=30, rng=jax.random.key(0)))
  assert rows.shape == (30, 100)
  np.testing.assert_allclose(rows.sum(1), 1, rtol=1e-5)
  steps = (np.log(rows[0]) - np.log(rows[0]).min()) / optim.learning_rate
  np.testing.assert_allclose(steps, np.round(steps), atol=0.05)
  assert np.ptp(steps) == pytest.approx(2, abs=0.05)
  largest_over_uniform = rows.max(1) * 100
  assert largest_over_uniform[-1] > largest_over_uniform[0] > 1


def test_ohl_rewards_are_the_copies_accuracies_after_the_trajectory():
  """The reward of a copy is its accuracy on the last step's validation batch, scored with
  the weights it has after that step's update, not an accumulation over the steps."""
  state = _distinct_copies(_ohl_state(steps_per_epoch=2))
  step = jax.jit(ohl.train_step)
  val = {k: v[0] for k, v in _batch(batch=16, seed=5).items()}
  first, metrics = step(state, _batch(), val, jax.random.PRNGKey(1))
  assert not bool(metrics["best_copy_val_accuracy"].present)
  np.testing.assert_array_equal(first.rewards, 0)  # the first step scores nothing
  # the end of the trajectory: the copies after their second update, scored on `val`
  no_end = first.replace(ohl=first.ohl.replace(steps_per_epoch=100))
  updated, _ = step(no_end, _batch(seed=1), val, jax.random.PRNGKey(2))
  expected = jax.jit(ohl.copy_accuracy)(updated.classifiers, updated.settings, val)
  second, metrics = step(first, _batch(seed=1), val, jax.random.PRNGKey(2))
  np.testing.assert_allclose(second.rewards[0], expected)
  assert float(metrics["best_copy_val_accuracy"].value) == pytest.approx(float(expected.max()))
  best = int(np.argmax(np.asarray(expected)))
  for leaf, kept in zip(jax.tree.leaves(second.classifiers), jax.tree.leaves(updated.classifiers)):
    np.testing.assert_allclose(leaf[0], kept[best], rtol=1e-6, atol=1e-7)  # two programs


def test_ohl_elements_are_ordered_pairs_of_its_operations():
  state = _ohl_state()
  operations = np.asarray(state.ohl.operations)
  count = len(operations)
  assert count == 11 * 3 + 3 and state.ohl.num_elements == count ** 2
  element = 5 * count + 17
  op_index, level = state.ohl.element_ops(jnp.asarray([element]))
  np.testing.assert_array_equal(op_index[0], [operations[5, 0], operations[17, 0]])
  np.testing.assert_array_equal(level[0], [operations[5, 1], operations[17, 1]])
  assert state.ohl.operation_labels()[:3] == ("ShearX@3", "ShearX@6", "ShearX@9")
  # each operation's share counts both places of the pair: uniform -> 1 / O
  np.testing.assert_allclose(ohl.operation_probability(state.ohl, np.full(count ** 2, 1 / count ** 2)),
                             np.full(count, 1 / count), rtol=1e-6)


def test_proportional_selection_draws_candidates_at_the_rate_of_their_loss():
  losses = jnp.array([[0.5, 1.0], [1.5, 1.0], [3.0, 2.0]])  # [C = 3, N = 2]
  chosen = np.asarray(uncertainty.select_proportional(jax.random.PRNGKey(0), losses, 20000))
  for example in range(2):
    frequency = np.bincount(chosen[:, example], minlength=3) / chosen.shape[0]
    share = np.asarray(losses[:, example] / losses[:, example].sum())
    np.testing.assert_allclose(frequency, share, atol=4 * np.sqrt(0.25 / chosen.shape[0]))


def test_uncertainty_sampling_trains_on_the_hardest_candidates():
  np.testing.assert_array_equal(
      uncertainty.select_hardest(jnp.array([[0.1, 5.0], [3.0, 0.2], [2.0, 1.0]]), 2),
      [[1, 0], [2, 2]])
  config = _config("uncertainty")
  config.uncertainty.selection = "hardest"
  config.uncertainty.random_probability = False
  config.uncertainty.augment_after = "none"
  config.uncertainty.candidates = 3
  config.uncertainty.ops = DETERMINISTIC_OPS
  state = uncertainty.init(config, jax.random.PRNGKey(0), _info())
  batch = _batch()
  after, metrics = jax.jit(uncertainty.train_step)(state, batch, None, jax.random.PRNGKey(4))
  # the same candidates (same key), scored and selected here by hand
  tiled = jnp.tile(jnp.asarray(batch["image"][0]), (3, 1, 1, 1))
  draw_rng, _ = jax.random.split(jax.random.PRNGKey(4))
  candidates, _ = jax.jit(uncertainty.draw_candidates)(state, draw_rng, tiled)
  logits, _ = jax.jit(lambda images: state.classifier.apply(
      state.classifier.params, state.classifier.rest,
      training.standardize(images, state.settings.mean, state.settings.std), train=False))(
          candidates)
  labels = np.tile(batch["label"][0], 3)
  losses = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels)).reshape(3, 8)
  hardest = losses.argmax(0)
  chosen = np.asarray(candidates).reshape((3, 8) + IMAGE_SHAPE)[hardest, np.arange(8)]
  expected, aux = jax.jit(training.classifier_updates)(state.classifier, state.settings,
                                                         chosen[None], batch["label"])
  for a, b in zip(jax.tree.leaves(after.classifier), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(metrics["candidate_loss"]) == pytest.approx(losses.mean(), rel=1e-5)
  assert float(after.selected_ops.sum()) == 8 * config.uncertainty.depth


@pytest.mark.parametrize("key,value,message", [
    ("reward", "accuracy", "unknown config.reinforce.reward 'accuracy'; valid: adversarial"),
    ("reward", "validation", "is its own method: use --config.method=ohl"),
    ("policies", "smart", "unknown config.reinforce.policies 'smart'; valid: adversarial, random"),
    ("num_policies", 0, "num_policies=0 must be an integer >= 1"),
    ("ops", ("Rotate", "Twirl"), "Twirl"),
    ("augment_after", "cutout(16)+nope", "nope"),
])
def test_bad_reinforce_settings_are_rejected_at_init(key, value, message):
  config = _config(**{key: value})
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    reinforce.init(config, jax.random.PRNGKey(0), _info())


def test_replays_apply_the_exported_policies(tmp_path):
  """'reinforce': every image gets one of its row's sub-policies; 'ohl': the pair of its
  row's only element with positive probability."""
  images = jnp.asarray(np.random.default_rng(0).random((64,) + IMAGE_SHAPE), jnp.float32)
  names = ["Invert", "Posterize"]
  # two rows: Invert then Posterize(level 9); Posterize(level 3) twice
  sub_policies = np.array([[[[0, 0], [1, 9]]], [[[1, 3], [1, 3]]]], np.int32)  # [R=2, S=1, L, 2]
  policy = learned.Policy("reinforce", {"names": names}, {}, {"sub_policies": sub_policies})
  learned.write_policy(str(tmp_path / "adv"), policy)
  replay = learned.replay(str(tmp_path / "adv"))
  key = jax.random.PRNGKey(0)
  for progress, row in ((0.2, 0), (0.7, 1)):
    op_index = jnp.asarray(np.broadcast_to(sub_policies[row, 0, :, 0], (64, 2)))
    level = jnp.asarray(np.broadcast_to(sub_policies[row, 0, :, 1], (64, 2)))
    expected = policies.apply_sub_policies(jax.random.PRNGKey(9), images, op_index, level,
                                           jnp.ones((64, 2)), names=names)
    np.testing.assert_allclose(replay(key, images, progress), expected, atol=1e-6)
  operations = [[0, 0], [1, 9]]
  probability = np.zeros((1, 4), np.float32)
  probability[0, 1 * 2 + 0] = 1.0  # element (Posterize@9, Invert)
  policy = learned.Policy("ohl", {"names": names, "operations": operations}, {},
                          {"probability": probability})
  learned.write_policy(str(tmp_path / "ohl"), policy)
  expected = policies.apply_sub_policies(jax.random.PRNGKey(9), images,
                                         jnp.tile(jnp.array([[1, 0]]), (64, 1)),
                                         jnp.tile(jnp.array([[9, 0]]), (64, 1)),
                                         jnp.ones((64, 2)), names=names)
  np.testing.assert_allclose(learned.replay(str(tmp_path / "ohl"))(key, images, 0.5), expected,
                             atol=1e-6)


@pytest.mark.parametrize("variant,overrides", [
    ("adversarial", {"method": "reinforce"}),
    ("ohl", {"method": "ohl"}),
    ("uncertainty", {"method": "uncertainty", "uncertainty.candidates": 2}),
])
@pytest.mark.slow
def test_end_to_end_on_the_smoke_config_and_replay(tmp_path, variant, overrides):
  """Each variant trains on digits, writes its plots and policy; supervised replays it."""
  config = smoke_config(overrides.pop("method"), {
      "reinforce.num_policies": 2, "ohl.copies": 3, "ohl.augment_after": "cutout(4)",
      "val_batch_size": 32,
      "uncertainty.augment_after": "cutout(4)",
      "reinforce.augment_after": "cutout(4)", "augment": "crop+hflip", **overrides})
  results = train.train_and_evaluate(config, str(tmp_path / "search"))
  records = [json.loads(line) for line in open(tmp_path / "search" / "metrics.jsonl")]
  assert_final_evaluation_is_the_result(records, results)
  learned_record = [r for r in records if r["split"] == "learned"][-1]
  train_records = [r for r in records if r["split"] == "train"]
  plots = set(os.listdir(tmp_path / "search" / "plots"))
  if variant == "uncertainty":
    assert "uncertainty_selected_op_share.png" in plots
    assert "candidate_loss" in train_records[-1]
    assert not os.path.exists(tmp_path / "search" / "policy")
    return
  prefix = "reinforce" if variant == "adversarial" else "ohl"
  assert f"{prefix}_reward.png" in plots
  # the rewards of the first epoch (8 steps) are in the records of the second
  assert any(k.startswith(f"{prefix}/reward[") for k in learned_record)
  policy = learned.read_policy(str(tmp_path / "search"))
  assert policy.family == ("reinforce" if variant == "adversarial" else "ohl")
  assert policy.schedule_rows == 2
  if variant == "adversarial":
    assert "controller_entropy" in train_records[-1]  # logged in the window of step 8
    rows = policy.arrays["sub_policies"]
    assert not np.array_equal(rows[0], rows[1])  # new policies for the second epoch
  else:
    assert "best_copy_val_accuracy" in train_records[-1]
    rows, rewards = policy.arrays["probability"], policy.arrays["rewards"]
    # theta moved after the first trajectory, unless the copies' accuracies tied
    assert np.ptp(rewards[0]) > 0 and not np.allclose(rows[1], rows[0])
  replay = smoke_config("supervised", {"augment": f"learned('{tmp_path / 'search'}')+crop",
                                       "num_epochs": 1})
  replayed = train.train_and_evaluate(replay, str(tmp_path / "replay"))
  assert_final_evaluation_is_the_result(
      [json.loads(line) for line in open(tmp_path / "replay" / "metrics.jsonl")], replayed)
