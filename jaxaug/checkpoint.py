"""Orbax checkpoints of the whole train state.

The state (classifier, augmenter, optimisers, step, ...) is saved as a flat
mapping from pytree paths to arrays, so any method's state dataclass works; it
is restored into a template built by the method's `init`, which supplies the
static parts (graph definitions, optimiser transforms) and shardings. The data
position needs no extra entry: batches are a pure function of the step. The workdir may
be local or `gs://...`: Orbax reaches it through `etils.epath` and TensorStore (which has its
own GCS driver); every process writes its part of the arrays.
"""

from __future__ import annotations

from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxaug import storage


def _flat(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


SHOWN_DIFFERENCES = 4  # leaves named in a StateMismatchError's message


class StateMismatchError(ValueError):
  """A checkpoint's leaves differ in name or shape from the state it should be restored into."""


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  """'path: saved (shape), now (shape)' for each leaf whose shape differs, and the leaves
  only one side has; [] when the two fit."""
  differences = [f"{key}: saved {np.shape(saved[key])}, now {np.shape(wanted[key])}"
                 for key in sorted(saved.keys() & wanted.keys())
                 if np.shape(saved[key]) != np.shape(wanted[key])]
  differences += [f"{key}: saved, not in this run's state"
                  for key in sorted(saved.keys() - wanted.keys())]
  differences += [f"{key}: not saved" for key in sorted(wanted.keys() - saved.keys())]
  return differences


class Checkpointer:
  """Saves and restores train states under `<workdir>/checkpoints`, keeping the newest `keep`."""

  def __init__(self, workdir: str, *, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep_checkpoints={keep} must be >= 1")
    self.directory = str(storage.workdir_path(workdir) / "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, metadata: dict[str, Any] | None = None) -> None:
    """Saves `state` as step `step` (asynchronously; `wait` or `close` to finish).

    `metadata`: JSON-able values stored with the step (read back with `saved_metadata`).
    """
    self._manager.save(step, args=ocp.args.StandardSave(_flat(state)), custom_metadata=metadata)

  def saved_metadata(self, step: int) -> dict[str, Any]:
    """The `metadata` saved with `step` ({} if none was)."""
    return dict(self._manager.metadata(step).custom_metadata or {})

  def restore(self, template: Any, step: int | None = None) -> Any:
    """The state saved at `step` (default: newest), with the structure and shardings of `template`.

    Raises:
      FileNotFoundError: there is no checkpoint.
      StateMismatchError (a ValueError): the saved leaves differ from `template`'s in name
        or shape (the message names up to SHOWN_DIFFERENCES of them).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _flat(template))
    differences = _differences(self._saved_leaves(step), abstract)
    if differences:
      raise StateMismatchError(
          f"the checkpoint at step {step} in {self.directory} does not fit this run's state: "
          + "; ".join(differences[:SHOWN_DIFFERENCES])
          + (f"; and {len(differences) - SHOWN_DIFFERENCES} more"
             if len(differences) > SHOWN_DIFFERENCES else ""))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    leaves = [restored[key] for key in _flat(template)]
    return jax.tree.unflatten(jax.tree.structure(template), leaves)

  def restore_arrays(self, step: int | None = None) -> dict[str, Any]:
    """The leaves saved at `step` (default: newest) as host numpy arrays keyed by pytree path.

    Needs no template and works whatever device topology wrote the checkpoint (for
    inspecting or comparing runs; resume with `restore`).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    on_host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=on_host),
        self._saved_leaves(step))
    reader = ocp.StandardCheckpointHandler()
    try:
      return jax.tree.map(np.asarray, reader.restore(self._item(step),
                                                     args=ocp.args.StandardRestore(target)))
    finally:
      reader.close()

  def _item(self, step: int) -> epath.Path:
    return epath.Path(self.directory) / str(step) / "default"

  def _saved_leaves(self, step: int) -> dict[str, Any]:
    """The metadata (`.shape`, `.dtype`) of each leaf saved at `step`, keyed by pytree path."""
    reader = ocp.StandardCheckpointHandler()
    try:
      return dict(reader.metadata(self._item(step)))
    finally:
      reader.close()

  def wait(self) -> None:
    """Blocks until pending saves are written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self._manager.close()
