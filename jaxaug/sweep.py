"""Run a grid of settings over seeds, then summarise: python -m jaxaug.sweep --config FILE ...

  python -m jaxaug.sweep --config configs/cifar10_reduced_cnn.py:method=magnitude,kind=affine \\
      --grid magnitude=0.25,0.5,1.0,2.0 --set config.data.dataset=folder:/data/cifar10 \\
      --seeds 3 --workdir runs/r_magnitude --processes 2 --select val_accuracy

Every combination of the `--grid key=v1,v2,...` values (in the order given) runs once per
seed 0..N-1 (`--config.seed=s --config.data.seed=s`), each as its own
`python -m jaxaug.main` process with the workdir `<workdir>/<key=value,...,seed=s>`
(only the keys with several values name it). A key `config.x.y` becomes the override
`--config.x.y=value`; any other key joins the `get_config` argument after ':' (big_vision
style, e.g. `jaxaug.comparison`'s `method`, `kind`, `magnitude`). `--set key=value` fixes
one value that may contain commas. Each config is built, and every `config.x.y` key checked
against it, before any run starts.

A run whose workdir has results.json is finished and skipped; any other is started,
and resumes from its checkpoint if it has one (the trainer's own resume), so running
the same command again completes an interrupted sweep. Up to `--processes` runs go at
once (`--pin_cpus` gives each its own share of this process's CPUs with taskset).
Each run's output goes to `<run>/sweep.log`. Ctrl-C or SIGTERM stops the sweep: each
running run receives one SIGTERM, saves a checkpoint and exits.

The sweep ends with the `jaxaug.summarize` table of its finished runs (`--metric`,
`--ignore` as there). With `--select METRIC` (a validation metric of results.json, never
a test one) it also selects, for each seed and each setting of the other grid keys, the
value of the `--select_over` keys (default: every grid key) with the highest METRIC, and
reports the `--metric` of the selected runs over the seeds, with the cost of the grid
(the sum of the `wall_seconds` of its runs, per seed). Selection needs runs whose
validation split was held out (results.json `val_held_out`: true).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags

from jaxaug import config as config_lib
from jaxaug import reporting
from jaxaug import summarize

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined when run as a program, so that importing this module
  leaves the names free: `jaxaug.main` and `jaxaug.bench` define `--config` too;
  `--metric` and `--ignore` are `jaxaug.summarize`'s)."""
  flags.DEFINE_string("config", None, "Config file, optionally with its argument: "
                      "FILE.py[:k=v,...].")
  flags.DEFINE_multi_string("grid", [], "key=v1,v2,...: the values of one grid axis.")
  flags.DEFINE_multi_string("set", [], "key=value: one fixed value (may contain commas).")
  flags.DEFINE_integer("seeds", 1, "Run seeds 0..N-1 of every grid point.", lower_bound=1)
  flags.DEFINE_string("workdir", None, "Directory holding one workdir per run.")
  flags.DEFINE_integer("processes", 1, "Runs at once.", lower_bound=1)
  flags.DEFINE_bool("pin_cpus", False, "Pin each of the --processes slots to its own CPUs "
                    "(taskset).")
  flags.DEFINE_string("select", None, "Validation metric of results.json to select by "
                      "(e.g. val_accuracy); test metrics are refused.")
  flags.DEFINE_list("select_over", None, "Grid keys whose value is selected (default: all).")
  flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")
  flags.mark_flags_as_required(["config", "workdir"])


CONFIG_PREFIX = "config."
LOG_FILENAME = "sweep.log"


@dataclasses.dataclass(frozen=True)
class Job:
  """One run of the sweep: its grid point (all grid keys), seed, workdir and command."""
  point: tuple[tuple[str, str], ...]
  seed: int
  workdir: str
  command: tuple[str, ...]


def parse_axis(text: str, *, split: bool = True) -> tuple[str, list[str]]:
  """'key=v1,v2' -> (key, [v1, v2]) (one value, commas kept, if not `split`)."""
  key, sep, values = text.partition("=")
  key = key.strip()
  items = values.split(",") if split else [values]
  if not sep or not key or any(not item.strip() for item in items):
    raise ValueError(f"malformed {'--grid' if split else '--set'} {text!r}: expected "
                     f"key=value{',value,...' if split else ''}")
  return key, [item.strip() for item in items]


def run_name(point: Sequence[tuple[str, str]], varying: Sequence[str], seed: int) -> str:
  """The workdir name of a run: the varying keys' values and the seed, '/' made '_'."""
  parts = [f"{key}={value}" for key, value in point if key in varying] + [f"seed={seed}"]
  return ",".join(parts).replace("/", "_")


def expand(config: str, grids: Sequence[str], sets: Sequence[str], seeds: int,
           workdir: str) -> list[Job]:
  """The jobs of a sweep: every grid point (first axis slowest) for seeds 0..seeds-1.

  Raises ValueError for a malformed axis, a key given twice (also in the config's own
  argument), or two runs that would share a workdir.
  """
  axes = [parse_axis(text) for text in grids] + [parse_axis(text, split=False) for text in sets]
  file, _, base_arg = config.partition(":")
  base_keys = [item.partition("=")[0].strip() for item in base_arg.split(",") if item.strip()]
  keys = base_keys + [key for key, _ in axes]
  repeated = sorted({key for key in keys if keys.count(key) > 1})
  if repeated:
    raise ValueError(f"{', '.join(repeated)} given more than once (in --config's argument, "
                     f"--grid or --set)")
  varying = [key for key, values in axes if len(values) > 1]
  jobs = []
  for values in itertools.product(*(values for _, values in axes)):
    point = tuple(zip((key for key, _ in axes), values))
    arg = ",".join([item for item in base_arg.split(",") if item.strip()] +
                   [f"{key}={value}" for key, value in point
                    if not key.startswith(CONFIG_PREFIX)])
    overrides = [f"--{key}={value}" for key, value in point if key.startswith(CONFIG_PREFIX)]
    for seed in range(seeds):
      run_dir = os.path.join(workdir, run_name(point, varying, seed))
      jobs.append(Job(point, seed, run_dir, (
          sys.executable, "-m", "jaxaug.main", f"--config={file}" + (f":{arg}" if arg else ""),
          f"--workdir={run_dir}", *overrides, f"--config.seed={seed}",
          f"--config.data.seed={seed}")))
  workdirs = [job.workdir for job in jobs]
  if len(set(workdirs)) != len(workdirs):
    raise ValueError(f"two runs would share a workdir (values that differ only in '/'?): "
                     f"{sorted({w for w in workdirs if workdirs.count(w) > 1})}")
  return jobs


def check_configs(jobs: Sequence[Job]) -> None:
  """Builds the config of every distinct `--config=FILE[:arg]` of `jobs` now, and checks that
  each job's `--config.<key>=` overrides name keys of its config.

  Raises ValueError with the config's own message if one is rejected, or naming the unknown
  key and the closest valid ones.
  """
  configs = {}
  for job in jobs:
    spec = next(arg[len("--config="):] for arg in job.command if arg.startswith("--config="))
    if spec not in configs:
      try:
        configs[spec] = config_lib.load_config_file(spec)
      except (ValueError, TypeError) as error:
        raise ValueError(f"--config={spec}: {error}") from None
    config_lib.check_overrides(configs[spec], list(job.command))


def finished(job: Job) -> bool:
  """Whether the run has results.json (written at its very end)."""
  return summarize.load_run(job.workdir) is not None


def last_error_line(log_path: str) -> str:
  """The last line of the log at `log_path` that starts with 'error:' (jaxaug.main's one-line
  errors) or, failing that, the last non-empty line ('' for an empty or missing log)."""
  try:
    with open(log_path, errors="replace") as log:
      lines = [line.strip() for line in log if line.strip()]
  except OSError:
    return ""
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or [""])[-1]


def cpu_slots(processes: int) -> list[list[int]]:
  """This process's CPUs dealt round-robin to `processes` slots (ValueError if fewer)."""
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) < processes:
    raise ValueError(f"--pin_cpus: {processes} processes but only {len(cpus)} CPUs")
  return [cpus[slot::processes] for slot in range(processes)]


class _Stop(Exception):
  """SIGINT or SIGTERM reached the sweep."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def run_jobs(jobs: Sequence[Job], *, processes: int = 1, pin_cpus: bool = False,
             poll_seconds: float = 0.5) -> dict[str, int]:
  """Runs the unfinished `jobs`, up to `processes` at once; returns workdir -> exit status.

  Finished jobs are skipped (not in the result). On SIGINT or SIGTERM every running job
  receives one SIGTERM and is waited for; then `_Stop` is raised. ValueError if `pin_cpus`
  cannot be done.
  """
  if pin_cpus and shutil.which("taskset") is None:
    raise ValueError("--pin_cpus needs taskset (util-linux), which is not on PATH")
  slots = cpu_slots(processes) if pin_cpus else [None] * processes
  pending = []
  for job in jobs:
    if finished(job):
      reporting.say(f"finished already: {job.workdir}")
    else:
      pending.append(job)
  running: dict[int, tuple[subprocess.Popen, Job, float]] = {}  # slot -> process, job, start
  statuses: dict[str, int] = {}
  stop: list[int] = []  # signals received
  signalled: set[int] = set()  # pids sent SIGTERM
  total = len(pending)
  handlers = {signum: signal.signal(signum, lambda signum, _: stop.append(signum))
              for signum in (signal.SIGINT, signal.SIGTERM)}
  try:
    while (pending and not stop) or running:
      for slot in range(processes):
        if slot in running or not pending or stop:
          continue
        job = pending.pop(0)
        os.makedirs(job.workdir, exist_ok=True)
        prefix = ["taskset", "-c", ",".join(map(str, slots[slot]))] if pin_cpus else []
        with open(os.path.join(job.workdir, LOG_FILENAME), "a") as log:
          # Its own session: a Ctrl-C at the terminal reaches the sweep only, which
          # forwards one SIGTERM (a second SIGINT would stop a run without a checkpoint).
          process = subprocess.Popen(prefix + list(job.command), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        running[slot] = (process, job, time.time())
        reporting.say(f"started {total - len(pending)}/{total}: {job.workdir}")
      if stop:
        for process, _, _ in running.values():
          if process.pid not in signalled:
            process.send_signal(signal.SIGTERM)
            signalled.add(process.pid)
      time.sleep(poll_seconds)
      for slot, (process, job, start) in list(running.items()):
        if process.poll() is None:
          continue
        del running[slot]
        statuses[job.workdir] = process.returncode
        log_path = os.path.join(job.workdir, LOG_FILENAME)
        outcome = "done" if process.returncode == 0 else f"FAILED (status {process.returncode})"
        error = "" if process.returncode == 0 else last_error_line(log_path)
        reporting.say(f"{outcome} in {time.time() - start:.0f} s: {job.workdir}"
                      f"{': ' + error if error else ''} (log: {log_path})")
  finally:
    for signum, handler in handlers.items():
      signal.signal(signum, handler)
  if stop:
    raise _Stop(stop[0])
  return statuses


def _check_selection_metric(metric: str) -> None:
  """Refuses a test metric (selection on test data): ValueError naming the valid kind."""
  if metric.startswith("test"):
    raise ValueError(f"refusing to select on {metric!r}: the test split is for reporting only; "
                     f"select on a validation metric of results.json, e.g. val_accuracy")


def select(jobs: Sequence[Job], runs: dict[str, summarize.Run], *, metric: str, report: str,
           over: Sequence[str]) -> list[dict[str, Any]]:
  """Per seed and setting of the other grid keys, the `over` values with the best `metric`.

  Args:
    jobs: the sweep's jobs.
    runs: workdir -> finished run (jobs without one make their setting incomplete).
    metric: the validation metric to maximise (ties: the first in grid order).
    report: the metric reported for the selected runs (e.g. test_accuracy).
    over: the grid keys selected over.

  Returns:
    One row per setting of the other keys: those keys, `selected` (the chosen `over`
    values, per seed, or 'incomplete' while some of its runs are unfinished), `<metric>`
    (mean of the selected runs), the `summarize.describe` statistics of `report` over
    the seeds, `grid_runs` (per seed) and `grid_wall_seconds` (the sum of the runs'
    `wall_seconds` over the grid of one seed, averaged over the seeds: the cost of one
    selection).

  Raises:
    ValueError: `metric` is a test metric, or a run's validation split was not held out.
  """
  _check_selection_metric(metric)
  for run in runs.values():
    if run.results.get("val_held_out") is not True:
      raise ValueError(f"{run.workdir} trained on its validation images (results.json "
                       f"val_held_out: {run.results.get('val_held_out')}), so its {metric} "
                       f"cannot select; run the grid with a held-out split "
                       f"(--set config.data.redraw_val_each_epoch=False)")
  groups: dict[tuple, dict[int, list[Job]]] = {}
  for job in jobs:
    others = tuple((key, value) for key, value in job.point if key not in over)
    groups.setdefault(others, {}).setdefault(job.seed, []).append(job)
  rows = []
  for others, by_seed in groups.items():
    row: dict[str, Any] = dict(others)
    if any(job.workdir not in runs for seed_jobs in by_seed.values() for job in seed_jobs):
      rows.append({**row, "selected": "incomplete: unfinished runs"})
      continue
    chosen = [max(seed_jobs, key=lambda job: runs[job.workdir].results[metric])
              for seed_jobs in by_seed.values()]
    row["selected"] = "; ".join(",".join(f"{key}={value}" for key, value in job.point
                                         if key in over) for job in chosen)
    row[metric] = round(statistics.fmean(runs[job.workdir].results[metric] for job in chosen), 4)
    row.update(summarize.describe([runs[job.workdir].results[report] for job in chosen]))
    row["grid_runs"] = len(next(iter(by_seed.values())))
    row["grid_wall_seconds"] = round(sum(runs[job.workdir].results["wall_seconds"]
                                         for seed_jobs in by_seed.values()
                                         for job in seed_jobs) / len(by_seed))
    rows.append(row)
  return rows


def finished_runs(jobs: Sequence[Job]) -> dict[str, summarize.Run]:
  """workdir -> run, for the jobs that have finished (`summarize.load_run`)."""
  return {job.workdir: run for job in jobs
          if (run := summarize.load_run(job.workdir)) is not None}


def selection_table(jobs: Sequence[Job], runs: dict[str, summarize.Run], *, metric: str,
                    report: str, over: Sequence[str]) -> str:
  """`select`'s rows as a Markdown table (`summarize.format_table`) under a title."""
  rows = select(jobs, runs, metric=metric, report=report, over=over)
  columns = list(dict.fromkeys(key for row in rows for key in row))
  table = summarize.format_table([{column: row.get(column) for column in columns}
                                  for row in rows])
  return (f"Selected by {metric} per seed over {', '.join(over)}; {report} of the selected "
          f"runs over the seeds; the grid's cost per seed:\n\n{table}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if FLAGS.select is not None:
      _check_selection_metric(FLAGS.select)
    jobs = expand(FLAGS.config, FLAGS.grid, FLAGS.set, FLAGS.seeds, FLAGS.workdir)
    grid_keys = [parse_axis(text)[0] for text in FLAGS.grid]
    if FLAGS.select is not None and not grid_keys:
      raise ValueError("--select needs a --grid to select over")
    over = FLAGS.select_over or grid_keys
    unknown = sorted(set(over) - set(grid_keys))
    if unknown:
      raise ValueError(f"--select_over {', '.join(unknown)} is not a --grid key; grid keys: "
                       f"{', '.join(grid_keys) or 'none'}")
    check_configs(jobs)
  except ValueError as error:
    reporting.say(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.dry_run:
    for job in jobs:
      reporting.say(" ".join(job.command))
    return
  try:
    statuses = run_jobs(jobs, processes=FLAGS.processes, pin_cpus=FLAGS.pin_cpus)
  except ValueError as error:
    reporting.say(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except _Stop as stopped:
    reporting.say(f"sweep stopped on {stopped}; run the same command again to resume",
                  file=sys.stderr)
    sys.exit(128 + stopped.signum)
  try:
    runs = finished_runs(jobs)
    reporting.say(summarize.format_table(summarize.summary_rows(list(runs.values()), FLAGS.metric,
                                                        FLAGS.ignore)))
    if FLAGS.select is not None:
      reporting.say("\n" + selection_table(jobs, runs, metric=FLAGS.select, report=FLAGS.metric,
                                   over=over))
  except ValueError as error:
    reporting.say(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  failed = [workdir for workdir, status in statuses.items() if status != 0]
  if failed:
    reporting.say(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
