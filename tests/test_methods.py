"""Method steps: 8 devices == 1 device; the bilevel look-ahead is the real update; hypergradient modes agree."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxaug import parallel
from jaxaug.config import default_config
from jaxaug.methods import METHODS
from jaxaug.methods import bilevel
from jaxaug.methods import contract
from jaxaug.methods import training

IMAGE_SHAPE = (8, 8, 3)


def _config(method, **bilevel_overrides):
  config = default_config()
  config.method = method
  config.model = "small_cnn"
  config.augment = "hflip"
  config.num_epochs = 1
  config.optim.learning_rate = 0.05
  config.hba.warmup_epochs = 0.0  # lambda moves from the first step
  config.hba.update_every = 1
  for key, value in bilevel_overrides.items():
    config.bilevel[key] = value
  return config


def _batches(truncation, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  train = {"image": rng.integers(0, 256, (truncation, batch) + IMAGE_SHAPE).astype(np.float32) / 255,
           "label": rng.integers(0, 4, (truncation, batch)).astype(np.int32)}
  val = {"image": rng.integers(0, 256, (batch,) + IMAGE_SHAPE).astype(np.float32) / 255,
         "label": rng.integers(0, 4, (batch,)).astype(np.int32)}
  return train, val


def _info(config):
  """10 batches per epoch of T batches each."""
  return training.DataInfo.create(
      num_classes=4, image_shape=IMAGE_SHAPE,
      batches_per_epoch=10 * METHODS.get(config.method).train_batches_per_step(config),
      batches_per_step=METHODS.get(config.method).train_batches_per_step(config),
      num_epochs=config.num_epochs)


def _init(config):
  return METHODS.get(config.method).init(config, jax.random.PRNGKey(0), _info(config))


def _assert_leaves_close(actual, expected, *, rtol, atol, float32_rtol=None):
  """Leaf-by-leaf allclose (the trees may differ in static fields); `float32_rtol` for f32 leaves."""
  paths_actual = jax.tree_util.tree_leaves_with_path(actual)
  leaves_expected = jax.tree.leaves(expected)
  assert len(paths_actual) == len(leaves_expected)
  for (path, a), b in zip(paths_actual, leaves_expected):
    leaf_rtol = rtol
    if float32_rtol is not None and np.asarray(a).dtype == np.float32:
      leaf_rtol = float32_rtol
    np.testing.assert_allclose(a, b, rtol=leaf_rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def _float64(tree):
  return jax.tree.map(lambda leaf: leaf.astype(np.float64) if np.issubdtype(leaf.dtype, np.floating)
                      else leaf, tree)


def _steps_on_mesh(config, devices, steps):
  """`steps` jitted float64 train steps with the batches split over `devices`; host state, metrics."""
  method = METHODS.get(config.method)
  mesh = parallel.make_mesh(devices)
  state = parallel.put_replicated(_float64(_init(config)), mesh)
  step = jax.jit(method.train_step)
  for i in range(steps):
    train, val = _float64(_batches(method.train_batches_per_step(config), seed=i))
    state, metrics = step(state, parallel.put_batch(train, mesh, batch_axis=1),
                          parallel.put_batch(val, mesh), jax.random.PRNGKey(i + 1))
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("method,truncation,overrides", [
    ("supervised", 1, {}),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in (
        ("bilevel", 1, {}), ("bilevel", 2, {}), ("hba", 1, {}), ("invariant", 1, {}),
        ("bilevel", 1, {"bilevel.hypergradient": "implicit", "bilevel.update_every": 2}),
        ("reinforce", 1, {"reinforce.num_policies": 2, "reinforce.augment_after": "cutout(4)"}),
        ("ohl", 1, {"ohl.copies": 2}),
        ("uncertainty", 1, {"uncertainty.candidates": 2}))),
])
def test_eight_devices_match_one_device(method, truncation, overrides):
  """Same math; only the order of cross-device reductions differs, so in float64 they agree.

  Three steps, so that the optimiser states (momentum, Adam moments) carried between steps
  on the mesh are compared too.
  """
  assert len(jax.devices()) == 8
  config = _config(method, truncation=truncation)
  for key, value in overrides.items():
    *sections, name = key.split(".")
    target = config
    for section in sections:
      target = target[section]
    target[name] = value
  with jax.enable_x64(True):
    state_8, metrics_8 = _steps_on_mesh(config, jax.devices(), steps=3)
    state_1, metrics_1 = _steps_on_mesh(config, jax.devices()[:1], steps=3)
  classifier = state_1.classifiers if hasattr(state_1, "classifiers") else state_1.classifier
  assert jax.tree.leaves(classifier.params)[0].dtype == np.float64
  # A few summaries (aug/* metrics) are float32 whatever the inputs.
  _assert_leaves_close((state_8, metrics_8), (state_1, metrics_1), rtol=1e-9, atol=1e-12,
                       float32_rtol=1e-6)


@pytest.mark.parametrize("truncation", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_bilevel_look_ahead_is_the_update_the_classifier_takes(truncation):
  """After a bilevel step the classifier equals T plain optax updates on the augmented batches.

  Two steps come first, so the momentum buffer and the schedule's count are not at their
  initial values (a look-ahead with its own fresh optimiser state would fail here).
  """
  config = _config("bilevel", truncation=truncation)
  config.augment = "none"
  state = _init(config)
  step = jax.jit(bilevel.train_step)
  for i in range(2):
    state, _ = step(state, *_batches(truncation, seed=10 + i), jax.random.PRNGKey(10 + i))
  assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(state.classifier.opt_state)
             if jnp.issubdtype(leaf.dtype, jnp.floating)) > 0
  train, val = _batches(truncation)
  rng = jax.random.PRNGKey(3)
  new_state, _ = step(state, train, val, rng)

  @jax.jit  # one program: the same math as op by op, compiled once
  def plain_updates(state, train):
    _, noise_rng = jax.random.split(rng)
    images, _ = bilevel.learned_augment(state, state.augmenter.params, train["image"], noise_rng)
    expected = state.classifier
    for t in range(truncation):
      (_, (rest, _)), grads = jax.value_and_grad(training.classifier_loss, argnums=1,
                                                 has_aux=True)(
          expected, expected.params, expected.rest, images[t], train["label"][t],
          mean=state.settings.mean, std=state.settings.std)
      expected = expected.apply_update(grads, rest)
    return expected

  _assert_leaves_close(new_state.classifier, plain_updates(state, train), rtol=1e-5, atol=1e-6)
  # and the augmenter moved
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.augmenter.params,
                       state.augmenter.params)
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("truncation", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_bilevel_forward_and_reverse_second_order_agree(truncation):
  """The fast forward-over-reverse hypergradient equals plain autodiff on the real model."""
  train, val = _batches(truncation)
  results = {}
  for mode in ("forward", "reverse"):
    config = _config("bilevel", truncation=truncation, second_order=mode)
    config.bilevel.optim.name = "sgd"  # update = -lr * hypergradient: compares gradients directly
    config.bilevel.optim.learning_rate = 1.0
    config.bilevel.optim.grad_clip = 0.0
    state = _init(config)
    new_state, metrics = jax.jit(bilevel.train_step)(state, train, val, jax.random.PRNGKey(1))
    results[mode] = (jax.tree.map(jnp.subtract, new_state.augmenter.params,
                                  state.augmenter.params), metrics["hypergrad_norm"].value)
  assert results["forward"][1] > 0
  np.testing.assert_allclose(results["forward"][1], results["reverse"][1], rtol=1e-4)
  _assert_leaves_close(results["forward"][0], results["reverse"][0], rtol=1e-3, atol=1e-7)


def _augmenter_step_sizes(config, updates):
  """How far the augmenter's first parameter moves in each of `updates` optimiser updates
  along unit gradients (its learning rate at each update, for SGD without momentum)."""
  learner = _init(config).augmenter
  grads = jax.tree.map(jnp.ones_like, learner.params)
  step_sizes = []
  for _ in range(updates):
    moved = learner.apply_update(grads)
    step_sizes.append(float(jax.tree.leaves(learner.params)[0].ravel()[0]
                            - jax.tree.leaves(moved.params)[0].ravel()[0]))
    learner = moved
  return step_sizes


@pytest.mark.parametrize("schedule", ["constant", *(pytest.param(schedule, marks=pytest.mark.slow)
                                                  for schedule in ("cosine", "step"))])
def test_bilevel_augmenter_takes_every_schedule(schedule):
  """The augmenter's SGD steps (lr 1, unit gradients) are the schedule's rates over its 10
  updates of a 10-step run, for each schedule, with a warm-up epoch."""
  config = _config("bilevel")
  config.bilevel.optim.update(name="sgd", learning_rate=1.0, schedule=schedule, momentum=0.0,
                              weight_decay=0.0, grad_clip=0.0, warmup_epochs=0.3,
                              step_epochs=(0.6,), step_factor=0.5)
  step_sizes = _augmenter_step_sizes(config, 10)
  expected = training.learning_rate_schedule(config.bilevel.optim, steps_per_epoch=10,
                                             total_steps=10)
  np.testing.assert_allclose(step_sizes, [expected(i) for i in range(10)], rtol=1e-5,
                             atol=1e-6)
  assert step_sizes[0] == 0 and len(set(np.round(step_sizes, 5))) > 2  # warm-up, then more


def _tree_vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow  # the Neumann hypergradient's math: test_hypergrad (exact inverse, closed form)
def test_bilevel_implicit_step_is_the_neumann_hypergradient_at_the_current_classifier():
  """hypergradient='implicit': the classifier takes the plain update on the augmented batch,
  and the augmenter's SGD step (lr 1) is -(-d/dlambda <dL_T/dtheta, p>) with
  p = alpha sum_j (I - alpha H)^j dL_V/dtheta, all at the classifier before its update,
  computed here by plain autodiff (reverse-over-reverse Hessian-vector products)."""
  config = _config("bilevel", hypergradient="implicit", neumann_terms=2, neumann_scale=0.05)
  config.bilevel.optim.update(name="sgd", learning_rate=1.0, grad_clip=0.0)
  config.augment = "none"
  state = _init(config)
  train, val = _batches(1)
  rng = jax.random.PRNGKey(3)
  new_state, metrics = jax.jit(bilevel.train_step)(state, train, val, rng)

  _, noise_rng = jax.random.split(rng)
  classifier, settings = state.classifier, state.settings
  loss = lambda params, images, labels: training.classifier_loss(
      classifier, params, classifier.rest, images, labels, mean=settings.mean,
      std=settings.std)[0]
  images_of = lambda lam: bilevel.learned_augment(state, lam, jnp.asarray(train["image"][0]),
                                                  noise_rng)[0]
  labels = train["label"][0]
  images = images_of(state.augmenter.params)

  @jax.jit  # one program: the same math as op by op, compiled once
  def neumann_hypergradient(augmenter_params):
    hvp = lambda u: jax.grad(lambda p: _tree_vdot(jax.grad(loss)(p, images, labels), u))(
        classifier.params)
    v = jax.grad(loss)(classifier.params, val["image"], val["label"])
    term, total = v, v
    for _ in range(2):
      term = jax.tree.map(lambda t, h: t - 0.05 * h, term, hvp(term))
      total = jax.tree.map(jnp.add, total, term)
    p = jax.tree.map(lambda t: 0.05 * t, total)
    return jax.grad(lambda lam: -_tree_vdot(
        jax.grad(loss)(classifier.params, images_of(lam), labels), p))(augmenter_params)

  hypergrads = neumann_hypergradient(state.augmenter.params)
  moved = jax.tree.map(jnp.subtract, new_state.augmenter.params, state.augmenter.params)
  _assert_leaves_close(moved, jax.tree.map(jnp.negative, hypergrads), rtol=2e-3, atol=1e-7)
  assert float(metrics["hypergrad_norm"].value) > 0
  (_, (rest, _)), grads = jax.value_and_grad(training.classifier_loss, argnums=1, has_aux=True)(
      classifier, classifier.params, classifier.rest, images, labels, mean=settings.mean,
      std=settings.std)
  _assert_leaves_close(new_state.classifier, classifier.apply_update(grads, rest), rtol=1e-5,
                       atol=1e-6)


@pytest.mark.parametrize("changes,message", [
    ({"hypergradient": "greedy"}, "unknown config.bilevel.hypergradient 'greedy'; valid: unroll, "
     "implicit"),
    ({"hypergradient": "implicit", "neumann_terms": -2}, "config.bilevel.neumann_terms=-2 must "
     "be an integer >= 0"),
    ({"hypergradient": "implicit", "neumann_scale": 0.0}, "config.bilevel.neumann_scale=0.0 "
     "must be a finite number > 0"),
    ({"hypergradient": "implicit", "truncation": 2}, "config.bilevel.truncation=2 is the "
     "unroll's"),
])
def test_bilevel_rejects_bad_hypergradient_settings_at_init(changes, message):
  with pytest.raises(ValueError, match=message):
    _init(_config("bilevel", **changes))


def test_bilevel_rejects_an_unknown_second_order_mode_at_init():
  with pytest.raises(ValueError, match="second_order 'sideways'; valid: forward, reverse"):
    _init(_config("bilevel", second_order="sideways"))


def test_bilevel_update_every_skips_augmenter_updates():
  config = _config("bilevel", update_every=2)
  state = _init(config)
  step = jax.jit(bilevel.train_step)
  for i, expect_moved in enumerate([True, False, True]):
    train, val = _batches(1, seed=i)
    new_state, metrics = step(state, train, val, jax.random.PRNGKey(i))
    moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                             new_state.augmenter.params, state.augmenter.params)))
    assert (moved > 0) == expect_moved
    assert (float(metrics["hypergrad_norm"].value) > 0) == expect_moved
    state = new_state


def test_bilevel_augmenter_schedule_spans_its_updates_not_the_train_steps():
  """With update_every=K the augmenter moves on ceil(total/K) steps; its cosine ends with them."""
  config = _config("bilevel", update_every=3)
  config.bilevel.optim.update(name="sgd", learning_rate=1.0, schedule="cosine", momentum=0.0,
                              weight_decay=0.0, grad_clip=0.0)
  step_sizes = _augmenter_step_sizes(config, 4)  # 1 epoch of 10 steps: updates at 0, 3, 6, 9
  expected = optax.cosine_decay_schedule(1.0, 4)
  np.testing.assert_allclose(step_sizes, [expected(i) for i in range(4)], rtol=1e-5, atol=1e-6)


def _smoke_config_from_command_line(*overrides):
  """configs/smoke.py with `--config.x=y` overrides parsed as `jaxaug.main` parses them."""
  from absl import flags
  from ml_collections import config_flags

  smoke = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py")
  argv = ["prog", f"--config={smoke}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_bilevel_augmenter_bounds_and_init_scale_from_the_command_line():
  """--config.bilevel.augmenter.bounds.max_* and .init_scale reach the augmenter bilevel builds."""
  def augmenter_params(*overrides):
    state = _init(_smoke_config_from_command_line(
        "--config.method=bilevel", "--config.bilevel.augmenter.kind=translation", *overrides))
    noise = jax.random.normal(jax.random.key(0), (4096, state.augmenter_settings.noise_dim))
    params = lambda scale: np.asarray(
        state.augmenter.apply(state.augmenter.params, state.augmenter.rest, scale * noise)[0])
    return params(1.0), params(1e6)

  default, default_saturated = augmenter_params()
  params, saturated = augmenter_params("--config.bilevel.augmenter.bounds.max_translation=0.5",
                                       "--config.bilevel.augmenter.init_scale=3.0")
  np.testing.assert_allclose(np.abs(default_saturated).max(axis=0), 0.25, rtol=1e-3)
  np.testing.assert_allclose(np.abs(saturated).max(axis=0), 0.5, rtol=1e-3)
  # Relative to its bound, the spread is ~1x the default's if init_scale is ignored; 30x less
  # tanh saturation if it is used.
  relative_spread = (params.std(axis=0) / 0.5) / (default.std(axis=0) / 0.25)
  assert np.all(relative_spread > 3), relative_spread


def _is_scalar_metric(value):
  if isinstance(value, contract.Sparse):
    return np.shape(value.value) == () and np.shape(value.present) == ()
  return np.shape(value) == ()


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_keeps_the_contract(name, tmp_path):
  """What train.py relies on, for every registered method (see jaxaug/methods/__init__.py)."""
  from jaxaug.augment import learned
  from jaxaug.methods import Method

  method = METHODS.get(name)
  assert isinstance(method, Method) and method.name == name
  config = _config(name)
  # config.py assembles the method's own section
  assert default_config()[name].to_dict() == method.default_config().to_dict()
  batches = method.train_batches_per_step(config)
  assert isinstance(batches, int) and batches >= 1
  state = _init(config)
  assert int(state.step) == 0 and int(state.nonfinite_step) == -1
  train, val = _batches(batches)
  # The step's types, by abstract evaluation (test_train's short run of every method runs it):
  # the state it returns has the state's structure, shapes and dtypes (one compilation).
  new_state, metrics = jax.eval_shape(
      method.train_step, state, train, val if method.uses_val_batch(config) else None,
      jax.random.PRNGKey(1))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert ([(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(new_state)] ==
          [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(state)])
  assert {"loss", "accuracy"} <= set(metrics)
  assert all(_is_scalar_metric(value) for value in metrics.values()), metrics
  # eval sums over the masked examples only
  mask = np.arange(16) < 11
  sums = jax.jit(method.eval_step)(state, {**val, "mask": mask})
  assert set(sums) == {"loss_sum", "correct", "count"} and float(sums["count"]) == 11
  images = jax.jit(method.augment)(state, val["image"], jax.random.PRNGKey(2))
  assert images.shape == val["image"].shape
  assert float(images.min()) >= 0 and float(images.max()) <= 1
  summaries = jax.jit(method.summaries)(state)
  assert isinstance(summaries, contract.Summaries)
  labels = dict(summaries.labels)
  assert set(labels) == set(summaries.vectors)
  assert all(len(labels[key]) == np.size(value) for key, value in summaries.vectors.items())
  policy = method.export_policy(state)
  # the methods that learn augmentation export a replayable policy
  assert (policy is None) == (name in ("supervised", "uncertainty"))
  if policy is not None:
    learned.write_policy(str(tmp_path), policy)
    replayed = jax.jit(learned.replay(str(tmp_path)))(jax.random.PRNGKey(3), val["image"], 0.5)
    assert replayed.shape == val["image"].shape


def test_hba_command_line_sets_its_strategy():
  """--config.hba.* overrides reach the method (the section is config.py's, owned by hba)."""
  from jaxaug.models import hyper

  config = _smoke_config_from_command_line("--config.method=hba", "--config.hba.strategy=conv+bn")
  info = training.DataInfo.create(num_classes=10, image_shape=(8, 8, 1), batches_per_epoch=8,
                                num_epochs=2)
  classifier = METHODS.get("hba").init(config, jax.random.PRNGKey(0), info).classifier
  module = nnx.merge(classifier.graphdef, classifier.params, classifier.rest)
  counts = hyper.count_hyper_layers(module)
  assert counts["HyperConv"] == 3 and counts["HyperBN"] == 3, counts  # small_cnn: 3 conv + BN


def test_classifier_loss_returns_per_example_losses_and_passes_model_arguments():
  config = _config("supervised")
  classifier = _init(config).classifier
  train, _ = _batches(1)
  images, labels = train["image"][0], train["label"][0]
  loss, (_, aux) = training.classifier_loss(classifier, classifier.params, classifier.rest, images,
                                          labels, mean=(0.5,), std=(0.25,), train=False)
  logits, _ = classifier.apply(classifier.params, classifier.rest, (images - 0.5) / 0.25,
                               train=False)
  np.testing.assert_allclose(
      aux.per_example_loss, optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      rtol=1e-6)
  np.testing.assert_allclose(loss, aux.per_example_loss.mean(), rtol=1e-6)
  with pytest.raises(TypeError, match="hyper"):  # keyword arguments reach the model
    training.classifier_loss(classifier, classifier.params, classifier.rest, images, labels,
                           mean=(0.5,), std=(0.25,), hyper=jnp.zeros((16, 3)))


def _invariant_state(augment="none", **augmenter_optim):
  """An `invariant` state (fixed augmentation `augment`), its augmenter far from the identity."""
  config = _config("invariant")
  config.augment = augment
  config.invariant.augmenter.kind = "affine_color"
  config.invariant.augmenter.init_scale = 1.0
  config.invariant.optim.update(augmenter_optim)
  return config, _init(config)


def _training_loss(state, classifier_params, augmenter_params, images, labels, noise_rng):
  """The training loss written out: noise -> augmenter -> transformed images -> classifier."""
  from jaxaug.augment import augmenters
  module = nnx.merge(state.augmenter.graphdef, augmenter_params, state.augmenter.rest)
  noise = jax.random.normal(noise_rng, (images.shape[0], module.noise_dim), images.dtype)
  transformed = augmenters.apply_augmenter_params("affine_color", images, module(noise))
  logits, _ = state.classifier.apply(classifier_params, state.classifier.rest,
                                     (transformed - 0.5) / 0.25, train=True)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.slow
def test_invariant_augmenter_descends_the_training_loss_with_the_classifier():
  """With SGD at rate 1 the augmenter moves by minus the gradient of the training loss (the
  loss written out here; directional derivatives checked by central finite differences in
  float64); the classifier takes its optimiser's update along the same loss."""
  with jax.enable_x64(True):
    config, state = _invariant_state(name="sgd", learning_rate=1.0, momentum=0.0,
                                     weight_decay=0.0, grad_clip=0.0, schedule="constant")
    state = _float64(state)
    train, _ = _float64(_batches(1))
    rng = jax.random.PRNGKey(5)
    new_state, metrics = jax.jit(METHODS.get("invariant").train_step)(state, train, None, rng)
    _, noise_rng = jax.random.split(rng)
    images, labels = jnp.asarray(train["image"][0]), jnp.asarray(train["label"][0])
    loss = jax.jit(lambda c, a: _training_loss(state, c, a, images, labels, noise_rng))
    np.testing.assert_allclose(metrics["loss"], loss(state.classifier.params,
                                                     state.augmenter.params), rtol=1e-10)
    step = jax.tree.map(jnp.subtract, new_state.augmenter.params, state.augmenter.params)
    assert float(metrics["augmenter_grad_norm"]) > 0
    _assert_leaves_close(step, jax.tree.map(jnp.negative, jax.grad(loss, argnums=1)(
        state.classifier.params, state.augmenter.params)), rtol=1e-9, atol=1e-12)
    for seed in range(2):  # the warp's and ReLU's kinks: a small step
      leaves, treedef = jax.tree.flatten(state.augmenter.params)
      keys = jax.random.split(jax.random.PRNGKey(100 + seed), len(leaves))
      direction = treedef.unflatten([jax.random.normal(k, leaf.shape, leaf.dtype)
                                     for k, leaf in zip(keys, leaves)])
      eps = 1e-7
      shifted = lambda sign: jax.tree.map(lambda p, d: p + sign * eps * d,
                                          state.augmenter.params, direction)
      finite = (loss(state.classifier.params, shifted(1)) -
                loss(state.classifier.params, shifted(-1))) / (2 * eps)
      taken = sum(float(jnp.vdot(s, d)) for s, d in zip(jax.tree.leaves(step),
                                                          jax.tree.leaves(direction)))
      np.testing.assert_allclose(-taken, finite, rtol=1e-5)
    # The classifier took its optimiser's update along the same loss's gradient.
    grads = jax.grad(loss)(state.classifier.params, state.augmenter.params)
    (_, (rest, _)) = training.classifier_loss(
        state.classifier, state.classifier.params, state.classifier.rest,
        bilevel.learned_augment(state, state.augmenter.params, images, noise_rng)[0], labels,
        mean=(0.5,), std=(0.25,))
    expected = state.classifier.apply_update(grads, rest)
    _assert_leaves_close(new_state.classifier, expected, rtol=1e-9, atol=1e-12)


def test_invariant_evaluates_on_the_augmenters_transformation():
  """eval_step scores the classifier on images the augmenter transformed (noise from the
  fixed evaluation key), not on the plain images; the fixed augmentation stays out."""
  from jaxaug.augment import augmenters
  from jaxaug.methods import invariant
  _, state = _invariant_state(augment="hflip")  # a flip for training only
  _, val = _batches(1)
  batch = {**val, "mask": np.arange(16) < 13}
  sums = jax.jit(invariant.eval_step)(state, batch)
  module = nnx.merge(state.augmenter.graphdef, state.augmenter.params, state.augmenter.rest)
  noise = jax.random.normal(jax.random.PRNGKey(invariant.EVAL_NOISE_SEED), (16, module.noise_dim))
  transformed = augmenters.apply_augmenter_params("affine_color", jnp.asarray(val["image"]),
                                                  module(noise))
  assert float(jnp.abs(transformed - val["image"]).mean()) > 0.02  # far from the identity

  def numpy_sums(images):
    logits, _ = state.classifier.apply(state.classifier.params, state.classifier.rest,
                                       (images - 0.5) / 0.25, train=False)
    logits = np.asarray(logits, np.float64)[:13]
    labels = val["label"][:13]
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    return -log_probs[np.arange(13), labels].sum(), (logits.argmax(1) == labels).sum()

  loss_sum, correct = numpy_sums(transformed)
  np.testing.assert_allclose(sums["loss_sum"], loss_sum, rtol=1e-5)
  assert float(sums["correct"]) == correct and float(sums["count"]) == 13
  plain_loss_sum, _ = numpy_sums(jnp.asarray(val["image"]))
  assert abs(plain_loss_sum - loss_sum) > 1e-3
  # Evaluation is reproducible: the same sums every time.
  np.testing.assert_array_equal(jax.jit(invariant.eval_step)(state, batch)["loss_sum"],
                                sums["loss_sum"])


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_computes_in_config_dtype_and_keeps_float32_state(name):
  """config.dtype reaches every method: every convolution of train_step (the classifier's
  forward and backward passes, and for bilevel the hypergradient's tangent pass) and of
  eval_step runs in it, while the state after a step (parameters, optimiser states, batch-norm
  statistics, the augmenter or lambda) and the metrics stay float32. Traced, not compiled."""
  from test_models import conv_dtypes

  method = METHODS.get(name)
  for dtype in ("float32", "bfloat16"):
    config = _config(name)
    config.dtype = dtype
    state = jax.eval_shape(lambda: _init(config))
    train, val = _batches(method.train_batches_per_step(config))
    args = (state, train, val if method.uses_val_batch(config) else None, jax.random.PRNGKey(1))
    for jaxpr in (jax.make_jaxpr(method.train_step)(*args),
                  jax.make_jaxpr(method.eval_step)(state, {**val, "mask": np.ones(16, bool)})):
      convs = conv_dtypes(jaxpr)
      assert convs and set(convs) == {(dtype,) * 3}, set(convs)
    new_state, metrics = jax.eval_shape(method.train_step, *args)
    floats = [leaf.dtype for leaf in jax.tree.leaves((new_state, metrics))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert set(floats) == {jnp.dtype(jnp.float32)}


def test_methods_reject_an_unknown_dtype():
  for name in METHODS.names():
    config = _config(name)
    config.dtype = "float16"
    with pytest.raises(ValueError, match="unknown dtype 'float16'; valid dtype names: bfloat16, "
                                         "float32"):
      jax.eval_shape(lambda: _init(config))


def _relative_error(actual, expected):
  """||actual - expected|| / ||expected|| over all leaves of two pytrees, in float64."""
  flat = lambda tree: np.concatenate([np.ravel(leaf).astype(np.float64)
                                      for leaf in jax.tree.leaves(tree)])
  return np.linalg.norm(flat(actual) - flat(expected)) / np.linalg.norm(flat(expected))


@pytest.mark.slow
def test_bilevel_bfloat16_step_is_close_to_the_float32_step():
  """One bilevel step (T = 2) from the same float32 state, computed in bfloat16 and float32.

  bfloat16 keeps 8 significant bits: unit roundoff u = 2^-9. Forward quantities (the losses,
  the batch-norm statistics) are averages of values rounded a few times by u: bound 2^-7
  (4 u; measured <= 0.4 u). Gradients are sums over batch and pixels whose terms largely
  cancel (batch norm's backward subtracts their mean, the softmax gradient sums to zero), so
  their relative rounding error is u times that cancellation: measured 0.04 for the
  classifier's update and 0.10 for the hypergradient (through the forward, backward and
  tangent passes of both inner steps, accumulated in float32). Bounds 2^-3 and 2^-2.
  """
  truncation = 2
  train, val = _batches(truncation)
  steps = {}
  for dtype in ("float32", "bfloat16"):
    config = _config("bilevel", truncation=truncation)
    config.dtype = dtype
    # The augmenter's update is then minus the hypergradient.
    config.bilevel.optim.update(name="sgd", learning_rate=1.0, grad_clip=0.0)
    state = _init(config)
    steps[dtype] = (state, *jax.jit(bilevel.train_step)(state, train, val, jax.random.PRNGKey(1)))
  (state32, new32, metrics32), (state16, new16, metrics16) = steps["float32"], steps["bfloat16"]
  jax.tree.map(np.testing.assert_array_equal, (state16.classifier.params, state16.augmenter.params),
               (state32.classifier.params, state32.augmenter.params))
  for key in ("loss", "val_loss"):
    np.testing.assert_allclose(metrics16[key], metrics32[key], rtol=2**-7)
  assert _relative_error(new16.classifier.rest, new32.classifier.rest) <= 2**-7
  update = lambda new, old: jax.tree.map(jnp.subtract, new.params, old.params)
  classifier_error = _relative_error(update(new16.classifier, state16.classifier),
                                     update(new32.classifier, state32.classifier))
  hypergradient_error = _relative_error(update(new16.augmenter, state16.augmenter),
                                        update(new32.augmenter, state32.augmenter))
  # Not 0: the steps really ran in different precisions.
  assert 0 < classifier_error <= 2**-3
  assert 0 < hypergradient_error <= 2**-2
  np.testing.assert_allclose(metrics16["hypergrad_norm"].value, metrics32["hypergrad_norm"].value,
                             rtol=2**-2)


@pytest.mark.slow
def test_bilevel_trains_in_bfloat16_on_the_smoke_config(tmp_path):
  import json

  from test_train import smoke_config
  from jaxaug import train

  config = smoke_config("bilevel", {"dtype": "bfloat16", "augment": "none"})
  results = train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  losses = [record["loss"] for record in records if record["split"] == "train"]
  assert len(losses) >= 3 and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]
  assert results["test_accuracy"] > 0.2  # 10 classes
