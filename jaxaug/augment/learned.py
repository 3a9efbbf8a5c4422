"""Exported learned policies: the `<workdir>/policy/` folder and its replay as a fixed stage.

A method that learns augmentation returns a `Policy` from `export_policy(state)`; the
trainer writes it at the end of the run:

  policy/policy.json   {"family", "settings", "summary", "schedule_rows", "arrays"}
  policy/arrays.npz    the arrays, each with a leading axis of schedule rows

Row r holds the policy for the r-th of R equal parts of training (R = 1 for a policy that
does not change); each family says which value that is (hba and bilevel: the value at the
end of search epoch r; reinforce and ohl: what was sampled from during epoch r). `learned('<dir>')` in `config.augment`
replays the policy with any method (usually `supervised`, on another model or data
set): at training progress p in [0, 1] it uses row min(floor(p R), R - 1), so a
schedule learned over E epochs is stretched linearly over a run of any length (HBA's
policy evaluation). A family is the name of the method whose `replay_policy` replays it
(`replay_of`); the methods that learn use the same functions for what training sees, so
a replay applies the same operations for the same random keys.
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

from jaxaug import storage

POLICY_FILENAME = "policy.json"
ARRAYS_FILENAME = "arrays.npz"
ProgressSampler = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Policy:
  """What a method learned about augmentation.

  Attributes:
    family: the method whose `replay_policy` replays it ('hba', 'bilevel', ...).
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
  replay_of(policy.family)
  if policy.schedule_rows != description.get("schedule_rows"):
    raise ValueError(f"malformed learned policy in {directory!r}: {policy.schedule_rows} rows in "
                     f"{ARRAYS_FILENAME}, {description.get('schedule_rows')} in {POLICY_FILENAME}")
  return policy


def schedule_row(rows: int, progress: jax.Array | float) -> jax.Array:
  """The row in force at training progress `progress` in [0, 1]: min(floor(p R), R - 1), int32."""
  return jnp.clip(jnp.floor(jnp.asarray(progress) * rows), 0, rows - 1).astype(jnp.int32)


def replay_of(family: str) -> Callable[[Policy], ProgressSampler]:
  """The replay of a policy family: the `replay_policy` of the method named `family`, which
  lives in the method's module beside the `export_policy` that writes it.

  Raises ValueError naming the families that have a replay.
  """
  from jaxaug.methods import METHODS  # pylint: disable=g-import-not-at-top  (methods import this module)
  replays = {name: METHODS.get(name).replay_policy for name in METHODS.names()
             if METHODS.get(name).replay_policy is not None}
  if family not in replays:
    raise ValueError(f"unknown learned-policy family {family!r}; valid families: "
                     f"{', '.join(sorted(replays))}")
  return replays[family]


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
    inner = replay_of(policy.family)(policy)
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"cannot replay the learned policy in {directory!r}: {error!r}") from None

  def sample(rng: jax.Array, images: jax.Array, progress: jax.Array | float = 0.0) -> jax.Array:
    return inner(rng, images, progress)

  sample.follows_progress = True
  return sample
