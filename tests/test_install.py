"""What `pip install -e .` brings and how a run fails without TensorFlow.

The install itself (fresh virtualenvs, downloads) is checked by `.ci/install_check`, not here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import tfds_fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dependency_names() -> list[str]:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  return [re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0].lower()
          for requirement in project["dependencies"]]


def test_tensorflow_is_the_distribution_an_image_may_already_have():
  """`tensorflow`, never `tensorflow-cpu`: installing into an image that has `tensorflow`
  (Colab) must leave it alone, and `tensorflow-cpu` would be a second distribution over
  the same package."""
  names = dependency_names()
  assert "tensorflow" in names
  assert not [name for name in names if name.startswith("tensorflow-") and name != "tensorflow-datasets"]


def test_the_headline_run_without_tensorflow_stops_with_one_line_and_status_2(tmp_path,
                                                                             monkeypatch):
  """configs/cifar10_bilevel.py on a data_dir where cifar10 is not prepared, in an interpreter
  where `import tensorflow` fails: the run says what to install, without a traceback."""
  tfds_fakes.offline(monkeypatch)
  program = """
import runpy, sys

class NoTensorflow:  # as if TensorFlow were not installed
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorflow())
sys.argv = ["jaxaug.main", *sys.argv[1:]]
runpy.run_module("jaxaug.main", run_name="__main__", alter_sys=True)
"""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  completed = subprocess.run(
      [sys.executable, "-c", program, "--config", "configs/cifar10_bilevel.py",
       "--workdir", str(tmp_path / "run"), f"--config.data.data_dir={tmp_path / 'tfds'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 2, completed.stderr[-3000:]
  errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, completed.stderr[-3000:]
  assert "'cifar10' is not prepared" in errors[0] and "pip install tensorflow" in errors[0]
  assert "Traceback" not in completed.stderr
