"""The launch scripts: --help, early failures, and the commands their --dry-run prints."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from jaxaug import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("tpu_pod.sh", "slurm.sh", "single_host.sh")
CONFIG = "configs/cifar10_bilevel.py"
SPACED = "--config.augment=randaugment(2, 9)+crop"  # an override with spaces and parentheses
TPU_FLAGS = ["--name", "c10", "--zone", "us-central2-b", "--accelerator-type", "v4-32"]
SLURM_FLAGS = ["--nodes", "2", "--gpus-per-node", "4"]
# configs/smoke.py trained far longer than a test waits, a progress line each step
LONG_SMOKE_RUN = ["--config.num_epochs=1000", "--config.log_every_steps=1",
                  "--config.checkpoint_every_steps=100000"]


def launch(script, *args, env=None):
  """Runs launch/<script> with bash from the repository root; returns the CompletedProcess."""
  return subprocess.run(["bash", os.path.join("launch", script), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=60)


def dry_run(script, *args):
  """The commands a --dry-run prints, each split into words as a shell would (comments dropped)."""
  result = launch(script, "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()
          if line.strip() and not line.startswith("#")]


def flag(words, name):
  """The value of `name=value` in words (the first one)."""
  values = [word.split("=", 1)[1] for word in words if word.startswith(name + "=")]
  assert values, f"{name} not in {words}"
  return values[0]


def jaxaug_args(words):
  """The arguments after `-m jaxaug.main` in words."""
  start = words.index("jaxaug.main") + 1
  return words[start:]


def path_without(tmp_path, *missing):
  """An environment whose PATH has bash, git and a few tools, but none of `missing`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("bash", "git", "dirname", "basename", "realpath"):
    if tool not in missing and shutil.which(tool):
      os.symlink(shutil.which(tool), bin_dir / tool)
  return {**os.environ, "PATH": str(bin_dir)}


def test_launch_holds_only_the_scripts_a_user_runs():
  entries = os.listdir(os.path.join(ROOT, "launch"))
  assert sorted(entry for entry in entries if entry != "lib") == sorted(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  result = launch(script, "--help")
  assert result.returncode == 0
  assert result.stdout.startswith(f"Usage: launch/{script}")
  assert "--dry-run" in result.stdout


@pytest.mark.parametrize("script, args, message", [
    ("tpu_pod.sh", TPU_FLAGS[2:] + [CONFIG, "w"], "--name is required"),
    ("tpu_pod.sh", ["--name", "--zone", "z"], "--name needs a value"),
    ("tpu_pod.sh", TPU_FLAGS + [CONFIG], "give CONFIG and WORKDIR"),
    ("tpu_pod.sh", TPU_FLAGS + ["configs/nope.py", "w"], "config file configs/nope.py not found"),
    ("tpu_pod.sh", TPU_FLAGS[:-1] + ["v9-8", CONFIG, "w"], "no default --runtime-version"),
    ("tpu_pod.sh", TPU_FLAGS + ["--config.seed=1", CONFIG, "w"], "go after CONFIG WORKDIR"),
    ("slurm.sh", [CONFIG, "w"], "--gpus-per-node is required"),
    ("slurm.sh", ["--gpus-per-node", "four", CONFIG, "w"], "must be a positive integer"),
    ("single_host.sh", ["--gpus", "all", CONFIG, "w"], "--gpus must be a list"),
    ("single_host.sh", ["--bogus", CONFIG, "w"], "unknown option --bogus"),
])
def test_bad_arguments_fail_early(script, args, message):
  result = launch(script, "--dry-run", *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert not result.stdout  # nothing printed as if it would run


@pytest.mark.parametrize("script, args, tool", [
    ("tpu_pod.sh", TPU_FLAGS, "gcloud"),
    ("slurm.sh", SLURM_FLAGS, "sbatch"),
    ("single_host.sh", [], "python"),
])
def test_missing_tool_fails_early(tmp_path, script, args, tool):
  result = launch(script, *args, CONFIG, "w", env=path_without(tmp_path, tool, "gcloud", "sbatch"))
  assert result.returncode == 2
  assert f"{tool} not found on PATH" in result.stderr


def test_tpu_pod_lifecycle():
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  commands = dry_run("tpu_pod.sh", *TPU_FLAGS, "--spot", "--project", "my proj", CONFIG,
                     "gs://bucket/runs/c10", "--config.num_epochs=100", SPACED)
  gcloud = [words for words in commands if words[0] == "gcloud"]
  assert [words[4] for words in gcloud] == ["create", "describe", "scp", "ssh", "ssh", "delete"]
  for words in gcloud:
    assert words[:4] == ["gcloud", "compute", "tpus", "queued-resources"]
    assert flag(words, "--zone") == "us-central2-b"
    assert flag(words, "--project") == "my proj"
  create, describe, scp, install, train, delete = gcloud
  for words in (create, describe, install, train, delete):
    assert words[5] == "c10"
  assert flag(create, "--node-id") == "c10"
  assert flag(create, "--accelerator-type") == "v4-32"
  assert flag(create, "--runtime-version") == "tpu-ubuntu2204-base"
  assert "--spot" in create
  assert flag(describe, "--format") == "value(state.state)"
  for words in (scp, install, train):
    assert "--worker=all" in words and "--node=all" in words
  archive = [words for words in commands if words[0] == "git"][0]
  assert archive[-1] == commit and scp[5] == flag(archive, "--output")
  assert scp[6] == "c10:"
  assert commit in flag(install, "--command") and "jax[tpu]" in flag(install, "--command")
  assert '"$HOME/jaxaug[gcs]"' in flag(install, "--command")  # gs:// workdirs work
  remote = shlex.split(flag(train, "--command"))
  assert jaxaug_args(remote) == ["--config", CONFIG, "--workdir", "gs://bucket/runs/c10",
                                 "--config.distributed.enabled=True", "--config.num_epochs=100",
                                 SPACED]
  assert train[-5:] == ["2>&1", "|", "tee", "-a", "logs/c10.log"]
  assert "--force" in delete and "--quiet" in delete


@pytest.mark.parametrize("accelerator, runtime", [
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-32", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"), ("v3-32", "tpu-ubuntu2204-base")])
def test_tpu_pod_runtime_version(accelerator, runtime):
  create = dry_run("tpu_pod.sh", *TPU_FLAGS[:-1], accelerator, CONFIG, "gs://b/r")[0]
  assert flag(create, "--runtime-version") == runtime
  assert "--spot" not in create and not any(word.startswith("--project") for word in create)
  create = dry_run("tpu_pod.sh", *TPU_FLAGS[:-1], accelerator, "--runtime-version=custom",
                   CONFIG, "gs://b/r")[0]
  assert flag(create, "--runtime-version") == "custom"


def test_tpu_pod_keep_prints_the_delete_as_a_comment():
  result = launch("tpu_pod.sh", "--dry-run", "--keep", *TPU_FLAGS, CONFIG, "gs://b/r")
  assert "queued-resources delete" not in "".join(
      line for line in result.stdout.splitlines() if not line.startswith("#"))
  assert "--keep: the slice is kept; delete it with: gcloud" in result.stdout


def test_tpu_pod_needs_a_committed_config(tmp_path):
  config = tmp_path / "uncommitted.py"
  config.write_text("")
  result = launch("tpu_pod.sh", "--dry-run", *TPU_FLAGS, str(config), "gs://b/r")
  assert result.returncode == 2 and "is not in a git checkout" in result.stderr


def test_slurm_one_process_per_gpu():
  mkdir, sbatch = dry_run("slurm.sh", *SLURM_FLAGS, "--time", "24:00:00", "--partition=gpu",
                          "--sbatch-flag=--constraint=a100", CONFIG, "/shared/runs/c 10", SPACED)
  assert mkdir == ["mkdir", "-p", "logs"]
  assert sbatch[0] == "sbatch"
  assert flag(sbatch, "--nodes") == "2"
  assert flag(sbatch, "--ntasks-per-node") == "4"
  assert flag(sbatch, "--gpus-per-task") == "1"
  assert flag(sbatch, "--time") == "24:00:00"
  assert flag(sbatch, "--partition") == "gpu"
  assert flag(sbatch, "--constraint") == "a100"
  assert flag(sbatch, "--signal") == "TERM@120"
  assert flag(sbatch, "--output") == "logs/%x-%j.out"
  assert flag(sbatch, "--job-name") == "jaxaug-c 10"
  step = shlex.split(flag(sbatch, "--wrap"))
  assert step[0] == "srun"
  assert jaxaug_args(step) == ["--config", CONFIG, "--workdir", "/shared/runs/c 10",
                               "--config.distributed.enabled=True", SPACED]


def test_single_host_one_process():
  (command,) = dry_run("single_host.sh", CONFIG, "runs/c 10", SPACED)
  assert command[:3] == ["python", "-m", "jaxaug.main"]
  assert jaxaug_args(command) == ["--config", CONFIG, "--workdir", "runs/c 10", SPACED]
  mkdir, command = dry_run("single_host.sh", "--gpus=0,1", "--log", "logs/my run.log", CONFIG,
                           "runs/c10")
  assert mkdir == ["mkdir", "-p", "logs"]
  assert command[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1"]
  assert command[-4:] == ["|", "tee", "-a", "logs/my run.log"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_single_host_stops_on_a_signal_with_a_checkpoint_and_a_whole_log(
    tmp_path, sigint_not_ignored, signum, to_group):
  # SIGINT to the process group is Ctrl-C in a terminal; SIGTERM to the script, a `kill`.
  workdir, log = tmp_path / "run", tmp_path / "logs" / "run.log"
  env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
  env.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]]),
             PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]), XLA_FLAGS="")
  process = subprocess.Popen(
      ["bash", "launch/single_host.sh", "--log", str(log), "configs/smoke.py", str(workdir),
       *LONG_SMOKE_RUN], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, start_new_session=True)
  watchdog = threading.Timer(300, process.kill)  # a run that hangs before training ends the wait
  watchdog.start()
  try:
    # each line comes when it is printed, not at the exit
    progress = next(line for line in process.stdout if line.startswith("step "))
    watchdog.cancel()
    if to_group:
      os.killpg(process.pid, signum)
    else:
      process.send_signal(signum)
    rest, _ = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 128 + signum, rest
  stopped = f"stopped on {signal.Signals(signum).name} after step (\\d+); checkpoint saved"
  step = int(re.search(stopped, rest).group(1))
  assert checkpoint.Checkpointer(str(workdir)).latest_step() == step
  logged = log.read_text()
  assert logged.startswith("+ python -m jaxaug.main") and progress in logged
  assert re.search(stopped, logged).group(1) == str(step)


@pytest.mark.parametrize("word", ["", "plain", "a b", "it's", "x$y", 'say "hi"', "back\\slash",
                                  "wow!", "`tick`", "--opt=a b", "--opt=", "~/home", "a\nb"])
def test_quote_round_trips(word):
  result = subprocess.run(["bash", "-c", 'source launch/lib/common.sh; quote "$1"', "bash", word],
                          cwd=ROOT, capture_output=True, text=True, check=True)
  assert shlex.split(result.stdout) == [word]
  echoed = subprocess.run(["bash", "-c", f"printf %s {result.stdout}"], capture_output=True,
                          text=True, check=True)
  assert echoed.stdout == word
