"""The AutoAugment / Adversarial AutoAugment policy controller: an autoregressive LSTM.

A policy is `sub_policies` sub-policies of `ops_per_sub_policy` operations, each an
(op, level) pair: 2 tokens per operation, emitted one after the other (op from a softmax
over `num_ops`, then its level from a softmax over `num_levels`), the embedding of each
emitted token being the LSTM's next input (Zoph & Le's NAS controller, as AutoAugment and
Adversarial AutoAugment use it; the latter: one layer, hidden 100, embedding 32, 5 x 2
operations = 20 tokens).

`rollout` samples policies, or scores given ones (teacher forcing), with the same code:
its log-probabilities are those of the tokens under the softmax outputs it reports.

Adversarial AutoAugment's Fig. 3: "When a policy contains Q sub-policies, the basic
architecture will be repeated Q times". By default (`carry_state=False`) each repetition
starts afresh, from the zero LSTM state and the learned start input, so the Q sub-policies
are independent draws from one distribution. The paper does not say whether the state is
carried from one repetition to the next; a public reimplementation found that carrying it
drove the controller to extreme policies. `carry_state=True` runs the Q x L operations as
one sequence (a departure kept for comparison).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct


class Controller(nnx.Module):
  """One-layer LSTM emitting (op, level) tokens; `rollout` runs it."""

  def __init__(self, *, num_ops: int, num_levels: int, hidden: int = 100, embedding: int = 32,
               rngs: nnx.Rngs):
    if min(num_ops, num_levels, hidden, embedding) < 1:
      raise ValueError(f"controller sizes must be >= 1, got num_ops={num_ops}, num_levels="
                       f"{num_levels}, hidden={hidden}, embedding={embedding}")
    self.num_ops, self.num_levels = num_ops, num_levels
    self.cell = nnx.LSTMCell(embedding, hidden, rngs=rngs)
    self.op_head = nnx.Linear(hidden, num_ops, rngs=rngs)
    self.level_head = nnx.Linear(hidden, num_levels, rngs=rngs)
    self.op_embedding = nnx.Embed(num_ops, embedding, rngs=rngs)
    self.level_embedding = nnx.Embed(num_levels, embedding, rngs=rngs)
    self.start = nnx.Param(jnp.zeros((embedding,), jnp.float32))  # the first input

  def __call__(self, rng: jax.Array | None, count: int, operations: int,
               tokens: jax.Array | None = None, *, ops_per_sub_policy: int | None = None,
               carry_state: bool = False) -> "Rollout":
    """See `rollout`."""
    return rollout(self, rng, count, operations, tokens, ops_per_sub_policy=ops_per_sub_policy,
                   carry_state=carry_state)


@struct.dataclass
class Rollout:
  """`count` policies of `operations` (op, level) pairs and what the controller said of them.

  tokens: int32 [count, operations, 2], (op index, level) of each operation.
  log_prob: f32 [count, operations, 2], log-probability of each token given the ones before.
  entropy: f32 [count, operations, 2], entropy of the softmax each token was drawn from.
  op_probs: f32 [count, operations, num_ops], the op softmax at each operation.
  level_probs: f32 [count, operations, num_levels], the level softmax at each operation.
  """
  tokens: jax.Array
  log_prob: jax.Array
  entropy: jax.Array
  op_probs: jax.Array
  level_probs: jax.Array


def _emit(logits: jax.Array, rng: jax.Array | None, given: jax.Array | None):
  """(token [count], its log-probability, the entropy, the softmax) of one step."""
  log_softmax = jax.nn.log_softmax(logits)
  token = (jax.random.categorical(rng, logits) if given is None else given).astype(jnp.int32)
  probs = jnp.exp(log_softmax)
  log_prob = jnp.take_along_axis(log_softmax, token[:, None], axis=-1)[:, 0]
  entropy = -(probs * log_softmax).sum(-1)
  return token, log_prob, entropy, probs


def rollout(controller: Controller, rng: jax.Array | None, count: int, operations: int,
            tokens: jax.Array | None = None, *, ops_per_sub_policy: int | None = None,
            carry_state: bool = False) -> Rollout:
  """Runs the controller for `count` independent policies of `operations` operations.

  With `tokens` (int [count, operations, 2]) it scores them (teacher forcing; `rng` is
  unused); without, it samples them with `rng`. Differentiable in the controller's
  parameters through `log_prob` and `entropy`. One `lax.scan` over the operations.
  The operations form sub-policies of `ops_per_sub_policy` (default: one sub-policy of
  all `operations`); each sub-policy starts from the zero state and the start input
  unless `carry_state` (module docstring).
  """
  if tokens is None and rng is None:
    raise ValueError("rollout needs an rng to sample, or the tokens to score")
  if tokens is not None and tuple(tokens.shape) != (count, operations, 2):
    raise ValueError(f"tokens must have shape {(count, operations, 2)}, got {tokens.shape}")
  ops_per_sub_policy = ops_per_sub_policy or operations
  if operations % ops_per_sub_policy:
    raise ValueError(f"{operations} operations do not split into sub-policies of "
                     f"{ops_per_sub_policy}")
  hidden = controller.cell.hidden_features
  start = jnp.broadcast_to(controller.start[...], (count, controller.start.shape[0]))
  zero_state = (jnp.zeros((count, hidden), start.dtype), jnp.zeros((count, hidden), start.dtype))
  starts_sub_policy = (np.arange(operations) % ops_per_sub_policy == 0) & (
      np.arange(operations) == 0 if carry_state else True)
  heads = ((controller.op_head, controller.op_embedding),
           (controller.level_head, controller.level_embedding))
  given_tokens = (jnp.zeros((operations, count, 2), jnp.int32) if tokens is None
                  else jnp.swapaxes(jnp.asarray(tokens, jnp.int32), 0, 1))
  rngs = (jnp.zeros((operations, 2), jnp.uint32) if rng is None
          else jax.random.split(rng, operations))

  def operation(loop, xs):
    carry, inputs = loop
    given, operation_rng, restart = xs
    carry = jax.tree.map(lambda fresh, kept: jnp.where(restart, fresh, kept), zero_state, carry)
    inputs = jnp.where(restart, start, inputs)
    outputs = []
    for kind, (head, embedding) in enumerate(heads):
      carry, output = controller.cell(carry, inputs)
      step_rng = None if rng is None else jax.random.fold_in(operation_rng, kind)
      emitted = _emit(head(output), step_rng, None if tokens is None else given[:, kind])
      inputs = embedding(emitted[0]).astype(inputs.dtype)
      outputs.append(emitted)
    return (carry, inputs), outputs

  _, ((op, op_log_prob, op_entropy, op_probs),
      (level, level_log_prob, level_entropy, level_probs)) = jax.lax.scan(
          operation, (zero_state, start), (given_tokens, rngs, jnp.asarray(starts_sub_policy)))
  pair = lambda first, second: jnp.swapaxes(jnp.stack([first, second], -1), 0, 1)
  return Rollout(tokens=pair(op, level), log_prob=pair(op_log_prob, level_log_prob),
                 entropy=pair(op_entropy, level_entropy),
                 op_probs=jnp.swapaxes(op_probs, 0, 1), level_probs=jnp.swapaxes(level_probs, 0, 1))
