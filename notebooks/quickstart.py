# ---
# jupyter:
#   accelerator: TPU
#   colab:
#     gpuType: V5E1
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
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
# # jaxaug quickstart: learn the data augmentation with the classifier
#
# This notebook trains a small CNN on CIFAR-10 together with an **augmenter network** that
# turns noise into an affine transformation and a colour change per image. The augmenter
# learns by online bilevel optimisation (Mounsaveng et al., WACV 2021): it follows the
# gradient of the validation loss through the classifier's update. A run of the same length
# with the hand-designed crop + flip augmentation (`predefined`) is the reference.
#
# **On Colab** the notebook asks for a TPU (*Runtime → Change runtime type*: a v5e chip, with
# JAX preinstalled); a GPU or the CPU work too, the CPU slowly (about 10 minutes for both runs
# at the default length). Without network, when CIFAR-10 cannot be downloaded, it uses
# scikit-learn's bundled 8x8 digits instead.
#
# **Getting it onto Colab** from your copy of jaxaug: *File → Upload notebook* and pick
# `notebooks/quickstart.ipynb` (or, if your copy is on GitHub, *File → Open notebook →
# GitHub* and its address). Colab then has the notebook but not the code: set `REPO_URL` in
# the next cell to your copy's clone URL (a private repository needs a URL with an access
# token). Run from a checkout (Jupyter in `notebooks/`), it uses that checkout instead.
#
# The settings are in the next cell; *Runtime → Run all* runs everything. The outputs saved
# in this file come from running it as it is on a 2-core CPU without network, so on the
# digits; on a TPU with CIFAR-10 the same cells show the same kinds of tables and plots.

# %% tags=["parameters"]
DATASET = "cifar10"  # a tfds name (the first use downloads and prepares it, ~2 minutes)
NUM_EPOCHS = 20  # of each of the two runs (docs/results.md's CIFAR-10 runs use 60)
WORKDIR = "runs/quickstart_notebook"  # WORKDIR/bilevel and WORKDIR/predefined; or gs://bucket/path
SMOKE = False  # True: 160 training images and batches of 16 (what the tests run)
REPO_URL = ""  # your copy's clone URL: cloned when this notebook is not in a checkout

# %% [markdown]
# ## Install
#
# Uses the jaxaug checkout this notebook is in, or clones `REPO_URL`, and installs it
# unless `jaxaug` is importable already. On a TPU runtime it installs the `jax[tpu]` that
# matches the JAX it ends up with.

# %%
import importlib.util
import os
import pathlib
import subprocess
import sys


class SetupError(Exception):
  """A set-up step that cannot go on; the notebook shows its message as one line."""

  def _render_traceback_(self) -> list[str]:  # what IPython shows instead of a traceback
    return [f"SetupError: {self}"]


def find_checkout() -> pathlib.Path | None:
  """The jaxaug checkout holding this notebook, or an earlier clone in ./jaxaug; else None."""
  for candidate in (pathlib.Path.cwd().parent, pathlib.Path.cwd(), pathlib.Path("jaxaug")):
    if (candidate / "configs" / "quickstart.py").is_file():
      return candidate.resolve()
  return None


REPO = find_checkout()
if REPO is None and not REPO_URL:
  raise SetupError("no jaxaug checkout around this notebook and REPO_URL is empty: set "
                   "REPO_URL in the parameters cell to your copy's clone URL")
if REPO is None:
  subprocess.run(["git", "clone", "--depth=1", REPO_URL, "jaxaug"], check=True)
  REPO = pathlib.Path("jaxaug").resolve()
if importlib.util.find_spec("jaxaug") is None:
  tpu = ["jax[tpu]"] if importlib.util.find_spec("libtpu") else []
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(REPO), *tpu], check=True)
  importlib.invalidate_caches()
print(f"configs from {os.path.relpath(REPO / 'configs')}")

# %% [markdown]
# ## The accelerator
#
# JAX finds the TPU, GPU or CPU by itself (no set-up call: Colab's TPU runtime is a TPU VM).
# One process uses all the devices it finds, splitting each batch over them.

# %%
import jax

devices = jax.devices()
print(f"backend: {jax.default_backend()}, {len(devices)} x {devices[0].device_kind}")
if jax.default_backend() == "cpu":
  print("No accelerator: on Colab pick a TPU or GPU under Runtime > Change runtime type.")

# %% [markdown]
# ## The two runs
#
# Both runs use the same data, model and length; they differ in the augmentation:
# `bilevel` learns it, the reference uses a fixed one. On CIFAR-10 they are
# `configs/cifar10_reduced_cnn.py` (4,000 training images, 800 of them the validation set the
# augmenter learns from, a 6-conv CNN) with crop + flip as the reference; on the digits
# `configs/quickstart.py` (a small CNN on 16x16 upscaled digits, which must not be flipped)
# with random crops.

# %%
import ml_collections

from jaxaug import data

SMOKE_SETTINGS = {"data.train_examples": 160, "batch_size": 16, "val_batch_size": 16,
                  "eval_batch_size": 64, "log_every_steps": 4, "eval_every_epochs": 0.5,
                  "image_every_epochs": 0.5, "checkpoint_every_steps": 1000}


def load_config(name: str) -> ml_collections.ConfigDict:
  """`get_config()` of configs/<name>.py in the checkout."""
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def can_load(dataset: str) -> bool:
  """Whether jaxaug can load `dataset` (downloading a tfds one if needed); says why not."""
  config = data.default_data_config()
  config.dataset = dataset
  try:
    data.load_dataset(config)
  except Exception as error:  # no network, unknown name, ...: each says what went wrong
    print(f"{dataset} cannot be loaded ({type(error).__name__}: {error})\n"
          "using scikit-learn's bundled digits instead")
    return False
  return True


def make_configs(dataset: str) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(bilevel config, reference config) on `dataset`, or on the digits if it cannot be loaded."""
  if can_load(dataset):
    bilevel = load_config("cifar10_reduced_cnn")
    bilevel.data.dataset = dataset
    reference_augment = "predefined"  # pad-4 crop + horizontal flip
  else:
    bilevel = load_config("quickstart")
    reference_augment = "crop(padding=2)"  # digits are not flip-invariant
  bilevel.num_epochs = NUM_EPOCHS
  if SMOKE:
    bilevel.update_from_flattened_dict(SMOKE_SETTINGS)
  reference = bilevel.copy_and_resolve_references()
  reference.method = "supervised"
  reference.augment = reference_augment
  return bilevel, reference


bilevel_config, reference_config = make_configs(DATASET)
print(f"{bilevel_config.data.dataset}, {bilevel_config.model}, {NUM_EPOCHS} epochs: "
      f"bilevel (augment={bilevel_config.augment!r} + a learned "
      f"{bilevel_config.bilevel.augmenter.kind} augmenter) vs supervised "
      f"(augment={reference_config.augment!r})")

# %% [markdown]
# ## Train with a learned augmentation
#
# A progress line every few steps. Running the cell again continues the run from its newest
# checkpoint in the workdir (or evaluates it again when it is finished); interrupting the
# kernel saves a checkpoint first.

# %%
from jaxaug import train

BILEVEL_DIR = f"{WORKDIR}/bilevel"
bilevel_results = train.train_and_evaluate(bilevel_config, BILEVEL_DIR)

# %% [markdown]
# ### Original and augmented images
#
# Each grid shows training images (top row) and two draws of the augmenter for them, at the
# start of training and at its end.

# %%
from etils import epath
from IPython.display import Image, display


def show_grids(workdir: str) -> None:
  """The first and the last `images/augmented_step*.png` a run wrote, with their step."""
  grids = sorted((epath.Path(workdir) / "images").glob("augmented_step*.png"))
  for grid in dict.fromkeys([grids[0], grids[-1]]):
    print(f"step {int(grid.stem.removeprefix('augmented_step'))}:")
    display(Image(data=grid.read_bytes()))


show_grids(BILEVEL_DIR)

# %% [markdown]
# ### The learned transformation and the training curves
#
# The plots the run wrote in `plots/`. `augmentation_params.png`: the augmenter's output over a
# batch of noise at each logged step, each parameter's mean (line) and standard deviation
# (band), on the range the augmenter may reach by default: translations in pixels, the
# affine matrix entries around the identity's 1 and 0. The dashed line is the identity (no
# change). `training.png`: loss and accuracy on the training batches, the validation set and
# the test set.

# %%
def show_plots(workdir: str, names: tuple[str, ...]) -> None:
  """The run's `plots/<name>` images that exist, in order."""
  for name in names:
    path = epath.Path(workdir) / "plots" / name
    if path.exists():
      display(Image(data=path.read_bytes()))


show_plots(BILEVEL_DIR, ("augmentation_params.png", "training.png"))

# %% [markdown]
# ## The reference: a fixed augmentation, the same length

# %%
REFERENCE_DIR = f"{WORKDIR}/predefined"
reference_results = train.train_and_evaluate(reference_config, REFERENCE_DIR)
show_plots(REFERENCE_DIR, ("training.png",))

# %% [markdown]
# ## Test accuracy
#
# On the whole test set, at the end and at each evaluation during training. With one seed and
# a short run the difference is noisy: docs/results.md gives the spread over seeds.

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown

from jaxaug import reporting

RUNS = {
    f"bilevel (learned {bilevel_config.bilevel.augmenter.kind})": (BILEVEL_DIR, bilevel_results),
    f"supervised ({reference_config.augment})": (REFERENCE_DIR, reference_results),
}


def test_curve(workdir: str, results: dict) -> tuple[list[float], list[float]]:
  """(epochs, test accuracies) of a run's evaluations."""
  steps_per_epoch = results["steps"] / results["epochs"]
  points = [(record["step"] / steps_per_epoch, record["accuracy"])
            for record in reporting.read_metrics(workdir) if record["split"] == "test"]
  return [epoch for epoch, _ in points], [accuracy for _, accuracy in points]


table = ["| run | test accuracy | training time |", "|---|---|---|"]
table += [f"| {label} | {results['test_accuracy']:.2%} | "
          f"{reporting.format_duration(results['wall_seconds'])} |"
          for label, (_, results) in RUNS.items()]
display(Markdown("\n".join(table)))
for label, (workdir, results) in RUNS.items():
  plt.plot(*test_curve(workdir, results), marker="o", label=label)
plt.xlabel("epoch")
plt.ylabel("test accuracy")
plt.legend()
plt.show()

# %% [markdown]
# ## Next
#
# - The learned augmenter is in `WORKDIR/bilevel/policy/`; `--config.augment="learned('<dir>')"`
#   replays it for another model (see docs/methods.md).
# - `notebooks/results.ipynb` compares finished runs, e.g. several seeds of each method.
# - Longer runs and the paper's experiments: the configs in docs/methods.md, on a TPU pod slice with
#   `launch/tpu_pod.sh`.
