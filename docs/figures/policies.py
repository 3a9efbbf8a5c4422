"""The REINFORCE family's learned distributions over training, as in Adversarial
AutoAugment's Figure 6: the controller's probability of each operation and of each magnitude
level, averaged over each five epochs and over the seeds; and OHL-Auto-Aug's distribution over
its elements (its largest element over the uniform share per epoch, and each operation's
probability per five epochs).

  python docs/figures/policies.py OUT.png --reinforce RUN_GLOB [--ohl RUN_GLOB]

Each RUN_GLOB matches run directories (one per seed) holding `policy/` (written by
`jaxaug.main`): `method=reinforce` runs with `reinforce.policies=adversarial` for
--reinforce, `method=ohl` runs for --ohl.
"""

import argparse
import glob

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jaxaug.augment import learned
from jaxaug.methods import ohl

EPOCHS_PER_BAR = 5  # the paper's: "the mean of each five epochs"


def read_policies(pattern: str) -> list[learned.Policy]:
  """The exported policies of the run directories matching `pattern` (ValueError if none)."""
  runs = sorted(glob.glob(pattern))
  if not runs:
    raise ValueError(f"no run directory matches {pattern!r}")
  return [learned.read_policy(f"{run}/policy") for run in runs]


def per_bar(rows: np.ndarray) -> np.ndarray:
  """[epochs, n] -> [ceil(epochs / EPOCHS_PER_BAR), n]: the mean over each five epochs."""
  starts = np.arange(0, rows.shape[0], EPOCHS_PER_BAR)
  return np.stack([rows[start:start + EPOCHS_PER_BAR].mean(0) for start in starts])


def stacked_bars(axis, rows: np.ndarray, labels, title: str) -> None:
  """One bar per five epochs, `rows` [bars, n] stacked in the order of `labels` [n]."""
  colours = plt.get_cmap("tab20")(np.arange(rows.shape[1]) % 20)
  bottom = np.zeros(rows.shape[0])
  first_epochs = np.arange(rows.shape[0]) * EPOCHS_PER_BAR + 1
  for column, (label, colour) in enumerate(zip(labels, colours)):
    axis.bar(first_epochs, rows[:, column], bottom=bottom, width=EPOCHS_PER_BAR * 0.9,
             align="edge", color=colour, label=label)
    bottom += rows[:, column]
  axis.set(title=title, xlabel="epoch", ylabel="probability", ylim=(0, 1))
  axis.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_reinforce(axes, policies: list[learned.Policy]) -> None:
  """Panels (a) ops and (b) levels of the controller's softmax, mean over the seeds."""
  names = policies[0].settings["names"]
  ops = np.mean([p.arrays["op_probability"] for p in policies], axis=0)
  levels = np.mean([p.arrays["level_probability"] for p in policies], axis=0)
  seeds = f"{len(policies)} seed{'s' if len(policies) > 1 else ''}"
  stacked_bars(axes[0], per_bar(ops), names, f"(a) controller: operations ({seeds})")
  stacked_bars(axes[1], per_bar(levels), [f"level {k}" for k in range(levels.shape[1])],
               f"(b) controller: magnitude levels ({seeds})")


def plot_ohl(axes, policies: list[learned.Policy]) -> None:
  """Panels (c) the largest element over the uniform share per epoch and (d) each
  operation's probability (either place of the pair) per five epochs, mean over the seeds."""
  probability = np.mean([p.arrays["probability"] for p in policies], axis=0)  # [epochs, E]
  names = policies[0].settings["names"]
  operations = [tuple(row) for row in policies[0].settings["operations"]]
  settings = ohl.Settings(names=tuple(names), operations=tuple(operations),  # only these two
                          copies=len(policies), steps_per_epoch=0, augment_after="",  # are read
                          strategy="")
  epochs = np.arange(1, probability.shape[0] + 1)
  axes[0].plot(epochs, probability.max(-1) * probability.shape[-1], label="largest element")
  axes[0].axhline(2.0, color="gray", linestyle="--", label="twice the uniform share")
  axes[0].axhline(1.0, color="gray", linestyle=":", label="uniform")
  axes[0].set(title="(c) OHL: largest element / uniform share", xlabel="epoch")
  axes[0].legend(fontsize=7)
  stacked_bars(axes[1], per_bar(np.asarray(ohl.operation_probability(settings, probability))),
               settings.operation_labels(), "(d) OHL: operations")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--reinforce", required=True, help="glob of adversarial reinforce runs")
  parser.add_argument("--ohl", help="glob of ohl runs")
  args = parser.parse_args()
  rows = 2 if args.ohl else 1
  figure, axes = plt.subplots(rows, 2, figsize=(13, 4.2 * rows), squeeze=False)
  plot_reinforce(axes[0], read_policies(args.reinforce))
  if args.ohl:
    plot_ohl(axes[1], read_policies(args.ohl))
  figure.tight_layout()
  figure.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
