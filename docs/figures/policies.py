"""The REINFORCE family's learned distributions over training, as in Adversarial
AutoAugment's Figure 6: the controller's probability of each operation and of each magnitude
level, averaged over each five epochs and over the seeds; and OHL-Auto-Aug's distribution over
its elements (its largest element over the uniform share per epoch, and each operation's
probability per five epochs).

  python docs/figures/policies.py OUT.png [--reinforce RUN_GLOB ...] [--ohl RUN_GLOB]
  python docs/figures/policies.py --reward_signal RUN_GLOB

Each RUN_GLOB matches run directories (one per seed) holding `policy/` (written by
`jaxaug.main`): `method=reinforce` runs with `reinforce.policies=adversarial` for
--reinforce (one row of panels per --reinforce, titled with the controller's learning
rate), `method=ohl` runs for --ohl. For each --reinforce run, and each `method=reinforce`
run of --reward_signal (random policies too), it prints how much of the rewards the
policies' content predicts (`reinforce.reward_predictability`), then the fit pooled over
the glob's runs (`reinforce.reward_coefficients`).
"""

import argparse
import functools
import glob
import json

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jaxaug.augment import learned
from jaxaug.methods import ohl
from jaxaug.methods import reinforce

EPOCHS_PER_BAR = 5  # the paper's: "the mean of each five epochs"
NULL_RUNS = 10  # simulated searches whose rewards carry no information


def run_dirs(pattern: str) -> list[str]:
  """The run directories matching `pattern` (ValueError if none)."""
  runs = sorted(glob.glob(pattern))
  if not runs:
    raise ValueError(f"no run directory matches {pattern!r}")
  return runs


def read_policies(runs: list[str]) -> list[learned.Policy]:
  """The policies the runs exported."""
  return [learned.read_policy(f"{run}/policy") for run in runs]


def uninformed_largest_over_uniform(run: str, num_elements: int) -> np.ndarray:
  """[NULL_RUNS, epochs]: the largest element over the uniform share when OHL's REINFORCE
  steps get rewards without information (`ohl.uninformed_probability`), with the run's
  optimiser, copies and draws per trajectory (batch size x steps per epoch)."""
  with open(f"{run}/config.json") as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(f"{run}/results.json") as f:
    results = json.load(f)
  draws = config.batch_size * results["steps"] // results["epochs"]
  rows = jax.jit(jax.vmap(functools.partial(
      ohl.uninformed_probability, config.ohl.optim, copies=config.ohl.copies,
      num_elements=num_elements, draws=draws, trajectories=results["epochs"])))(
          rng=jnp.stack([jax.random.key(seed) for seed in range(NULL_RUNS)]))
  return np.asarray(rows).max(-1) * num_elements


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


def print_reward_signal(runs: list[str]) -> None:
  """One line per run: the leave-one-epoch-out R^2 of its rewards on its policies' content;
  then the fit pooled over the runs: the reward's change per occurrence of each op, largest
  first, and per magnitude level."""
  policies = read_policies(runs)
  names = policies[0].settings["names"]
  for run, policy in zip(runs, policies):
    if policy.settings["names"] != names:
      raise ValueError(f"{run}'s ops {policy.settings['names']} differ from {runs[0]}'s {names}")
  pairs = [(p.arrays["sub_policies"], p.arrays["rewards"]) for p in policies]
  for run, (tokens, rewards) in zip(runs, pairs):
    r2 = reinforce.reward_predictability(tokens, rewards, num_ops=len(names))
    print(f"{run}: reward predicted by the policies' content, leave-one-epoch-out R^2 {r2:.2f}")
  fitted = reinforce.reward_coefficients(pairs, num_ops=len(names))
  by_op = sorted(zip(names, fitted[:-1]), key=lambda pair: -pair[1])
  print(f"fit over the {len(runs)} run(s), reward per op in a policy: "
        + ", ".join(f"{name} {value:+.2f}" for name, value in by_op)
        + f"; per magnitude level {fitted[-1]:+.2f}")


def plot_reinforce(axes, runs: list[str]) -> None:
  """Panels: ops and levels of the controller's softmax, mean over the seeds."""
  policies = read_policies(runs)
  names = policies[0].settings["names"]
  ops = np.mean([p.arrays["op_probability"] for p in policies], axis=0)
  levels = np.mean([p.arrays["level_probability"] for p in policies], axis=0)
  with open(f"{runs[0]}/config.json") as f:
    rate = json.load(f)["reinforce"]["optim"]["learning_rate"]
  about = f"Adam {rate:g}, {len(policies)} seed{'s' if len(policies) > 1 else ''}"
  stacked_bars(axes[0], per_bar(ops), names, f"controller: operations ({about})")
  stacked_bars(axes[1], per_bar(levels), [f"level {k}" for k in range(levels.shape[1])],
               f"controller: magnitude levels ({about})")
  print_reward_signal(runs)


def plot_ohl(axes, runs: list[str]) -> None:
  """Panels: the largest element over the uniform share per epoch, beside the range of
  NULL_RUNS searches on uninformative rewards, and each operation's probability (either
  place of the pair) per five epochs, mean over the seeds."""
  policies = read_policies(runs)
  probability = np.mean([p.arrays["probability"] for p in policies], axis=0)  # [epochs, E]
  names = policies[0].settings["names"]
  operations = [tuple(row) for row in policies[0].settings["operations"]]
  settings = ohl.Settings(names=tuple(names), operations=tuple(operations),  # only these two
                          copies=len(policies), steps_per_epoch=0, augment_after="",  # are read
                          strategy="")
  epochs = np.arange(1, probability.shape[0] + 1)
  axes[0].plot(epochs, probability.max(-1) * probability.shape[-1], label="largest element")
  null = uninformed_largest_over_uniform(runs[0], probability.shape[-1])
  # probability row e is the distribution during epoch e + 1, after e steps; null row t after t + 1
  null = null[:, :len(epochs) - 1]
  axes[0].fill_between(epochs[1:], null.min(0), null.max(0), alpha=0.3,
                       color="gray", label=f"rewards without information ({NULL_RUNS} draws)")
  axes[0].axhline(2.0, color="gray", linestyle="--", label="twice the uniform share")
  axes[0].axhline(1.0, color="gray", linestyle=":", label="uniform")
  axes[0].set(title="OHL: largest element / uniform share", xlabel="epoch")
  axes[0].legend(fontsize=7, loc="upper left")
  stacked_bars(axes[1], per_bar(np.asarray(ohl.operation_probability(settings, probability))),
               settings.operation_labels(), "OHL: operations")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out", nargs="?", help="the figure's path (PNG)")
  parser.add_argument("--reinforce", action="append", default=[],
                      help="glob of adversarial reinforce runs (a row of panels each)")
  parser.add_argument("--ohl", help="glob of ohl runs")
  parser.add_argument("--reward_signal", help="glob of reinforce runs: print only")
  args = parser.parse_args()
  try:
    draw(parser, args)
  except ValueError as error:  # a glob that matches no run, a run without policy/
    parser.error(str(error))


def draw(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Prints the reward signal and draws the figure `args` ask for."""
  panels = [(plot_reinforce, pattern) for pattern in args.reinforce]
  panels += [(plot_ohl, args.ohl)] if args.ohl else []
  if args.reward_signal:
    print_reward_signal(run_dirs(args.reward_signal))
  if not panels:
    if not args.reward_signal:
      parser.error("give --reinforce, --ohl or --reward_signal")
    return
  if not args.out:
    parser.error("give the figure's path")
  figure, axes = plt.subplots(len(panels), 2, figsize=(13, 4.2 * len(panels)), squeeze=False)
  for row, (plot, pattern) in zip(axes, panels):
    plot(row, run_dirs(pattern))
  figure.tight_layout()
  figure.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
