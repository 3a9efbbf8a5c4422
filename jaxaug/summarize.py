"""Compare finished runs: python -m jaxaug.summarize RUN_DIR [RUN_DIR ...] [--flags].

Reads each run's `config.json` and `results.json` (both written by `jaxaug.main`), groups
the runs whose configurations are equal apart from the ignored keys, and prints a Markdown
table: one row per group, best mean first, with the configuration keys whose values differ
between the groups, the number of runs, and the mean, sample standard deviation (n - 1;
empty for a single run), minimum and maximum of the metric.

Ignored by default: the seeds (`seed`, `data.seed`), so that a group is one setting over
several seeds, and the keys that do not change what is trained (`BOOKKEEPING`: logging,
evaluation, checkpoint and image cadence, the input pipeline's workers and memory, the
`distributed.*` launch settings). The settings sections of the methods a run did not use
(e.g. `hba.*` in a `bilevel` run) are left out. A key its data set fixes (`FOLLOWS`:
`data.mean`, `data.std`) gets a column only when runs on one data set differ in it.
`--all_keys` shows every configuration key the runs share, equal or not.

Directories without `results.json` (runs still going) are skipped with a note on stderr.
Run directories may be local or on Google Cloud Storage; an argument with wildcards is
expanded here (quote it), so `gs://` globs work too:

  python -m jaxaug.summarize runs/r_*
  python -m jaxaug.summarize 'gs://bucket/runs/r_*'
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath

from jaxaug import reporting
from jaxaug import storage
from jaxaug.config import default_config
from jaxaug.methods import METHODS

FLAGS = flags.FLAGS
SEEDS = ("seed", "data.seed")
# Keys that change how a run is logged, evaluated, saved, fed or launched, not what it trains.
BOOKKEEPING = ("log_every_steps", "eval_every_epochs", "eval_batch_size",
               "checkpoint_every_steps", "keep_checkpoints", "image_every_epochs",
               "data.workers", "data.in_memory_max_bytes", "data.data_dir", "distributed")
DEFAULT_IGNORE = SEEDS + BOOKKEEPING
# Key -> the key that sets it (a data set's standardisation constants follow the data set).
FOLLOWS = {"data.mean": "data.dataset", "data.std": "data.dataset"}
flags.DEFINE_list("ignore", list(DEFAULT_IGNORE),
                  "Dotted config keys (with the keys under them) that do not distinguish "
                  "settings: runs differing only in these are grouped.")
flags.DEFINE_string("metric", "test_accuracy", "Key of results.json to summarise.")
flags.DEFINE_bool("all_keys", False,
                  "Show every config key the runs share, not only those that tell the "
                  "groups apart.")

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


def _ignored(key: str, ignore: Sequence[str]) -> bool:
  """Whether `key` is one of `ignore` or under one ("distributed" covers "distributed.x")."""
  return any(key == name or key.startswith(name + ".") for name in ignore)


def shared_keys(configs: Sequence[dict[str, Any]],
                ignore: Sequence[str] = DEFAULT_IGNORE) -> list[str]:
  """The flattened config keys any of `configs` has, minus `ignore`, sorted. A run lacks
  the sections of the methods it did not use, and an older run the keys added since (see
  `value`)."""
  return sorted(key for key in set().union(*configs) if not _ignored(key, ignore))


@functools.cache
def _defaults() -> dict[str, Any]:
  """The flattened default config, in its JSON form."""
  return reporting.flatten(json.loads(json.dumps(default_config().to_dict())))


def value(config: dict[str, Any], key: str) -> Any:
  """`key`'s value in a run's flattened config; None for another method's section; for a
  key its config.json lacks (written before the setting existed) today's default, which is
  how that run behaved."""
  section = key.split(".")[0]
  if section in METHODS and section != config.get("method"):
    return None
  return config[key] if key in config else _defaults().get(key)


def _compared(configs: Sequence[dict[str, Any]], key: str) -> list[Any]:
  """The values of `key` that tell runs apart: of a method's section (`bilevel.truncation`),
  those of the runs of that method only; of any other key, every run's."""
  section = key.split(".")[0]
  return [_hashable(value(config, key)) for config in configs
          if section not in METHODS or config.get("method") == section]


def _takes_one_value_per(configs: Sequence[dict[str, Any]], key: str, leader: str) -> bool:
  """Whether configs with the same `leader` value all have the same `key` value."""
  values: dict[Any, set] = {}
  for config in configs:
    values.setdefault(_hashable(value(config, leader)), set()).add(
        _hashable(value(config, key)))
  return all(len(seen) == 1 for seen in values.values())


def distinguishing_keys(configs: Sequence[dict[str, Any]],
                        ignore: Sequence[str] = DEFAULT_IGNORE) -> list[str]:
  """The `shared_keys` whose values are not the same in all `configs`, sorted.

  A key in `FOLLOWS` is left out when the key that sets it differs too and fixes its value
  (`data.mean` is no news beside `data.dataset`). These keys tell apart the settings of a
  set of runs: `summary_rows` groups on them, the results notebook names runs by them.
  """
  keys = shared_keys(configs, ignore)
  varying = [key for key in keys if len(set(_compared(configs, key))) > 1]
  return [key for key in varying
          if not (FOLLOWS.get(key) in varying
                  and _takes_one_value_per(configs, key, FOLLOWS[key]))]


def setting_label(config: dict[str, Any], keys: Sequence[str]) -> str:
  """A run's setting in words: `key=value` for each of `keys` (e.g. `distinguishing_keys`)
  of its flattened config, comma-separated; "all runs" for no keys (one setting)."""
  return ", ".join(f"{key}={value(config, key)}" for key in keys
                   if value(config, key) is not None) or "all runs"


def summary_rows(runs: Sequence[Run], metric: str, ignore: Sequence[str] = DEFAULT_IGNORE,
                 all_keys: bool = False) -> list[dict[str, Any]]:
  """One row per setting: its config values, runs, mean, sd, min, max.

  Args:
    runs: finished runs.
    metric: key of each run's results (a number).
    ignore: dotted config keys left out, with the keys under them, when deciding which
      runs share a setting ("distributed" covers "distributed.process_id").
    all_keys: give every `shared_keys` value in the rows, not only the
      `distinguishing_keys` ones (the groups are the same).

  Returns:
    Rows sorted by mean, highest first. Each holds the config keys (`distinguishing_keys`,
    or with `all_keys` every shared key), then `runs`, `mean`, `sd` (None for one run),
    `min`, `max`.
  """
  for run in runs:
    if not isinstance(run.results.get(metric), (int, float)):
      raise ValueError(f"{run.workdir}/{reporting.RESULTS_FILENAME} has no number "
                       f"{metric!r}; it has {sorted(run.results)}")
  configs = [run.config for run in runs]
  keys = shared_keys(configs, ignore) if all_keys else distinguishing_keys(configs, ignore)
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    groups.setdefault(tuple(_hashable(value(run.config, key)) for key in keys), []).append(run)
  rows = [{**{key: value(members[0].config, key) for key in keys},
           **describe([run.results[metric] for run in members])}
          for members in groups.values()]
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
      reporting.say(f"skipped {pattern}: matches nothing", file=sys.stderr)
    workdirs += [str(path) for path in matches]
  runs = []
  for workdir in workdirs:
    if not epath.Path(workdir).is_dir():  # e.g. a log file a glob such as runs/* also matches
      reporting.say(f"skipped {workdir}: not a directory", file=sys.stderr)
      continue
    run = load_run(workdir)
    if run is None:
      reporting.say(f"skipped {workdir}: no {reporting.RESULTS_FILENAME} (not finished)",
                    file=sys.stderr)
    else:
      runs.append(run)
  try:
    rows = summary_rows(runs, FLAGS.metric, FLAGS.ignore, FLAGS.all_keys)
  except ValueError as rejected:  # e.g. a --metric the runs do not have: one line, status 2
    reporting.say(f"error: {rejected}", file=sys.stderr)
    sys.exit(2)
  reporting.say(format_table(rows))


if __name__ == "__main__":
  app.run(main)
