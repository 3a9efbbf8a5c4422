"""The training loop: data -> state -> jitted step -> eval -> checkpoint -> report.

Nothing here is method-specific: `METHODS.get(config.method)` is a `methods.Method`
(see jaxaug/methods/__init__.py) and the loop uses only what it declares.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxaug import checkpoint
from jaxaug import data
from jaxaug import parallel
from jaxaug import reporting
from jaxaug import stopping
from jaxaug.augment import learned
from jaxaug.methods import METHODS
from jaxaug.methods import to_float_images
from jaxaug.methods import contract
from jaxaug.methods import training

GRID_IMAGES = 8


class NonFiniteError(FloatingPointError):
  """A loss or hypergradient became NaN/inf; the message names the step."""


class SetupError(ValueError):
  """The configuration or the data was rejected before training started (a user's mistake:
  `jaxaug.main` prints the message alone and exits with status 2)."""


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  """Means over steps of per-step metric dicts (fetched to the host once).

  A `contract.Sparse` metric is averaged over the steps that have it, and left out if none has.
  """
  history = jax.device_get(history)
  means = {}
  for name, first in history[0].items():
    if isinstance(first, contract.Sparse):
      present = np.array([bool(metrics[name].present) for metrics in history])
      if present.any():
        values = np.array([float(metrics[name].value) for metrics in history])
        means[name] = float(values[present].mean())
    else:
      means[name] = float(np.mean([metrics[name] for metrics in history]))
  return means


def evaluate(eval_step, state, pipeline: data.Pipeline, split: str, batch_size: int,
             mesh, *, epoch: int = 0) -> dict[str, float]:
  """Loss and accuracy of the classifier over the whole `split` ('val' or 'test').

  'val' is the validation part of train epoch `epoch` (it matters only when the split is
  re-drawn each epoch).
  """
  totals = None
  for batch in pipeline.eval_batches(split, batch_size, epoch=epoch):
    sums = eval_step(state, parallel.put_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"loss": float(totals["loss_sum"]) / count, "accuracy": float(totals["correct"]) / count}


def _check_finite(state, checkpointer: checkpoint.Checkpointer) -> None:
  bad_step = int(jax.device_get(state.nonfinite_step))
  if bad_step >= 0:
    raise NonFiniteError(
        f"non-finite loss or hypergradient at train step {bad_step}; stopping. The last good "
        f"checkpoint (step {checkpointer.latest_step()}) is kept in {checkpointer.directory}")


def _changes_since_saved(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """'key: old -> new' for each value of `config` that differs from `<workdir>/config.json`
  ([] if there is none)."""
  saved = reporting.read_json(workdir, reporting.CONFIG_FILENAME)
  return reporting.config_changes(saved, config.to_dict()) if saved is not None else []


def _save_config(config: ml_collections.ConfigDict, workdir: str, *, resuming: bool) -> None:
  """Writes `<workdir>/config.json`; when resuming, first prints what changed since it was written."""
  current = config.to_dict()
  changes = _changes_since_saved(config, workdir) if resuming else []
  if changes:
    reporting.say(f"warning: resuming with a configuration that differs from the saved "
                  f"{epath.Path(workdir) / reporting.CONFIG_FILENAME} (now replaced) in:\n  "
                  + "\n  ".join(changes))
  reporting.write_config(workdir, current)


@contextlib.contextmanager
def _rejections_are_setup_errors() -> Iterator[None]:
  """Turns a ValueError raised inside (a bad config value, data, policy folder) into a
  SetupError with the same message."""
  try:
    yield
  except SetupError:
    raise
  except ValueError as error:
    raise SetupError(str(error)) from error


def _interval(every_epochs: float, steps_per_epoch: int) -> int:
  return max(1, int(round(every_epochs * steps_per_epoch)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.method` and writes config.json, metrics, images, plots, checkpoints, results.json.

  `workdir` is a local directory or a URL such as `gs://bucket/run`; only process 0 writes
  its files (every process takes part in the checkpoints). Resumes from the newest
  checkpoint in `<workdir>/checkpoints` if there is one.
  Returns the results dict also written to `<workdir>/results.json`.

  Raises:
    SetupError (a ValueError): the configuration or the data was rejected before training
      started; the message says what and how to fix it.
    stopping.TrainingInterrupted (a KeyboardInterrupt): SIGINT or SIGTERM arrived; the
      step it arrived in was finished, reported and checkpointed.
    NonFiniteError: a loss or hypergradient became NaN/inf.
  """
  start_time = time.time()
  parallel.initialize_distributed(config.distributed)
  with _rejections_are_setup_errors():
    method = METHODS.get(config.method)
    batches_per_step = method.train_batches_per_step(config)
    uses_val_batch = method.uses_val_batch(config)
    if uses_val_batch and not config.data.val_fraction:
      raise SetupError(f"config.method={config.method!r} learns from validation images: "
                       f"config.data.val_fraction must be > 0, got {config.data.val_fraction}")
    mesh = parallel.make_mesh()
    for name in ("batch_size", "val_batch_size", "eval_batch_size"):
      parallel.check_batch_divisible(name, config[name], mesh)

    dataset = data.load_dataset(config.data)
    pipeline = data.pipeline_from_config(
        dataset, config.data, global_batch_size=config.batch_size,
        val_batch_size=config.val_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), train_batches_per_step=batches_per_step)
    info = training.DataInfo.create(num_classes=dataset.num_classes, image_shape=dataset.image_shape,
                                  batches_per_epoch=pipeline.batches_per_epoch,
                                  batches_per_step=batches_per_step, num_epochs=config.num_epochs)
    steps_per_epoch, total_steps = info.steps_per_epoch, info.total_steps

    rng = jax.random.PRNGKey(config.seed)
    init_rng, train_rng, image_rng = jax.random.split(rng, 3)
    state = parallel.put_replicated(method.init(config, init_rng, info), mesh)

    checkpointer = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    start_step = checkpointer.latest_step() or 0
    earlier_seconds = 0.0  # wall time of the runs this one resumes
    if start_step:
      try:
        state = checkpointer.restore(state)
      except checkpoint.StateMismatchError as error:
        checkpointer.close()
        changes = _changes_since_saved(config, workdir)
        cause = (f"changed since it was saved: {', '.join(changes)}" if changes else
                 "no config value changed since it was saved, so the code that builds the "
                 "state did")
        raise SetupError(f"{error}. {cause}. Resume with the configuration saved in the "
                         f"workdir's {reporting.CONFIG_FILENAME} or start a new --workdir"
                         ) from error
      earlier_seconds = checkpointer.saved_metadata(start_step).get("wall_seconds", 0.0)

  def wall_seconds() -> float:
    return earlier_seconds + time.time() - start_time

  is_chief = jax.process_index() == 0
  reporter = reporting.Reporter(workdir, total_steps=total_steps, is_chief=is_chief,
                                log_every=config.log_every_steps, start_step=start_step)
  if is_chief:
    _save_config(config, workdir, resuming=start_step > 0)
    reporting.say(
        f"{config.method} on {config.data.dataset}: {len(dataset.train)} train examples "
        f"({pipeline.num_train_examples} train / {pipeline.num_val_examples} val), "
        f"{steps_per_epoch} steps/epoch x {batches_per_step} batch(es) of {config.batch_size}, "
        f"{total_steps} steps on {mesh.devices.size} device(s)"
        + (f"; resuming at step {start_step}" if start_step else ""))
    if start_step >= total_steps:
      reporting.say("all steps are done: evaluating the final checkpoint again")

  train_step = method.compile_train_step(config, info)
  eval_step = jax.jit(lambda state, batch: method.eval_step(state, to_float_images(batch)))
  augment = jax.jit(lambda state, images, rng: method.augment(state, images / 255.0, rng))
  summaries = jax.jit(method.summaries)
  grid_images = pipeline.train_batches(0, 1)["image"][0, :GRID_IMAGES]

  eval_splits = ("val", "test") if pipeline.num_val_examples else ("test",)
  eval_every = _interval(config.eval_every_epochs, steps_per_epoch)
  image_every = _interval(config.image_every_epochs, steps_per_epoch)

  def save_images(step):
    rows = [grid_images / 255.0] + [
        np.asarray(augment(state, grid_images, jax.random.fold_in(image_rng, step * 2 + k)))
        for k in range(2)]
    reporter.save_image_grid(step, "augmented", rows, ["original", "augmented", "augmented"])

  def eval_and_report(step):
    results = {}
    epoch = pipeline.epoch_of_batch(max(0, step * batches_per_step - 1))  # of the last batch
    for split in eval_splits:
      results[split] = evaluate(eval_step, state, pipeline, split, config.eval_batch_size, mesh,
                                epoch=epoch)
      reporter.write(step, split, results[split])
    return results

  def write_learned(step):
    learned_now = jax.device_get(summaries(state))
    labels = dict(learned_now.labels)
    reporter.write_learned(
        step, learned_now.scalars,
        {name: (values, labels[name]) for name, values in learned_now.vectors.items()},
        learned_now.histograms)

  history = []
  with stopping.StopSignals() as stop_signals:
    try:
      for step, train_batch, val_batch in pipeline.step_batches(
          start_step, total_steps, batches_per_step=batches_per_step,
          with_val=uses_val_batch):
        val_batch = None if val_batch is None else parallel.put_batch(val_batch, mesh)
        state, metrics = train_step(state, parallel.put_batch(train_batch, mesh, batch_axis=1),
                                    val_batch, jax.random.fold_in(train_rng, step), step)
        history.append(metrics)
        done = step + 1
        last = done == total_steps
        stop = stop_signals.requested(done)  # then only report and save this step
        log = stop or last or done % config.log_every_steps == 0
        if log:
          _check_finite(state, checkpointer)
          means = {**_mean_metrics(history), "epoch": done / steps_per_epoch}
          history = []
          reporter.write(done, "train", means)
          write_learned(done)
          reporter.progress(done, {"loss": means["loss"], "acc": means["accuracy"]})
        if not (stop or last) and done % eval_every == 0:
          eval_and_report(done)
        if not stop and (done % image_every == 0 or step == start_step):
          save_images(done)
        if stop or last or done % config.checkpoint_every_steps == 0:
          if not log:  # else checked above
            _check_finite(state, checkpointer)
          reporter.flush()  # a resume from this checkpoint finds every record up to it
          checkpointer.save(done, state, metadata={"wall_seconds": wall_seconds()})
        if stop:
          raise stopping.TrainingInterrupted(done, stop_signals.signum, checkpointer.directory)
      if stop_signals.signum is not None:  # arrived while the last checkpoint was written
        raise stopping.TrainingInterrupted(total_steps, stop_signals.signum,
                                           checkpointer.directory)
    except BaseException:
      reporter.close()  # writes out the records and events so far
      raise
    finally:
      checkpointer.close()  # an interrupted run keeps every checkpoint it started writing

  final = eval_and_report(total_steps)
  save_images(total_steps)
  reporter.plot_metrics(filename="augmentation_params.png", image_shape=info.image_shape[:2])
  reporter.plot_vectors()
  reporter.plot_training()
  policy = method.export_policy(state)
  if policy is not None and is_chief:
    learned.write_policy(str(epath.Path(workdir) / "policy"), policy)
  results = {
      "method": config.method,
      "dataset": config.data.dataset,
      "model": config.model,
      "test_accuracy": final["test"]["accuracy"],
      "test_loss": final["test"]["loss"],
      **({"val_accuracy": final["val"]["accuracy"], "val_loss": final["val"]["loss"],
          # else earlier epochs trained on the validation images
          "val_held_out": not config.data.redraw_val_each_epoch} if "val" in final else {}),
      "steps": total_steps,
      "epochs": config.num_epochs,
      "wall_seconds": wall_seconds(),  # of every run that led here (resumed runs add up)
      "devices": int(mesh.devices.size),
  }
  if is_chief:
    reporting.write_results(workdir, results)
  reporter.close()
  return results
