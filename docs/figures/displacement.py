"""The learned transformation's size over training: mean pixel displacement per epoch of the
policies exported by bilevel-family runs, averaged over each group's seeds.

  python docs/figures/displacement.py OUT.png LABEL::RUN_GLOB [LABEL::RUN_GLOB ...]

Each RUN_GLOB matches run directories (one per seed) holding `policy/` (written by
`jaxaug.main`). The dashed line is the mean displacement of a uniform pad-4 random crop.
"""

import glob
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxaug.augment import augmenters, learned  # noqa: E402
from jaxaug.methods import bilevel  # noqa: E402
from flax import nnx  # noqa: E402

DRAWS = 512  # noise draws per epoch row, the same for every row and run


def displacement_per_epoch(run_dir: str, image_shape=(32, 32)) -> np.ndarray:
  """Mean displacement in pixels of the run's learned transformation at the end of each epoch [E]."""
  policy = learned.read_policy(f"{run_dir}/policy")
  graphdef, _, unravel = bilevel.augmenter_template(policy.settings)
  rows = []
  for flat in np.asarray(policy.arrays["augmenter"], np.float32):
    module = nnx.merge(graphdef, *unravel(flat))
    draws = module(jax.random.normal(jax.random.key(0), (DRAWS, module.noise_dim)))
    rows.append(float(augmenters.mean_displacement_px(policy.settings["kind"], draws, image_shape)))
  return np.asarray(rows)


def crop_displacement_px(pad: int = 4) -> float:
  """Mean distance a pixel moves under a random crop of a `pad`-padded image (shifts uniform
  over -pad..pad in each axis)."""
  shifts = np.arange(-pad, pad + 1)
  dx, dy = np.meshgrid(shifts, shifts)
  return float(np.mean(np.hypot(dx, dy)))


def main(out: str, *groups: str) -> None:
  fig, ax = plt.subplots(figsize=(6.4, 4))
  for group in groups:
    label, pattern = group.split("::", 1)
    curves = [displacement_per_epoch(run) for run in sorted(glob.glob(pattern))]
    length = min(len(c) for c in curves)
    mean = np.mean([c[:length] for c in curves], axis=0)
    seeds = f"{len(curves)} seed" + ("s" if len(curves) > 1 else "")
    ax.plot(np.arange(1, length + 1), mean, label=f"{label} ({seeds})")
  ax.axhline(crop_displacement_px(), color="grey", linestyle="--", label="pad-4 crop")
  ax.set_xlabel("epoch")
  ax.set_ylabel("mean displacement (px)")
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=120)


if __name__ == "__main__":
  main(*sys.argv[1:])
