"""Training methods behind one contract; `METHODS.get(config.method)` returns a `Method`.

Adding a method is adding a module that defines the functions of `Method` (below) and
registering it here; `jaxaug.config` gives every method's `default_config()` its own
section `config.<name>`, and `jaxaug.train` uses nothing else. The conformance test
(tests/test_methods.py) runs over every registered method.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Hashable

import jax
import jax.numpy as jnp
import ml_collections

from jaxaug.augment import learned
from jaxaug.methods import (bilevel, common, hba, invariant, ohl, reinforce, supervised,
                            uncertainty)
from jaxaug.registry import Registry

State = Any  # a flax struct dataclass; see `Method.init`


def one_batch_per_step(config: ml_collections.ConfigDict) -> int:
  """The common case of `Method.train_batches_per_step`: one training batch per step."""
  del config
  return 1


def same_program_every_step(config: ml_collections.ConfigDict,
                            info: common.DataInfo) -> Callable[[int], None]:
  """The common case of `Method.step_variant`: every step runs the same program."""
  del config, info
  return lambda step: None


def classifier_eval_step(state: State, batch: dict) -> dict[str, jax.Array]:
  """The common case of `Method.eval_step`: `state.classifier` on the images as they are."""
  return common.eval_metrics(state.classifier, batch, mean=state.settings.mean,
                             std=state.settings.std)


@dataclasses.dataclass(frozen=True)
class Method:
  """The functions and facts `train.py` needs of a method (all pure; the trainer jits them).

  Attributes:
    name: the `config.method` value.
    default_config: `() -> ConfigDict`, the method's section `config.<name>` (may be empty).
    uses_val_batch: `(config) -> bool`, whether `train_step` reads a validation batch (else
      it gets None, no validation images are read and `config.data.val_fraction` may be 0).
    init: `(config, rng, info: common.DataInfo) -> state`. The state is a pytree with at
      least `step` (int32 scalar, train steps done) and `nonfinite_step` (int32 scalar, the
      first step whose loss or hyper-gradient was not finite, -1 while none was; the
      trainer stops the run when it is set).
    train_step: `(state, train_batch, val_batch, rng) -> (state, metrics)`; metrics is a
      dict of f32 scalars with at least `loss` and `accuracy` (the training batch's), and
      `common.Sparse` values for metrics that exist on some steps only. Per-epoch work
      happens inside, on `state.step`. A method with a `step_variant` also takes
      `variant=`: what `step_variant` says of this step (static), or None (the default):
      then the step decides from `state.step` alone.
    augment: `(state, images f32 [B, H, W, C] in [0, 1], rng) -> images`, what training
      sees now (for the image grids).
    summaries: `(state) -> common.Summaries`, what the method has learned (empty if nothing).
    export_policy: `(state) -> learned.Policy | None`, written to `<workdir>/policy/` at the
      end of a run by methods that learn augmentation; replayable with `learned('<dir>')`.

  and, with defaults for the common cases (a module defines them only where it differs):
    train_batches_per_step: `(config) -> T`, the training batches one step takes; the
      trainer stacks them on a leading axis: image uint8->f32 [T, B, H, W, C] in [0, 1],
      label int32 [T, B]. It validates the config values it reads. Default: 1.
    eval_step: `(state, batch) -> {"loss_sum", "correct", "count"}` over a masked batch
      (image f32 [B, H, W, C] in [0, 1], label [B], mask bool [B]). Default:
      `state.classifier` on the images as they are.
    step_variant: `(config, info) -> (step number -> hashable)`: which program step s runs
      (e.g. with or without an augmenter update), for the trainer to compile one program
      per variant instead of branching inside one (XLA:CPU runs convolution gradients
      inside a conditional tens of times slower). Default: one program.
  """
  name: str
  default_config: Callable[[], ml_collections.ConfigDict]
  uses_val_batch: Callable[[ml_collections.ConfigDict], bool]
  init: Callable[[ml_collections.ConfigDict, jax.Array, common.DataInfo], State]
  train_step: Callable[..., tuple[State, dict[str, Any]]]
  augment: Callable[[State, jax.Array, jax.Array], jax.Array]
  summaries: Callable[[State], common.Summaries]
  export_policy: Callable[[State], learned.Policy | None]
  train_batches_per_step: Callable[[ml_collections.ConfigDict], int] = one_batch_per_step
  eval_step: Callable[[State, dict], dict[str, jax.Array]] = classifier_eval_step
  step_variant: Callable[[ml_collections.ConfigDict, common.DataInfo],
                         Callable[[int], Hashable]] = same_program_every_step

  @classmethod
  def from_module(cls, name: str, module: types.ModuleType) -> "Method":
    """The Method a module defines (functions of the same names; the defaulted ones are
    optional).

    Raises TypeError naming what the module lacks.
    """
    fields = [field for field in dataclasses.fields(cls) if field.name != "name"]
    missing = [field.name for field in fields
               if field.default is dataclasses.MISSING and not hasattr(module, field.name)]
    if missing:
      raise TypeError(f"method module {module.__name__} lacks {', '.join(missing)}")
    return cls(name=name, **{field.name: getattr(module, field.name) for field in fields
                             if hasattr(module, field.name)})

  def compile_train_step(self, config: ml_collections.ConfigDict, info: common.DataInfo
                         ) -> Callable[..., tuple[State, dict[str, Any]]]:
    """`(state, train_batch, val_batch, rng, step) -> (state, metrics)`, jitted (the state
    donated), on uint8 batches as the pipeline gives them (val_batch may be None); one
    compiled program per `step_variant`. The step wrapper of the trainer and the bench."""
    variant_of = self.step_variant(config, info)
    has_variants = self.step_variant is not same_program_every_step

    def step_fn(state, train_batch, val_batch, rng, variant):
      return self.train_step(state, to_float_images(train_batch), to_float_images(val_batch),
                             rng, **({"variant": variant} if has_variants else {}))

    return CompiledStep(jax.jit(step_fn, donate_argnums=0, static_argnames="variant"),
                        variant_of)


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A method's jitted train step on uint8 batches (`Method.compile_train_step`)."""
  jitted: Any  # jax.jit of (state, train_batch, val_batch, rng, variant=)
  variant_of: Callable[[int], Hashable]

  def __call__(self, state, train_batch, val_batch, rng, step: int):
    """(state, metrics) after train step number `step`."""
    return self.jitted(state, train_batch, val_batch, rng, variant=self.variant_of(step))

  def lower(self, state, train_batch, val_batch, rng, step: int):
    """The lowered program of step number `step` (for XLA's cost and memory analyses)."""
    return self.jitted.lower(state, train_batch, val_batch, rng, variant=self.variant_of(step))


def to_float_images(batch: dict | None) -> dict | None:
  """uint8 images -> float32 in [0, 1]; other entries unchanged (None stays None)."""
  if batch is None:
    return None
  return {**batch, "image": batch["image"].astype(jnp.float32) / 255.0}


METHODS: Registry[Method] = Registry("method")
for _name, _module in (("supervised", supervised), ("bilevel", bilevel), ("hba", hba),
                        ("invariant", invariant), ("reinforce", reinforce), ("ohl", ohl),
                        ("uncertainty", uncertainty)):
  METHODS.register(_name)(Method.from_module(_name, _module))
del _name, _module
