# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # jaxaug results: compare finished runs
#
# Reads the workdirs of finished runs, local or on Google Cloud Storage (`gs://`), and shows
# the `python -m jaxaug.summarize` table (runs that differ only in their seeds grouped), the
# accuracy curves, and what each run learned about augmentation, whatever the method (the
# `bilevel` augmenter's transformation, the `hba` schedule of op probabilities and magnitudes,
# the `reinforce` controller's op and level probabilities and rewards per epoch, ...). It
# needs no accelerator.
#
# Set `RUNS` in the next cell, then *Run all*.

# %% tags=["parameters"]
RUNS = ["runs/*"]  # run directories or globs, local or gs://bucket/path/runs/*
METRIC = "test_accuracy"  # the key of results.json the table summarises
REPO_URL = "https://github.com/jaxaug/jaxaug"  # installed from here when jaxaug is missing

# %% [markdown]
# ## Install and sign in
#
# Installs jaxaug (from the checkout holding this notebook, else from `REPO_URL`) unless it is
# importable. On Colab, reading `gs://` asks you to sign in with a Google account that can
# read the bucket; elsewhere `gcloud auth application-default login` does it (and, without
# TensorFlow, jaxaug's `gcs` extra reads the bucket).

# %%
import importlib.util
import pathlib
import subprocess
import sys

if importlib.util.find_spec("jaxaug") is None:
  checkout = pathlib.Path.cwd().parent
  source = str(checkout) if (checkout / "jaxaug").is_dir() else f"git+{REPO_URL}"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)
  importlib.invalidate_caches()
if any(pattern.startswith("gs://") for pattern in RUNS) and "google.colab" in sys.modules:
  from google.colab import auth

  auth.authenticate_user()

# %% [markdown]
# ## The runs
#
# A directory is a finished run when it has `results.json`; the others are listed and
# skipped. Runs are read where they are, local or on `gs://`, by the code
# `python -m jaxaug.summarize` uses (again on each run of a cell, so runs still going are
# brought up to date).

# %%
from etils import epath

from jaxaug import storage
from jaxaug import summarize


def load_runs(patterns: list[str]) -> list[summarize.Run]:
  """The finished runs `patterns` name, in order; prints what it skips and why."""
  runs = []
  for pattern in patterns:
    paths = [path for path in storage.expand(pattern) if path.is_dir()]
    if not paths:
      print(f"{pattern}: no directories")
    for path in paths:
      run = summarize.load_run(str(path))
      if run is not None:
        runs.append(run)
      elif (path / "config.json").exists():
        print(f"skipped {path}: not finished (no results.json yet)")
      else:
        print(f"skipped {path}: not a jaxaug run (no config.json)")
  return runs


runs = load_runs(RUNS)
print(f"{len(runs)} finished run(s)")

# %% [markdown]
# ## Summary over seeds
#
# One row per setting, best first: the config keys whose values differ between settings, the
# number of runs (seeds) and the mean, standard deviation, minimum and maximum of `METRIC`.

# %%
from IPython.display import HTML, Image, Markdown, display

from jaxaug import reporting

rows = summarize.summary_rows(runs, METRIC)
display(Markdown(summarize.format_table(rows)))
SETTING_KEYS = [key for key in (rows[0] if rows else {})
                if key not in ("runs", *summarize.STATISTICS)]


def setting(run: summarize.Run) -> str:
  """The run's values of the keys that tell the settings apart (its row of the table)."""
  return ", ".join(f"{key}={run.config[key]}" for key in SETTING_KEYS) or "all runs"


table = [f"| run | setting | {METRIC} | steps | training time |", "|---|---|---|---|---|"]
table += [f"| {run.workdir} | {setting(run)} | {run.results[METRIC]:.4f} | {run.results['steps']} "
          f"| {reporting.format_duration(run.results['wall_seconds'])} |" for run in runs]
display(Markdown("\n".join(table)))

# %% [markdown]
# ## Accuracy over training
#
# Each evaluation's accuracy on the validation and the test set; one line per run, one colour
# per setting.

# %%
import math

import matplotlib.pyplot as plt


def accuracy_curve(run: summarize.Run, split: str) -> tuple[list[float], list[float]]:
  """(epochs, accuracies) of the run's evaluations on `split` ("val" or "test")."""
  steps_per_epoch = run.results["steps"] / run.results["epochs"]
  points = [(record["step"] / steps_per_epoch, record["accuracy"])
            for record in reporting.read_metrics(run.workdir) if record["split"] == split]
  return [epoch for epoch, _ in points], [accuracy for _, accuracy in points]


colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(map(setting, runs)))}
figure, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for axis, split in zip(axes, ("val", "test")):
  for run in runs:
    label = setting(run)
    axis.plot(*accuracy_curve(run, split), marker=".", color=colours[label], label=label)
  axis.set_title(f"{split} accuracy")
  axis.set_xlabel("epoch")
handles = {label: handle for handle, label in zip(*axes[1].get_legend_handles_labels())}
figure.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0),
              fontsize=8)
plt.show()

# %% [markdown]
# ## What each run learned
#
# For a method that learns augmentation: its exported policy (`policy/policy.json`: the
# family, a readable summary, the arrays `learned('<dir>')` replays), the learned scalars over
# training, each learned vector over training as a heatmap (e.g. `hba/probability`: one row
# per op of the policy), and the last grid of original and augmented images. A run with a
# fixed augmentation shows its spec.

# %%
import html
import json


def learned_records(workdir: str) -> list[dict]:
  return [record for record in reporting.read_metrics(workdir) if record["split"] == "learned"]


def plot_learned_scalars(records: list[dict], columns: int = 4) -> None:
  """One small plot per learned scalar against the step."""
  names = sorted({name for record in records for name in record
                  if name not in ("step", "split") and "[" not in name})
  if not names:
    return
  rows = math.ceil(len(names) / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
  for axis, name in zip(axes.flat, names):
    points = [(record["step"], record[name]) for record in records if record.get(name) is not None]
    axis.plot(*zip(*points), marker=".")
    axis.set_title(name, fontsize=9)
  for axis in axes.flat[len(names):]:
    axis.set_visible(False)
  figure.supxlabel("step")
  figure.tight_layout()
  plt.show()


def plot_learned_vectors(records: list[dict]) -> None:
  """A heatmap per learned vector ("name[component]" entries): components x logged steps."""
  vectors: dict[str, list[str]] = {}
  for record in records:
    for key in record:
      if key.endswith("]") and "[" in key:
        name, component = key[:-1].split("[", 1)
        vectors.setdefault(name, [])
        if component not in vectors[name]:
          vectors[name].append(component)
  steps = [record["step"] for record in records]
  ticks = range(0, len(steps), max(1, len(steps) // 8))
  for name, components in vectors.items():
    values = [[record.get(f"{name}[{component}]", math.nan) for record in records]
              for component in components]
    figure, axis = plt.subplots(figsize=(8, 0.8 + 0.16 * len(components)))
    image = axis.imshow(values, aspect="auto", interpolation="nearest")
    axis.set_yticks(range(len(components)), components, fontsize=7)
    axis.set_xticks(ticks, [steps[i] for i in ticks])
    axis.set_xlabel("step")
    axis.set_title(name)
    figure.colorbar(image, ax=axis)
    plt.show()


def show_policy(run: summarize.Run) -> None:
  """What `run` learned about augmentation, or its fixed augmentation."""
  display(Markdown(f"### {run.workdir}\n`method={run.config['method']}`, "
                   f"`augment={run.config['augment']}`"))
  policy_file = epath.Path(run.workdir) / "policy" / "policy.json"
  if not policy_file.exists():
    print("no learned policy: a fixed augmentation")
    return
  policy = json.loads(policy_file.read_text())
  arrays = ", ".join(f"{name} {shape}" for name, shape in policy["arrays"].items())
  print(f"family {policy['family']}: {policy['summary'].get('what', '')}\n"
        f"{policy['schedule_rows']} schedule row(s); arrays: {arrays}")
  summary = html.escape(json.dumps(policy["summary"], indent=1))
  display(HTML(f"<details><summary>policy summary</summary><pre>{summary}</pre></details>"))
  records = learned_records(run.workdir)
  plot_learned_scalars(records)
  plot_learned_vectors(records)
  grids = sorted((epath.Path(run.workdir) / "images").glob("augmented_step*.png"))
  if grids:
    print(f"original and augmented images at the end ({grids[-1].name}):")
    display(Image(data=grids[-1].read_bytes()))


for run in runs:
  show_policy(run)
