# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# Set `RUNS` in the next cell, then *Run all*. On Colab (*File → Upload notebook* with
# `notebooks/results.ipynb` from your copy of jaxaug), also set `REPO_URL` to your copy's
# clone URL, and give runs on `gs://`: a Colab runtime does not see your local runs. The
# outputs saved in this file show the two runs of the quickstart notebook's saved outputs.

# %% tags=["parameters"]
RUNS = ["runs/quickstart_notebook/*"]  # run directories or globs, local or gs://bucket/runs/*
METRIC = "test_accuracy"  # the key of results.json the table summarises
REPO_URL = ""  # your copy's clone URL: installed from there when jaxaug is missing

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


class SetupError(Exception):
  """A set-up step that cannot go on; the notebook shows its message as one line."""

  def _render_traceback_(self) -> list[str]:  # what IPython shows instead of a traceback
    return [f"SetupError: {self}"]


if importlib.util.find_spec("jaxaug") is None:
  checkout = pathlib.Path.cwd().parent
  if not (checkout / "jaxaug").is_dir() and not REPO_URL:
    raise SetupError("jaxaug is not installed, this notebook is not in a checkout and "
                     "REPO_URL is empty: set REPO_URL in the parameters cell to your copy's "
                     "clone URL")
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
# One row per setting, best first: the config keys whose values differ between settings
# (not the seeds, nor keys that change only logging, evaluation or checkpointing), the number
# of runs (seeds) and the mean, standard deviation, minimum and maximum of `METRIC`. The
# tables and legends below name each run by the same keys.

# %%
from IPython.display import HTML, Image, Markdown, display

from jaxaug import reporting

display(Markdown(summarize.format_table(summarize.summary_rows(runs, METRIC))))
SETTING_KEYS = summarize.distinguishing_keys([run.config for run in runs])


def setting(run: summarize.Run) -> str:
  """The run's values of the keys that tell the settings apart (its row of the table)."""
  return summarize.setting_label(run.config, SETTING_KEYS)


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
  axis.set_ylim(0, 1)
handles = {label: handle for handle, label in zip(*axes[1].get_legend_handles_labels())}
figure.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0),
              fontsize=8)
plt.show()

# %% [markdown]
# ## What each run learned
#
# For a method that learns augmentation: its exported policy (`policy/policy.json`: the
# family, a readable summary, the arrays `learned('<dir>')` replays), the plots the run wrote
# of what it learned over training (`plots/augmentation_params.png`, and one per learned
# vector, e.g. `plots/hba_probability.png` with a line per op of the policy; each on a fixed
# scale with the identity dashed), and the last grid of original and augmented images. A run
# with a fixed augmentation shows its spec.

# %%
import html
import json


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
  for plot in sorted((epath.Path(run.workdir) / "plots").glob("*.png")):
    if plot.name != "training.png":
      display(Image(data=plot.read_bytes()))
  grids = sorted((epath.Path(run.workdir) / "images").glob("augmented_step*.png"))
  if grids:
    print(f"original and augmented images at the end ({grids[-1].name}):")
    display(Image(data=grids[-1].read_bytes()))


for run in runs:
  show_policy(run)
