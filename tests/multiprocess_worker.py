"""One process of a multi-process test run: `python multiprocess_worker.py ID COUNT PORT WORKDIR SPEC`.

Joins a JAX distributed run of COUNT processes on this machine through config.distributed
(4 CPU devices each, gloo collectives), trains configs/smoke.py with the overrides of SPEC
(JSON: {"method": ..., "overrides": {...}, "seconds_per_batch": optional delay in reading
each training batch, so that a test can signal a run mid-way}) in the shared WORKDIR and
prints one line `RESULT <json results>` or `STOPPED <step>`.
"""

import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(__file__))
from test_train import smoke_config  # pylint: disable=g-import-not-at-top

from jaxaug import data  # pylint: disable=g-import-not-at-top
from jaxaug import stopping  # pylint: disable=g-import-not-at-top
from jaxaug import train  # pylint: disable=g-import-not-at-top


def main(process_id: str, process_count: str, port: str, workdir: str, spec: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  spec = json.loads(spec)
  config = smoke_config(spec["method"], {
      **spec["overrides"], "distributed.enabled": True,
      "distributed.coordinator_address": f"localhost:{port}",
      "distributed.num_processes": int(process_count), "distributed.process_id": int(process_id)})
  if spec.get("seconds_per_batch"):
    read = data.Pipeline.train_batches

    def slow_read(self, first_batch, count):
      time.sleep(spec["seconds_per_batch"])
      return read(self, first_batch, count)

    data.Pipeline.train_batches = slow_read
  try:
    results = train.train_and_evaluate(config, workdir)
  except stopping.TrainingInterrupted as stopped:
    print(f"STOPPED {stopped.step}", flush=True)
    return
  print(f"RESULT {json.dumps(results)}", flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
