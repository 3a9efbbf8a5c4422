"""jaxaug.sweep: grid expansion, skipping and resuming runs, selection on validation metrics only."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from jaxaug import reporting
from jaxaug import summarize
from jaxaug import sweep

SMOKE = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py")


def test_expand_runs_every_grid_point_for_every_seed(tmp_path):
  jobs = sweep.expand(f"{SMOKE}:method=magnitude",
                      ["magnitude=0,0.5", "config.optim.learning_rate=0.1,0.05"],
                      ["config.augment=randaugment(2, 9)"], 2, str(tmp_path))
  assert len(jobs) == 8
  assert [(dict(job.point)["magnitude"], dict(job.point)["config.optim.learning_rate"], job.seed)
          for job in jobs[:3]] == [("0", "0.1", 0), ("0", "0.1", 1), ("0", "0.05", 0)]
  job = jobs[3]
  assert job.workdir == str(tmp_path / "magnitude=0,config.optim.learning_rate=0.05,seed=1")
  assert job.command == (
      sys.executable, "-m", "jaxaug.main", f"--config={SMOKE}:method=magnitude,magnitude=0",
      f"--workdir={job.workdir}", "--config.optim.learning_rate=0.05",
      "--config.augment=randaugment(2, 9)", "--config.seed=1", "--config.data.seed=1")
  assert len({job.workdir for job in jobs}) == 8


@pytest.mark.parametrize("grids,sets,message", [
    (["magnitude=0,1"], [], "magnitude given more than once"),  # also in the config's argument
    (["kind"], [], "malformed --grid 'kind'"),
    (["kind=a,,b"], [], "malformed --grid"),
    (["config.data.dataset=a/b,a_b"], [], "two runs would share a workdir"),
])
def test_expand_rejects_bad_grids(tmp_path, grids, sets, message):
  with pytest.raises(ValueError, match=message):
    sweep.expand(f"{SMOKE}:method=magnitude,magnitude=1", grids, sets, 1, str(tmp_path))


@pytest.mark.parametrize("config,message", [
    ("no_such_config.py", r"^--config=no_such_config.py: no such config file: 'no_such_config.py'$"),
    (f"{SMOKE}:method=nope", r"^--config=.*smoke.py:method=nope: unknown method='nope'; valid: "),
])
def test_check_configs_names_the_config_that_is_rejected(tmp_path, config, message):
  with pytest.raises(ValueError, match=message):
    sweep.check_configs(sweep.expand(config, [], [], 1, str(tmp_path)))


@pytest.mark.parametrize("grids,sets,message", [
    (["config.optim.learning_rat=0.1,0.2"], [],
     r"^--config.optim.learning_rat: the config has no key 'optim.learning_rat'; did you mean "
     r"optim.learning_rate"),
    ([], ["config.agument=crop"], r"^--config.agument: the config has no key 'agument'; did you "
     r"mean augment\?$"),
])
def test_check_configs_names_an_override_the_config_lacks(tmp_path, grids, sets, message):
  jobs = sweep.expand(SMOKE, grids, sets, 1, str(tmp_path))
  with pytest.raises(ValueError, match=message):
    sweep.check_configs(jobs)
  sweep.check_configs(sweep.expand(SMOKE, ["config.optim.learning_rate=0.1,0.2"], [], 1,
                                   str(tmp_path)))  # the keys it has pass


def _script_job(workdir, code):
  return sweep.Job(point=(("x", os.path.basename(workdir)),), seed=0, workdir=str(workdir),
                   command=(sys.executable, "-c", code))


def _finish(workdir):
  """What jaxaug.main leaves in a finished workdir (for summarize.load_run)."""
  reporting.write_config(str(workdir), {"method": "supervised", "seed": 0})
  reporting.write_results(str(workdir), {"test_accuracy": 0.5})


def test_run_jobs_skips_finished_runs_and_runs_the_rest_in_parallel(tmp_path, capsys):
  finished_dir, resumed_dir, failing_dir = (tmp_path / name for name in ("a", "b", "c"))
  _finish(finished_dir)  # finished earlier: its command (exit 3) must not run
  before = os.path.getmtime(finished_dir / reporting.RESULTS_FILENAME)
  record = ("import json, sys, time; start = time.time(); time.sleep(1.5); "
            "open(sys.argv[1], 'w').write(json.dumps([start, time.time()]))")
  jobs = [
      _script_job(finished_dir, "import sys; sys.exit(3)"),
      sweep.Job((("x", "b"),), 0, str(resumed_dir), (
          sys.executable, "-c", record + "; print('resumed')", str(tmp_path / "times_b"))),
      sweep.Job((("x", "c"),), 0, str(failing_dir), (
          sys.executable, "-c", record + "; print('error: no such thing'); print('at exit');"
          " sys.exit(5)", str(tmp_path / "times_c"))),
  ]
  statuses = sweep.run_jobs(jobs, processes=2, poll_seconds=0.05)
  assert statuses == {str(resumed_dir): 0, str(failing_dir): 5}
  assert re.search(rf"FAILED \(status 5\) in \d+ s: {re.escape(str(failing_dir))}: error: no such "
                   rf"thing \(log: {re.escape(str(failing_dir / sweep.LOG_FILENAME))}\)",
                   capsys.readouterr().out)
  assert os.path.getmtime(finished_dir / reporting.RESULTS_FILENAME) == before
  assert (resumed_dir / sweep.LOG_FILENAME).read_text().strip() == "resumed"
  (start_b, end_b), (start_c, end_c) = (
      eval((tmp_path / f"times_{name}").read_text()) for name in "bc")
  assert start_b < end_c and start_c < end_b  # both ran at once


def test_run_jobs_pins_each_slot_to_its_own_cpus(tmp_path):
  if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
    pytest.skip("needs 2 CPUs")
  code = "import os, sys; print(sorted(os.sched_getaffinity(0)))"
  jobs = [_script_job(tmp_path / name, code) for name in ("a", "b")]
  sweep.run_jobs(jobs, processes=2, pin_cpus=True, poll_seconds=0.05)
  slots = sweep.cpu_slots(2)
  seen = sorted(eval((tmp_path / name / sweep.LOG_FILENAME).read_text()) for name in "ab")
  assert seen == sorted(slots) and not set(slots[0]) & set(slots[1])


def test_a_signal_stops_the_sweep_after_one_sigterm_to_each_running_run(tmp_path):
  code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: "
          "(print('got SIGTERM', flush=True), sys.exit(143))); time.sleep(60)")
  jobs = [_script_job(tmp_path / name, code) for name in ("a", "b", "c")]
  before = signal.getsignal(signal.SIGTERM)
  timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
  timer.start()
  start = time.time()
  with pytest.raises(sweep._Stop) as stopped:
    sweep.run_jobs(jobs, processes=2, poll_seconds=0.05)
  assert stopped.value.signum == signal.SIGTERM and time.time() - start < 30
  for name in ("a", "b"):
    assert (tmp_path / name / sweep.LOG_FILENAME).read_text() == "got SIGTERM\n"
  assert not (tmp_path / "c").exists()  # not started after the signal
  assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def _fake_runs(tmp_path, val, test, held_out=True):
  """Jobs (in the order of `val`) with results: (kind, magnitude, seed) -> val, test accuracy."""
  jobs, runs = [], {}
  for (kind, magnitude, seed), accuracy in val.items():
    workdir = str(tmp_path / f"{kind}_{magnitude}_{seed}")
    jobs.append(sweep.Job((("kind", kind), ("magnitude", magnitude)), seed, workdir, ()))
    runs[workdir] = summarize.Run(workdir, {}, {
        "val_accuracy": accuracy, "test_accuracy": test[(kind, magnitude, seed)],
        "val_held_out": held_out, "wall_seconds": 10.0})
  return jobs, runs


def test_select_picks_per_seed_by_validation_and_reports_the_test_metric(tmp_path):
  val = {("affine", "0.5", 0): 0.7, ("affine", "1.0", 0): 0.8, ("affine", "2.0", 0): 0.8,
         ("affine", "0.5", 1): 0.9, ("affine", "1.0", 1): 0.6, ("affine", "2.0", 1): 0.5,
         ("translation", "0.5", 0): 0.1, ("translation", "1.0", 0): 0.2,
         ("translation", "2.0", 0): 0.3}
  # The test accuracies would pick otherwise.
  test = {key: 1.0 - value for key, value in val.items()}
  jobs, runs = _fake_runs(tmp_path, val, test)
  rows = sweep.select(jobs, runs, metric="val_accuracy", report="test_accuracy",
                      over=["magnitude"])
  affine, translation = rows
  # seed 0: a tie between 1.0 and 2.0 goes to the first in grid order
  assert affine["kind"] == "affine" and affine["selected"] == "magnitude=1.0; magnitude=0.5"
  assert affine["val_accuracy"] == pytest.approx(0.85)
  assert (affine["runs"], affine["mean"], affine["min"], affine["max"]) == pytest.approx(
      (2, 0.15, 0.1, 0.2))
  assert (affine["grid_runs"], affine["grid_wall_seconds"]) == (3, 30)
  assert translation["selected"] == "magnitude=2.0" and translation["sd"] is None
  assert translation["mean"] == pytest.approx(0.7)
  # Over both keys at once: the best kind and magnitude per seed.
  both = sweep.select(jobs, runs, metric="val_accuracy", report="test_accuracy",
                      over=["kind", "magnitude"])
  assert [row["selected"] for row in both] == ["kind=affine,magnitude=1.0; "
                                               "kind=affine,magnitude=0.5"]
  # A setting with an unfinished run is not selected from.
  del runs[jobs[-1].workdir]
  assert sweep.select(jobs, runs, metric="val_accuracy", report="test_accuracy",
                      over=["magnitude"])[1] == {"kind": "translation",
                                                 "selected": "incomplete: unfinished runs"}


def test_select_refuses_test_metrics_and_validation_images_that_were_trained_on(tmp_path):
  val = {("affine", "0.5", 0): 0.7, ("affine", "1.0", 0): 0.8}
  jobs, runs = _fake_runs(tmp_path, val, val)
  for metric in ("test_accuracy", "test_loss"):
    with pytest.raises(ValueError, match=f"refusing to select on '{metric}'"):
      sweep.select(jobs, runs, metric=metric, report="test_accuracy", over=["magnitude"])
  jobs, runs = _fake_runs(tmp_path, val, val, held_out=False)
  with pytest.raises(ValueError, match="val_held_out: False.*redraw_val_each_epoch=False"):
    sweep.select(jobs, runs, metric="val_accuracy", report="test_accuracy", over=["magnitude"])


def _sweep(tmp_path, *args):
  return subprocess.run(
      [sys.executable, "-m", "jaxaug.sweep", f"--config={SMOKE}:method=magnitude",
       "--grid=magnitude=0,0.5", f"--workdir={tmp_path}", *args],
      capture_output=True, text=True)


@pytest.mark.slow
def test_sweep_end_to_end_on_the_smoke_config_and_its_resume(tmp_path):
  refused = _sweep(tmp_path, "--select=test_accuracy")
  assert refused.returncode == 2 and "refusing to select on 'test_accuracy'" in refused.stderr
  assert not os.listdir(tmp_path)

  first = _sweep(tmp_path, "--processes=2", "--select=val_accuracy")
  assert first.returncode == 0, first.stderr[-3000:]
  runs = [tmp_path / "magnitude=0,seed=0", tmp_path / "magnitude=0.5,seed=0"]
  assert all((run / reporting.RESULTS_FILENAME).exists() for run in runs)
  lines = first.stdout.splitlines()
  header = lines.index("| augment | runs | mean | sd | min | max |")
  assert {lines[header + 2].split(" | ")[0], lines[header + 3].split(" | ")[0]} == {
      "| hflip+random_transform('affine', 0.0)", "| hflip+random_transform('affine', 0.5)"}
  assert "Selected by val_accuracy per seed over magnitude" in first.stdout
  assert "| selected | val_accuracy | runs | mean | sd | min | max | grid_runs |" in first.stdout

  # Half finished: the second run lost its results.json (it stopped after its last
  # checkpoint); the sweep again runs only that one, which resumes from its checkpoint.
  kept = os.path.getmtime(runs[0] / reporting.RESULTS_FILENAME)
  os.remove(runs[1] / reporting.RESULTS_FILENAME)
  time.sleep(0.01)
  second = _sweep(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"finished already: {runs[0]}" in second.stdout
  assert os.path.getmtime(runs[0] / reporting.RESULTS_FILENAME) == kept
  assert (runs[1] / reporting.RESULTS_FILENAME).exists()
  log = (runs[1] / sweep.LOG_FILENAME).read_text()
  assert "all steps are done" in log and "resuming at step 16" in log
  assert "resuming" not in (runs[0] / sweep.LOG_FILENAME).read_text()
