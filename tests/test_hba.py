"""HBA: the search space, lambda's gradient against finite differences, warm-up and schedule,
and replays of exported policies (HBA and bilevel) against the runs that learned them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaug.augment import learned
from jaxaug.augment import policies
from jaxaug.augment import space
from jaxaug.config import default_config
from jaxaug.methods import bilevel
from jaxaug.methods import training
from jaxaug.methods import hba

IMAGE_SHAPE = (8, 8, 3)
STEPS_PER_EPOCH = 5


# One setting for most tests, so that they share one compiled step: conv+bn hyper-layers
# (lambda's gradient is not zero from the second step), two warm-up steps, a lambda
# update on every later step.
SHARED = {"strategy": "conv+bn", "warmup_epochs": 0.4, "update_every": 1}


def _config(method="hba", **hba_overrides):
  config = default_config()
  config.method = method
  config.model = "small_cnn"
  config.augment = "none"
  config.num_epochs = 3
  config.optim.learning_rate = 0.05
  for key, value in hba_overrides.items():
    config.hba[key] = value
  return config


def _info(config):
  return training.DataInfo.create(num_classes=4, image_shape=IMAGE_SHAPE,
                                batches_per_epoch=STEPS_PER_EPOCH, num_epochs=config.num_epochs)


def _batches(seed, batch=16):
  rng = np.random.default_rng(seed)
  train = {"image": rng.uniform(size=(1, batch) + IMAGE_SHAPE).astype(np.float32),
           "label": rng.integers(0, 4, (1, batch)).astype(np.int32)}
  val = {"image": rng.uniform(size=(batch,) + IMAGE_SHAPE).astype(np.float32),
         "label": rng.integers(0, 4, (batch,)).astype(np.int32)}
  return train, val


def _run(config, steps):
  """`steps` jitted train steps on random batches; (state, lambda before each step)."""
  module = {"hba": hba, "bilevel": bilevel}[config.method]
  state = module.init(config, jax.random.PRNGKey(0), _info(config))
  step = jax.jit(module.train_step)
  lambdas = []
  for i in range(steps):
    lambdas.append(np.asarray(state.hyper.params) if config.method == "hba" else None)
    state, _ = step(state, *_batches(i), jax.random.PRNGKey(100 + i))
  return state, lambdas


@pytest.fixture(scope="module")
def searched():
  """Two epochs and two steps of HBA with the shared setting: (state, lambdas)."""
  return _run(_config(**SHARED), steps=2 * STEPS_PER_EPOCH + 2)


def test_search_space_is_pbas_with_the_papers_ranges():
  search_space = hba.SearchSpace.create()
  assert search_space.names == policies.PBA_ENTRIES and len(search_space.names) == 30
  # AutoContrast, Equalize, Invert (twice each) have no magnitude
  assert search_space.dim == 54
  lam = jnp.asarray(search_space.initial(0.1, 0.1))
  probability, magnitude = search_space.values(lam)
  np.testing.assert_allclose(probability, 0.1, rtol=1e-5)
  by_name = dict(zip(search_space.names, np.asarray(magnitude)))
  expected = {"AutoContrast": 1.0, "Invert": 1.0, "Rotate": 3.0, "Posterize": 7.2,
              "Solarize": 255 - 25.5, "Color": 1.0, "ShearX": 0.03, "TranslateY": 0.045,
              "Cutout": 0.02}
  for name, value in expected.items():
    np.testing.assert_allclose(by_name[name], value, rtol=1e-4, err_msg=name)
  # any unbounded value maps into the ranges; per-example h gives per-example values
  extreme = jnp.stack([jnp.full(54, -30.0), jnp.full(54, 30.0), lam])
  probability, magnitude = search_space.values(extreme)
  assert probability.shape == magnitude.shape == (3, 30)
  for index, name in enumerate(search_space.names):
    low, high = space.SPACE.get(name).magnitude_range or (1.0, 1.0)
    assert low - 1e-5 <= float(magnitude[:, index].min()) <= float(
        magnitude[:, index].max()) <= high + 1e-5


def test_lambda_gradient_matches_finite_differences_in_float64():
  """The lambda step is -lr * d(val loss at h = lambda)/d lambda of the updated classifier."""
  config = _config(**SHARED)
  config.hba.optim.update(name="sgd", learning_rate=1.0, grad_clip=0.0)
  with jax.enable_x64(True):
    to64 = lambda tree: jax.tree.map(
        lambda x: x.astype(np.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
    state = to64(hba.init(config, jax.random.PRNGKey(0), _info(config)))
    step = jax.jit(hba.train_step)
    # two warm-up steps move V away from 0, so lambda's gradient is not zero
    for i in range(2):
      state, _ = step(state, *to64(_batches(i)), jax.random.PRNGKey(i))
    np.testing.assert_array_equal(state.hyper.params, to64(state.schedule[0]))
    train, val = to64(_batches(7))
    new_state, metrics = step(state, train, val, jax.random.PRNGKey(7))
    step_taken = np.asarray(state.hyper.params - new_state.hyper.params)
    assert bool(metrics["hypergrad_norm"].present) and float(metrics["hypergrad_norm"].value) > 0

    classifier = new_state.classifier

    @jax.jit
    def val_loss(lam):
      return training.classifier_loss(
          classifier, classifier.params, classifier.rest, val["image"], val["label"],
          mean=state.settings.mean, std=state.settings.std,
          hyper=jnp.broadcast_to(lam, (16, lam.shape[0])))[0]

    lam = np.asarray(state.hyper.params)
    epsilon = 1e-6
    finite_differences = np.array([
        (val_loss(lam + epsilon * e) - val_loss(lam - epsilon * e)) / (2 * epsilon)
        for e in np.eye(lam.shape[0])])
  assert np.abs(finite_differences).max() > 1e-6
  np.testing.assert_allclose(step_taken, finite_differences, rtol=1e-5, atol=1e-9)


def test_lambda_is_held_during_warm_up_then_updated_every_k_steps():
  config = _config(**{**SHARED, "update_every": 2})
  state, lambdas = _run(config, steps=7)
  lambdas.append(np.asarray(state.hyper.params))
  moved = [not np.array_equal(a, b) for a, b in zip(lambdas, lambdas[1:])]
  # steps 0, 1 warm-up; updates on even steps from 2
  assert moved == [False, False, True, False, True, False, True]


def test_schedule_holds_lambda_at_the_end_of_each_epoch(searched):
  state, lambdas = searched  # lambdas[s]: lambda before step s
  assert state.schedule.shape == (3, 54)
  for epoch in range(2):
    np.testing.assert_array_equal(state.schedule[epoch], lambdas[(epoch + 1) * STEPS_PER_EPOCH])
  np.testing.assert_array_equal(state.schedule[2], state.hyper.params)  # the epoch under way
  assert not np.array_equal(state.schedule[0], state.schedule[1])


@pytest.mark.slow
def test_each_training_image_gets_its_own_perturbed_hyper_parameters(monkeypatch):
  """h = lambda + sigma * eps per example, redrawn every step, reaches the augmentation."""
  config = _config(**SHARED)
  state = hba.init(config, jax.random.PRNGKey(0), _info(config))
  seen = []

  def record(state, rng, images, hyper_values):
    seen.append(np.asarray(hyper_values))
    return images

  monkeypatch.setattr(hba, "_policy_augment", record)
  for i in range(2):
    state, _ = hba.train_step(state, *_batches(i, batch=64), jax.random.PRNGKey(i))
  first, second = seen
  assert first.shape == (64, 54)
  deviations = (first - np.asarray(state.hyper.params)) / config.hba.sigma
  assert abs(deviations.mean()) < 0.1 and abs(deviations.std() - 1) < 0.1
  assert len(np.unique(first[:, 0])) == 64 and not np.allclose(first, second)


def test_training_images_get_their_own_hyper_parameters():
  """h [B, D]: each image is augmented with its own probabilities (all-or-nothing here)."""
  config = _config()
  state = hba.init(config, jax.random.PRNGKey(0), _info(config))
  images = jnp.asarray(_batches(0)[1]["image"])
  never, always = np.full(54, -30.0), np.full(54, 30.0)
  h = jnp.asarray(np.stack([never, always] * 8))
  out = hba._policy_augment(state, jax.random.PRNGKey(5), images, h)
  unchanged = np.all(np.isclose(out, images, atol=1e-6), axis=(1, 2, 3))
  np.testing.assert_array_equal(unchanged[0::2], True)
  assert not unchanged[1::2].all()


def test_hba_replay_applies_the_operations_of_the_search_for_the_same_keys(tmp_path, searched):
  state, _ = searched
  learned.write_policy(str(tmp_path), hba.export_policy(state))
  replay = jax.jit(learned.replay(str(tmp_path)))
  policy_augment = jax.jit(hba._policy_augment)
  images = jnp.asarray(_batches(3)[1]["image"])
  rows = state.schedule.shape[0]
  for row in range(rows):
    key = jax.random.PRNGKey(row)
    expected = policy_augment(state, key, images, state.schedule[row])
    np.testing.assert_array_equal(replay(key, images, (row + 0.5) / rows), expected)
  # and what the trainer shows of the search (augment at h = lambda) is the replay's operation
  # at the same lambda
  key = jax.random.PRNGKey(9)
  shown = jax.jit(hba.augment)(state, images, key)
  same = policy_augment(state, jax.random.split(key)[0], images, state.hyper.params)
  np.testing.assert_array_equal(shown, same)


@pytest.mark.slow
def test_bilevel_replay_applies_the_learned_augmenter_for_the_same_keys(tmp_path):
  config = _config("bilevel")
  state, _ = _run(config, steps=3)  # in epoch 0 of 3: schedule row 0 is the augmenter now
  learned.write_policy(str(tmp_path / "policy"), bilevel.export_policy(state))
  replay = jax.jit(learned.replay(str(tmp_path)))  # the run's workdir is accepted too
  images = jnp.asarray(_batches(3)[1]["image"])
  key = jax.random.PRNGKey(4)
  expected, _ = bilevel.learned_augment(state, state.augmenter.params, images, key)
  np.testing.assert_allclose(replay(key, images, 0.2), expected, atol=1e-5)  # jit vs eager
  assert not np.allclose(expected, images)


def test_malformed_policies_are_refused_with_the_reason(tmp_path):
  policy = learned.Policy("hba", {"names": ["Rotate"]}, {}, {
      "probability": np.zeros((2, 1), np.float32), "magnitude": np.zeros((3, 1), np.float32)})
  with pytest.raises(ValueError, match="common leading axis"):
    learned.write_policy(str(tmp_path), policy)
  good = learned.Policy("hba", {"names": ["Rotate"]}, {}, {
      "probability": np.zeros((2, 1), np.float32), "magnitude": np.zeros((2, 1), np.float32)})
  learned.write_policy(str(tmp_path / "a"), good)
  (tmp_path / "a" / "arrays.npz").write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="malformed learned policy"):
    learned.read_policy(str(tmp_path / "a"))
  learned.write_policy(str(tmp_path / "b"), learned.Policy("dabo", {}, {}, good.arrays))
  with pytest.raises(ValueError, match="unknown learned-policy family 'dabo'.*bilevel, hba"):
    learned.read_policy(str(tmp_path / "b"))


def test_schedule_rows_stretch_over_training():
  assert [int(learned.schedule_row(4, p)) for p in (0.0, 0.24, 0.25, 0.99, 1.0)] == [0, 0, 1, 3, 3]
