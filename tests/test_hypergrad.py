"""Hypergradients through the unroll: forward-over-reverse (linearised) vs plain autodiff vs finite differences."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxaug import hypergrad


def _problem(seed=0, batch=6, features=5, classes=3, steps=3):
  """A tiny 2-layer classifier whose training inputs are scaled by hyper-parameters."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  params = {
      "w1": jax.random.normal(keys[0], (features, 4), jnp.float64) * 0.5,
      "b1": jnp.zeros((4,), jnp.float64),
      "w2": jax.random.normal(keys[1], (4, classes), jnp.float64) * 0.5,
  }
  train_x = jax.random.normal(keys[2], (steps, batch, features), jnp.float64)
  train_y = jax.random.randint(keys[3], (steps, batch), 0, classes)
  val_x = jax.random.normal(keys[4], (batch, features), jnp.float64)
  val_y = jax.random.randint(keys[5], (batch,), 0, classes)
  hyper = jnp.linspace(0.5, 1.5, features, dtype=jnp.float64)
  return params, (train_x, train_y), (val_x, val_y), hyper


def _loss(params, aux, inputs):
  """Cross-entropy; `aux`, a carried state not differentiated, is a running mean of the labels."""
  x, y = inputs
  hidden = jnp.tanh(x @ params["w1"] + params["b1"] - aux)
  logits = hidden @ params["w2"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  new_aux = 0.9 * aux + 0.1 * y.mean()
  return loss, (new_aux, {"loss": loss})


def _tx():
  # Learning rates that float32 holds exactly (optax computes the schedule in float32), so
  # that every program computes the same ones, however XLA fuses the schedule's arithmetic.
  schedule = optax.linear_schedule(0.25, 0.125, transition_steps=4)
  return optax.chain(optax.add_decayed_weights(1e-2),
                     optax.sgd(schedule, momentum=0.9, nesterov=True))


def _val_loss_after_unroll(hyper, params, opt_state, aux, train, val, steps, mode):
  x, y = train
  inputs = (x[:steps] * hyper, y[:steps])
  (params_t, _, aux_t), _ = hypergrad.unrolled_updates(
      _loss, _tx(), params, opt_state, aux, inputs, second_order=mode)
  return _loss(params_t, aux_t, val)[0]


def _warm_state(params):
  """Optimiser state after one update so momentum is non-zero."""
  tx = _tx()
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)
  return opt_state


@pytest.mark.parametrize("steps", [1, 3])
def test_hypergradient_matches_autodiff_and_finite_differences(steps):
  with jax.enable_x64(True):
    params, train, val, hyper = _problem()
    opt_state = _warm_state(params)
    aux = jnp.full((4,), 0.1, jnp.float64)
    args = (params, opt_state, aux, train, val, steps)

    val_loss = jax.jit(_val_loss_after_unroll, static_argnums=(6, 7))
    forward = jax.grad(val_loss)(hyper, *args, "forward")
    reverse = jax.grad(val_loss)(hyper, *args, "reverse")

    eps = 1e-6
    finite = np.array([
        (val_loss(hyper.at[i].add(eps), *args, "reverse")
         - val_loss(hyper.at[i].add(-eps), *args, "reverse")) / (2 * eps)
        for i in range(hyper.shape[0])
    ])
    assert np.abs(reverse).max() > 1e-4  # a hypergradient that is not trivially zero
    np.testing.assert_allclose(forward, reverse, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(forward, finite, rtol=1e-6, atol=1e-9)


def test_remat_gives_same_hypergradient():
  with jax.enable_x64(True):
    params, (x, y), val, hyper = _problem()
    opt_state = _warm_state(params)
    aux = jnp.zeros((4,), jnp.float64)

    def outer(hyper, remat):
      (p, _, a), _ = hypergrad.unrolled_updates(
          _loss, _tx(), params, opt_state, aux, (x * hyper, y), remat=remat)
      return _loss(p, a, val)[0]

    hypergradient = jax.jit(jax.grad(outer), static_argnums=1)  # one program, not op by op
    np.testing.assert_allclose(hypergradient(hyper, True), hypergradient(hyper, False),
                               rtol=1e-10)


def test_unrolled_updates_are_the_real_optimiser_updates():
  """The unroll's final state equals T applications of tx.update by hand.

  optax evaluates the learning-rate schedule in float32 (int32 step count), and
  jit and eager round it differently, hence rtol 1e-6 rather than float64 eps.
  """
  with jax.enable_x64(True):
    params, (x, y), _, hyper = _problem()
    tx = _tx()
    opt_state = _warm_state(params)
    aux = jnp.zeros((4,), jnp.float64)
    (p_unroll, s_unroll, a_unroll), (losses, _) = hypergrad.unrolled_updates(
        _loss, tx, params, opt_state, aux, (x * hyper, y))

    p, s, a = params, opt_state, aux
    for t in range(x.shape[0]):
      (loss, (a, _)), g = jax.value_and_grad(_loss, has_aux=True)(p, a, (x[t] * hyper, y[t]))
      np.testing.assert_allclose(losses[t], loss, rtol=1e-6)
      updates, s = tx.update(g, s, p)
      p = optax.apply_updates(p, updates)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), p_unroll, p)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), s_unroll, s)
    np.testing.assert_allclose(a_unroll, a, rtol=1e-6)


@pytest.mark.parametrize("mode", hypergrad.SECOND_ORDER_MODES)
def test_inner_losses_and_aux_are_constants_of_the_outer_gradient(mode):
  """Both second-order modes stop the outer gradient at the inner losses, aux and metrics."""
  with jax.enable_x64(True):
    params, (x, y), _, hyper = _problem()
    aux = jnp.full((4,), 0.1, jnp.float64)

    def carried_outputs(hyper):
      (_, _, aux_t), (losses, metrics) = hypergrad.unrolled_updates(
          _loss, _tx(), params, _tx().init(params), aux, (x * hyper, y), second_order=mode)
      return losses.sum() + metrics["loss"].sum() + aux_t.sum()

    np.testing.assert_array_equal(jax.grad(carried_outputs)(hyper), 0.0)


def test_unknown_second_order_mode_is_rejected():
  with pytest.raises(ValueError, match="'sideways'.*forward, reverse"):
    hypergrad.inner_grad_fn(_loss, second_order="sideways")


def test_inputs_of_different_lengths_are_rejected():
  with jax.enable_x64(True):
    params, (x, y), _, _ = _problem()
    with pytest.raises(ValueError, match=r"same leading axis T; got lengths \[2, 3\]"):
      hypergrad.unrolled_updates(_loss, _tx(), params, _tx().init(params), jnp.zeros((4,)),
                                 (x[:3], y[:2]))


def test_scan_and_inlined_unrolls_agree():
  with jax.enable_x64(True):
    params, (x, y), val, hyper = _problem()
    opt_state = _warm_state(params)
    aux = jnp.zeros((4,), jnp.float64)

    def outer(hyper, max_inline_steps):
      (p, _, a), (losses, _) = hypergrad.unrolled_updates(
          _loss, _tx(), params, opt_state, aux, (x * hyper, y),
          max_inline_steps=max_inline_steps)
      return _loss(p, a, val)[0], losses

    (scanned, scanned_losses), scanned_grad = jax.value_and_grad(outer, has_aux=True)(hyper, 0)
    (inlined, inlined_losses), inlined_grad = jax.value_and_grad(outer, has_aux=True)(hyper, 8)
    # rtol 1e-6: the float32 learning-rate schedule rounds differently in and out of scan.
    np.testing.assert_allclose(scanned, inlined, rtol=1e-6)
    np.testing.assert_allclose(scanned_losses, inlined_losses, rtol=1e-6)
    np.testing.assert_allclose(scanned_grad, inlined_grad, rtol=1e-5)


# The implicit (Neumann) hypergradient.


def _ridge_problem(seed=0, n=40, features=4):
  """Ridge regression on features scaled per column by lambda: theta*(lambda) in closed form."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = jax.random.normal(keys[0], (n, features), jnp.float64)
  y = x @ jnp.arange(1.0, features + 1, dtype=jnp.float64) + jax.random.normal(
      keys[1], (n,), jnp.float64)
  val_x = jax.random.normal(keys[2], (n, features), jnp.float64)
  val_y = val_x @ jnp.arange(1.0, features + 1, dtype=jnp.float64) * 0.8
  hyper = jnp.linspace(0.6, 1.4, features, dtype=jnp.float64)
  return x, y, val_x, val_y, hyper


RIDGE = 0.1


def _ridge_loss(theta, aux, inputs):
  features, targets = inputs
  loss = 0.5 * jnp.mean((features @ theta - targets) ** 2) + 0.5 * RIDGE * theta @ theta
  return loss, (aux, {})


def _ridge_val_loss(theta, val_x, val_y):
  return 0.5 * jnp.mean((val_x @ theta - val_y) ** 2)


def _ridge_optimum(features, targets):
  n, d = features.shape
  return jnp.linalg.solve(features.T @ features / n + RIDGE * jnp.eye(d),
                          features.T @ targets / n)


def test_implicit_hypergradient_at_the_optimum_approaches_the_exact_one():
  """Ridge regression: at theta*(lambda) the implicit hypergradient tends, as K grows, to
  d L_V(theta*(lambda)) / d lambda computed through the closed-form solution."""
  with jax.enable_x64(True):
    x, y, val_x, val_y, hyper = _ridge_problem()
    features_of = lambda lam: x * lam
    exact = jax.grad(lambda lam: _ridge_val_loss(_ridge_optimum(features_of(lam), y),
                                                 val_x, val_y))(hyper)
    theta = _ridge_optimum(features_of(hyper), y)
    outer = jax.grad(_ridge_val_loss)(theta, val_x, val_y)
    hessian = (features_of(hyper).T @ features_of(hyper)) / x.shape[0] + RIDGE * jnp.eye(4)
    scale = 1.0 / float(jnp.linalg.eigvalsh(hessian).max())  # below 2 / largest eigenvalue

    def loss_fn(theta, aux, inputs):
      return _ridge_loss(theta, aux, (inputs[0], y))

    errors = []
    # The Neumann error shrinks like (1 - scale * smallest eigenvalue)^K = 0.88^K here: at
    # K = 300 it is ~1e-17, as small as at the 2000 this test used to take.
    for terms in (0, 5, 50, 300):
      features, vjp = jax.vjp(features_of, hyper)
      _, (cotangent,), _ = hypergrad.implicit_hypergradient(
          loss_fn, theta, None, (features,), outer, terms=terms, scale=scale)
      errors.append(float(jnp.abs(vjp(cotangent)[0] - exact).max()))
    assert float(jnp.abs(exact).max()) > 1e-2  # not trivially zero
    assert errors == sorted(errors, reverse=True) and errors[0] > 10 * errors[2]
    assert errors[-1] < 1e-10 * float(jnp.abs(exact).max()) + 1e-12


def _flat_hessian(loss_fn, params, aux, inputs):
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  return jax.hessian(lambda f: loss_fn(unravel(f), aux, inputs)[0])(flat), unravel


def _regularised_loss(params, aux, inputs):
  """`_loss` plus an L2 term that makes its Hessian positive definite."""
  loss, rest = _loss(params, aux, inputs)
  l2 = sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(params))
  return loss + 0.5 * l2, rest


def test_implicit_hypergradient_approaches_the_exact_inverse_hessian_one():
  """A tiny network whose Hessian fits in memory: as K grows, the Neumann hypergradient tends
  to -dL_V/dtheta . solve(H, d2L_T/dtheta dlambda), for alpha below 2 / the largest eigenvalue."""
  with jax.enable_x64(True):
    params, (x, y), val, hyper = _problem()
    aux = jnp.full((4,), 0.1, jnp.float64)
    inputs_of = lambda lam: (x[0] * lam, y[0])

    @jax.jit  # one program each (the same math as op by op, compiled once)
    def exact_hypergradient(hyper):
      hessian, unravel = _flat_hessian(_regularised_loss, params, aux, inputs_of(hyper))
      outer = jax.grad(lambda p: _loss(p, aux, val)[0])(params)
      outer_flat, _ = jax.flatten_util.ravel_pytree(outer)
      solved = unravel(jnp.linalg.solve(hessian, outer_flat))

      def mixed(lam):  # <dL_T/dtheta (theta, x(lambda)), H^-1 v>, H^-1 v held fixed
        grads = jax.grad(_regularised_loss, has_aux=True)(params, aux, inputs_of(lam))[0]
        return sum(jnp.vdot(g, s) for g, s in zip(jax.tree.leaves(grads),
                                                 jax.tree.leaves(solved)))

      return jnp.linalg.eigvalsh(hessian), -jax.grad(mixed)(hyper), outer

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def implicit(terms, scale, hyper, outer):
      inputs, vjp = jax.vjp(inputs_of, hyper)
      grads, cotangents, (loss, new_aux, _) = hypergrad.implicit_hypergradient(
          _regularised_loss, params, aux, inputs, outer, terms=terms, scale=scale)
      assert cotangents[1] is None  # integer labels get no cotangent
      hypergradient = vjp((cotangents[0], np.zeros(y[0].shape, jax.dtypes.float0)))[0]
      return hypergradient, grads, loss, new_aux

    eigenvalues, exact, outer = exact_hypergradient(hyper)
    assert float(eigenvalues.min()) > 0
    scale = 1.5 / float(eigenvalues.max())
    errors = []
    # The Neumann error shrinks like max |1 - scale * eigenvalue|^K = 0.6^K here: at K = 60 it
    # is ~1e-14, far below the bound checked (this test used to take K = 3000).
    for terms in (0, 10, 25, 60):
      hypergradient, grads, loss, new_aux = implicit(terms, scale, hyper, outer)
      errors.append(float(jnp.abs(hypergradient - exact).max()))
    # The training gradient and outputs are those of the plain loss.
    (plain_loss, (plain_aux, _)), plain_grads = jax.jit(jax.value_and_grad(
        _regularised_loss, has_aux=True))(params, aux, inputs_of(hyper))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), grads, plain_grads)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-12)
    np.testing.assert_allclose(new_aux, plain_aux, rtol=1e-12)
    assert float(jnp.abs(exact).max()) > 1e-3
    assert errors == sorted(errors, reverse=True) and errors[0] > 10 * errors[2]
    assert errors[-1] < 1e-8 * float(jnp.abs(exact).max())


def test_neumann_series_is_alpha_times_the_partial_sums():
  """K = 0 gives alpha v; K = 2 gives alpha (v + (I - aH) v + (I - aH)^2 v), by hand."""
  with jax.enable_x64(True):
    matrix = jnp.array([[2.0, 0.5], [0.5, 1.0]], jnp.float64)
    v = jnp.array([1.0, -2.0], jnp.float64)
    hvp = lambda u: matrix @ u
    np.testing.assert_allclose(hypergrad.neumann_inverse_hvp(hvp, v, terms=0, scale=0.3), 0.3 * v)
    step = jnp.eye(2) - 0.3 * matrix
    expected = 0.3 * (v + step @ v + step @ step @ v)
    np.testing.assert_allclose(hypergrad.neumann_inverse_hvp(hvp, v, terms=2, scale=0.3),
                               expected, rtol=1e-12)


@pytest.mark.parametrize("terms, scale, message", [
    (-1, 0.1, "neumann_terms=-1 must be an integer >= 0"),
    (2.5, 0.1, "neumann_terms=2.5 must be an integer >= 0"),
    (True, 0.1, "neumann_terms=True must be an integer >= 0"),
    (3, 0.0, "neumann_scale=0.0 must be a finite number > 0"),
    (3, -1.0, "neumann_scale=-1.0 must be a finite number > 0"),
    (3, float("nan"), "neumann_scale=nan must be a finite number > 0"),
])
def test_bad_neumann_settings_are_rejected(terms, scale, message):
  with pytest.raises(ValueError, match=message):
    hypergrad.check_neumann(terms, scale)
