"""The learned augmentation's size over training, averaged over each group's seeds: the mean
pixel displacement per epoch of the policies exported by bilevel-family runs and, for
augmenters with a colour part (`kind=affine_color`), the spread of their colour changes
relative to a uniform draw over the augmenter's bounds.

  python docs/figures/displacement.py OUT.png LABEL::RUN_GLOB [LABEL::RUN_GLOB ...]

Each RUN_GLOB matches run directories (one per seed) holding `policy/` (written by
`jaxaug.main`). The dashed line is the mean displacement of a uniform pad-4 random crop.
The colour panel appears when some group's augmenter has a colour part.
"""

import glob
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from flax import nnx

from jaxaug.augment import augmenters, learned
from jaxaug.methods import bilevel

DRAWS = 512  # noise draws per epoch row, the same for every row and run
COLOUR_PARAMS = ("brightness", "contrast", "saturation", "hue")


def statistics_per_epoch(run_dir: str, image_shape=(32, 32)) -> dict[str, np.ndarray]:
  """The run's learned transformation at the end of each epoch, as `augmenters.describe_params`
  names its statistics (`displacement_px_mean` in pixels, `<param>_std`, ...) -> values [E];
  and for augmenters with a colour part `colour_spread`: the standard deviation of each colour
  parameter over that of a uniform draw over its whole range (1 = uniform over
  +-`max_<param>`), averaged over the four."""
  policy = learned.read_policy(f"{run_dir}/policy")
  graphdef, _, unravel = bilevel.augmenter_template(policy.settings)
  rows = []
  for flat in np.asarray(policy.arrays["augmenter"], np.float32):
    module = nnx.merge(graphdef, *unravel(flat))
    draws = module(jax.random.normal(jax.random.key(0), (DRAWS, module.noise_dim)))
    rows.append(augmenters.describe_params(policy.settings["kind"], draws, image_shape=image_shape))
  statistics = {name: np.asarray([float(row[name]) for row in rows]) for name in rows[0]}
  if "hue_std" in statistics:
    bounds = policy.settings["bounds"]
    statistics["colour_spread"] = np.mean(
        [statistics[f"{name}_std"] / (bounds[f"max_{name}"] / np.sqrt(3)) for name in COLOUR_PARAMS],
        axis=0)
  return statistics


def crop_displacement_px(pad: int = 4) -> float:
  """Mean distance a pixel moves under a random crop of a `pad`-padded image (shifts uniform
  over -pad..pad in each axis)."""
  shifts = np.arange(-pad, pad + 1)
  dx, dy = np.meshgrid(shifts, shifts)
  return float(np.mean(np.hypot(dx, dy)))


def mean_over_seeds(runs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
  """Mean over the runs of statistic `name` per epoch, cut to the shortest run [E]."""
  length = min(len(run[name]) for run in runs)
  return np.mean([run[name][:length] for run in runs], axis=0)


def main(out: str, *groups: str) -> None:
  statistics = {}  # label -> one dict of statistics per seed
  for group in groups:
    label, pattern = group.split("::", 1)
    statistics[label] = [statistics_per_epoch(run) for run in sorted(glob.glob(pattern))]
  with_colour = [label for label, runs in statistics.items() if "colour_spread" in runs[0]]
  panels = 2 if with_colour else 1
  fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 5.2), squeeze=False)
  colours = {label: f"C{index}" for index, label in enumerate(statistics)}
  ax = axes[0, 0]
  for label, runs in statistics.items():
    mean = mean_over_seeds(runs, "displacement_px_mean")
    seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
    ax.plot(np.arange(1, len(mean) + 1), mean, color=colours[label], label=f"{label} ({seeds})")
  ax.axhline(crop_displacement_px(), color="grey", linestyle="--", label="pad-4 crop")
  ax.set_ylabel("mean displacement (px)")
  if with_colour:
    ax = axes[0, 1]
    for label in with_colour:
      mean = mean_over_seeds(statistics[label], "colour_spread")
      ax.plot(np.arange(1, len(mean) + 1), mean, color=colours[label], label=label)
    ax.axhline(1.0, color="grey", linestyle="--", label="uniform over the bounds")
    ax.set_ylabel("colour changes' sd / a uniform draw's")
  for ax in axes[0]:
    ax.set_xlabel("epoch")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))
  fig.tight_layout()
  fig.savefig(out, dpi=120)


if __name__ == "__main__":
  main(*sys.argv[1:])
