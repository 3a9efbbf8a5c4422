"""docs/figures/policies.py on runs written here: the figure, the reward signal it prints,
and a glob that matches no run."""

import json
import os
import re
import runpy
import sys

import numpy as np

from jaxaug.augment import learned

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "docs", "figures", "policies.py")
OPS = ["ShearX", "Invert", "Equalize", "Rotate"]


def _reinforce_run(workdir, *, seed, informative):
  """A finished `policies=adversarial` run's config.json and policy/: 12 epochs of M = 4
  policies of S = 3 sub-policies of 2 ops; the rewards are the policy's Invert count
  (`informative`) or drawn apart from the policies."""
  rng = np.random.default_rng(seed)
  epochs, policies, sub_policies = 12, 4, 3
  ops = rng.integers(0, len(OPS), (epochs, policies * sub_policies, 2))
  levels = rng.integers(0, 10, ops.shape)
  inverts = (ops == OPS.index("Invert")).reshape(epochs, policies, -1).sum(-1)
  rewards = inverts + 0.1 * rng.normal(size=inverts.shape) if informative else rng.normal(
      size=inverts.shape)
  rewards = (rewards - rewards.mean(1, keepdims=True)) / rewards.std(1, keepdims=True)
  learned.write_policy(str(workdir / "policy"), learned.Policy(
      family="reinforce", settings={"names": OPS}, summary={},
      arrays={"sub_policies": np.stack([ops, levels], -1).astype(np.int32),
              "op_probability": np.full((epochs, len(OPS)), 1 / len(OPS), np.float32),
              "level_probability": np.full((epochs, 10), 0.1, np.float32),
              "rewards": rewards.astype(np.float32)}))
  (workdir / "config.json").write_text(json.dumps(
      {"reinforce": {"optim": {"learning_rate": 3.5e-4}}}))


def _script(monkeypatch, capsys, *args):
  """(status, stdout, stderr) of the script run in this process with `args`."""
  monkeypatch.setattr(sys, "argv", [SCRIPT, *args])
  try:
    runpy.run_path(SCRIPT, run_name="__main__")
    status = 0
  except SystemExit as exit_:
    status = exit_.code
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def test_the_figure_and_the_reward_signal_of_reinforce_runs(tmp_path, monkeypatch, capsys):
  for seed in range(2):
    _reinforce_run(tmp_path / f"informative,seed={seed}", seed=seed, informative=True)
  _reinforce_run(tmp_path / "uninformative,seed=0", seed=2, informative=False)
  status, stdout, stderr = _script(monkeypatch, capsys, str(tmp_path / "figure.png"),
                                   "--reinforce", str(tmp_path / "informative,*"))
  assert status == 0, stderr
  assert (tmp_path / "figure.png").stat().st_size > 0
  r2 = [float(value) for value in re.findall(r"R\^2 (-?[\d.]+)", stdout)]
  assert len(r2) == 2 and min(r2) > 0.7, stdout  # the Invert count predicts the rewards
  assert "reward per op in a policy: Invert +" in stdout, stdout  # the largest fitted value
  status, stdout, stderr = _script(monkeypatch, capsys, "--reward_signal",
                                   str(tmp_path / "uninformative,*"))
  assert status == 0, stderr
  (r2,) = [float(value) for value in re.findall(r"R\^2 (-?[\d.]+)", stdout)]
  assert r2 < 0.2, stdout


def test_a_glob_that_matches_no_run_is_one_error(tmp_path, monkeypatch, capsys):
  status, _, stderr = _script(monkeypatch, capsys, str(tmp_path / "figure.png"), "--reinforce",
                              str(tmp_path / "*"))
  assert status == 2
  assert stderr.strip().splitlines()[-1] == (
      f"policies.py: error: no run directory matches '{tmp_path / '*'}'")
