"""The method contract: what `train.py` and `bench.py` know of a method (`Method`), with
defaults for the common cases, and the types a method's steps and summaries return."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Hashable

import jax
import ml_collections
from flax import struct

from jaxaug.augment import learned
from jaxaug.augment import ops
from jaxaug.methods import augmentation
from jaxaug.methods import training

State = Any  # a flax struct dataclass; see `Method.init`


@struct.dataclass
class Sparse:
  """A metric that exists on some steps only: `value` counts where `present` is true.

  The trainer averages it over the steps of a logging window that have it (e.g. the
  hypergradient norm with an augmenter update every K steps), and leaves it out of a
  window with none.
  """
  value: jax.Array
  present: jax.Array  # bool scalar


@struct.dataclass
class Summaries:
  """What a method has learned, read from its state at log steps (`summaries(state)`).

  scalars: name -> f32 scalar (metrics.jsonl and TensorBoard, plotted together).
  vectors: name -> f32 [n] (each plotted in a figure of its own, one labelled line per
    component); `labels` holds the n component names of each.
  histograms: name -> f32 array of draws (TensorBoard histograms).
  """
  scalars: dict[str, jax.Array] = struct.field(default_factory=dict)
  vectors: dict[str, jax.Array] = struct.field(default_factory=dict)
  histograms: dict[str, jax.Array] = struct.field(default_factory=dict)
  labels: tuple[tuple[str, tuple[str, ...]], ...] = struct.field(pytree_node=False, default=())


@dataclasses.dataclass(frozen=True)
class BenchVariant:
  """A train step `jaxaug.bench` times for a method.

  Attributes:
    name: the row's name, e.g. 'bilevel_T1'.
    changes: dotted config keys -> values, applied to the bench's config (the method is
      set by the bench).
    timed_step: the train step number whose program is timed (its `step_variant`).
    amortise: (name of the variant timing the steps without the update, the update
      period): the bench adds the cost per step averaged over one update period.
  """
  name: str
  changes: dict[str, Any] = dataclasses.field(default_factory=dict)
  timed_step: int = 0
  amortise: tuple[str, int] | None = None


def one_batch_per_step(config: ml_collections.ConfigDict) -> int:
  """The common case of `Method.train_batches_per_step`: one training batch per step."""
  del config
  return 1


def same_program_every_step(config: ml_collections.ConfigDict,
                            info: training.DataInfo) -> Callable[[int], None]:
  """The common case of `Method.step_variant`: every step runs the same program."""
  del config, info
  return lambda step: None


def fixed_augmentation(state: State, images: jax.Array, rng: jax.Array) -> jax.Array:
  """The common case of `Method.augment`: `config.augment` alone, as training applies it."""
  return augmentation.fixed_augment_stack(state.settings, rng, images[None], state.step)[0]


def nothing_learned(state: State) -> Summaries:
  """The common case of `Method.summaries` for methods that learn no augmentation."""
  del state
  return Summaries()


def no_policy(state: State) -> None:
  """The common case of `Method.export_policy` for methods that learn no augmentation."""
  del state
  return None


def classifier_eval_step(state: State, batch: dict) -> dict[str, jax.Array]:
  """The common case of `Method.eval_step`: `state.classifier` on the images as they are."""
  return training.eval_metrics(state.classifier, batch, mean=state.settings.mean,
                             std=state.settings.std)


def no_bench_variants(config: ml_collections.ConfigDict) -> list[BenchVariant]:
  """The common case of `Method.bench_variants`: none of its own."""
  del config
  return []


def one_copy_per_example(config: ml_collections.ConfigDict) -> int:
  """The common case of `Method.copies_per_example`: each example once."""
  del config
  return 1


@dataclasses.dataclass(frozen=True)
class Method:
  """The functions and facts `train.py` and `bench.py` need of a method (all pure; the
  trainer jits them).

  Attributes:
    name: the `config.method` value (and the family of the policies it exports).
    default_config: `() -> ConfigDict`, the method's section `config.<name>` (may be empty).
    uses_val_batch: `(config) -> bool`, whether `train_step` reads a validation batch (else
      it gets None, no validation images are read and `config.data.val_fraction` may be 0).
    init: `(config, rng, info: training.DataInfo) -> state`. The state is a pytree with at
      least `step` (int32 scalar, train steps done) and `nonfinite_step` (int32 scalar, the
      first step whose loss or hyper-gradient was not finite, -1 while none was; the
      trainer stops the run when it is set). It validates the config values it reads.
    train_step: `(state, train_batch, val_batch, rng) -> (state, metrics)`; metrics is a
      dict of f32 scalars with at least `loss` and `accuracy` (the training batch's), and
      `Sparse` values for metrics that exist on some steps only. Per-epoch work happens
      inside, on `state.step`. A method with a `step_variant` also takes `variant=`: what
      `step_variant` says of this step (static), or None (the default): then the step
      decides from `state.step` alone.

  and, with defaults for the common cases (a module defines them only where it differs):
    train_batches_per_step: `(config) -> T`, the training batches one step takes; the
      trainer stacks them on a leading axis: image uint8->f32 [T, B, H, W, C] in [0, 1],
      label int32 [T, B]. Default: 1.
    step_variant: `(config, info) -> (step number -> hashable)`: which program step s runs
      (e.g. with or without an augmenter update), for the trainer to compile one program
      per variant instead of branching inside one (XLA:CPU runs convolution gradients
      inside a conditional tens of times slower). Default: one program.
    eval_step: `(state, batch) -> {"loss_sum", "correct", "count"}` over a masked batch
      (image f32 [B, H, W, C] in [0, 1], label [B], mask bool [B]). Default:
      `state.classifier` on the images as they are.
    augment: `(state, images f32 [B, H, W, C] in [0, 1], rng) -> images`, what training
      sees now (for the image grids). Default: `config.augment` alone.
    summaries: `(state) -> Summaries`, what the method has learned. Default: nothing.
    export_policy: `(state) -> learned.Policy | None`, written to `<workdir>/policy/` at the
      end of a run by methods that learn augmentation. Default: None.
    replay_policy: `(learned.Policy) -> learned.ProgressSampler`, the reader of what
      `export_policy` writes: `learned('<dir>')` replays a policy of family `name` with it.
      Default: None.
    bench_variants: `(config) -> [BenchVariant]`, the train steps `jaxaug.bench` times for
      the method. Default: none.
    copies_per_example: `(config) -> int`, the images a step trains on or scores per
      example of the batch (M, K, C copies); the bench compares with a plain step on as
      many images. Default: 1.
  """
  name: str
  default_config: Callable[[], ml_collections.ConfigDict]
  uses_val_batch: Callable[[ml_collections.ConfigDict], bool]
  init: Callable[[ml_collections.ConfigDict, jax.Array, training.DataInfo], State]
  train_step: Callable[..., tuple[State, dict[str, Any]]]
  train_batches_per_step: Callable[[ml_collections.ConfigDict], int] = one_batch_per_step
  step_variant: Callable[[ml_collections.ConfigDict, training.DataInfo],
                         Callable[[int], Hashable]] = same_program_every_step
  eval_step: Callable[[State, dict], dict[str, jax.Array]] = classifier_eval_step
  augment: Callable[[State, jax.Array, jax.Array], jax.Array] = fixed_augmentation
  summaries: Callable[[State], Summaries] = nothing_learned
  export_policy: Callable[[State], learned.Policy | None] = no_policy
  replay_policy: Callable[[learned.Policy], learned.ProgressSampler] | None = None
  bench_variants: Callable[[ml_collections.ConfigDict], list[BenchVariant]] = no_bench_variants
  copies_per_example: Callable[[ml_collections.ConfigDict], int] = one_copy_per_example

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

  def compile_train_step(self, config: ml_collections.ConfigDict, info: training.DataInfo
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
  return {**batch, "image": ops.levels_to_unit(batch["image"])}
