"""Differentiable inner optimisation: unrolled optax updates (inlined, or under `lax.scan`).

The inner problem is a classifier trained by an optax transform on inputs that
depend on hyper-parameters (e.g. images produced by a learned augmenter). Its
truncated unroll of T real updates is differentiable end to end, so the outer
gradient of a validation loss taken at the unrolled parameters reaches the
hyper-parameters through every update, including the optimiser's own state
(momentum, weight decay, learning-rate schedule): the look-ahead is the update
that is applied.

The expensive part of that gradient is the vector-Jacobian product of the
inner gradient `g(params, inputs) = d loss / d params` with a cotangent `w`
(what reaches `g` from the validation loss). Differentiating `jax.grad` with
`jax.grad` (reverse-over-reverse) is general but slow. Here `g` carries a
custom VJP that computes the same product forward-over-reverse: by the
symmetry of second derivatives it is the tangent, along `w`, of the full
gradient `(d loss / d params, d loss / d inputs)`, linearised while the inner
step computes its gradient (see `inner_grad_fn`). `second_order="reverse"`
keeps the plain autodiff path, used as the reference in tests and benchmarks.

`implicit_hypergradient` is the other estimate: the implicit-function hypergradient at
the current parameters, with the inverse Hessian of the training loss approximated by a
truncated Neumann series (Lorraine, Vicol and Duvenaud, AISTATS 2020). It sees past one
step: where the one-step unroll weighs the validation gradient by the learning rate,
the series weighs each Hessian eigendirection by up to alpha (K + 1) (its inverse
eigenvalue in the limit), so directions of small curvature, slow to train, count more.

Nothing here knows about images or models: `loss_fn` is any
`(params, aux, inputs) -> (loss, (aux, metrics))`, where `aux` is carried state
that is not differentiated (e.g. batch-norm statistics). Cotangents take the dtypes
of `params`, the optimiser state and `inputs`, so the outer gradient accumulates in
float32 when they are float32, whatever precision `loss_fn` computes in.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import optax

PyTree = Any
# (params, aux, inputs) -> (loss, (new_aux, metrics))
LossFn = Callable[[PyTree, PyTree, PyTree], tuple[jax.Array, tuple[PyTree, PyTree]]]
SECOND_ORDER_MODES = ("forward", "reverse")


def inner_grad_fn(loss_fn: LossFn, *, second_order: str = "forward",
                  params_are_constant: bool = False):
  """`(params, aux, inputs) -> (grads, (loss, new_aux, metrics))`, differentiable.

  The returned function computes the gradient of `loss_fn` with respect to
  `params`. Differentiating *it* (as an unrolled update does) needs second
  derivatives of `loss_fn`: `second_order="forward"` computes them as one
  forward-mode tangent of the gradient (`_with_linearized_second_order`),
  `"reverse"` lets JAX differentiate `jax.grad` directly. Both are exact; they
  differ in cost. `aux`, the loss and metrics are treated as constants by the
  outer gradient. With `params_are_constant` (the first step of a truncated
  unroll, whose parameters do not depend on the hyper-parameters) the
  parameter cotangent is zero and XLA drops the computation of its tangent.
  """
  if second_order not in SECOND_ORDER_MODES:
    raise ValueError(
        f"unknown second_order {second_order!r}; valid: {', '.join(SECOND_ORDER_MODES)}")

  def plain_grad(params, aux, inputs):
    (loss, (new_aux, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, aux, inputs)
    return grads, jax.lax.stop_gradient((loss, new_aux, metrics))

  if second_order == "reverse":
    return plain_grad

  return _with_linearized_second_order(plain_grad, loss_fn, params_are_constant)


def _split_float_leaves(inputs: PyTree) -> tuple[list, Callable]:
  """(the differentiable (inexact) leaves of `inputs`, `rebuild(float_leaves, fill=)`
  giving `inputs` back with them, the other leaves kept or replaced by `fill(leaf)`)."""
  leaves, treedef = jax.tree.flatten(inputs)
  is_float = [jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact) for leaf in leaves]

  def rebuild(float_leaves, fill=lambda leaf: leaf):
    float_leaves = iter(float_leaves)
    return treedef.unflatten([next(float_leaves) if flag else fill(leaf)
                              for leaf, flag in zip(leaves, is_float)])

  return [leaf for leaf, flag in zip(leaves, is_float) if flag], rebuild


def _linearized_gradients(loss_fn: LossFn, params: PyTree, aux: PyTree, inputs: PyTree):
  """`loss_fn`'s parameter gradient at (params, inputs), linearised in the parameters.

  Returns `(param_grads, tangent_fn, (loss, new_aux, metrics))`; `tangent_fn(u)` is
  `(H_pp u, H_xp u)`: the parameter and float-input parts of the tangent of the full
  gradient `(dL/dp, dL/dx)` along the parameter direction `u`, i.e. the Hessian-vector
  product and, by the symmetry of second derivatives, `d/dx <dL/dp, u>` (a list over the
  float leaves of `inputs`). The forward and backward passes run once; each call of
  `tangent_fn` is one forward-over-reverse evaluation.
  """
  float_leaves, rebuild = _split_float_leaves(inputs)

  def gradients(params):
    (loss, (new_aux, metrics)), grads = jax.value_and_grad(
        lambda p, x: loss_fn(p, aux, rebuild(x)), argnums=(0, 1), has_aux=True)(
            params, float_leaves)
    return grads, jax.lax.stop_gradient((loss, new_aux, metrics))

  (param_grads, _), tangent_fn, extras = jax.linearize(gradients, params, has_aux=True)
  return param_grads, tangent_fn, extras


def _with_linearized_second_order(plain_grad, loss_fn: LossFn, params_are_constant: bool):
  """`plain_grad` with a VJP computed as a tangent of the gradient, linearised in the forward.

  The mixed second derivatives are symmetric, so the product the outer gradient
  needs, `w -> (H_pp w, H_xp w)` (the parameter and input cotangents of
  `<w, g>`), is the tangent of the gradient `(dL/dp, dL/dx)` along the parameter
  direction `w` (forward-over-reverse). Under differentiation, `jax.linearize`
  evaluates that gradient once in the forward pass and keeps what its tangent
  needs, so the backward pass is one tangent evaluation that reuses the inner
  step's forward and backward passes instead of recomputing them.
  Undifferentiated calls run `plain_grad`.
  """
  def linearized(params, aux, inputs):
    param_grads, tangent_fn, extras = _linearized_gradients(loss_fn, params, aux, inputs)
    return (param_grads, extras), tangent_fn

  @jax.custom_vjp
  def grad_with_linearized_second_order(params, aux, inputs):
    return plain_grad(params, aux, inputs)

  def fwd(params, aux, inputs):
    outputs, tangent_fn = linearized(params, aux, inputs)
    return outputs, (tangent_fn, inputs)

  def bwd(residuals, cotangents):
    tangent_fn, inputs = residuals
    params_cotangent, float_cotangents = tangent_fn(cotangents[0])
    if params_are_constant:  # shapes only: XLA drops the unused parameter tangent
      params_cotangent = jax.tree.map(jax.numpy.zeros_like, params_cotangent)
    _, rebuild = _split_float_leaves(inputs)
    zero = lambda leaf: np.zeros(leaf.shape, jax.dtypes.float0)
    return params_cotangent, None, rebuild(float_cotangents, fill=zero)

  grad_with_linearized_second_order.defvjp(fwd, bwd)
  return grad_with_linearized_second_order


def unrolled_updates(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    params: PyTree,
    opt_state: optax.OptState,
    aux: PyTree,
    inputs: PyTree,
    *,
    second_order: str = "forward",
    remat: bool = False,
    max_inline_steps: int = 8,
) -> tuple[tuple[PyTree, optax.OptState, PyTree], tuple[jax.Array, PyTree]]:
  """T real optimiser updates of `params` on `inputs`, differentiable in `inputs`.

  Args:
    loss_fn: `(params, aux, inputs_t) -> (loss, (new_aux, metrics))`.
    tx: the optax transform of the classifier; the same one applies its real updates.
    params, opt_state, aux: state before the first update; the outer gradient does not
      flow into them (truncated back-propagation).
    inputs: a pytree whose leaves have a leading axis of length T; step t sees
      `inputs[t]`. The outer gradient flows into it.
    second_order: see `inner_grad_fn`.
    remat: rematerialise each step in the backward pass: activation memory O(1)
      in T instead of O(T), about one extra forward per step. Each step's
      parameters and optimiser state are still kept, O(T) parameter-sized arrays.
    max_inline_steps: unrolls up to this many steps are written out step by step
      in the program; longer ones run under `lax.scan`. (XLA:CPU ran convolutions
      inside a `scan` body 15x slower than outside it, even for T = 1; measured on
      jax 0.10.2. Inlining costs compile time linear in T.)

  Returns:
    `((params_T, opt_state_T, aux_T), (losses [T], metrics with leading [T]))`.
  """
  def make_step(params_are_constant):
    grad_fn = inner_grad_fn(loss_fn, second_order=second_order,
                            params_are_constant=params_are_constant)

    def step(carry, inputs_t):
      params, opt_state, aux = carry
      grads, (loss, aux, metrics) = grad_fn(params, aux, inputs_t)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state, aux), (loss, metrics)

    return jax.checkpoint(step) if remat else step

  lengths = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(inputs)}
  if len(lengths) != 1 or None in lengths:
    raise ValueError(f"every leaf of `inputs` needs the same leading axis T; got lengths "
                     f"{sorted(lengths, key=str)}")
  # Truncation: the outer gradient stops at the state the unroll starts from.
  carry = jax.lax.stop_gradient((params, opt_state, aux))
  carry, first_output = make_step(params_are_constant=True)(
      carry, jax.tree.map(lambda leaf: leaf[0], inputs))
  later_step = make_step(params_are_constant=False)
  later_inputs = jax.tree.map(lambda leaf: leaf[1:], inputs)
  length = lengths.pop()
  if length > max_inline_steps:
    carry, later_outputs = jax.lax.scan(later_step, carry, later_inputs)
    outputs = jax.tree.map(lambda first, later: jax.numpy.concatenate([first[None], later]),
                           first_output, later_outputs)
    return carry, outputs
  step_outputs = [first_output]
  for t in range(length - 1):
    carry, output = later_step(carry, jax.tree.map(lambda leaf: leaf[t], later_inputs))
    step_outputs.append(output)
  return carry, jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *step_outputs)


def check_neumann(terms: int, scale: float, *, prefix: str = "") -> None:
  """ValueError naming the value unless `terms` (K) is an integer >= 0 and `scale` (alpha)
  a finite number > 0. `prefix` names them in the message (e.g. 'config.bilevel.')."""
  if isinstance(terms, bool) or not isinstance(terms, (int, np.integer)) or terms < 0:
    raise ValueError(f"{prefix}neumann_terms={terms!r} must be an integer >= 0 (K, the "
                     f"terms of the Neumann series after the first)")
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
      np.isfinite(scale) and scale > 0):
    raise ValueError(f"{prefix}neumann_scale={scale!r} must be a finite number > 0 (alpha; the "
                     f"series converges for alpha below 2 / the largest Hessian eigenvalue)")


def neumann_inverse_hvp(hvp: Callable[[PyTree], PyTree], vector: PyTree, *, terms: int,
                        scale: float) -> PyTree:
  """`alpha * sum_{j=0..K} (I - alpha H)^j v`, the truncated Neumann series of `H^-1 v`.

  Args:
    hvp: `u -> H u`, a symmetric linear map on pytrees shaped like `vector`.
    vector: v.
    terms: K >= 0 (K = 0 gives alpha v). The series converges to `H^-1 v` as K grows
      when every eigenvalue of H lies in (0, 2 / alpha).
    scale: alpha > 0.
  Each term costs one `hvp`; the K terms are written out (no loop construct, see
  `unrolled_updates` on XLA:CPU).
  """
  check_neumann(terms, scale)
  term, total = vector, vector
  for _ in range(terms):
    term = jax.tree.map(lambda t, ht: t - scale * ht, term, hvp(term))
    total = jax.tree.map(jax.numpy.add, total, term)
  return jax.tree.map(lambda t: scale * t, total)


def implicit_hypergradient(loss_fn: LossFn, params: PyTree, aux: PyTree, inputs: PyTree,
                           outer_grads: PyTree, *, terms: int, scale: float):
  """The training gradient at `params` and the implicit hypergradient's cotangent on `inputs`.

  At parameters theta taken as the inner optimum of the training loss L_T(theta, x) with x
  the inputs (which depend on the hyper-parameters lambda), the implicit function theorem
  gives `dL_V/dlambda = -dL_V/dtheta . H^-1 . d2L_T/(dtheta dx) . dx/dlambda`, H the Hessian
  of L_T in theta. Here `H^-1 dL_V/dtheta` is `neumann_inverse_hvp` (K Hessian-vector
  products, forward-over-reverse) and the mixed term one more forward-over-reverse
  evaluation; the caller finishes with the VJP of x(lambda) along the returned cotangent.

  Args:
    loss_fn: `(params, aux, inputs) -> (loss, (new_aux, metrics))`, the training loss.
    params, aux: the current parameters and carried state (not differentiated).
    inputs: a pytree; its inexact leaves get cotangents.
    outer_grads: `dL_V/dtheta` at `params`, shaped like `params`.
    terms, scale: K and alpha of the series (`neumann_inverse_hvp`).

  Returns:
    `(grads, input_cotangents, (loss, new_aux, metrics))`: grads `dL_T/dtheta` (the
    classifier's own update), and `-d/dx <dL_T/dtheta, H^-1 dL_V/dtheta>` shaped like
    `inputs` (None for leaves that are not inexact).
  """
  grads, tangent_fn, extras = _linearized_gradients(loss_fn, params, aux, inputs)
  inverse_hvp = neumann_inverse_hvp(lambda u: tangent_fn(u)[0], outer_grads, terms=terms,
                                    scale=scale)
  _, input_tangents = tangent_fn(inverse_hvp)
  _, rebuild = _split_float_leaves(inputs)
  cotangents = rebuild([-tangent for tangent in input_tangents], fill=lambda leaf: None)
  return grads, cotangents, extras
