"""A workdir on Google Cloud Storage, offline: a local GCS emulator stands in for the bucket.

The runs are real `python -m jaxaug.main --workdir gs://bucket/...` processes; every client
they use talks the GCS JSON API to the emulator (gcp-storage-emulator, in memory, on
127.0.0.1): epath through fsspec's gcsfs, Orbax's arrays through TensorStore's GCS driver,
Orbax's bucket look-ups and the TensorBoard writer through google-cloud-storage. Anything
that would still leave the machine is sent to a closed local port, and the runs' working
directory must stay empty (nothing written to local disk). The test reads the bucket back
through the emulator's HTTP API, not through the code under test.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # end to end: see README, Tests

emulator = pytest.importorskip("gcp_storage_emulator.server")
# pylint: disable=g-import-not-at-top
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects as emulator_objects
from tensorboardX.proto import event_pb2
# pylint: enable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")
BUCKET = "bucket"
CLOSED_PORT = "127.0.0.1:9"  # the discard port: nothing listens there


def _download_with_generation(download):
  """The emulator's object download, plus the `x-goog-generation` header GCS sends with an
  object's bytes: TensorStore reads the generation from it (its conditional writes of
  Orbax's OCDBT manifests need it), and the emulator leaves it out."""

  def with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      stored = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
      return
    response["x-goog-generation"] = stored["generation"]

  return with_generation


@pytest.fixture(scope="module")
def gcs():
  """(emulator URL, the environment that points every GCS client at it and nowhere else)."""
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  patch = pytest.MonkeyPatch()
  patch.setattr(emulator_objects, "download", _download_with_generation(emulator_objects.download))
  server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  env = {
      **os.environ,
      "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
      "XLA_FLAGS": "--xla_force_host_platform_device_count=1",  # quicker to compile
      "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # TensorStore looks for no credentials
      "GOOGLE_CLOUD_PROJECT": "test",
      "EPATH_USE_TF": "false",  # epath through gcsfs (tf.io.gfile knows no emulator)
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-type look-up over gRPC
      "NO_GCE_CHECK": "true",  # google-auth looks for no metadata server
      "GCE_METADATA_HOST": CLOSED_PORT, "GCE_METADATA_IP": CLOSED_PORT,
      "GCE_METADATA_ROOT": CLOSED_PORT,
      **{name: f"http://{CLOSED_PORT}" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                                    "https_proxy", "grpc_proxy")},
      "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
  }
  yield url, env
  server.stop()
  patch.undo()


def objects(url: str, prefix: str) -> list[str]:
  """The names of the bucket's objects under `prefix`, sorted."""
  names, token = [], ""
  while True:
    query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}") as response:
      page = json.load(response)
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      return sorted(names)


def read(url: str, name: str) -> bytes:
  quoted = urllib.parse.quote(name, safe="")
  with urllib.request.urlopen(f"{url}/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media") as f:
    return f.read()


def tensorboard_scalars(data: bytes) -> dict[tuple[str, int], float]:
  """{(tag, step): value} of the scalar summaries in a TFRecord file of Event protos."""
  scalars, offset = {}, 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4  # length, its crc, the record, its crc
    scalars.update({(value.tag, event.step): value.simple_value
                    for value in event.summary.value if value.HasField("simple_value")})
  return scalars


# `python -m jaxaug.main` dying (status 1) when it fetches the batch of step 7 (steps 1-6 done).
PREEMPTED_MAIN = """
import sys
from absl import app
from jaxaug import data, main

original = data.Pipeline.train_batches
def preempt(self, first_batch, count):
  if first_batch >= 6 * count:
    raise SystemExit("simulated crash")
  return original(self, first_batch, count)
data.Pipeline.train_batches = preempt
app.run(main.main)
"""


def run(env, cwd, *args, status=0):
  """`python *args` in `cwd`; returns its stdout, failing with its stderr unless it exits
  with `status`."""
  completed = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                             text=True)
  assert completed.returncode == status, completed.stderr[-4000:]
  return completed.stdout


def test_a_run_on_gs_writes_resumes_summarizes_and_replays(gcs, tmp_path):
  url, env = gcs
  # 2 epochs of 8 steps (128 training examples, batches of 16), a checkpoint every 4 steps.
  flags = [f"--config={SMOKE}", "--config.method=hba", "--config.augment=hflip",
           "--config.hba.warmup_epochs=0.25", "--workdir=gs://bucket/runs/hba"]
  run(env, tmp_path, "-c", PREEMPTED_MAIN, *flags, status=1)
  files = [name.removeprefix("runs/hba/") for name in objects(url, "runs/hba/")]
  assert {"config.json", "metrics.jsonl", "images/augmented_step0000001.png",
          "checkpoints/4/commit_success.txt"} <= set(files), files
  assert not any(name.startswith(("checkpoints/8/", "results.json", "policy/")) for name in files)
  records = [json.loads(line) for line in read(url, "runs/hba/metrics.jsonl").splitlines()]
  assert [(record["step"], record["split"]) for record in records] == [(4, "train"), (4, "learned")]

  # The same command resumes from step 4's checkpoint and finishes.
  assert "resuming at step 4" in run(env, tmp_path, "-m", "jaxaug.main", *flags)
  files = [name.removeprefix("runs/hba/") for name in objects(url, "runs/hba/")]
  for expected in ("results.json", "policy/policy.json", "policy/arrays.npz",
                   "plots/augmentation_params.png", "plots/hba_probability.png",
                   "images/augmented_step0000016.png", "checkpoints/16/commit_success.txt"):
    assert expected in files, files
  assert json.loads(read(url, "runs/hba/config.json"))["method"] == "hba"
  with Image.open(io.BytesIO(read(url, "runs/hba/images/augmented_step0000016.png"))) as grid:
    assert grid.format == "PNG" and grid.size[0] > 96
  records = [json.loads(line) for line in read(url, "runs/hba/metrics.jsonl").splitlines()]
  train_steps = [record["step"] for record in records if record["split"] == "train"]
  assert train_steps == [4, 8, 12, 16]  # every 4 steps, none twice
  assert [record["step"] for record in records if record["split"] == "test"] == [8, 16]
  results = json.loads(read(url, "runs/hba/results.json"))
  assert results["steps"] == 16 and results["test_accuracy"] == records[-1]["accuracy"]
  events = [name for name in objects(url, "runs/hba/tensorboard/") if "tfevents" in name]
  assert len(events) == 2  # one event file per run of the workdir
  scalars = {}
  for name in events:
    scalars.update(tensorboard_scalars(read(url, name)))
  for record in records:
    if record["split"] == "train":
      assert scalars[("train/loss", record["step"])] == pytest.approx(record["loss"])
  assert np.load(io.BytesIO(read(url, "runs/hba/policy/arrays.npz")))["probability"].shape[0] == 2

  # The policy replayed from the bucket, then both runs summarised from a gs:// glob.
  run(env, tmp_path, "-m", "jaxaug.main", f"--config={SMOKE}", "--config.num_epochs=1",
      "--config.augment=learned('gs://bucket/runs/hba')+crop", "--workdir=gs://bucket/runs/replay")
  assert "runs/replay/results.json" in objects(url, "runs/replay/")
  table = run(env, tmp_path, "-m", "jaxaug.summarize", "gs://bucket/runs/*").splitlines()
  assert table[0] == "| augment | method | num_epochs | runs | mean | sd | min | max |"
  assert len(table) == 4  # the header, its rule, the two runs
  row = f"| hflip | hba | 2 | 1 | {results['test_accuracy']:.4f} |"
  assert any(line.startswith(row) for line in table), table

  assert os.listdir(tmp_path) == []  # nothing was written to local disk
