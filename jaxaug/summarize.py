"""Compare finished runs: python -m jaxaug.summarize RUN_DIR [RUN_DIR ...] [--ignore=...] [--metric=...].

Reads each run's `config.json` and `results.json` (both written by `jaxaug.main`), groups
the runs whose configurations are equal apart from the ignored keys (by default the seeds
`seed` and `data.seed`, so that a group is one setting over several seeds, and the
`distributed.*` launch settings), and prints a
Markdown table (the settings sections of the methods a run did not use, e.g. `hba.*` in a
`bilevel` run, are left out): one row per group, best mean first, with the configuration keys whose
values differ between groups, the number of runs, and the mean, sample standard deviation
(n - 1; empty for a single run), minimum and maximum of the metric. Directories without
`results.json` (runs still going) are skipped with a note on stderr. Run directories may be
local or on Google Cloud Storage; an argument with wildcards is expanded here (quote it), so
`gs://` globs work too:

  python -m jaxaug.summarize runs/r_*
  python -m jaxaug.summarize 'gs://bucket/runs/r_*'
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath

from jaxaug import reporting
from jaxaug import storage
from jaxaug.methods import METHODS

FLAGS = flags.FLAGS
DEFAULT_IGNORE = ("seed", "data.seed", "distributed")
flags.DEFINE_list("ignore", list(DEFAULT_IGNORE),
                  "Dotted config keys (with the keys under them) that do not distinguish "
                  "settings: runs differing only in these are grouped.")
flags.DEFINE_string("metric", "test_accuracy", "Key of results.json to summarise.")

STATISTICS = ("mean", "sd", "min", "max")


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished run: its directory, flattened configuration and results.json."""
  workdir: str
  config: dict[str, Any]
  results: dict[str, Any]


def load_run(workdir: str) -> Run | None:
  """The run in `workdir`, or None if it has no results.json yet.

  Raises FileNotFoundError if it has results but no config.json (not written by jaxaug.main).
  """
  results = reporting.read_json(workdir, reporting.RESULTS_FILENAME)
  if results is None:
    return None
  config = reporting.read_json(workdir, reporting.CONFIG_FILENAME)
  if config is None:
    raise FileNotFoundError(f"{workdir} has {reporting.RESULTS_FILENAME} but no "
                            f"{reporting.CONFIG_FILENAME}: it was not written by jaxaug.main")
  unused = {name for name in METHODS.names() if name != config.get("method")}
  flat = {key: value for key, value in reporting.flatten(config).items()
          if key.split(".")[0] not in unused}
  return Run(workdir, flat, results)


def _hashable(value: Any) -> Any:
  """JSON values with lists turned into tuples, so they can be grouped on."""
  return tuple(_hashable(item) for item in value) if isinstance(value, list) else value


def summary_rows(runs: Sequence[Run], metric: str,
                 ignore: Sequence[str] = DEFAULT_IGNORE) -> list[dict[str, Any]]:
  """One row per setting: the distinguishing config values, runs, mean, sd, min, max.

  Args:
    runs: finished runs.
    metric: key of each run's results (a number).
    ignore: dotted config keys left out, with the keys under them, when deciding which
      runs share a setting ("distributed" covers "distributed.process_id").

  Returns:
    Rows sorted by mean, highest first. Each holds every config key whose value is not
    the same in all runs (minus `ignore`, and minus keys some runs lack: those were written
    by a jaxaug version without the key, which then behaved as its default), then `runs`,
    `mean`, `sd` (None for one run), `min`, `max`.
  """
  for run in runs:
    if not isinstance(run.results.get(metric), (int, float)):
      raise ValueError(f"{run.workdir}/{reporting.RESULTS_FILENAME} has no number "
                       f"{metric!r}; it has {sorted(run.results)}")
  ignored = lambda key: any(key == name or key.startswith(name + ".") for name in ignore)
  shared = set.intersection(*(set(run.config) for run in runs)) if runs else set()
  keys = sorted(key for key in shared if not ignored(key))
  settings = [tuple(_hashable(run.config[key]) for key in keys) for run in runs]
  varying = [index for index in range(len(keys))
             if len({setting[index] for setting in settings}) > 1]
  groups: dict[tuple, list[float]] = {}
  for run, setting in zip(runs, settings):
    groups.setdefault(tuple(setting[i] for i in varying), []).append(run.results[metric])
  rows = []
  for values_of_keys, values in groups.items():
    row = {keys[i]: value for i, value in zip(varying, values_of_keys)}
    row.update(describe(values))
    rows.append(row)
  return sorted(rows, key=lambda row: -row["mean"])


def describe(values: Sequence[float]) -> dict[str, Any]:
  """`runs`, `mean`, `sd` (n - 1; None for one value), `min`, `max` of one or more values."""
  return dict(runs=len(values), mean=statistics.fmean(values),
              sd=statistics.stdev(values) if len(values) > 1 else None,
              min=min(values), max=max(values))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of `summary_rows`: statistics with 4 decimals, config values as given."""
  if not rows:
    return "(no finished runs)"
  columns = list(rows[0])

  def cell(column, value):
    if value is None:
      return ""
    return f"{value:.4f}" if column in STATISTICS else str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(column, row[column]) for column in columns) + " |"
            for row in rows]
  return "\n".join(lines)


def main(argv):
  patterns = argv[1:]
  if not patterns:
    raise app.UsageError("give one or more run directories, e.g. runs/r_*")
  workdirs = []
  for pattern in patterns:
    matches = storage.expand(pattern)
    if not matches:
      print(f"skipped {pattern}: matches nothing", file=sys.stderr)
    workdirs += [str(path) for path in matches]
  runs = []
  for workdir in workdirs:
    if not epath.Path(workdir).is_dir():  # e.g. a log file a glob such as runs/* also matches
      print(f"skipped {workdir}: not a directory", file=sys.stderr)
      continue
    run = load_run(workdir)
    if run is None:
      print(f"skipped {workdir}: no {reporting.RESULTS_FILENAME} (not finished)", file=sys.stderr)
    else:
      runs.append(run)
  try:
    rows = summary_rows(runs, FLAGS.metric, FLAGS.ignore)
  except ValueError as rejected:  # e.g. a --metric the runs do not have: one line, status 2
    print(f"error: {rejected}", file=sys.stderr)
    sys.exit(2)
  print(format_table(rows))


if __name__ == "__main__":
  app.run(main)
