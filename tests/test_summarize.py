"""Tests for jaxaug.summarize: grouping finished runs by setting over seeds, and its CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from jaxaug import reporting
from jaxaug import summarize


def _write_run(workdir, *, method, learning_rate, seed, accuracy, model="cnn6",
               dataset="cifar10", mean=(0.5,)):
  config = {"method": method, "model": model, "seed": seed,
            "data": {"seed": seed, "dataset": dataset, "mean": mean, "workers": seed},
            "optim": {"learning_rate": learning_rate},
            "log_every_steps": 10 * (seed + 1),  # bookkeeping: does not split a setting
            "distributed": {"enabled": seed > 0, "process_id": seed}}  # launch details
  reporting.write_config(str(workdir), config)
  reporting.write_results(str(workdir), {"test_accuracy": accuracy, "steps": 10})
  return str(workdir)


@pytest.fixture
def runs(tmp_path):
  """Three settings: supervised lr 0.1 (3 seeds), bilevel lr 0.1 (2 seeds), supervised lr 0.05."""
  specs = [("supervised", 0.1, 0, 0.50), ("supervised", 0.1, 1, 0.60),
           ("supervised", 0.1, 2, 0.70), ("bilevel", 0.1, 0, 0.80), ("bilevel", 0.1, 1, 0.60),
           ("supervised", 0.05, 0, 0.55)]
  return [_write_run(tmp_path / f"{method}_{lr}_{seed}", method=method, learning_rate=lr,
                     seed=seed, accuracy=accuracy)
          for method, lr, seed, accuracy in specs]


def test_summary_rows_group_seeds_and_show_only_the_keys_that_differ(runs):
  rows = summarize.summary_rows([summarize.load_run(r) for r in runs], "test_accuracy")
  # Seeds are grouped; model and data.mean are the same everywhere, so not shown.
  assert [list(row)[:2] for row in rows] == [["method", "optim.learning_rate"]] * 3
  assert [(row["method"], row["optim.learning_rate"], row["runs"]) for row in rows] == [
      ("bilevel", 0.1, 2), ("supervised", 0.1, 3), ("supervised", 0.05, 1)]
  for row, values in zip(rows, ([0.8, 0.6], [0.5, 0.6, 0.7], [0.55])):
    assert row["mean"] == pytest.approx(np.mean(values))
    assert row["min"] == min(values) and row["max"] == max(values)
  assert rows[0]["sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
  assert rows[1]["sd"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
  assert rows[2]["sd"] is None
  # A key that one run lacks (an older config.json) takes its default (here 0.1, the value
  # of the other runs): it does not split its setting.
  older = summarize.load_run(runs[2])
  del older.config["optim.learning_rate"]
  rows_with_older = summarize.summary_rows(
      [summarize.load_run(r) for r in runs[:2]] + [older], "test_accuracy")
  assert [row["runs"] for row in rows_with_older] == [3]
  # A key of one method's section tells apart the runs of that method only.
  assert summarize.value(older.config, "bilevel.truncation") is None
  # Ignoring a key ignores the keys under it: "distributed" covers "distributed.enabled".
  assert len(summarize.summary_rows([summarize.load_run(r) for r in runs], "test_accuracy",
                                    ignore=("seed", "data.seed"))) == len(runs)
  # Not ignoring the seeds: every run is its own setting.
  assert len(summarize.summary_rows([summarize.load_run(r) for r in runs], "test_accuracy",
                                    ignore=())) == len(runs)


def test_summary_rows_reject_a_missing_metric(runs):
  with pytest.raises(ValueError, match="no number 'val_accuracy'.*test_accuracy"):
    summarize.summary_rows([summarize.load_run(runs[0])], "val_accuracy")


def test_load_run_skips_unfinished_and_rejects_runs_without_config(tmp_path):
  assert summarize.load_run(str(tmp_path)) is None
  reporting.write_results(str(tmp_path), {"test_accuracy": 0.5})
  with pytest.raises(FileNotFoundError, match="no config.json"):
    summarize.load_run(str(tmp_path))


def test_command_line_prints_a_markdown_table(runs, tmp_path):
  unfinished = tmp_path / "still_running"
  unfinished.mkdir()
  log_file = tmp_path / "still_running.log"  # what a glob like runs/* also matches
  log_file.write_text("step 1/10")
  completed = subprocess.run(
      [sys.executable, "-m", "jaxaug.summarize", *runs, str(unfinished), str(log_file)],
      capture_output=True, text=True, check=True)
  lines = completed.stdout.strip().splitlines()
  assert lines[0] == "| method | optim.learning_rate | runs | mean | sd | min | max |"
  assert lines[2] == "| bilevel | 0.1 | 2 | 0.7000 | 0.1414 | 0.6000 | 0.8000 |"
  assert lines[4] == "| supervised | 0.05 | 1 | 0.5500 |  | 0.5500 | 0.5500 |"
  assert len(lines) == 5
  assert f"skipped {unfinished}: no results.json (not finished)" in completed.stderr
  assert f"skipped {log_file}: not a directory" in completed.stderr


def test_command_line_reports_a_missing_metric_in_one_line_with_status_2(runs):
  completed = subprocess.run(
      [sys.executable, "-m", "jaxaug.summarize", "--metric=train_accuracy", *runs],
      capture_output=True, text=True)
  assert completed.returncode == 2
  assert completed.stderr.startswith("error: ") and "Traceback" not in completed.stderr
  assert "has no number 'train_accuracy'" in completed.stderr


def test_sections_of_methods_a_run_did_not_use_do_not_split_settings(tmp_path):
  """A supervised run's config.bilevel / config.hba (present in every config) are left out."""
  paths = []
  for seed, sigma in ((0, 0.5), (1, 0.3)):
    path = _write_run(tmp_path / f"run{seed}", method="supervised", learning_rate=0.1,
                      seed=seed, accuracy=0.5 + seed / 10)
    config = reporting.read_json(path, reporting.CONFIG_FILENAME)
    config["hba"] = {"sigma": sigma}
    reporting.write_config(path, config)
    paths.append(path)
  runs = [summarize.load_run(path) for path in paths]
  assert "hba.sigma" not in runs[0].config
  rows = summarize.summary_rows(runs, "test_accuracy")
  assert len(rows) == 1 and rows[0]["runs"] == 2


def test_keys_a_data_set_fixes_show_only_when_one_data_set_has_several_values(tmp_path):
  runs = [summarize.load_run(_write_run(tmp_path / name, method="supervised", learning_rate=0.1,
                                        seed=0, accuracy=accuracy, dataset=dataset, mean=mean))
          for name, dataset, mean, accuracy in (("c", "cifar10", (0.49, 0.48, 0.45), 0.6),
                                                ("s", "svhn", (0.44, 0.44, 0.47), 0.9))]
  configs = [run.config for run in runs]
  assert summarize.distinguishing_keys(configs) == ["data.dataset"]
  assert [list(row)[0] for row in summarize.summary_rows(runs, "test_accuracy")] == [
      "data.dataset"] * 2
  # The same data set standardised two ways: then the mean is news.
  other_mean = dict(configs[0], **{"data.mean": [0.5, 0.5, 0.5]})
  assert summarize.distinguishing_keys([configs[0], other_mean]) == ["data.mean"]
  assert summarize.distinguishing_keys([configs[0], other_mean, configs[1]]) == [
      "data.dataset", "data.mean"]
  # Ignored keys (here the seeds and the bookkeeping) never tell runs apart.
  assert summarize.distinguishing_keys(configs, ignore=()) == ["data.dataset"]
  assert "log_every_steps" in summarize.shared_keys(configs, ignore=())
  assert "log_every_steps" not in summarize.shared_keys(configs)


def test_setting_label_names_the_given_keys():
  config = {"method": "bilevel", "optim.learning_rate": 0.1, "model": "cnn6"}
  assert summarize.setting_label(config, ["method", "optim.learning_rate"]) == (
      "method=bilevel, optim.learning_rate=0.1")
  assert summarize.setting_label(config, []) == "all runs"


def test_command_line_all_keys_shows_the_keys_every_run_shares(runs):
  completed = subprocess.run(
      [sys.executable, "-m", "jaxaug.summarize", "--all_keys", *runs],
      capture_output=True, text=True, check=True)
  lines = completed.stdout.strip().splitlines()
  assert lines[0] == ("| data.dataset | data.mean | method | model | optim.learning_rate "
                      "| runs | mean | sd | min | max |")
  assert lines[2] == ("| cifar10 | [0.5] | bilevel | cnn6 | 0.1 "
                      "| 2 | 0.7000 | 0.1414 | 0.6000 | 0.8000 |")
  assert len(lines) == 5  # the same three groups


def test_a_methods_setting_splits_its_runs_beside_runs_of_other_methods():
  """bilevel runs that differ in a bilevel setting stay apart when supervised runs (which
  have no bilevel section) are summarised with them; a bilevel run written before the
  setting existed has its default."""
  run = lambda name, config, accuracy: summarize.Run(name, config, {"test_accuracy": accuracy})
  runs = [run("a", {"method": "supervised", "augment": "crop"}, 0.6),
          run("b", {"method": "bilevel", "augment": "hflip", "bilevel.hypergradient": "implicit"},
              0.5),
          run("c", {"method": "bilevel", "augment": "hflip"}, 0.4)]  # older: the unroll
  rows = summarize.summary_rows(runs, "test_accuracy")
  assert [(row["method"], row["bilevel.hypergradient"]) for row in rows] == [
      ("supervised", None), ("bilevel", "implicit"), ("bilevel", "unroll")]
