"""Exported learned policies: the `<workdir>/policy/` folder and its replay as a fixed stage.

A method that learns augmentation returns a `Policy` from `export_policy(state)`; the
trainer writes it at the end of the run:

  policy/policy.json   {"family", "settings", "summary", "schedule_rows", "arrays"}
  policy/arrays.npz    the arrays, each with a leading axis of schedule rows

Row r holds what was learned at the start of the r-th of R equal parts of training
(R = 1 for a policy that does not change). `learned('<dir>')` in `config.augment`
replays the policy with any method (usually `supervised`, on another model or data
set): at training progress p in [0, 1] it uses row min(floor(p R), R - 1), so a
schedule learned over E epochs is stretched linearly over a run of any length (HBA's
policy evaluation). `REPLAYS` maps each family to the function that replays it; the
methods that learn use the same functions for what training sees, so a replay applies
the same operations for the same random keys.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from jaxaug.augment import augmenters
from jaxaug.augment import policies
from jaxaug import storage
from jaxaug.augment import space
from jaxaug.registry import Registry

POLICY_FILENAME = "policy.json"
ARRAYS_FILENAME = "arrays.npz"
ProgressSampler = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Policy:
  """What a method learned about augmentation.

  Attributes:
    family: the name its replay is registered under in `REPLAYS` ('hba', 'bilevel', ...).
    settings: JSON-able values the replay needs besides the arrays (op names, kinds, bounds).
    summary: JSON-able readable summary for people (final values in real units, ...).
    arrays: name -> numpy array with a leading axis of R schedule rows (the same R for all).
  """
  family: str
  settings: dict[str, Any]
  summary: dict[str, Any]
  arrays: dict[str, np.ndarray]

  @property
  def schedule_rows(self) -> int:
    """R, the number of rows of the schedule."""
    rows = {np.shape(value)[0] if np.ndim(value) else None for value in self.arrays.values()}
    if len(rows) != 1 or None in rows or 0 in rows:
      raise ValueError(f"policy arrays need one common leading axis of rows >= 1, got shapes "
                       f"{ {name: np.shape(value) for name, value in self.arrays.items()} }")
    return rows.pop()


def write_policy(directory: str, policy: Policy) -> str:
  """Writes `policy` to `directory` (local or `gs://...`, created) as arrays.npz, then
  policy.json; returns the path of policy.json."""
  arrays = {name: np.asarray(value) for name, value in policy.arrays.items()}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  storage.write_file(epath.Path(directory) / ARRAYS_FILENAME, buffer.getvalue())
  description = {"family": policy.family, "settings": policy.settings, "summary": policy.summary,
                 "schedule_rows": policy.schedule_rows,
                 "arrays": {name: list(value.shape) for name, value in arrays.items()}}
  return storage.write_file(epath.Path(directory) / POLICY_FILENAME,
                            json.dumps(description, indent=2) + "\n")


def read_policy(directory: str) -> Policy:
  """The policy in `directory` (a run's `policy/` folder, or the run's workdir holding one;
  local or `gs://...`).

  Raises ValueError saying what is missing or malformed.
  """
  folder = epath.Path(directory)
  if (folder / "policy" / POLICY_FILENAME).exists():
    folder = folder / "policy"
  if not (folder / POLICY_FILENAME).exists():
    raise ValueError(f"no learned policy in {directory!r}: {POLICY_FILENAME} not found (a run of a "
                     f"method that learns augmentation writes <workdir>/policy/ when it finishes)")
  try:
    description = json.loads((folder / POLICY_FILENAME).read_text())
    with np.load(io.BytesIO((folder / ARRAYS_FILENAME).read_bytes())) as npz:
      arrays = {name: npz[name] for name in npz.files}
    policy = Policy(description["family"], description["settings"], description["summary"], arrays)
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ValueError(f"malformed learned policy in {directory!r}: {error!r}") from None
  REPLAYS.get(policy.family)
  if policy.schedule_rows != description.get("schedule_rows"):
    raise ValueError(f"malformed learned policy in {directory!r}: {policy.schedule_rows} rows in "
                     f"{ARRAYS_FILENAME}, {description.get('schedule_rows')} in {POLICY_FILENAME}")
  return policy


def schedule_row(rows: int, progress: jax.Array | float) -> jax.Array:
  """The row in force at training progress `progress` in [0, 1]: min(floor(p R), R - 1), int32."""
  return jnp.clip(jnp.floor(jnp.asarray(progress) * rows), 0, rows - 1).astype(jnp.int32)


REPLAYS: Registry[Callable[[Policy], ProgressSampler]] = Registry("learned-policy family")


@REPLAYS.register("hba")
def replay_hba(policy: Policy) -> ProgressSampler:
  """Replays an HBA schedule: arrays probability, magnitude [R, K]; settings names [K]."""
  names = tuple(policy.settings["names"])
  for name in names:
    space.SPACE.get(name)  # unknown names: ValueError listing the valid ones
  probability = np.asarray(policy.arrays["probability"], np.float32)
  magnitude = np.asarray(policy.arrays["magnitude"], np.float32)
  if probability.shape != magnitude.shape or probability.shape[1:] != (len(names),):
    raise ValueError(f"hba policy: probability {probability.shape} and magnitude "
                     f"{magnitude.shape} must both be [rows, {len(names)}]")

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array) -> jax.Array:
    row = schedule_row(probability.shape[0], progress)
    return policies.pba_augment(rng, images, jnp.asarray(probability)[row],
                                jnp.asarray(magnitude)[row], names=names)

  return sample


def _sub_policy_names(policy: Policy) -> tuple[str, ...]:
  """The op names of a 'reinforce' or 'ohl' policy, checked against `space.SPACE`."""
  names = tuple(policy.settings["names"])
  space.entries(names)  # unknown names: ValueError listing the valid ones
  return names


@REPLAYS.register("reinforce")
def replay_reinforce(policy: Policy) -> ProgressSampler:
  """Replays the sub-policies a REINFORCE controller sampled: array sub_policies int
  [R, S, L, 2] ((op index into settings names, level) pairs); each image gets one of its
  row's S sub-policies uniformly, its ops applied always (Adversarial AutoAugment)."""
  names = _sub_policy_names(policy)
  sub_policies = np.asarray(policy.arrays["sub_policies"], np.int32)
  if sub_policies.ndim != 4 or sub_policies.shape[-1] != 2:
    raise ValueError(f"reinforce policy: sub_policies {sub_policies.shape} must be "
                     f"[rows, S, L, 2]")
  if sub_policies[..., 0].max() >= len(names) or sub_policies.min() < 0:
    raise ValueError(f"reinforce policy: op indices must lie in [0, {len(names)})")

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array) -> jax.Array:
    choice_rng, apply_rng = jax.random.split(rng)
    row = jnp.asarray(sub_policies)[schedule_row(sub_policies.shape[0], progress)]
    op_index, level = policies.choose_sub_policies(
        choice_rng, row[None], jnp.zeros(images.shape[:1], jnp.int32))
    return policies.apply_sub_policies(apply_rng, images, op_index, level,
                                       jnp.ones(op_index.shape, jnp.float32), names=names)

  return sample


@REPLAYS.register("ohl")
def replay_ohl(policy: Policy) -> ProgressSampler:
  """Replays OHL-Auto-Aug's distributions: array probability [R, O^2] over the ordered
  pairs of settings operations [O, 2] ((op index into names, level)); each image gets a
  pair drawn from its row's distribution."""
  names = _sub_policy_names(policy)
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
    row = jnp.asarray(log_probability)[schedule_row(probability.shape[0], progress)]
    op_index, level = policies.pair_ops(
        operations, jax.random.categorical(draw_rng, row, shape=images.shape[:1]))
    return policies.apply_sub_policies(apply_rng, images, op_index, level,
                                       jnp.ones(op_index.shape, jnp.float32), names=names)

  return sample


def bilevel_template(settings: dict[str, Any]) -> tuple[nnx.GraphDef, int, Callable]:
  """The augmenter module of `settings` (kind, size, bounds, init_scale, symmetric) as
  (graphdef, P, unravel), where `unravel(flat f32 [P]) -> (params, rest)`."""
  module = augmenters.create_augmenter(
      settings["kind"], settings["size"], rngs=nnx.Rngs(params=0),
      init_scale=settings["init_scale"], symmetric=settings["symmetric"], **settings["bounds"])
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  flat, unravel = ravel_pytree((params, rest))
  return graphdef, flat.shape[0], unravel


@REPLAYS.register("bilevel")
def replay_bilevel(policy: Policy) -> ProgressSampler:
  """Replays a learned augmenter: array augmenter [R, P] (flat parameters at the end of
  each epoch), settings as `bilevel_template`; each image gets its own noise draw, as in
  training."""
  graphdef, size, unravel = bilevel_template(policy.settings)
  flat = np.asarray(policy.arrays["augmenter"], np.float32)
  if flat.ndim != 2 or flat.shape[1] != size:
    raise ValueError(f"bilevel policy: augmenter parameters {flat.shape} do not fit a "
                     f"{policy.settings['kind']} augmenter of size {policy.settings['size']} "
                     f"([rows, {size}])")

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array) -> jax.Array:
    params, rest = unravel(jnp.asarray(flat)[schedule_row(flat.shape[0], progress)])
    return augmenters.augment_with((graphdef, params, rest), images, rng)[0]

  return sample


def replay(directory: str) -> ProgressSampler:
  """The `learned('<dir>')` stage: replays the policy a run exported to `<dir>`.

  `<dir>` is a run's `policy/` folder or its workdir; it is read when the stage is built
  (when a step is traced), so a policy written later by another run is picked up. Returns
  `sample(rng, images f32 [B, H, W, C] in [0, 1], progress) -> images`, marked
  `follows_progress`. Raises ValueError if the folder holds no valid policy.
  """
  if not isinstance(directory, str) or not directory:
    raise ValueError(f"learned(...) needs the path of a policy folder, got {directory!r}")
  policy = read_policy(directory)
  try:
    inner = REPLAYS.get(policy.family)(policy)
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"cannot replay the learned policy in {directory!r}: {error!r}") from None

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array | float = 0.0) -> jax.Array:
    return inner(rng, images, progress)

  sample.follows_progress = True
  return sample
