"""Benchmark: python -m jaxaug.bench --config FILE [--config.key=value] [--steps N] [--sections ...].

Three sections, `steps` and `augment` by default (`--sections=steps,augment`), printing one
JSON object per line:

steps: times, in one process on the same model and data, a plain supervised step (no
augmentation) and the train steps every registered method declares
(`Method.bench_variants`: e.g. bilevel's unroll for T = 1, 2, 4 and its implicit
hypergradient, HBA's steps with and without a policy update, Adversarial AutoAugment with
M = 8), with `plain_x<copies>`, a plain step on as many images as a method that trains on
or scores several copies of each example, each in every computation dtype of `--dtypes`
(`config.dtype`: float32, bfloat16): name, dtype, ms_per_step, ms_per_update (per
classifier update), ratio_to_plain (per step, to the plain step of the same dtype),
ratio_to_float32 (to the same variant in float32), copies_per_example,
ratio_per_image_to_plain, ratio_to_plain_same_images (to `plain_x<copies>`: the method's
own cost, apart from the larger batch's), ratio_to_plain_amortised (for a step that
updates something every few steps: the cost per step over one period), batch_size (of the
step), the compiled step's temporary and total memory (XLA's memory analysis: arguments +
outputs - aliased + temporaries) and, where the backend reports it, the process's peak
device memory so far (not per variant: JAX cannot reset it, so the largest variant run so
far sets it).

augment: augmentation throughput of the fixed policies RandAugment(2, 9) and AutoAugment
CIFAR-10 on `--augment_batch_size` training images of `config.data`: jaxaug's jitted sampler
(per-image randomness), and, when torchvision is importable (`pip install -e ".[bench]"`),
torchvision's `transforms.v2` policy on the uint8 batch [B, C, H, W] called once (one op draw
for the whole batch) and called per image in a Python loop (per-image randomness, as in a
DataLoader): name, images_per_s, us_per_image, ratio_to_torchvision_per_image (time per image
over torchvision's per-image loop: below 1 is faster), thread counts. Also
`apply_sub_policies` on Adversarial AutoAugment's M copies of that batch with `space.apply`'s
'switch' and 'select' strategies (`sub_policy_strategy_records`).

input: images per second the input pipeline delivers from JPEG image folders (decoded on every
access, `config.data.in_memory_max_bytes` = 0) at 32 px (stored at 32 px) and 224 px (stored
at 256 x 320 px, resized), with 1, 2, ... `os.cpu_count()` Grain workers
(`config.data.workers`): name, image_size, workers, images_per_s, images_per_s_per_worker,
batch_size. Worker start-up and the first batch are not timed.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxaug import data
from jaxaug import models
from jaxaug import parallel
from jaxaug.augment import fixed
from jaxaug.augment import ops
from jaxaug.augment import policies
from jaxaug.methods import METHODS
from jaxaug.methods import BenchVariant
from jaxaug.methods import training

FLAGS = flags.FLAGS
DTYPES = ("float32", "bfloat16")  # `--dtypes` default
config_flags.DEFINE_config_file("config", None, "Configuration file (model, data, batch size).")
flags.DEFINE_integer("steps", 20, "Timed repeats per variant, after untimed warm-up calls: train "
                     "steps (steps section) or augmented batches (augment section).")
flags.DEFINE_list("dtypes", list(DTYPES),
                  "Computation dtypes (config.dtype) each train-step variant is timed in.")
flags.DEFINE_list("sections", ["steps", "augment"],
                  "Sections to run: steps (train-step cost), augment (augmentation throughput), "
                  "input (input-pipeline throughput against Grain workers).")
flags.DEFINE_list("variants", None, "Train-step variants to time (default all; 'plain', the "
                  "reference, always runs), e.g. adversarial_M8,ohl_K4.")
flags.DEFINE_integer("augment_batch_size", 256, "Images per augmented batch (augment section).")

SECTIONS = ("steps", "augment", "input")
# input section: image side -> (stored height, width) of its JPEG files, global batch size.
INPUT_SIZES = {32: ((32, 32), 256), 224: ((256, 320), 64)}
INPUT_BATCHES = 48  # timed batches per worker count, after the first
WARMUP_CALLS = 2
# jaxaug spec (`fixed.compose`) -> the same policy built from torchvision.transforms.v2.
TORCHVISION_POLICIES: dict[str, Callable[[Any], Any]] = {
    # 11 bins: magnitude 9 on the paper's 0-10 scale, as jaxaug reads M (torchvision's default
    # is 31 bins, where 9 would be 0.3 of each op's range).
    "randaugment(2, 9)": lambda v2: v2.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=11),
    "autoaugment_cifar10": lambda v2: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
}
OP_DRAWS = {
    "jaxaug": "per image",
    "torchvision_batch": "one for the whole batch (torchvision draws the ops once per call)",
    "torchvision_per_image": "per image (one call per image in a Python loop, as a DataLoader)",
}


# The order of the methods' rows (every registered method has its place; see `step_variants`).
METHOD_ORDER = ("supervised", "invariant", "bilevel", "hba", "reinforce", "ohl", "uncertainty")
PLAIN = BenchVariant("plain", {"augment": "none"})  # the reference: no augmentation


def with_changes(config: ml_collections.ConfigDict, changes: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys ('bilevel.truncation') set to new values."""
  copy = ml_collections.ConfigDict(config.to_dict())
  for key, value in changes.items():
    target = copy
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return copy


def step_variants(config: ml_collections.ConfigDict
                  ) -> list[tuple[BenchVariant, ml_collections.ConfigDict]]:
  """(variant, its config) for the plain reference and every method's `bench_variants`, in
  METHOD_ORDER, each method's rows preceded by the plain steps on as many images as its
  copies (`plain_x<copies>`: the batch times the copies), so that a method's own cost can
  be told from its larger batch's."""
  if sorted(METHOD_ORDER) != METHODS.names():
    raise AssertionError(f"METHOD_ORDER {METHOD_ORDER} must list the methods {METHODS.names()}")
  rows = [(PLAIN, with_changes(config, {"method": "supervised", **PLAIN.changes}))]
  plain_copies = {1}
  for name in METHOD_ORDER:
    method = METHODS.get(name)
    for variant in method.bench_variants(config):
      variant_config = with_changes(config, {"method": name, **variant.changes})
      copies = method.copies_per_example(variant_config)
      if copies not in plain_copies:
        plain_copies.add(copies)
        plain = BenchVariant(f"plain_x{copies}", {**PLAIN.changes,
                                                   "batch_size": config.batch_size * copies})
        rows.append((plain, with_changes(config, {"method": "supervised", **plain.changes})))
      rows.append((variant, variant_config))
  return rows


def time_variant(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh,
                 steps: int, timed_step: int = 0) -> dict[str, Any]:
  """Milliseconds per jitted train step (median of `steps`, each running the program of
  train step number `timed_step`) and memory figures."""
  method = METHODS.get(config.method)
  batches_per_step = method.train_batches_per_step(config)
  pipeline = data.pipeline_from_config(dataset, config.data, global_batch_size=config.batch_size,
                                       val_batch_size=config.val_batch_size,
                                       train_batches_per_step=batches_per_step)
  info = training.DataInfo.create(num_classes=dataset.num_classes, image_shape=dataset.image_shape,
                                batches_per_epoch=pipeline.batches_per_epoch,
                                batches_per_step=batches_per_step, num_epochs=config.num_epochs)
  state = parallel.put_replicated(method.init(config, jax.random.PRNGKey(0), info), mesh)
  train_batch = parallel.put_batch(pipeline.train_batches(0, batches_per_step), mesh, batch_axis=1)
  val_batch = (parallel.put_batch(pipeline.val_batch(0, epoch=0), mesh)
               if method.uses_val_batch(config) else None)

  step = method.compile_train_step(config, info)
  compiled = step.lower(state, train_batch, val_batch, jax.random.PRNGKey(0), timed_step).compile()
  memory = compiled.memory_analysis()
  state, _ = step(state, train_batch, val_batch, jax.random.PRNGKey(0), timed_step)  # warm-up
  jax.block_until_ready(state)
  durations = []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, train_batch, val_batch, jax.random.PRNGKey(i + 1), timed_step)
    jax.block_until_ready((state, metrics))
    durations.append(time.perf_counter() - start)
  ms_per_step = 1000 * float(np.median(durations))
  stats = jax.devices()[0].memory_stats() or {}
  mib = lambda size: round(size / 2**20, 2)
  return {
      "ms_per_step": round(ms_per_step, 3),
      "ms_per_update": round(ms_per_step / batches_per_step, 3),
      # this step's own needs, from XLA's memory analysis of the compiled program
      "compiled_temp_mib": mib(memory.temp_size_in_bytes) if memory is not None else None,
      "compiled_total_mib": (mib(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                 - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
                             if memory is not None else None),
      # the backend's peak since the process started: the largest variant so far sets it
      "process_peak_device_mib": (mib(stats["peak_bytes_in_use"])
                                  if "peak_bytes_in_use" in stats else None),
  }


def step_records(config: ml_collections.ConfigDict, dataset: data.Dataset, *, steps: int,
                 dtypes: Sequence[str], names: Sequence[str] | None = None
                 ) -> Iterator[dict[str, Any]]:
  """One record per train-step variant (`step_variants`) and dtype (see `time_variant`).

  ratio_to_plain: to the plain step in the same dtype; ratio_to_float32: to the same
  variant in float32 (None if float32 is not among `dtypes`); copies_per_example: images
  the step trains on or scores per example of the batch; ratio_per_image_to_plain;
  ratio_to_plain_same_images: to `plain_x<copies>`; for a variant that updates something
  every few steps (`BenchVariant.amortise`), ratio_to_plain_amortised: the cost per step
  over one update period, with its steps without the update. `names` selects variants (all
  if None; 'plain', the reference, and the rows a selected one is compared with always run).
  """
  rows = step_variants(config)
  valid = [variant.name for variant, _ in rows]
  copies_of = {variant.name: METHODS.get(variant_config.method).copies_per_example(variant_config)
               for variant, variant_config in rows}
  wanted = set(names or valid) | {PLAIN.name}
  for variant, _ in rows:
    if variant.name in wanted:
      wanted |= {f"plain_x{copies_of[variant.name]}"} | (
          {variant.amortise[0]} if variant.amortise else set())
  dtypes = sorted(dtypes, key=lambda dtype: dtype != "float32")  # float32 first: the reference
  mesh = parallel.make_mesh()
  for name in ("batch_size", "val_batch_size"):
    parallel.check_batch_divisible(name, config[name], mesh)
  ms_of = {}  # (name, dtype) -> ms per step
  for variant, variant_config in rows:
    if variant.name not in wanted:
      continue
    for dtype in dtypes:
      timed = time_variant(with_changes(variant_config, {"dtype": dtype}), dataset, mesh, steps,
                           timed_step=variant.timed_step)
      ms = ms_of[(variant.name, dtype)] = timed["ms_per_step"]
      plain = ms_of[(PLAIN.name, dtype)]
      copies = copies_of[variant.name] if not variant.name.startswith("plain_x") else (
          variant_config.batch_size // config.batch_size)
      same_images = ms_of.get((f"plain_x{copies}", dtype), plain if copies == 1 else None)
      record = {"name": variant.name, "dtype": dtype, **timed,
                "ratio_to_plain": round(ms / plain, 3),
                "ratio_to_float32": (round(ms / ms_of[(variant.name, "float32")], 3)
                                     if (variant.name, "float32") in ms_of else None),
                "copies_per_example": copies,
                "ratio_per_image_to_plain": round(ms / plain / copies, 3),
                "ratio_to_plain_same_images": round(ms / same_images, 3) if same_images else None}
      if variant.amortise:
        without, every = variant.amortise
        record["ratio_to_plain_amortised"] = round(
            (ms + (every - 1) * ms_of[(without, dtype)]) / every / plain, 3)
        record["amortised_over_steps"] = every
      record.update(model=config.model, batch_size=variant_config.batch_size,
                    image_shape=list(dataset.image_shape), backend=jax.default_backend(),
                    devices=len(jax.devices()))
      yield record


def median_seconds(run_once: Callable[[int], Any], repeats: int) -> float:
  """Median wall-clock seconds of `run_once(i)` over `repeats` timed calls.

  Calls i = 0 .. WARMUP_CALLS - 1 are untimed warm-up (compilation, caches); the timed
  calls get i = WARMUP_CALLS .. WARMUP_CALLS + repeats - 1, so each can draw a fresh key.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}")
  for i in range(WARMUP_CALLS):
    run_once(i)
  durations = []
  for i in range(WARMUP_CALLS, WARMUP_CALLS + repeats):
    start = time.perf_counter()
    run_once(i)
    durations.append(time.perf_counter() - start)
  return float(np.median(durations))


def augment_batch(dataset: data.Dataset, batch_size: int) -> np.ndarray:
  """uint8 [batch_size, H, W, C] training images evenly spaced over the train split."""
  if not 1 <= batch_size <= len(dataset.train):
    raise ValueError(f"augment batch size must lie in [1, {len(dataset.train)}] (the train "
                     f"split's size), got {batch_size}")
  indices = np.arange(batch_size) * (len(dataset.train) // batch_size)
  return dataset.train.get(indices)["image"]


def jaxaug_seconds(sampler: Callable[[jax.Array, jax.Array], jax.Array], images: np.ndarray,
                   repeats: int) -> float:
  """Median seconds per batch of the jitted `sampler(rng, images)` (e.g. `fixed.compose(spec)`).

  images: uint8 [B, H, W, C], put on the default device once; the jitted function turns them
  into float32 in [0, 1] (as the train step does) and augments them with key fold_in(PRNGKey(0), i).
  """
  key = jax.random.PRNGKey(0)

  @jax.jit
  def augment(i, pixels):
    return sampler(jax.random.fold_in(key, i), ops.levels_to_unit(pixels))

  pixels = jax.device_put(images)
  return median_seconds(lambda i: jax.block_until_ready(augment(i, pixels)), repeats)


def import_torchvision() -> tuple[Any, Any] | None:
  """(torch, torchvision.transforms.v2), or None with a warning when torchvision is missing."""
  try:
    torch = importlib.import_module("torch")
    v2 = importlib.import_module("torchvision.transforms.v2")
  except ImportError as error:
    logging.warning("torchvision is not importable (%s): skipping the torchvision lines of the "
                    "augment section; install them with: pip install -e \".[bench]\"", error)
    return None
  return torch, v2


def torchvision_seconds(transform: Callable[[Any], Any], images: Any,
                        repeats: int) -> dict[str, float]:
  """Median seconds per batch of a torchvision transform on uint8 images [B, C, H, W].

  torchvision_batch: one call on the whole batch; torchvision_per_image: one call per image.
  """
  return {
      "torchvision_batch": median_seconds(lambda _: transform(images), repeats),
      "torchvision_per_image": median_seconds(
          lambda _: [transform(image) for image in images], repeats),
  }


def augment_records(config: ml_collections.ConfigDict, dataset: data.Dataset, *,
                    batch_size: int, repeats: int) -> Iterator[dict[str, Any]]:
  """One record per (policy, implementation): throughput on `batch_size` train images.

  Names are "<jaxaug spec>/<implementation>", implementations jaxaug, torchvision_batch and
  torchvision_per_image (the latter two only when torchvision is importable).
  """
  images = augment_batch(dataset, batch_size)
  torchvision = import_torchvision()
  context = {"batch_size": batch_size, "image_shape": list(dataset.image_shape),
             "dataset": config.data.dataset, "backend": jax.default_backend(),
             "cpu_count": len(os.sched_getaffinity(0)), "xla_flags": os.environ.get("XLA_FLAGS")}
  if torchvision is not None:
    torch, v2 = torchvision
    torch_images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    context.update(torch_threads=torch.get_num_threads(),
                   torch_interop_threads=torch.get_num_interop_threads(),
                   torch_version=torch.__version__)
  for spec, torchvision_policy in TORCHVISION_POLICIES.items():
    seconds = {"jaxaug": jaxaug_seconds(fixed.compose(spec), images, repeats)}
    if torchvision is not None:
      torch.manual_seed(0)
      seconds.update(torchvision_seconds(torchvision_policy(v2), torch_images, repeats))
    reference = seconds.get("torchvision_per_image")
    for implementation, batch_seconds in seconds.items():
      yield {
          "name": f"{spec}/{implementation}",
          "images_per_s": round(batch_size / batch_seconds, 1),
          "us_per_image": round(1e6 * batch_seconds / batch_size, 2),
          "ratio_to_torchvision_per_image": (round(batch_seconds / reference, 3)
                                             if reference else None),
          "op_draws": OP_DRAWS[implementation],
          **context,
      }
  adversarial_copies = METHODS.get("reinforce").default_config().num_policies  # the paper's M
  yield from sub_policy_strategy_records(images, copies=adversarial_copies,
                                         repeats=repeats, context=context)


def sub_policy_strategy_records(images: np.ndarray, *, copies: int, repeats: int,
                                context: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """`space.apply`'s strategies on Adversarial AutoAugment's N x M images: every image a
  random sub-policy of 2 of the 16 ops at random levels, with 'switch' and 'select'."""
  tiled = np.tile(images, (copies, 1, 1, 1))
  names = policies.ADVERSARIAL_OPS
  auto = "switch" if jax.default_backend() == "cpu" else "select"
  for strategy in ("switch", "select"):
    def sampler(rng, batch, strategy=strategy):
      op_rng, level_rng, apply_rng = jax.random.split(rng, 3)
      shape = (batch.shape[0], 2)
      return policies.apply_sub_policies(
          apply_rng, batch, jax.random.randint(op_rng, shape, 0, len(names)),
          jax.random.randint(level_rng, shape, 0, 10), jnp.ones(shape), names=names,
          strategy=strategy)

    batch_seconds = jaxaug_seconds(sampler, tiled, repeats)
    yield {"name": f"adversarial_sub_policies_x{copies}/{strategy}",
           "images_per_s": round(tiled.shape[0] / batch_seconds, 1),
           "us_per_image": round(1e6 * batch_seconds / tiled.shape[0], 2),
           "trainer_picks": strategy == auto, **context, "batch_size": tiled.shape[0]}


def write_jpeg_folder(root: str, *, count: int, shape: tuple[int, int], classes: int = 4) -> None:
  """`count` smooth random RGB JPEGs (quality 90) of `shape` (H, W) under root/{train,test}/c<k>/."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for split, split_count in (("train", count), ("test", classes)):
    for i in range(split_count):
      folder = os.path.join(root, split, f"c{i % classes}")
      os.makedirs(folder, exist_ok=True)
      coarse = rng.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3), dtype=np.uint8)
      image = Image.fromarray(coarse).resize(shape[::-1], Image.BILINEAR)
      image.save(os.path.join(folder, f"{i}.jpg"), quality=90)


def input_records(*, batches: int = INPUT_BATCHES,
                  max_workers: int | None = None) -> Iterator[dict[str, Any]]:
  """Input-pipeline throughput (see the module docstring) for 1 .. max_workers (None: the CPU
  count) Grain workers, each over `batches` timed train steps of one batch."""
  max_workers = max_workers or os.cpu_count() or 1
  for image_size, (shape, batch_size) in INPUT_SIZES.items():
    with tempfile.TemporaryDirectory() as root:
      write_jpeg_folder(root, count=batch_size * 4, shape=shape)
      config = data.default_data_config()
      config.update(dataset=f"folder:{root}", image_size=image_size, in_memory_max_bytes=0)
      dataset = data.load_dataset(config)
      for workers in range(1, max_workers + 1):
        pipeline = data.Pipeline(dataset, global_batch_size=batch_size, val_batch_size=1, seed=0,
                                 val_fraction=0.1, redraw_val_each_epoch=False,
                                 train_examples=None, workers=workers)
        steps = pipeline.step_batches(0, batches + workers, batches_per_step=1, with_val=False)
        for _ in range(workers):  # start-up: every worker has delivered its first batch
          next(steps)
        started = time.perf_counter()
        for _ in steps:
          pass
        images_per_s = batches * batch_size / (time.perf_counter() - started)
        yield {"name": f"input_{image_size}px", "image_size": image_size, "workers": workers,
               "images_per_s": round(images_per_s, 1),
               "images_per_s_per_worker": round(images_per_s / workers, 1),
               "batch_size": batch_size, "cpu_count": os.cpu_count()}


class RequestError(ValueError):
  """An unknown section, dtype or train-step variant was asked for (`check_request`)."""


def check_request(config: ml_collections.ConfigDict, *, sections: Sequence[str],
                  dtypes: Sequence[str], variant_names: Sequence[str] | None) -> None:
  """RequestError naming the valid values for an unknown section, dtype or train-step variant."""
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise RequestError(f"unknown bench sections {unknown}; valid sections: {', '.join(SECTIONS)}")
  for dtype in dtypes:
    try:
      models.DTYPES.get(dtype)
    except ValueError as error:
      raise RequestError(str(error)) from None
  valid = [variant.name for variant, _ in step_variants(config)]
  unknown = sorted(set(variant_names or ()) - set(valid))
  if unknown:
    raise RequestError(f"unknown bench variants {unknown}; valid variants: {', '.join(valid)}")


def run(config: ml_collections.ConfigDict, *, steps: int,
        dtypes: Sequence[str] = DTYPES, sections: Sequence[str] = SECTIONS,
        augment_batch_size: int = 256, variant_names: Sequence[str] | None = None,
        print_fn=print) -> list[dict[str, Any]]:
  """Runs the named sections (see SECTIONS) and prints (and returns) one record per variant
  (`variant_names`: the train-step variants to time, all if None). Unknown names raise
  RequestError (`check_request`) before any data is read."""
  check_request(config, sections=sections, dtypes=dtypes, variant_names=variant_names)
  dataset = data.load_dataset(config.data)
  section_records = []  # Generators: nothing runs until the loop below asks for a record.
  if "steps" in sections:
    section_records.append(step_records(config, dataset, steps=steps,
                                        dtypes=dtypes, names=variant_names))
  if "augment" in sections:
    section_records.append(augment_records(config, dataset, batch_size=augment_batch_size,
                                           repeats=steps))
  if "input" in sections:
    section_records.append(input_records())
  records = []
  for record in itertools.chain(*section_records):
    print_fn(json.dumps(record))
    records.append(record)
  return records


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    run(FLAGS.config, steps=FLAGS.steps, dtypes=FLAGS.dtypes, sections=FLAGS.sections,
        augment_batch_size=FLAGS.augment_batch_size, variant_names=FLAGS.variants)
  except RequestError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
