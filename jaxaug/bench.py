"""Step-cost benchmark: python -m jaxaug.bench --config FILE [--config.key=value] [--steps N].

Times, in one process on the same model and data, a plain supervised step (no
augmentation), a predefined-augmentation step and bilevel steps for T = 1, 2, 4
(plus T = 1 with plain reverse-over-reverse autodiff, for reference). Prints one
JSON object per line: name, ms_per_step, ms_per_update (per classifier update),
ratio_to_plain (per step), compiled temporary memory and, where the backend
reports it, peak device memory.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from jaxaug import data
from jaxaug import parallel
from jaxaug.methods import METHODS
from jaxaug.methods import common
from jaxaug.train import to_float_images

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Configuration file (model, data, batch size).")
flags.DEFINE_integer("steps", 20, "Timed steps per variant (after one compile + warm-up step).")
flags.DEFINE_list("truncations", ["1", "2", "4"], "Bilevel truncations T to time.")


def variants(config: ml_collections.ConfigDict,
             truncations: list[int]) -> Iterator[tuple[str, ml_collections.ConfigDict]]:
  """(name, config) for each timed variant, all sharing model, data and batch size."""
  def variant(**changes):
    copy = ml_collections.ConfigDict(config.to_dict())
    for key, value in changes.items():
      target = copy
      *parents, leaf = key.split(".")
      for parent in parents:
        target = target[parent]
      target[leaf] = value
    return copy

  yield "plain", variant(method="supervised", augment="none")
  yield "predefined", variant(method="supervised", augment="predefined")
  for truncation in truncations:
    yield f"bilevel_T{truncation}", variant(**{"method": "bilevel", "bilevel.truncation": truncation,
                                               "bilevel.second_order": "forward"})
  yield "bilevel_T1_reverse_over_reverse", variant(**{
      "method": "bilevel", "bilevel.truncation": 1, "bilevel.second_order": "reverse"})


def time_variant(config: ml_collections.ConfigDict, dataset: data.Dataset, mesh,
                 steps: int) -> dict[str, Any]:
  """Milliseconds per jitted train step (median of `steps`) and memory figures."""
  method = METHODS.get(config.method)
  batches_per_step = method.train_batches_per_step(config)
  pipeline = data.pipeline_from_config(dataset, config.data, global_batch_size=config.batch_size,
                                       val_batch_size=config.val_batch_size,
                                       train_batches_per_step=batches_per_step)
  info = common.DataInfo(num_classes=dataset.num_classes, image_shape=dataset.image_shape,
                         steps_per_epoch=pipeline.steps_per_epoch)
  state = parallel.put_replicated(
      method.init(config, jax.random.PRNGKey(0), None, info), mesh)
  train_batch = parallel.put_batch(pipeline.train_batches(0, batches_per_step), mesh, batch_axis=1)
  val_batch = parallel.put_batch(pipeline.val_batch(0, epoch=0), mesh)

  def step_fn(state, train_batch, val_batch, rng):
    return method.train_step(state, to_float_images(train_batch), to_float_images(val_batch), rng)

  step = jax.jit(step_fn, donate_argnums=0)
  compiled = step.lower(state, train_batch, val_batch, jax.random.PRNGKey(0)).compile()
  memory = compiled.memory_analysis()
  state, _ = step(state, train_batch, val_batch, jax.random.PRNGKey(0))  # warm-up
  jax.block_until_ready(state)
  durations = []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, train_batch, val_batch, jax.random.PRNGKey(i + 1))
    jax.block_until_ready((state, metrics))
    durations.append(time.perf_counter() - start)
  ms_per_step = 1000 * float(np.median(durations))
  stats = jax.devices()[0].memory_stats() or {}
  return {
      "ms_per_step": round(ms_per_step, 3),
      "ms_per_update": round(ms_per_step / batches_per_step, 3),
      "compiled_temp_mib": (round(memory.temp_size_in_bytes / 2**20, 2)
                            if memory is not None else None),
      "peak_device_mib": (round(stats["peak_bytes_in_use"] / 2**20, 2)
                          if "peak_bytes_in_use" in stats else None),
  }


def run(config: ml_collections.ConfigDict, *, steps: int, truncations: list[int],
        print_fn=print) -> list[dict[str, Any]]:
  """Times every variant and prints (and returns) one record per variant."""
  mesh = parallel.make_mesh()
  dataset = data.load_dataset(config.data)
  records = []
  plain_ms = None
  for name, variant_config in variants(config, truncations):
    record = {"name": name, **time_variant(variant_config, dataset, mesh, steps)}
    plain_ms = plain_ms or record["ms_per_step"]
    record["ratio_to_plain"] = round(record["ms_per_step"] / plain_ms, 3)
    record.update(model=config.model, batch_size=config.batch_size,
                  image_shape=list(dataset.image_shape), backend=jax.default_backend(),
                  devices=len(jax.devices()))
    print_fn(json.dumps(record))
    records.append(record)
  return records


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run(FLAGS.config, steps=FLAGS.steps, truncations=[int(t) for t in FLAGS.truncations])


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
