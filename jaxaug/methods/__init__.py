"""Training methods behind one contract; `METHODS.get(config.method)` returns a `Method`.

Adding a method is adding a module that defines the functions of `Method` (below) and
registering it here; `jaxaug.config` gives every method's `default_config()` its own
section `config.<name>`, and `jaxaug.train` uses nothing else. The conformance test
(tests/test_methods.py) runs over every registered method.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

import jax
import ml_collections

from jaxaug.augment import learned
from jaxaug.methods import (bilevel, common, hba, invariant, reinforce, supervised,
                            uncertainty)
from jaxaug.registry import Registry

State = Any  # a flax struct dataclass; see `Method.init`


@dataclasses.dataclass(frozen=True)
class Method:
  """The functions and facts `train.py` needs of a method (all pure; the trainer jits them).

  Attributes:
    name: the `config.method` value.
    default_config: `() -> ConfigDict`, the method's section `config.<name>` (may be empty).
    train_batches_per_step: `(config) -> T`, the training batches one step takes; the
      trainer stacks them on a leading axis: image uint8->f32 [T, B, H, W, C] in [0, 1],
      label int32 [T, B]. It validates the config values it reads.
    uses_val_batch: whether `train_step` reads a validation batch (else it gets None and
      no validation images are read).
    init: `(config, rng, info: common.DataInfo) -> state`. The state is a pytree with at
      least `step` (int32 scalar, train steps done) and `nonfinite_step` (int32 scalar, the
      first step whose loss or hyper-gradient was not finite, -1 while none was; the
      trainer stops the run when it is set).
    train_step: `(state, train_batch, val_batch, rng) -> (state, metrics)`; metrics is a
      dict of f32 scalars with at least `loss` and `accuracy` (the training batch's), and
      `common.Sparse` values for metrics that exist on some steps only. Per-epoch work
      happens inside, on `state.step`.
    eval_step: `(state, batch) -> {"loss_sum", "correct", "count"}` over a masked batch
      (image f32 [B, H, W, C] in [0, 1], label [B], mask bool [B]).
    augment: `(state, images f32 [B, H, W, C] in [0, 1], rng) -> images`, what training
      sees now (for the image grids).
    summaries: `(state) -> common.Summaries`, what the method has learned (empty if nothing).
    export_policy: `(state) -> learned.Policy | None`, written to `<workdir>/policy/` at the
      end of a run by methods that learn augmentation; replayable with `learned('<dir>')`.
  """
  name: str
  default_config: Callable[[], ml_collections.ConfigDict]
  train_batches_per_step: Callable[[ml_collections.ConfigDict], int]
  uses_val_batch: bool
  init: Callable[[ml_collections.ConfigDict, jax.Array, common.DataInfo], State]
  train_step: Callable[..., tuple[State, dict[str, Any]]]
  eval_step: Callable[[State, dict], dict[str, jax.Array]]
  augment: Callable[[State, jax.Array, jax.Array], jax.Array]
  summaries: Callable[[State], common.Summaries]
  export_policy: Callable[[State], learned.Policy | None]

  @classmethod
  def from_module(cls, name: str, module: types.ModuleType) -> "Method":
    """The Method a module defines (functions of the same names, `USES_VAL_BATCH`).

    Raises TypeError naming what the module lacks.
    """
    fields = [field.name for field in dataclasses.fields(cls) if field.name != "name"]
    attributes = {field: "USES_VAL_BATCH" if field == "uses_val_batch" else field
                  for field in fields}
    missing = [attribute for attribute in attributes.values() if not hasattr(module, attribute)]
    if missing:
      raise TypeError(f"method module {module.__name__} lacks {', '.join(missing)}")
    return cls(name=name, **{field: getattr(module, attribute)
                             for field, attribute in attributes.items()})


METHODS: Registry[Method] = Registry("method")
for _name, _module in (("supervised", supervised), ("bilevel", bilevel), ("hba", hba),
                        ("invariant", invariant), ("reinforce", reinforce),
                        ("uncertainty", uncertainty)):
  METHODS.register(_name)(Method.from_module(_name, _module))
del _name, _module
