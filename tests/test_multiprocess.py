"""Two JAX processes (4 CPU devices each) against one process with 8 devices.

Each process reads its own shard of every batch; the step, the checkpoints and the
results must not depend on how the 8 devices are split into processes, and SIGTERM to
one process must stop all of them at the same step with a checkpoint there.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import jax
import numpy as np
import pytest

from jaxaug import checkpoint
from jaxaug import train
from test_train import smoke_config

pytestmark = pytest.mark.slow  # end to end: see README, Tests

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
PROCESSES = 2


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    return probe.getsockname()[1]


def _start_workers(workdir, method, overrides, seconds_per_batch=0.0):
  """The worker processes; each one's stderr goes to a temporary file (`worker.stderr_file`)."""
  spec = json.dumps({"method": method, "overrides": overrides,
                     "seconds_per_batch": seconds_per_batch})
  port = _free_port()
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  workers = []
  for index in range(PROCESSES):
    stderr_file = tempfile.TemporaryFile("w+")
    worker = subprocess.Popen([sys.executable, WORKER, str(index), str(PROCESSES), str(port),
                               str(workdir), spec], stdout=subprocess.PIPE,
                              stderr=stderr_file, text=True, env=env)
    worker.stderr_file = stderr_file
    workers.append(worker)
  return workers


def _stderr(worker) -> str:
  worker.stderr_file.seek(0)
  return worker.stderr_file.read()[-3000:]


def _finish(workers, timeout=300):
  """The `RESULT`/`STOPPED` line of each worker (asserting each exited cleanly)."""
  lines = []
  try:
    for worker in workers:
      stdout, _ = worker.communicate(timeout=timeout)
      assert worker.returncode == 0, _stderr(worker)
      lines.append([line for line in stdout.splitlines()
                    if line.startswith(("RESULT ", "STOPPED "))][-1])
  finally:
    for worker in workers:
      worker.kill()
  return lines


def _assert_states_close(workdir_a, workdir_b):
  leaves_a = checkpoint.Checkpointer(str(workdir_a)).restore_arrays()
  leaves_b = checkpoint.Checkpointer(str(workdir_b)).restore_arrays()
  assert leaves_a.keys() == leaves_b.keys()
  for key in leaves_a:  # only the order of cross-process sums differs
    np.testing.assert_allclose(leaves_a[key], leaves_b[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.fixture(autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, "conftest simulates 8 CPU devices"


@pytest.mark.parametrize("method", ["supervised", "bilevel"])
def test_two_processes_train_like_one_process_with_as_many_devices(tmp_path, method):
  overrides = {"num_epochs": 1}
  lines = _finish(_start_workers(tmp_path / "two", method, overrides))
  reference = train.train_and_evaluate(smoke_config(method, overrides), str(tmp_path / "one"))

  results = [json.loads(line.removeprefix("RESULT ")) for line in lines]
  assert results[0]["devices"] == 8
  for result in results:  # every process reports the same global evaluation
    assert result["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=1e-6)
  _assert_states_close(tmp_path / "two", tmp_path / "one")
  records = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
  keys = [(record["step"], record["split"]) for record in records]
  assert len(keys) == len(set(keys)), "only the chief process writes metrics"


def test_sigterm_to_one_process_stops_all_at_one_step_and_they_resume(tmp_path):
  overrides = {"num_epochs": 5, "log_every_steps": 1, "checkpoint_every_steps": 100000}
  workers = _start_workers(tmp_path / "two", "supervised", overrides, seconds_per_batch=0.25)
  watchdog = threading.Timer(300, lambda: [worker.kill() for worker in workers])
  watchdog.start()  # a worker that hangs before training ends the wait below
  try:
    for line in workers[0].stdout:  # wait until they train
      if line.startswith("step "):
        break
  finally:
    watchdog.cancel()
  workers[1].send_signal(signal.SIGTERM)
  stopped = _finish(workers)
  steps = {int(line.removeprefix("STOPPED ")) for line in stopped}
  assert len(steps) == 1, stopped
  step = steps.pop()
  assert checkpoint.Checkpointer(str(tmp_path / "two")).latest_step() == step

  resumed = _finish(_start_workers(tmp_path / "two", "supervised", overrides))
  reference = train.train_and_evaluate(smoke_config("supervised", overrides),
                                       str(tmp_path / "one"))
  result = json.loads(resumed[0].removeprefix("RESULT "))
  assert result["steps"] == reference["steps"] > step
  _assert_states_close(tmp_path / "two", tmp_path / "one")
