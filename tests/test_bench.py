"""Tests of jaxaug.bench: the train-step section's records; the augmentation section's timing, batch
choice, records, optional torchvision."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxaug import bench
from jaxaug import data
from jaxaug.config import default_config

SMOKE = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py")
TORCHVISION_INSTALLED = importlib.util.find_spec("torchvision") is not None


def test_median_seconds_times_only_the_calls_after_warm_up(monkeypatch):
  """A fake clock that each call advances by its own duration."""
  durations = [0.2] * bench.WARMUP_CALLS + [0.01, 0.02, 0.08]
  now = [0.0]
  calls = []
  monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])

  def run_once(i):
    calls.append(i)
    now[0] += durations[i]

  seconds = bench.median_seconds(run_once, repeats=3)
  assert calls == list(range(len(durations)))
  # the median of the timed calls; their mean would be 0.037, the median with warm-up 0.08
  assert seconds == pytest.approx(0.02)


def test_median_seconds_rejects_no_repeats():
  with pytest.raises(ValueError, match="got 0"):
    bench.median_seconds(lambda i: None, repeats=0)


def test_augment_batch_takes_evenly_spaced_train_images():
  # Pixel value of train image i is i, so the batch reveals which images it holds.
  images = np.broadcast_to(np.arange(20, dtype=np.uint8)[:, None, None, None], (20, 2, 2, 1))
  labels = np.zeros(20, np.int64)
  dataset = data.Dataset(data.ArraySource(np.array(images), labels, 1, "train"),
                         data.ArraySource(np.array(images), labels, 1, "test"), 1, (2, 2, 1))
  batch = bench.augment_batch(dataset, 4)
  np.testing.assert_array_equal(batch[:, 0, 0, 0], [0, 5, 10, 15])
  with pytest.raises(ValueError, match="got 21"):
    bench.augment_batch(dataset, 21)


def test_import_torchvision_warns_and_returns_none_when_missing(monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "torchvision.transforms.v2", None)
  assert bench.import_torchvision() is None
  assert '.[bench]' in caplog.text


@pytest.mark.slow  # the bench is not the library
def test_augment_section_prints_one_parsable_record_per_policy_and_implementation(tmp_path):
  # With torchvision installed (the bench extra) its lines must be there, without it absent.
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  labels = np.arange(6) % 2
  np.savez(tmp_path / "random.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
  config = default_config()
  config.data.dataset = f"npz:{tmp_path / 'random.npz'}"
  lines = []

  records = bench.run(config, steps=1, sections=["augment"],
                      augment_batch_size=3, print_fn=lines.append)

  parsed = [json.loads(line) for line in lines]
  assert parsed == records
  implementations = ["jaxaug"] + (
      ["torchvision_batch", "torchvision_per_image"] if TORCHVISION_INSTALLED else [])
  strategies = ["adversarial_sub_policies_x8/switch", "adversarial_sub_policies_x8/select"]
  assert [r["name"] for r in parsed] == [f"{policy}/{implementation}"
                                         for policy in ("randaugment(2, 9)", "autoaugment_cifar10")
                                         for implementation in implementations] + strategies
  by_name = {r["name"]: r for r in parsed}
  # N x M images; the trainer's choice on this backend (the CPU) is marked
  assert [by_name[name]["batch_size"] for name in strategies] == [24, 24]
  assert [by_name[name]["trainer_picks"] for name in strategies] == [True, False]
  for record in parsed:
    if record["name"] in strategies:
      assert record["images_per_s"] * record["us_per_image"] == pytest.approx(1e6, rel=1e-2)
      continue
    assert record["batch_size"] == 3 and record["image_shape"] == [16, 16, 3]
    assert record["images_per_s"] * record["us_per_image"] == pytest.approx(1e6, rel=1e-2)
    reference = by_name.get(record["name"].split("/")[0] + "/torchvision_per_image")
    if reference is None:
      assert record["ratio_to_torchvision_per_image"] is None
    else:
      assert record["ratio_to_torchvision_per_image"] == pytest.approx(  # Rounded to 0.001.
          record["us_per_image"] / reference["us_per_image"], rel=1e-2, abs=6e-4)
      assert isinstance(record["torch_threads"], int) and record["torch_threads"] >= 1
  if TORCHVISION_INSTALLED:
    assert "whole batch" in by_name["autoaugment_cifar10/torchvision_batch"]["op_draws"]


@pytest.mark.parametrize("request_,message", [
    ({"sections": ["augmentation"]}, r"unknown bench sections \['augmentation'\]; valid "
     "sections: steps, augment, input"),
    ({"dtypes": ["float16"]}, "unknown dtype 'float16'"),
    ({"variant_names": ["ohl"]}, r"unknown bench variants \['ohl'\]; valid variants: plain"),
])
def test_run_rejects_unknown_names_before_reading_data(monkeypatch, request_, message):
  def no_data(*args, **kwargs):
    raise AssertionError("data read before the request was checked")

  monkeypatch.setattr(bench.data, "load_dataset", no_data)
  with pytest.raises(bench.RequestError, match=message):
    bench.run(default_config(), steps=1, **{"sections": ["steps"], **request_})


def test_the_command_line_names_an_unknown_section_in_one_error_line():
  process = subprocess.run([sys.executable, "-m", "jaxaug.bench", f"--config={SMOKE}",
                            "--sections=augmentation"], capture_output=True, text=True,
                           timeout=120)
  assert process.returncode == 2, process.stderr
  assert process.stderr.strip().splitlines() == [
      "error: unknown bench sections ['augmentation']; valid sections: steps, augment, input"]


def _smoke_config():
  config = default_config()
  config.update(model="small_cnn", batch_size=16, val_batch_size=16)
  config.data.update(dataset="sklearn_digits", train_examples=160)
  config.bilevel.augmenter.kind = "affine"  # grey digits
  return config


@pytest.mark.slow
def test_step_section_times_each_variant_against_the_plain_step():
  printed = []
  records = bench.run(_smoke_config(), steps=2, dtypes=["float32"],
                      sections=["steps"], print_fn=printed.append)
  assert [json.loads(line) for line in printed] == records
  by_name = {record["name"]: record for record in records}
  assert list(by_name) == ["plain", "predefined", "random_transform", "invariant",
                           "bilevel_T1", "bilevel_T2", "bilevel_T4",
                           "bilevel_T1_reverse_over_reverse", "bilevel_implicit_without_update",
                           "bilevel_implicit_K1", "bilevel_implicit_K5", "bilevel_implicit_K20",
                           "hba_without_lambda_update", "hba_with_lambda_update", "plain_x8",
                           "adversarial_M8", "plain_x4", "ohl_K4", "uncertainty_C4"]
  assert by_name["plain"]["ratio_to_plain"] == 1.0
  for record in records:
    assert record["ms_per_step"] > 0
    assert record["ratio_per_image_to_plain"] == pytest.approx(
        record["ratio_to_plain"] / record["copies_per_example"], abs=1e-3)
    assert record["ratio_to_plain"] == pytest.approx(
        record["ms_per_step"] / by_name["plain"]["ms_per_step"], abs=1e-3)
    assert record["compiled_total_mib"] >= record["compiled_temp_mib"] >= 0
  assert by_name["plain_x8"]["batch_size"] == 8 * by_name["plain"]["batch_size"]
  assert by_name["plain_x8"]["copies_per_example"] == 8
  assert by_name["adversarial_M8"]["ratio_to_plain_same_images"] == pytest.approx(
      by_name["adversarial_M8"]["ms_per_step"] / by_name["plain_x8"]["ms_per_step"], abs=1e-3)
  assert by_name["ohl_K4"]["ratio_to_plain_same_images"] == pytest.approx(
      by_name["ohl_K4"]["ms_per_step"] / by_name["plain_x4"]["ms_per_step"], abs=1e-3)
  assert by_name["bilevel_T2"]["ms_per_update"] == pytest.approx(
      by_name["bilevel_T2"]["ms_per_step"] / 2, abs=1e-3)
  implicit, without = by_name["bilevel_implicit_K5"], by_name["bilevel_implicit_without_update"]
  assert implicit["ratio_to_plain_amortised"] == pytest.approx(
      (implicit["ratio_to_plain"] + 3 * without["ratio_to_plain"]) / 4, abs=2e-3)
  # the unroll over two steps needs more memory than over one
  assert by_name["bilevel_T2"]["compiled_total_mib"] > by_name["bilevel_T1"]["compiled_total_mib"]


def test_step_section_times_each_variant_in_each_dtype(monkeypatch):
  # Timing replaced by a fake (bfloat16 takes 3x as long, bilevel 2x): what is timed in which
  # dtype, and the ratios, without compiling anything.
  timed = []

  def fake_time_variant(config, dataset, mesh, steps, timed_step=0):
    timed.append((config.method, config.dtype))
    ms = (3.0 if config.dtype == "bfloat16" else 1.0) * (2.0 if config.method == "bilevel" else 1.0)
    return {"ms_per_step": ms * config.batch_size / 16}  # in proportion to the batch

  monkeypatch.setattr(bench, "time_variant", fake_time_variant)
  records = bench.run(_smoke_config(), steps=1, dtypes=["bfloat16", "float32"],
                      sections=["steps"], print_fn=lambda line: None)
  assert [(record["name"], record["dtype"]) for record in records][:4] == [
      ("plain", "float32"), ("plain", "bfloat16"), ("predefined", "float32"),
      ("predefined", "bfloat16")]
  method = lambda name: {"plain": "supervised", "predefined": "supervised", "random": "supervised",
                         "adversarial": "reinforce"}.get(
                             name.split("_")[0], name.split("_")[0])
  assert len(records) == 2 * 19
  assert timed == [(method(record["name"]), record["dtype"]) for record in records]
  for record in records:
    bilevel = record["name"].startswith("bilevel")
    copies = record["batch_size"] // 16
    assert record["ratio_to_plain"] == (2.0 if bilevel else copies)
    assert record["ratio_per_image_to_plain"] == (2.0 if bilevel else copies) / (
        record["copies_per_example"])
    assert record["ratio_to_float32"] == (3.0 if record["dtype"] == "bfloat16" else 1.0)
  timed.clear()
  records = bench.run(_smoke_config(), steps=1, dtypes=["float32"],
                      sections=["steps"], variant_names=["ohl_K4"], print_fn=lambda line: None)
  assert [record["name"] for record in records] == ["plain", "plain_x4", "ohl_K4"]
  assert records[2]["copies_per_example"] == 4
  # the fake's time follows the batch size: ohl_K4 (batch 16) takes a quarter of plain_x4's
  assert records[2]["ratio_to_plain_same_images"] == 0.25


def test_step_section_rejects_a_batch_the_devices_do_not_divide():
  config = _smoke_config()
  config.batch_size = 12
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by the number of devices"):
    bench.run(config, steps=1, dtypes=["float32"], sections=["steps"],
              print_fn=lambda line: None)
