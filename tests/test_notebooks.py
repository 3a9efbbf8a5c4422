"""The notebooks: each .ipynb in sync with its jupytext .py, stored with the outputs of one
clean run, stopping in one line without a way to install jaxaug, and run.

The runs execute the .ipynb files (what Colab opens) in a Jupyter kernel on the CPU with
small settings, given as a cell inserted after the one tagged "parameters" (as papermill
does). The Results notebook reads the Quickstart's two runs and an `hba` run.
"""

import os
import subprocess
import sys

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = ("quickstart", "results")
TIMEOUT_SECONDS = 600  # per cell
# The kernels and the extra run see one CPU device, as on Colab's single-chip TPU (faster to
# compile than the 8 devices the other tests simulate).
ONE_DEVICE = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
              "JAX_PLATFORMS": "cpu"}


def notebook_path(name, extension):
  return os.path.join(NOTEBOOKS, f"{name}.{extension}")


def cells(notebook):
  """(type, source, tags) of each cell: what the pairing must keep equal."""
  return [(cell.cell_type, cell.source.strip(), cell.metadata.get("tags", []))
          for cell in notebook.cells]


@pytest.mark.parametrize("name", NAMES)
def test_pair_in_sync(name):
  text = jupytext.read(notebook_path(name, "py"))
  stored = nbformat.read(notebook_path(name, "ipynb"), as_version=4)
  assert cells(stored) == cells(text), (
      f"notebooks/{name}.ipynb differs from {name}.py: run jupytext --sync notebooks/{name}.py")
  assert stored.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
  assert stored.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_stored_outputs_are_one_clean_run(name):
  """What a reader sees before running: every code cell run once, in order, without errors,
  with figures, and without this machine's paths."""
  stored = nbformat.read(notebook_path(name, "ipynb"), as_version=4)
  code = [cell for cell in stored.cells if cell.cell_type == "code"]
  assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
  assert not [output for cell in code for output in cell.outputs
              if output.output_type == "error"]
  assert images(stored) >= 2
  text = outputs(stored) + outputs(stored, "text/markdown")
  for machine_path in ("/work/", "/tmp/", "/home/"):
    assert machine_path not in text


def with_parameters(name, setup="", **parameters):
  """notebooks/<name>.ipynb with a cell of the code `setup` and `parameters` assigned
  inserted after its "parameters" cell."""
  notebook = nbformat.read(notebook_path(name, "ipynb"), as_version=4)
  (index,) = [i for i, cell in enumerate(notebook.cells)
              if "parameters" in cell.metadata.get("tags", [])]
  assignments = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(setup + assignments))
  return notebook


def run(notebook, path=NOTEBOOKS):
  """Runs `notebook` in place, in a kernel started in directory `path`."""
  NotebookClient(notebook, timeout=TIMEOUT_SECONDS, kernel_name="python3",
                 resources={"metadata": {"path": str(path)}}).execute(env=ONE_DEVICE)


def execute(name, **parameters):
  """notebooks/<name>.ipynb run with `parameters` assigned after its "parameters" cell."""
  notebook = with_parameters(name, **parameters)
  run(notebook)
  return notebook


def outputs(notebook, mime="text/plain"):
  """The printed text and the `mime` representations of everything the notebook displayed."""
  texts = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      texts.append(output.get("text", "") + output.get("data", {}).get(mime, ""))
  return "\n".join(texts)


def images(notebook):
  return sum("image/png" in output.get("data", {})
             for cell in notebook.cells for output in cell.get("outputs", []))


# As on a fresh Colab runtime: jaxaug is not importable (it is installed here for the tests).
WITHOUT_JAXAUG = """import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *rest: None if name == "jaxaug" else _find_spec(name, *rest)
"""


@pytest.mark.parametrize("name", NAMES)
def test_install_stops_in_one_line_without_a_checkout_or_repo_url(name, tmp_path):
  notebook = with_parameters(name, setup=WITHOUT_JAXAUG, REPO_URL="")
  with pytest.raises(CellExecutionError):
    run(notebook, tmp_path)
  errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
            if output.output_type == "error"]
  assert len(errors) == 1 and errors[0].ename == "SetupError"
  (line,) = errors[0].traceback  # no traceback: one line saying what to do
  assert line.startswith("SetupError: ") and "set REPO_URL in the parameters cell" in line
  assert list(tmp_path.iterdir()) == []  # nothing cloned or written


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  """The Quickstart run tiny: a data set that cannot be loaded, so it falls back to the digits."""
  workdir = tmp_path_factory.mktemp("notebook_runs")
  notebook = execute("quickstart", DATASET="folder:/nonexistent/cifar10", NUM_EPOCHS=1,
                     WORKDIR=str(workdir), SMOKE=True)
  return notebook, workdir


@pytest.mark.slow
def test_quickstart(quickstart):
  notebook, workdir = quickstart
  printed = outputs(notebook)
  assert "using scikit-learn's bundled digits instead" in printed
  assert "backend: cpu" in printed
  for run in ("bilevel", "predefined"):
    assert os.path.isfile(workdir / run / "results.json")
    assert os.path.isfile(workdir / run / "plots" / "training.png")
  assert os.path.isfile(workdir / "bilevel" / "plots" / "augmentation_params.png")
  table = outputs(notebook, "text/markdown")
  assert "| bilevel (learned affine) |" in table and "| supervised (crop(padding=2)) |" in table
  assert images(notebook) >= 4  # grids at the start and the end, parameters, accuracy


@pytest.mark.slow
def test_results(quickstart):
  _, workdir = quickstart
  hba = subprocess.run(
      [sys.executable, "-m", "jaxaug.main", "--config=configs/smoke.py",
       f"--workdir={workdir / 'hba'}", "--config.method=hba", "--config.num_epochs=1",
       "--config.hba.warmup_epochs=0.25", "--config.checkpoint_every_steps=1000"],
      cwd=ROOT, env=ONE_DEVICE, capture_output=True, text=True)
  assert hba.returncode == 0, hba.stderr[-3000:]
  (workdir / "unfinished").mkdir()
  (workdir / "unfinished" / "config.json").write_text("{}")
  notebook = execute("results", RUNS=[f"{workdir}/*"])
  printed = outputs(notebook)
  assert "unfinished: not finished" in printed
  assert "3 finished run(s)" in printed
  assert "family bilevel" in printed and "family hba" in printed
  assert "no learned policy: a fixed augmentation" in printed
  table = outputs(notebook, "text/markdown")
  assert "| runs | mean | sd | min | max |" in table
