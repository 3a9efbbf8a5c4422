"""Tests for jaxaug.reporting: metrics.jsonl, TensorBoard, progress, image grids, plots."""

from __future__ import annotations

import glob
import io
import json
import math
import os
import time

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxaug import reporting


def _raw_lines(workdir):
  """metrics.jsonl parsed line by line with a JSON parser that rejects NaN/Infinity."""

  def reject_constant(name):
    raise AssertionError(f"non-strict JSON constant {name}")

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line, parse_constant=reject_constant) for line in f]


def _tensorboard_events(logdir):
  """All (tag, step, value proto) in the event files under `logdir`, read by TensorFlow."""
  tf = pytest.importorskip("tensorflow")
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      events.extend((value.tag, event.step, value) for value in event.summary.value)
  return events


class FakeClock:
  """A clock whose time the test sets."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_write_appends_one_json_line_per_call(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  reporter.write(10, "train", {"loss": 1.5, "acc": np.float32(0.25), "lr": jnp.asarray(0.125)})
  reporter.write(10, "val", {"loss": jnp.asarray([2.0]), "count": np.array([[3]])})
  reporter.close()
  expected = [
      {"step": 10, "split": "train", "loss": 1.5, "acc": 0.25, "lr": 0.125},
      {"step": 10, "split": "val", "loss": 2.0, "count": 3.0},
  ]
  assert _raw_lines(tmp_path) == expected
  assert reporting.read_metrics(str(tmp_path)) == expected


def test_records_are_written_out_every_flush_seconds_and_at_flush_and_close(tmp_path):
  clock = FakeClock()
  reporter = reporting.Reporter(str(tmp_path), total_steps=100, flush_seconds=30, clock=clock)
  assert _raw_lines(tmp_path) == []  # the file exists from the start
  reporter.write(1, "train", {"loss": 1.0})
  clock.now = 29.0
  reporter.write(2, "train", {"loss": 2.0})
  assert _raw_lines(tmp_path) == []  # in memory only
  clock.now = 30.0
  reporter.write(3, "train", {"loss": 3.0})
  assert [record["step"] for record in _raw_lines(tmp_path)] == [1, 2, 3]
  reporter.write(4, "train", {"loss": 4.0})
  reporter.flush()
  assert [record["step"] for record in _raw_lines(tmp_path)] == [1, 2, 3, 4]
  reporter.write(5, "train", {"loss": 5.0})
  reporter.close()
  assert [record["step"] for record in _raw_lines(tmp_path)] == [1, 2, 3, 4, 5]
  assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]


def test_write_rejects_non_scalar_and_reserved_names(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  with pytest.raises(ValueError, match=r"'per_class'.*\(2, 3\)"):
    reporter.write(1, "train", {"loss": 1.0, "per_class": np.zeros((2, 3))})
  with pytest.raises(ValueError, match="'step'"):
    reporter.write(1, "train", {"step": 1.0})
  with pytest.raises(ValueError, match="'name'"):
    reporter.write(1, "train", {"name": "abc"})
  reporter.close()
  assert _raw_lines(tmp_path) == []


def test_non_finite_values_are_json_null(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  reporter.write(3, "train", {"loss": np.nan, "grad_norm": jnp.inf, "acc": 0.5})
  reporter.close()
  assert _raw_lines(tmp_path) == [
      {"step": 3, "split": "train", "loss": None, "grad_norm": None, "acc": 0.5}]


def test_resume_drops_records_after_start_step(tmp_path):
  first_run = reporting.Reporter(str(tmp_path), total_steps=100)
  for step in (10, 20, 30, 40):
    first_run.write(step, "train", {"loss": float(step)})
  first_run.write(20, "val", {"loss": 0.5})
  first_run.close()

  resumed = reporting.Reporter(str(tmp_path), total_steps=100, start_step=20)
  assert [(r["step"], r["split"]) for r in _raw_lines(tmp_path)] == [
      (10, "train"), (20, "train"), (20, "val")]
  resumed.write(30, "train", {"loss": -1.0})
  resumed.close()
  assert _raw_lines(tmp_path)[-1] == {"step": 30, "split": "train", "loss": -1.0}
  assert len(_raw_lines(tmp_path)) == 4


def _tensorboard_events_after_purges(logdir):
  """(tag, step) of the events TensorBoard shows: a restart at step s hides earlier steps >= s."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shown = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        shown = [(tag, step) for tag, step in shown if step < event.step]
      shown.extend((value.tag, event.step) for value in event.summary.value)
  return shown


def test_a_finished_run_evaluated_again_has_one_final_evaluation(tmp_path):
  first_run = reporting.Reporter(str(tmp_path), total_steps=40)
  for step in (20, 40):
    first_run.write(step, "train", {"loss": float(step)})
  first_run.write(40, "test", {"accuracy": 0.5})
  first_run.close()
  time.sleep(1.1)  # event file names carry the second they were opened

  again = reporting.Reporter(str(tmp_path), total_steps=40, start_step=40)
  assert [(r["step"], r["split"]) for r in _raw_lines(tmp_path)] == [(20, "train"), (40, "train")]
  again.write(40, "test", {"accuracy": 0.5})
  again.close()
  assert sorted(_tensorboard_events_after_purges(tmp_path / "tensorboard")) == [
      ("test/accuracy", 40), ("train/loss", 20), ("train/loss", 40)]


def test_read_metrics_skips_a_torn_last_line_only(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "spl')
  assert reporting.read_metrics(str(tmp_path)) == [{"step": 1, "split": "train", "loss": 1.0}]
  path.write_text('{"step": 1, "spl\n{"step": 2, "split": "train", "loss": 1.0}\n')
  with pytest.raises(ValueError, match="metrics.jsonl:1"):
    reporting.read_metrics(str(tmp_path))


def test_tensorboard_receives_scalars(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  reporter.write(5, "train", {"loss": 1.5, "aug/scale": np.float32(0.25)})
  reporter.write(7, "val", {"loss": np.nan})
  reporter.close()
  scalars = {(tag, step): value.simple_value
             for tag, step, value in _tensorboard_events(tmp_path / "tensorboard")}
  assert scalars[("train/loss", 5)] == 1.5
  assert scalars[("train/aug/scale", 5)] == 0.25
  assert math.isnan(scalars[("val/loss", 7)])


def _random_images(rng, shape):
  """Float images on the 256-level grid, so uint8 conversion is exact."""
  return (rng.integers(0, 256, size=shape) / 255).astype(np.float32)


def _nearest_upscaled(image, scale):
  """Reference: PIL nearest-neighbour resize of a float [H, W, C] image, as uint8 RGB."""
  pixels = np.round(image * 255).astype(np.uint8)
  picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  height, width = pixels.shape[:2]
  resized = picture.resize((width * scale, height * scale), Image.Resampling.NEAREST)
  return np.asarray(resized.convert("RGB"))


@pytest.mark.parametrize("size, scale", [(8, 12), (32, 3), (100, 1)])
def test_image_grid_size_and_pixels(tmp_path, size, scale):
  rng = np.random.default_rng(0)
  originals = _random_images(rng, (3, size, size, 3))
  augmented = _random_images(rng, (2, size, size, 1))
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  path = reporter.save_image_grid(40, "augmented", [originals, augmented], ["", ""])
  reporter.close()

  assert path == str(tmp_path / "images" / "augmented_step0000040.png")
  grid = np.asarray(Image.open(path).convert("RGB"))
  cell, gap = size * scale, 2
  assert grid.shape == (2 * cell + gap, 3 * cell + 2 * gap, 3)
  for column, image in enumerate(originals):
    left = column * (cell + gap)
    np.testing.assert_array_equal(grid[:cell, left:left + cell], _nearest_upscaled(image, scale))
  for column, image in enumerate(augmented):
    left = column * (cell + gap)
    np.testing.assert_array_equal(grid[cell + gap:, left:left + cell],
                                  _nearest_upscaled(image, scale))


def test_image_grid_clips_and_rounds_to_nearest_level(tmp_path):
  values = np.array([-0.5, 0.3 / 255, 127.6 / 255, 0.999, 1.7], np.float32)
  image = np.broadcast_to(values[None, None, :, None], (1, 96, 5, 1))  # 96 tall: no upscaling
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  grid = np.asarray(Image.open(reporter.save_image_grid(0, "levels", [image], [""])))
  reporter.close()
  np.testing.assert_array_equal(grid[0, :, 0], [0, 0, 128, 255, 255])


def test_image_grid_labels_add_a_left_column_and_go_to_tensorboard(tmp_path):
  rng = np.random.default_rng(1)
  rows = [_random_images(rng, (4, 8, 8, 3)), _random_images(rng, (4, 8, 8, 3))]
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  unlabelled = np.asarray(Image.open(reporter.save_image_grid(1, "plain", rows, ["", ""])))
  path = reporter.save_image_grid(1, "labelled", rows, ["original", "augmented"])
  reporter.close()

  labelled = np.asarray(Image.open(path).convert("RGB"))
  label_column = labelled.shape[1] - unlabelled.shape[1]
  assert labelled.shape[0] == unlabelled.shape[0] and label_column > 0
  np.testing.assert_array_equal(labelled[:, label_column:], unlabelled)
  assert (labelled[:, :label_column] < 128).any()  # some label ink
  np.testing.assert_array_equal(labelled[:96, label_column:label_column + 96],
                                _nearest_upscaled(rows[0][0], 12))

  images = {tag: value.image for tag, _, value in _tensorboard_events(tmp_path / "tensorboard")}
  decoded = np.asarray(Image.open(io.BytesIO(images["labelled"].encoded_image_string)))
  np.testing.assert_array_equal(decoded[..., :3], labelled)


def test_image_grid_rejects_bad_rows(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  with pytest.raises(ValueError, match=r"\(2, 8, 8, 4\)"):
    reporter.save_image_grid(1, "bad", [np.zeros((2, 8, 8, 4))], ["x"])
  with pytest.raises(ValueError, match="one label per row"):
    reporter.save_image_grid(1, "bad", [np.zeros((2, 8, 8, 3))], ["x", "y"])
  reporter.close()


def test_plot_metrics(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  for step in range(0, 50, 10):
    reporter.write(step, "train", {"loss": 1.0, "aug/scale": step / 50, "aug/shift": -step / 50})
  reporter.write(50, "train", {"aug/scale": np.nan})
  assert reporter.plot_metrics() is None  # by default the "learned" records only
  path = reporter.plot_metrics(prefix="aug/", split=None)
  assert reporter.plot_metrics(prefix="policy/") is None
  reporter.close()

  assert path == str(tmp_path / "plots" / "augmentation_params.png")
  with Image.open(path) as picture:
    assert picture.format == "PNG"
    width, height = picture.size
    # Two metrics side by side: wider than tall; pixels not all background.
    assert width > height > 100
    assert np.asarray(picture.convert("L")).min() < 128


def test_axis_scales_come_from_the_table_with_distances_in_pixels():
  # A translation is stored in normalised units: pixels = value * side / 2.
  x = reporting.axis_scale("aug/translation_x", image_shape=(32, 48))
  assert (x.factor, x.limits, x.identity, x.unit) == (24.0, (-6.0, 6.0), 0.0, "px")
  y = reporting.axis_scale("aug/translation_y", image_shape=(32, 48))
  assert (y.factor, y.limits) == (16.0, (-4.0, 4.0))
  # Already in pixels: only the limits scale with the image (an eighth of the mean side).
  shift = reporting.axis_scale("aug/displacement_px", image_shape=(32, 48))
  assert (shift.factor, shift.limits, shift.identity) == (1.0, (0.0, 5.0), 0.0)
  # Without the image size a distance keeps its unit and is auto-scaled.
  assert reporting.axis_scale("aug/translation_x").limits is None
  linear = reporting.axis_scale("aug/linear_yy")
  assert (linear.limits, linear.identity) == ((0.75, 1.25), 1.0)
  assert reporting.axis_scale("aug/contrast").identity == 1.0
  assert reporting.axis_scale("hba/probability").identity == 0.0
  choice = reporting.axis_scale("reinforce/op_probability")
  assert (choice.limits, choice.identity) == ((0.0, 1.0), None)
  assert reporting.axis_scale("uncertainty/selected_op_share").limits == (0.0, 1.0)
  assert reporting.axis_scale("reinforce/reward") == reporting.AxisScale()  # auto-scaled
  assert reporting.axis_scale("aug/translation_x_extra") == reporting.AxisScale()  # whole name


def test_fixed_limits_widen_only_for_values_beyond_them():
  assert reporting.y_limits((-1.0, 1.0), [0.02, -0.02, math.nan], margin=0) == (-1.0, 1.0)
  assert reporting.y_limits((-1.0, 1.0), [3.0], margin=0) == (-1.0, 3.0)
  assert reporting.y_limits((0.0, 1.0), [], margin=0.1) == pytest.approx((-0.1, 1.1))


def test_metric_panels_pair_means_with_their_spreads():
  names = ["aug/linear_deviation_mean", "aug/translation_x_mean", "aug/translation_x_std",
           "hba/mean_probability", "loss_std"]
  assert reporting.metric_panels(names) == [
      ("aug/linear_deviation", "aug/linear_deviation_mean", None),
      ("aug/translation_x", "aug/translation_x_mean", "aug/translation_x_std"),
      ("hba/mean_probability", "hba/mean_probability", None),
      ("loss_std", "loss_std", None)]


def _learned(step, shift, spread):
  return {"step": step, "split": "learned", "aug/translation_x_mean": shift,
          "aug/translation_x_std": spread, "aug/linear_xx_mean": 1 + shift}


def _identity_lines(axis):
  return [line for line in axis.get_lines()
          if line.get_linestyle() == "--" and len(set(line.get_ydata())) == 1]


def test_parameter_plot_keeps_a_small_wobble_small_and_draws_the_identity():
  records = [_learned(step, 0.02 * (-1) ** step, 0.01) for step in range(1, 6)]
  figure = reporting.metrics_figure(
      records, ["aug/linear_xx_mean", "aug/translation_x_mean", "aug/translation_x_std"],
      image_shape=(32, 32))
  linear, translation = figure.axes[:2]
  assert translation.get_title() == "aug/translation_x (mean ± sd)"
  assert translation.get_ylabel() == "px"
  # +-0.02 normalised is +-0.32 px on 32 px: drawn on the +-4 px of the default bound.
  low, high = translation.get_ylim()
  assert low < -4 and high > 4 and high - low < 9
  assert max(abs(translation.get_lines()[0].get_ydata())) == pytest.approx(0.32)
  assert [list(line.get_ydata()) for line in _identity_lines(translation)] == [[0, 0]]
  assert [list(line.get_ydata()) for line in _identity_lines(linear)] == [[1, 1]]
  assert linear.get_ylim()[0] < 0.75 and linear.get_ylim()[1] > 1.25
  assert len(translation.collections) == 1  # the +-sd band


def test_a_single_logged_point_is_drawn_as_a_marker():
  figure = reporting.metrics_figure([_learned(10, 0.1, 0.05)],
                                    ["aug/translation_x_mean", "aug/translation_x_std"],
                                    image_shape=(32, 32))
  (axis,) = figure.axes
  markers = [line for line in axis.get_lines() if line.get_marker() == "o"]
  assert len(markers) == 1 and list(markers[0].get_ydata()) == pytest.approx([1.6])
  records = [{"step": 10, "split": "learned", "hba/probability[Rotate#1]": 0.2,
              "hba/probability[Invert#1]": 0.4}]
  (axis,) = reporting.vector_figure(records, "hba/probability", ["Rotate#1", "Invert#1"]).axes
  assert sorted(line.get_ydata()[0] for line in axis.get_lines()
                if line.get_marker() == "o") == [0.2, 0.4]
  assert axis.get_ylim()[0] < 0 and axis.get_ylim()[1] > 1  # probabilities: 0 to 1
  assert len(_identity_lines(axis)) == 1


def _training_records():
  """Two epochs of 10 steps: train means every 5 steps, an evaluation each epoch."""
  records = [{"step": step, "split": "train", "loss": 2.0 / step, "accuracy": step / 25,
              "epoch": step / 10} for step in (5, 10, 15, 20)]
  for step in (10, 20):
    records += [{"step": step, "split": split, "loss": 1.0, "accuracy": accuracy}
                for split, accuracy in (("val", 0.5), ("test", 0.45))]
  records.append({"step": 20, "split": "learned", "aug/translation_x_mean": 0.0})
  return records


def test_training_curves_against_epoch_for_train_val_and_test():
  label, curves = reporting.training_curves(_training_records())
  assert label == "epoch"
  assert list(curves) == ["loss", "accuracy"]
  assert list(curves["accuracy"]) == ["train", "val", "test"]
  np.testing.assert_allclose(curves["accuracy"]["train"][0], [0.5, 1.0, 1.5, 2.0])
  np.testing.assert_allclose(curves["accuracy"]["train"][1], [0.2, 0.4, 0.6, 0.8])
  np.testing.assert_allclose(curves["loss"]["test"][0], [1.0, 2.0])
  # Without train records, against the step.
  label, curves = reporting.training_curves(
      [r for r in _training_records() if r["split"] == "test"])
  assert label == "step" and list(curves["loss"]) == ["test"]
  np.testing.assert_allclose(curves["loss"]["test"][0], [10, 20])
  loss, accuracy = reporting.training_figure(_training_records()).axes
  low, high = accuracy.get_ylim()
  assert -0.1 < low < 0 and 1 < high < 1.1  # 0 to 1 whatever the values
  low, high = loss.get_ylim()
  assert -0.1 < low < 0 and 1 < high < 1.1  # from 0 to just above the largest loss, 1.0
  assert [text.get_text() for text in accuracy.get_legend().get_texts()] == [
      "train", "val", "test"]


def test_plot_training_writes_plots_training_png(tmp_path):
  reporter = reporting.Reporter(str(tmp_path / "empty"), total_steps=20)
  assert reporter.plot_training() is None  # nothing to draw yet
  reporter.close()
  reporter = reporting.Reporter(str(tmp_path / "run"), total_steps=20)
  for record in _training_records():
    reporter.write(record["step"], record["split"],
                   {name: value for name, value in record.items() if name not in ("step", "split")})
  path = reporter.plot_training()
  reporter.close()
  assert path == str(tmp_path / "run" / "plots" / "training.png")
  with Image.open(path) as picture:
    assert picture.format == "PNG" and picture.size[0] > picture.size[1]
    assert np.asarray(picture.convert("L")).min() < 128


def test_progress_line_rate_and_eta_from_recent_window(tmp_path):
  clock, lines = FakeClock(), []
  reporter = reporting.Reporter(str(tmp_path), total_steps=250, log_every=100,
                                print_fn=lines.append, clock=clock)
  # Steps 1..100 take 1 s each, 101..200 take 0.1 s, 201..250 take 0.5 s.
  for step in range(1, 251):
    clock.now += 1.0 if step <= 100 else 0.1 if step <= 200 else 0.5
    reporter.progress(step, {"loss": 1.23456, "acc": np.float32(0.5625)})
  reporter.close()
  # Step 1 only starts the clock. At 100: 99 steps in 99 s, 150 left; at 200: 100 steps in
  # 10 s (the recent window, not the run average), 50 left; 250 is the last step (printed
  # although not a multiple of 100): 50 steps in 25 s.
  assert lines == [
      "step 100/250 (40.0%)  1.0 steps/s  ETA 2m30s  loss=1.235 acc=0.5625",
      "step 200/250 (80.0%)  10.0 steps/s  ETA 5s  loss=1.235 acc=0.5625",
      "step 250/250 (100.0%)  2.0 steps/s  ETA 0s  loss=1.235 acc=0.5625",
  ]


def test_progress_rate_counts_from_start_clock(tmp_path):
  """What happens before `start_clock` (the first step's compilation) is not in the rate."""
  clock, lines = FakeClock(), []
  reporter = reporting.Reporter(str(tmp_path), total_steps=20, log_every=10,
                                print_fn=lines.append, clock=clock)
  clock.now += 100.0  # step 1 compiles
  reporter.start_clock(1)
  for step in range(2, 21):
    clock.now += 0.5
    reporter.progress(step, {})
  reporter.close()
  # 9 steps in 4.5 s, 10 left; then 10 steps in 5 s.
  assert lines == ["step 10/20 (50.0%)  2.0 steps/s  ETA 5s",
                   "step 20/20 (100.0%)  2.0 steps/s  ETA 0s"]


def test_progress_formatting_of_durations_and_slow_rates():
  assert reporting.format_duration(54) == "54s"
  assert reporting.format_duration(3 * 60 + 54) == "3m54s"
  assert reporting.format_duration(2 * 3600 + 5 * 60 + 9) == "2h05m09s"
  # 0.025 steps/s, 90 steps left: 3600 s.
  assert reporting.format_progress(10, 100, 0.025, {}) == (
      "step 10/100 (10.0%)  0.025 steps/s  ETA 1h00m00s")


def test_non_chief_writes_and_prints_nothing(tmp_path):
  workdir, lines = tmp_path / "run", []
  reporter = reporting.Reporter(str(workdir), total_steps=10, log_every=1, is_chief=False,
                                start_step=5, print_fn=lines.append, clock=FakeClock())
  reporter.write(1, "train", {"loss": 1.0})
  for step in range(1, 11):
    reporter.progress(step, {"loss": 1.0})
  path = reporter.save_image_grid(1, "grid", [np.zeros((1, 8, 8, 3))], ["x"])
  assert path.endswith("grid_step0000001.png")
  assert reporter.plot_metrics(prefix="") is None
  reporter.close()
  assert not workdir.exists()
  assert lines == []
  with pytest.raises(ValueError, match="'loss'"):  # validation still runs everywhere
    reporter.write(1, "train", {"loss": np.zeros(3)})


def test_write_results_python_scalars(tmp_path):
  results = {"test/acc": jnp.asarray(0.75), "epochs": np.int32(3), "bad": np.float64(np.nan),
             "per_class": np.array([0.5, 1.0]), "nested": {"steps": [np.int64(1), 2]},
             "method": "bilevel"}
  path = reporting.write_results(str(tmp_path), results)
  assert path == str(tmp_path / "results.json")
  with open(path) as f:
    text = f.read()
  assert "\n  " in text  # indented
  assert json.loads(text) == {"test/acc": 0.75, "epochs": 3, "bad": None,
                              "per_class": [0.5, 1.0], "nested": {"steps": [1, 2]},
                              "method": "bilevel"}
  with pytest.raises(ValueError, match="object"):
    reporting.write_results(str(tmp_path), {"x": object()})


def test_write_config_and_read_it_back(tmp_path):
  import ml_collections
  config = ml_collections.ConfigDict({"method": "bilevel", "data": {"mean": (0.5, 0.25)},
                                      "bilevel": {"truncation": 2}})
  path = reporting.write_config(str(tmp_path), config.to_dict())
  assert path == str(tmp_path / "config.json")
  assert reporting.read_json(str(tmp_path), "config.json") == {
      "method": "bilevel", "data": {"mean": [0.5, 0.25]}, "bilevel": {"truncation": 2}}
  assert reporting.read_json(str(tmp_path), "missing.json") is None
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(ValueError, match="broken.json is not valid JSON"):
    reporting.read_json(str(tmp_path), "broken.json")


def test_flatten_and_config_changes():
  assert reporting.flatten({"a": 1, "b": {"c": [1, 2], "d": {"e": None}}}) == {
      "a": 1, "b.c": [1, 2], "b.d.e": None}
  saved = {"seed": 0, "optim": {"learning_rate": 0.1, "step_epochs": [60, 120]}, "old": 1}
  now = {"seed": 0, "optim": {"learning_rate": 0.05, "step_epochs": (60, 120)}, "new": "x"}
  # A tuple equals the list it was saved as; removed and added keys show as <absent>.
  assert reporting.config_changes(saved, now) == [
      "new: '<absent>' -> 'x'", "old: 1 -> '<absent>'", "optim.learning_rate: 0.1 -> 0.05"]
  assert reporting.config_changes(saved, saved) == []


def test_learned_vectors_get_labelled_components_a_figure_each_and_histograms(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  labels = ("Rotate#1", "Invert#1", "Rotate#2")
  for step in (10, 20, 30):
    reporter.write_learned(
        step, {"hba/mean_probability": step / 100},
        {"hba/probability": (np.array([0.1, 0.2, 0.3]) * step / 10, labels),
         "hba/magnitude_position": (np.array([0.5]), ("Rotate#1",))},
        {"aug/translation_x": np.linspace(-1, 1, 64) * step})
  with pytest.raises(ValueError, match="2 values and 3 labels"):
    reporter.write_learned(40, {}, {"hba/probability": (np.zeros(2), labels)})
  scalars_plot = reporter.plot_metrics()
  vector_plots = reporter.plot_vectors()
  reporter.close()

  records = reporting.read_metrics(str(tmp_path))
  assert [r["split"] for r in records] == ["learned"] * 3
  assert records[-1]["hba/probability[Invert#1]"] == pytest.approx(0.6)
  assert records[-1]["hba/mean_probability"] == pytest.approx(0.3)
  assert scalars_plot == str(tmp_path / "plots" / "augmentation_params.png")
  assert sorted(vector_plots) == sorted(str(tmp_path / "plots" / name) for name in (
      "hba_probability.png", "hba_magnitude_position.png"))
  for path in vector_plots:
    with Image.open(path) as picture:
      assert np.asarray(picture.convert("L")).min() < 128
  events = _tensorboard_events(str(tmp_path / "tensorboard"))
  histograms = [(step, value.histo) for tag, step, value in events
                if tag == "learned/aug/translation_x"]
  assert [step for step, _ in histograms] == [10, 20, 30]
  assert histograms[-1][1].min == pytest.approx(-30) and histograms[-1][1].num == 64
  # TensorBoard replaces "[", "#" and "]" in tags by "_"
  assert ("learned/hba/probability_Rotate_2_", 30) in {(tag, step) for tag, step, _ in events}


def test_image_grid_centres_smaller_images_in_cells_of_the_largest(tmp_path):
  rng = np.random.default_rng(2)
  originals = _random_images(rng, (2, 20, 24, 3))
  crops = _random_images(rng, (2, 16, 16, 3))
  reporter = reporting.Reporter(str(tmp_path), total_steps=100)
  grid = np.asarray(Image.open(reporter.save_image_grid(0, "crops", [originals, crops], ["", ""])))
  reporter.close()
  scale, gap = 4, 2  # display_scale(20, 24): 24 * 4 = 96
  cell_height, cell_width = 20 * scale, 24 * scale
  assert grid.shape == (2 * cell_height + gap, 2 * cell_width + gap, 3)
  for column, image in enumerate(crops):
    top = cell_height + gap + (cell_height - 16 * scale) // 2
    left = column * (cell_width + gap) + (cell_width - 16 * scale) // 2
    np.testing.assert_array_equal(grid[top:top + 16 * scale, left:left + 16 * scale],
                                  _nearest_upscaled(image, scale))
  assert (grid[cell_height + gap:cell_height + gap + 8, :cell_width] == 255).all()  # margin
