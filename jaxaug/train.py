"""The training loop: data -> state -> jitted step -> eval -> checkpoint -> report.

Nothing here is method-specific: `METHODS.get(config.method)` is a `methods.Method`
(see jaxaug/methods/__init__.py) and the loop uses only what it declares.
"""

from __future__ import annotations

import contextlib
import os
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
from jaxaug.augment import ops
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
    saved = checkpointer.latest_step()
    kept = (f"The last good checkpoint (step {saved}) is kept in {checkpointer.directory}"
            if saved is not None else "No checkpoint was saved before it")
    raise NonFiniteError(f"non-finite loss or hypergradient at train step {bad_step}; "
                         f"stopping. {kept}")


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


def check_workdir(workdir: str) -> None:
  """Creates a local `workdir` if it is missing; SetupError if it is a file or cannot be
  written (a `gs://` or other URL is left to the first write)."""
  if "://" in workdir:
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise SetupError(f"--workdir={workdir} is a file: give the path of a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise SetupError(f"--workdir={workdir} cannot be created: {error.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise SetupError(f"--workdir={workdir} is not writable: give a directory you can write to")


def check_config(config: ml_collections.ConfigDict, method: contract.Method, mesh) -> None:
  """Rejects (ValueError) what the configuration alone shows to be wrong, before any data is
  read: batch sizes, the number of epochs, every optimiser section, a validation split the
  method needs, and every value the method's `init` reads (its state is built as shapes only,
  for 32 x 32 RGB images, or `config.data.image_size`; what depends on the data is checked
  again once it is read)."""
  for name in ("batch_size", "val_batch_size", "eval_batch_size"):
    if isinstance(config[name], bool) or not isinstance(config[name], int) or config[name] < 1:
      raise ValueError(f"config.{name}={config[name]!r} must be a positive integer")
    parallel.check_batch_divisible(f"config.{name}", config[name], mesh)
  if isinstance(config.num_epochs, bool) or not isinstance(config.num_epochs, (int, float)) or not (
      0 < config.num_epochs < float("inf")):
    raise ValueError(f"config.num_epochs={config.num_epochs!r} must be a finite number > 0")
  for name, optim in training.optimizer_sections(config):
    training.check_optimizer(optim, name=name)
  if method.uses_val_batch(config) and not config.data.val_fraction:
    raise ValueError(f"config.method={config.method!r} learns from validation images: "
                     f"config.data.val_fraction must be > 0, got {config.data.val_fraction}")
  side = config.data.image_size or 32
  batches_per_step = method.train_batches_per_step(config)
  nominal = training.DataInfo.create(num_classes=10, image_shape=(side, side, 3),
                                     batches_per_epoch=batches_per_step,
                                     batches_per_step=batches_per_step,
                                     num_epochs=config.num_epochs)
  jax.eval_shape(lambda: method.init(config, jax.random.PRNGKey(0), nominal))


def describe_data(config: ml_collections.ConfigDict, dataset: data.Dataset,
                  pipeline: data.Pipeline) -> str:
  """E.g. '4,000 of 50,000 training images: 3,200 train, 800 validation (held out)'."""
  used = pipeline.num_train_examples + pipeline.num_val_examples
  images = (f"{used:,} of {len(dataset.train):,} training images" if used < len(dataset.train)
            else f"{used:,} training images")
  if not pipeline.num_val_examples:
    return f"{images}, all trained on (no validation split)"
  split = "re-drawn every epoch" if config.data.redraw_val_each_epoch else "held out"
  return (f"{images}: {pipeline.num_train_examples:,} train, "
          f"{pipeline.num_val_examples:,} validation ({split})")


def describe_results(results: dict[str, Any], workdir: str) -> str:
  """The lines a finished run ends with: accuracies, steps, time, where its outputs are."""
  path = epath.Path(workdir)
  accuracies = f"test accuracy {results['test_accuracy']:.2%} (loss {results['test_loss']:.4f})"
  if "val_accuracy" in results:
    accuracies += f", validation accuracy {results['val_accuracy']:.2%}"
  minutes = results["wall_seconds"] / 60
  return "\n".join([
      f"done: {accuracies}; {results['steps']:,} steps in {minutes:.1f} min",
      f"  results      {path / reporting.RESULTS_FILENAME}",
      f"  plots        {path / 'plots'}",
      f"  images       {path / 'images'}",
      f"  TensorBoard  tensorboard --logdir {path / 'tensorboard'}"])


def _restore(checkpointer: checkpoint.Checkpointer, state, config: ml_collections.ConfigDict,
             workdir: str):
  """The state saved at the newest checkpoint; SetupError (cause first) if it does not fit."""
  try:
    return checkpointer.restore(state)
  except checkpoint.StateMismatchError as error:
    checkpointer.close()
    changes = _changes_since_saved(config, workdir)
    cause = (f"the config changed since the checkpoint was saved ({'; '.join(changes)})"
             if changes else "no config value changed since the checkpoint was saved, so the "
                             "code that builds the state did")
    raise SetupError(f"cannot resume {workdir}: {cause}. Resume with the config saved in its "
                     f"{reporting.CONFIG_FILENAME}, or start a new --workdir. {error}") from None


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
  is_chief = jax.process_index() == 0
  say = reporting.say if is_chief else lambda text: None
  with _rejections_are_setup_errors():
    method = METHODS.get(config.method)
    mesh = parallel.make_mesh()
    check_workdir(workdir)
    check_config(config, method, mesh)
    batches_per_step = method.train_batches_per_step(config)
    uses_val_batch = method.uses_val_batch(config)

    say(f"{config.method} on {config.data.dataset}: reading the data")
    dataset = data.load_dataset(config.data, progress=say)
    pipeline = data.pipeline_from_config(
        dataset, config.data, global_batch_size=config.batch_size,
        val_batch_size=config.val_batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), train_batches_per_step=batches_per_step)
    info = training.DataInfo.create(
        num_classes=dataset.num_classes, image_shape=dataset.image_shape,
        batches_per_epoch=pipeline.batches_per_epoch, batches_per_step=batches_per_step,
        num_epochs=config.num_epochs)
    steps_per_epoch, total_steps = info.steps_per_epoch, info.total_steps

    rng = jax.random.PRNGKey(config.seed)
    init_rng, train_rng, image_rng = jax.random.split(rng, 3)
    state = parallel.put_replicated(method.init(config, init_rng, info), mesh)

    checkpointer = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    start_step = checkpointer.latest_step() or 0
    earlier_seconds = 0.0  # wall time of the runs this one resumes
    if start_step:
      state = _restore(checkpointer, state, config, workdir)
      earlier_seconds = checkpointer.saved_metadata(start_step).get("wall_seconds", 0.0)

  def wall_seconds() -> float:
    return earlier_seconds + time.time() - start_time

  reporter = reporting.Reporter(workdir, total_steps=total_steps, is_chief=is_chief,
                                log_every=config.log_every_steps, start_step=start_step)
  if is_chief:
    _save_config(config, workdir, resuming=start_step > 0)
  say(f"{describe_data(config, dataset, pipeline)}; {total_steps:,} steps "
      f"({steps_per_epoch} an epoch, {batches_per_step} batch(es) of {config.batch_size} each) "
      f"on {mesh.devices.size} device(s)"
      + (f"; resuming at step {start_step:,}" if start_step else ""))
  if start_step >= total_steps:
    say("all steps are done: evaluating the final checkpoint again")

  train_step = method.compile_train_step(config, info)
  eval_step = jax.jit(lambda state, batch: method.eval_step(state, to_float_images(batch)))
  augment = jax.jit(
      lambda state, images, rng: method.augment(state, ops.levels_to_unit(images), rng))
  summaries = jax.jit(method.summaries)

  eval_splits = ("val", "test") if pipeline.num_val_examples else ("test",)
  eval_every = _interval(config.eval_every_epochs, steps_per_epoch)
  image_every = _interval(config.image_every_epochs, steps_per_epoch)

  def save_images(step):
    grid_images = pipeline.train_batches(0, 1)["image"][0, :GRID_IMAGES]
    rows = [np.asarray(ops.levels_to_unit(grid_images))] + [
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
    say(reporting.format_evaluation(step, results))
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
        if step == start_step:  # compiled, images saved: steps/s is measured from here
          jax.block_until_ready(state)
          reporter.start_clock(done)
        if stop:
          raise stopping.TrainingInterrupted(done, stop_signals.signum, checkpointer.directory)
      if stop_signals.signum is not None:  # arrived while the last checkpoint was written
        raise stopping.TrainingInterrupted(total_steps, stop_signals.signum,
                                           checkpointer.directory)
    except data.UnreadableImageError as error:
      done = int(jax.device_get(state.step))
      reporter.close()
      if done > (checkpointer.latest_step() or 0):
        checkpointer.save(done, state, metadata={"wall_seconds": wall_seconds()})
      raise SetupError(f"{error}; the run stopped with a checkpoint at step {done}") from None
    except BaseException:
      reporter.close()  # writes out the records and events so far
      raise
    finally:
      checkpointer.close()  # an interrupted run keeps every checkpoint it started writing

  try:
    final = eval_and_report(total_steps)
    save_images(total_steps)
  except data.UnreadableImageError as error:
    reporter.close()
    raise SetupError(f"{error}; every step is done and checkpointed") from None
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
  say(describe_results(results, workdir))
  return results
