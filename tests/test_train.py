"""End to end: each method on smoke configs (tfds mock data, image folder), resume, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from jaxaug import checkpoint
from jaxaug import data
from jaxaug import reporting
from jaxaug import stopping
from jaxaug import train
from jaxaug.methods import METHODS
from jaxaug.methods import contract
from jaxaug.methods import training
from jaxaug.config import load_config_file

import tfds_fakes

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def smoke_config(method="supervised", overrides=None):
  """configs/smoke.py with `method` and a dict of dotted-key overrides."""
  config = load_config_file(os.path.join(CONFIGS, "smoke.py"))
  config.method = method
  for key, value in (overrides or {}).items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def assert_final_evaluation_is_the_result(records, results):
  """results.json holds the last evaluation of the last step, as metrics.jsonl records it."""
  finals = {r["split"]: r for r in records
            if r["step"] == results["steps"] and r["split"] in ("val", "test")}
  for split in finals:
    assert results[f"{split}_accuracy"] == pytest.approx(finals[split]["accuracy"])
    assert results[f"{split}_loss"] == pytest.approx(finals[split]["loss"])
  assert "test" in finals and np.isfinite(results["test_loss"])


def _check_outputs(workdir, results, *, expect_aug_plot):
  assert os.path.exists(os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  for key in ("test_accuracy", "val_accuracy", "steps", "wall_seconds"):
    assert key in on_disk
  assert on_disk["test_accuracy"] == pytest.approx(results["test_accuracy"])
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert_final_evaluation_is_the_result(records, on_disk)
  splits = {r["split"] for r in records}
  assert {"train", "val", "test"} <= splits
  assert all("step" in r for r in records)
  assert os.listdir(os.path.join(workdir, "images"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  plot = os.path.join(workdir, "plots", "augmentation_params.png")
  assert os.path.exists(plot) == expect_aug_plot
  return records


SLOW = pytest.mark.slow  # end to end: see README, Tests


# Every setting is slow: the default run has a short run of every method
# (test_a_short_run_of_every_registered_method) and reads tfds data in test_data.py.
@pytest.mark.parametrize("method,augment", [pytest.param("supervised", "none", marks=SLOW),
                                            pytest.param("supervised", "predefined", marks=SLOW),
                                            pytest.param("bilevel", "hflip", marks=SLOW),
                                            pytest.param("hba", "hflip", marks=SLOW),
                                            pytest.param("invariant", "hflip", marks=SLOW)])
def test_end_to_end_on_tfds_mock_data(tmp_path, method, augment):
  config = smoke_config(method, {"augment": augment, "data.dataset": "cifar10",
                                 "data.train_examples": None, "hba.warmup_epochs": 0.5})
  with tfds_fakes.mock_tfds(num_examples=96):
    results = train.train_and_evaluate(config, str(tmp_path))
  learns = method != "supervised"
  records = _check_outputs(str(tmp_path), results, expect_aug_plot=learns)
  train_records = [r for r in records if r["split"] == "train"]
  learned_records = [r for r in records if r["split"] == "learned"]
  assert all(np.isfinite(r["loss"]) for r in train_records)
  assert [r["step"] for r in learned_records] == ([r["step"] for r in train_records]
                                                  if learns else [])
  assert os.path.isdir(tmp_path / "policy") == learns
  if method in ("bilevel", "invariant"):
    assert any(k.startswith("aug/") for k in learned_records[-1])
  if method == "bilevel":
    assert all(r["hypergrad_norm"] > 0 for r in train_records)
  if method == "invariant":
    assert all(r["augmenter_grad_norm"] > 0 for r in train_records)
  if method == "hba":
    # lambda updates on even steps after half an epoch's warm-up: the first log window
    # (4 steps) has one, and the metrics that exist only on update steps are logged.
    assert "hypergrad_norm" in train_records[0] and "val_loss" in train_records[0]
    assert len([k for k in learned_records[-1] if k.startswith("hba/probability[")]) == 30
    for name in ("hba_probability.png", "hba_magnitude_position.png"):
      assert os.path.exists(tmp_path / "plots" / name)


@pytest.mark.parametrize("method", METHODS.names())
def test_a_short_run_of_every_registered_method(tmp_path, method):
  """One epoch of three steps through train_and_evaluate: results, metrics, images, events and,
  for a method that learns a policy, the exported policy; the steps' losses are finite."""
  config = smoke_config(method, {
      "augment": "hflip", "num_epochs": 1, "data.train_examples": 64, "log_every_steps": 1,
      "hba.warmup_epochs": 0.0, "hba.update_every": 1, "reinforce.num_policies": 2,
      "reinforce.augment_after": "cutout(4)", "ohl.copies": 2, "ohl.augment_after": "cutout(4)",
      "uncertainty.candidates": 2, "uncertainty.augment_after": "cutout(4)",
      "invariant.augmenter.kind": "affine"})
  results = train.train_and_evaluate(config, str(tmp_path))
  learns = METHODS.get(method).export_policy is not contract.no_policy
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train_records = [r for r in records if r["split"] == "train"]
  assert results["steps"] == 3 and [r["step"] for r in train_records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) for r in train_records)
  assert_final_evaluation_is_the_result(records, results)
  assert os.listdir(tmp_path / "images") and os.listdir(tmp_path / "tensorboard")
  assert os.path.isfile(tmp_path / "policy" / "policy.json") == learns


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bilevel", "hba"])
def test_a_learned_policy_replays_with_supervised(tmp_path, method):
  """learned('<dir>') trains another model with what a run learned; bad folders are refused."""
  from jaxaug.augment import learned
  search = smoke_config(method, {"augment": "none", "hba.warmup_epochs": 0.5})
  train.train_and_evaluate(search, str(tmp_path / "search"))
  policy = learned.read_policy(str(tmp_path / "search" / "policy"))
  name = "augmenter" if method == "bilevel" else "probability"
  rows = policy.arrays[name]
  assert len(rows) == 2 and not np.array_equal(rows[0], rows[1])  # a schedule, learned
  replay = smoke_config("supervised", {"augment": f"learned('{tmp_path / 'search'}')+crop",
                                       "model": "cnn6", "num_epochs": 1})
  results = train.train_and_evaluate(replay, str(tmp_path / "replay"))
  assert_final_evaluation_is_the_result(
      [json.loads(line) for line in open(tmp_path / "replay" / "metrics.jsonl")], results)
  for bad, message in ((tmp_path / "nowhere", "no learned policy"),
                       (tmp_path / "replay", "no learned policy")):
    config = smoke_config("supervised", {"augment": f"learned('{bad}')"})
    with pytest.raises(ValueError, match=message):
      train.train_and_evaluate(config, str(tmp_path / "bad"))


def test_metrics_of_some_steps_are_averaged_over_the_steps_that_have_them():
  sparse = lambda value, present: contract.Sparse(np.float32(value), np.bool_(present))
  history = [{"loss": np.float32(loss), "norm": sparse(norm, norm > 0), "never": sparse(9, False)}
             for loss, norm in ((1.0, 4.0), (2.0, 0.0), (3.0, 2.0), (4.0, 0.0))]
  assert train._mean_metrics(history) == {"loss": 2.5, "norm": 3.0}


def _write_folder(root, classes=3, per_class=12, size=8, seed=0):
  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    for c in range(classes):
      os.makedirs(root / split / f"class{c}")
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., c] = 255  # a class cue the classifier can learn
        Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")


@pytest.mark.slow
def test_end_to_end_on_image_folder(tmp_path):
  _write_folder(tmp_path / "images")
  config = smoke_config("bilevel", {"data.dataset": f"folder:{tmp_path / 'images'}",
                                      "data.train_examples": None, "batch_size": 8,
                                      "val_batch_size": 8, "eval_batch_size": 8})
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  _check_outputs(str(tmp_path / "run"), results, expect_aug_plot=True)
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f) == json.loads(json.dumps(config.to_dict()))  # tuples saved as lists


@pytest.mark.slow
def test_imagenet_config_trains_on_standard_crops_of_mock_imagenet(tmp_path):
  """configs/imagenet_bilevel.py's crops, scaled down: images of mixed sizes read as 20 x 20
  centre squares, a random-resized crop to 16 in training, the centre 16 x 16 in evaluation."""
  path = os.path.join(CONFIGS, "imagenet_bilevel.py")
  config = load_config_file(path)
  assert (config.data.resize, config.data.image_size, config.data.eval_crop) == (
      "center_crop", 256, 224)
  assert config.augment == "random_resized_crop(224)+hflip"
  paper = load_config_file(f"{path}:paper")
  assert (paper.data.resize, paper.data.image_size, paper.data.eval_crop, paper.augment) == (
      "squash", 224, None, "hflip")
  with pytest.raises(ValueError, match="one of standard, paper"):
    load_config_file(f"{path}:crops")
  smoke = smoke_config()
  config.update(model="small_cnn", batch_size=8, val_batch_size=8, eval_batch_size=8,
                num_epochs=1, log_every_steps=1, checkpoint_every_steps=100,
                optim=smoke.optim, augment="random_resized_crop(16)+hflip")
  config.data.update(image_size=20, eval_crop=16, train_examples=40, val_fraction=0.2)
  with tfds_fakes.mock_tfds(num_examples=40):
    results = train.train_and_evaluate(config, str(tmp_path))
  _check_outputs(str(tmp_path), results, expect_aug_plot=True)


@pytest.mark.slow
def test_val_metrics_use_the_current_epochs_split_when_it_is_redrawn(tmp_path, monkeypatch):
  config = smoke_config("supervised", {"data.redraw_val_each_epoch": True, "num_epochs": 3})
  original = data.Pipeline.eval_batches
  val_epochs = []

  def record_epoch(self, split, batch_size, epoch=0):
    if split == "val":
      val_epochs.append(epoch)
    return original(self, split, batch_size, epoch)

  monkeypatch.setattr(data.Pipeline, "eval_batches", record_epoch)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert val_epochs == [0, 1, 2]  # after epochs 1 and 2, and the final evaluation
  assert results["val_held_out"] is False


@pytest.mark.slow
def test_supervised_training_reads_no_validation_batches(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("supervised steps do not use a validation batch")

  monkeypatch.setattr(data.Pipeline, "val_batch", fail)
  results = train.train_and_evaluate(smoke_config("supervised"), str(tmp_path))
  assert results["steps"] > 0


@pytest.mark.slow
def test_resuming_with_a_changed_config_says_what_changed(tmp_path, capsys):
  config = smoke_config("supervised")
  train.train_and_evaluate(config, str(tmp_path))
  capsys.readouterr()
  config.log_every_steps += 1
  train.train_and_evaluate(config, str(tmp_path))  # resumes at the last step: evaluation only
  output = capsys.readouterr().out
  assert "resuming with a configuration that differs" in output
  assert f"log_every_steps: {config.log_every_steps - 1} -> {config.log_every_steps}" in output
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["log_every_steps"] == config.log_every_steps


def _final_state_leaves(workdir):
  """The newest checkpoint of a run as (step, {path: array})."""
  manager = checkpoint.Checkpointer(workdir)
  step = manager.latest_step()
  leaves = manager.restore_arrays(step)
  manager.close()
  return step, leaves


def _assert_same_final_state(workdir_a, workdir_b):
  step_a, leaves_a = _final_state_leaves(workdir_a)
  step_b, leaves_b = _final_state_leaves(workdir_b)
  assert step_a == step_b
  assert leaves_a.keys() == leaves_b.keys()
  for key in leaves_a:
    np.testing.assert_array_equal(leaves_a[key], leaves_b[key], err_msg=key)


def test_resuming_with_a_state_that_does_not_fit_is_a_setup_error(tmp_path):
  """A workdir whose checkpoint holds another model's state (or fewer epochs' rows, for the
  methods that keep a row per epoch) is refused before training: the error names the
  leaves, their shapes and the changed setting."""
  config = smoke_config("supervised", {"num_epochs": 1})
  info = training.DataInfo.create(num_classes=10, image_shape=(8, 8, 1), batches_per_epoch=8,
                                num_epochs=1)
  saver = checkpoint.Checkpointer(str(tmp_path))
  saver.save(8, METHODS.get("supervised").init(config, jax.random.PRNGKey(0), info))
  saver.close()
  reporting.write_config(str(tmp_path), config.to_dict())
  config.model = "cnn6"
  with pytest.raises(train.SetupError, match=r"does not fit this run's state") as error:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  # the cause first, then what to do, then the leaves
  assert message.startswith(f"cannot resume {tmp_path}: the config changed since the checkpoint "
                            f"was saved (model: 'small_cnn' -> 'cnn6'). Resume with the config "
                            f"saved in its config.json, or start a new --workdir."), message
  assert re.search(r"\.classifier\.\S+: saved \(.*\), now \(.*\);", message), message


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "bilevel", "bilevel_implicit", "hba",
                                    "reinforce", "ohl", "invariant", "uncertainty"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, method):
  """Interrupted after step 4 of 8-step epochs: the resumed run crosses an epoch boundary
  (REINFORCE: the controller step, new policies and the accumulated rewards; OHL: the
  distribution's step, the accumulated element counts and the copies set to the best;
  bilevel_implicit: steps with and without an augmenter update, compiled apart)."""
  implicit = {"bilevel.hypergradient": "implicit", "bilevel.update_every": 3}
  config = smoke_config(method.removesuffix("_implicit"), {
      **(implicit if method == "bilevel_implicit" else {}),
      "checkpoint_every_steps": 3, "hba.warmup_epochs": 0.25, "reinforce.num_policies": 2,
      "reinforce.augment_after": "cutout(4)", "ohl.copies": 2, "ohl.augment_after": "cutout(4)",
      "uncertainty.augment_after": "cutout(4)",
      "invariant.augmenter.kind": "affine"})  # grey digits
  full = train.train_and_evaluate(config, str(tmp_path / "full"))

  original = data.Pipeline.train_batches

  def interrupt_after_step_4(self, first_batch, count):
    if first_batch >= 4 * count:
      raise KeyboardInterrupt("simulated pre-emption")
    return original(self, first_batch, count)

  monkeypatch.setattr(data.Pipeline, "train_batches", interrupt_after_step_4)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert checkpoint.Checkpointer(str(tmp_path / "resumed")).latest_step() == 3
  monkeypatch.setattr(data.Pipeline, "train_batches", original)
  first_seconds = checkpoint.Checkpointer(str(tmp_path / "resumed")).saved_metadata(3)[
      "wall_seconds"]
  started = time.time()
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  resumed_seconds = time.time() - started

  assert resumed["test_accuracy"] == full["test_accuracy"]
  assert checkpoint.Checkpointer(str(tmp_path / "resumed")).latest_step() == full["steps"]
  _assert_same_final_state(str(tmp_path / "full"), str(tmp_path / "resumed"))
  # wall time adds up over the interrupted and the resumed run
  assert 0 < first_seconds
  assert first_seconds + resumed_seconds - 5 < resumed["wall_seconds"] <= (
      first_seconds + resumed_seconds)
  # running a finished run again evaluates it again, without duplicating records
  again = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert again["test_accuracy"] == full["test_accuracy"]
  records = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
  steps = [(r["step"], r["split"]) for r in records]
  assert len(steps) == len(set(steps))  # no duplicated records after resuming
  assert (full["steps"], "test") in steps


@pytest.mark.slow
def test_the_records_up_to_a_checkpoint_are_written_before_it_is_saved(tmp_path, monkeypatch):
  """So a process killed right after a checkpoint resumes with all the records up to it."""
  from jaxaug import reporting
  on_disk_at_save = {}
  save = checkpoint.Checkpointer.save

  def save_and_look(self, step, state, **kwargs):
    on_disk_at_save[step] = [(r["step"], r["split"]) for r in reporting.read_metrics(str(tmp_path))]
    save(self, step, state, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_and_look)
  train.train_and_evaluate(smoke_config(), str(tmp_path))  # logs and saves every 4 steps
  assert sorted(on_disk_at_save) == [4, 8, 12, 16]
  assert on_disk_at_save[8] == [(4, "train"), (8, "train"), (8, "val"), (8, "test")]
  assert on_disk_at_save[16][-1] == (16, "train")


def test_stop_signals_ask_once_then_act_as_usual_and_restore_handlers(sigint_not_ignored):
  before = {signum: signal.getsignal(signum) for signum in stopping.SIGNALS}
  with stopping.StopSignals() as stop:
    assert not stop.requested(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested(1) and stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C is the usual one
      os.kill(os.getpid(), signal.SIGINT)
  assert {signum: signal.getsignal(signum) for signum in stopping.SIGNALS} == before
  with stopping.StopSignals() as stop:  # schedulers may send SIGTERM more than once
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(1) and stop.signum == signal.SIGTERM
  assert {signum: signal.getsignal(signum) for signum in stopping.SIGNALS} == before


def test_stop_signals_leave_an_ignored_signal_ignored():
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
  try:
    with stopping.StopSignals() as stop:
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGINT)
      assert not stop.requested(1)
  finally:
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_current_step_and_resuming_matches(tmp_path, monkeypatch):
  config = smoke_config("bilevel", {"checkpoint_every_steps": 1000, "num_epochs": 3})
  full = train.train_and_evaluate(config, str(tmp_path / "full"))

  original = data.Pipeline.train_batches

  def terminate_when_step_5_is_read(self, first_batch, count):
    if first_batch == 5 * count:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, first_batch, count)

  monkeypatch.setattr(data.Pipeline, "train_batches", terminate_when_step_5_is_read)
  with pytest.raises(stopping.TrainingInterrupted, match="stopped on SIGTERM after step") as stop:
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert 0 < stop.value.step < full["steps"]
  assert checkpoint.Checkpointer(str(tmp_path / "resumed")).latest_step() == stop.value.step
  train_steps = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / "metrics.jsonl")
                 if '"train"' in line]
  assert train_steps[-1] == stop.value.step  # the steps since the last record are reported
  monkeypatch.setattr(data.Pipeline, "train_batches", original)
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["test_accuracy"] == full["test_accuracy"]
  _assert_same_final_state(str(tmp_path / "full"), str(tmp_path / "resumed"))


@pytest.mark.slow
def test_a_stop_at_an_evaluation_step_saves_without_evaluating(tmp_path, monkeypatch):
  config = smoke_config("supervised")  # 8 steps per epoch, evaluation after each epoch

  def stop_at_step_8(self, step):
    if step == 8:
      self.signum = signal.SIGTERM
    return self.signum is not None

  monkeypatch.setattr(stopping.StopSignals, "requested", stop_at_step_8)
  with pytest.raises(stopping.TrainingInterrupted) as stop:
    train.train_and_evaluate(config, str(tmp_path))
  assert stop.value.step == 8
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 8
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["split"]) for r in records] == [(4, "train"), (8, "train")]


@pytest.mark.slow
def test_a_signal_during_the_final_checkpoint_stops_before_the_final_evaluation(
    tmp_path, monkeypatch):
  config = smoke_config("supervised")
  save = checkpoint.Checkpointer.save

  def terminate_while_saving_the_last_step(self, step, state, **kwargs):
    save(self, step, state, **kwargs)
    if step == 16:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", terminate_while_saving_the_last_step)
  with pytest.raises(stopping.TrainingInterrupted) as stop:
    train.train_and_evaluate(config, str(tmp_path))
  assert stop.value.step == 16
  assert not os.path.exists(tmp_path / "results.json")
  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  assert train.train_and_evaluate(config, str(tmp_path))["steps"] == 16  # evaluates it then


@pytest.mark.slow
def test_main_exits_with_128_plus_signal_after_saving_on_sigint(tmp_path, sigint_not_ignored):
  # The child inherits an ignored SIGINT but not a handler: it starts with Python's own.
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "jaxaug.main", "--config",
             os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py"),
             f"--workdir={workdir}", "--config.num_epochs=1000", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=100000"]
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONUNBUFFERED": "1"}
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
  watchdog = threading.Timer(300, process.kill)  # a run that hangs before training ends the wait
  watchdog.start()
  try:
    for line in process.stdout:  # wait until it trains
      if line.startswith("step "):
        break
    watchdog.cancel()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 128 + signal.SIGINT, stderr
  step = int(re.search(r"stopped on SIGINT after step (\d+); checkpoint saved", stderr).group(1))
  assert checkpoint.Checkpointer(str(workdir)).latest_step() == step


@pytest.mark.parametrize("key,value,message", [
    ("method", "dabo", "unknown method 'dabo'.*bilevel, hba, invariant, ohl, reinforce, supervised, "
     "uncertainty"),
    ("model", "vgg", "unknown model 'vgg'.*resnet18"),
    ("augment", "hflip+warp", "unknown augmentation 'warp'.*predefined"),
    ("data.dataset", "cifar11", "cifar11"),
    ("data.val_fraction", 1.5, "1.5"),
    ("batch_size", 12, "batch_size=12 is not divisible by the number of devices \\(8\\)"),
    ("bilevel.augmenter.kind", "warp", "warp"),
    ("bilevel.truncation", 0, "truncation=0"),
    ("hba.strategy", "all_conv", "unknown config.hba.strategy 'all_conv'.*first_bn"),
    ("hba.sigma", -1.0, "sigma=-1.0"),
    ("augment", "learned(3)", "path of a policy folder"),
])
def test_bad_input_is_rejected_at_start_up(tmp_path, key, value, message):
  method = key.split(".")[0] if key.startswith(("bilevel.", "hba.")) else "supervised"
  config = smoke_config(method, {key: value})
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path))


def test_a_method_that_reads_validation_batches_needs_a_validation_split(tmp_path):
  config = smoke_config("bilevel", {"data.val_fraction": 0.0})
  with pytest.raises(train.SetupError, match="config.method='bilevel' learns from validation "
                     "images: config.data.val_fraction must be > 0, got 0.0"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_adversarial_autoaugment_trains_on_the_whole_training_set(tmp_path, monkeypatch):
  """val_fraction 0: no validation batch is read, no val metrics are reported."""
  def fail(*args, **kwargs):
    raise AssertionError("reinforce reads no validation batch")

  monkeypatch.setattr(data.Pipeline, "val_batch", fail)
  config = smoke_config("reinforce", {"data.val_fraction": 0.0, "reinforce.num_policies": 2,
                                      "reinforce.augment_after": "none", "num_epochs": 1})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert "val_accuracy" not in results and "val_held_out" not in results
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert {r["split"] for r in records} >= {"train", "test"}
  assert "val" not in {r["split"] for r in records}


@pytest.mark.parametrize("override,message", [
    ("--config.method=foo", "unknown method 'foo'"),
    ("--config.augment=nope+hflip", "unknown augmentation 'nope'"),
])
def test_main_reports_a_rejected_config_in_one_line_with_status_2(tmp_path, override, message):
  smoke = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py")
  process = subprocess.run(
      [sys.executable, "-m", "jaxaug.main", f"--config={smoke}", f"--workdir={tmp_path}",
       override], capture_output=True, text=True, timeout=300)
  assert process.returncode == 2, process.stderr
  assert message in process.stderr and "Traceback" not in process.stderr
  assert process.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_the_first_run_prepares_a_tfds_dataset_from_its_download_and_trains(tmp_path, monkeypatch,
                                                                           capsys):
  """CIFAR-10 as tfds downloads it (a tiny cifar-10-binary.tar.gz in its download cache, no
  network): the run prepares it with tfds's own builder, then trains and evaluates on it."""
  tfds_fakes.offline(monkeypatch)
  files, _ = tfds_fakes.fake_downloads("cifar10", np.random.default_rng(0), train=40, test=8)
  tfds_fakes.put_in_download_cache("cifar10", tmp_path / "tfds", files)
  config = smoke_config("supervised", {
      "data.dataset": "cifar10", "data.data_dir": str(tmp_path / "tfds"),
      "data.train_examples": None, "batch_size": 8, "val_batch_size": 8, "eval_batch_size": 8,
      "num_epochs": 1})
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert f"preparing tfds cifar10 in {tmp_path / 'tfds' / 'cifar10' / '3.0.2'}" in capsys.readouterr().out
  assert results["steps"] == 4  # 32 of the 40 train images (8 are validation), 8 per step
  records = _check_outputs(str(tmp_path / "run"), results, expect_aug_plot=False)
  assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")


def test_main_stops_at_once_with_one_line_when_a_tfds_dataset_cannot_be_downloaded(tmp_path,
                                                                                   monkeypatch):
  tfds_fakes.offline(monkeypatch)  # the subprocess inherits the environment
  smoke = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py")
  start = time.monotonic()
  process = subprocess.run(
      [sys.executable, "-m", "jaxaug.main", f"--config={smoke}", f"--workdir={tmp_path / 'run'}",
       "--config.data.dataset=cifar10", f"--config.data.data_dir={tmp_path / 'tfds'}"],
      capture_output=True, text=True, timeout=300)
  elapsed = time.monotonic() - start
  assert process.returncode == 2, process.stderr
  assert "Traceback" not in process.stderr
  (line,) = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
  assert line == process.stderr.strip().splitlines()[-1]
  for part in ("'cifar10' is not prepared", "cannot be downloaded", "--config.data.data_dir",
               "folder:", "npz:"):
    assert part in line
  assert elapsed < 120, elapsed  # start-up (imports) included; not tfds's ~200 s of retries


def test_labels_out_of_range_are_rejected(tmp_path):
  images = np.zeros((20, 8, 8, 3), np.uint8)
  labels = np.arange(20) % 3
  labels[7] = -2
  path = tmp_path / "bad.npz"
  np.savez(path, x_train=images, y_train=labels, x_test=images, y_test=np.abs(labels))
  config = smoke_config("supervised", {"data.dataset": f"npz:{path}", "data.train_examples": None})
  with pytest.raises(ValueError, match="-2"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_nonfinite_implicit_hypergradient_stops_the_run_with_its_step(tmp_path):
  config = smoke_config("bilevel", {"bilevel.hypergradient": "implicit",
                                    "bilevel.neumann_scale": 1e38, "bilevel.neumann_terms": 3,
                                    "checkpoint_every_steps": 1, "log_every_steps": 1})
  with pytest.raises(train.NonFiniteError, match=r"non-finite loss or hypergradient at train "
                     r"step 0; stopping. No checkpoint was saved before it$"):
    train.train_and_evaluate(config, str(tmp_path))


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  config = smoke_config("supervised", {"optim.learning_rate": 1e30, "optim.schedule": "constant",
                                         "checkpoint_every_steps": 1, "log_every_steps": 1})
  with pytest.raises(train.NonFiniteError, match=r"at train step (\d+)") as error:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(re.search(r"at train step (\d+)", str(error.value)).group(1))
  step, leaves = _final_state_leaves(str(tmp_path))
  assert step <= bad_step
  for key, value in leaves.items():
    if np.issubdtype(value.dtype, np.floating):
      assert np.all(np.isfinite(value)), key
