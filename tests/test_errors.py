"""Every user mistake ends with status 2 and one `error:` line naming what to change."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxaug import train
from test_train import smoke_config

SMOKE = os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py")


def _main(*args, timeout=300):
  """(status, stderr lines) of `python -m jaxaug.main` with `args`."""
  process = subprocess.run([sys.executable, "-m", "jaxaug.main", *args], capture_output=True,
                           text=True, timeout=timeout)
  return process.returncode, process.stderr.strip().splitlines()


@pytest.mark.parametrize("config,override,message", [
    ("configs/nope.py", None, "error: no such config file: 'configs/nope.py'"),
    (SMOKE, "--config.num_epoch=3",
     "error: --config.num_epoch: the config has no key 'num_epoch'; did you mean num_epochs?"),
    (SMOKE, "--config.num_epochs=three", "error: flag --config.num_epochs=three: invalid literal"),
    (SMOKE, "--workdri=x", "error: unknown flag --workdri; did you mean --workdir? this "
     "program takes --config=FILE, --workdir=DIR, --config.<key>=<value>"),
    (SMOKE + ":method=bad", None, "error: --config=" + SMOKE + ":method=bad: unknown "
     "method='bad'; valid: baseline, predefined"),
])
def test_a_command_line_mistake_is_one_error_line(tmp_path, config, override, message):
  status, lines = _main(f"--config={config}", f"--workdir={tmp_path}",
                        *([override] if override else []), timeout=120)
  assert status == 2 and len(lines) == 1, lines
  assert lines[0].startswith(message), lines


@pytest.mark.parametrize("flagfile,missing", [
    (None, "--config and --workdir"),
    ("--workdir=w\n", "--config"),  # what a flag file gives counts
])
def test_a_missing_required_flag_is_one_error_line_with_the_usage(tmp_path, flagfile, missing):
  args = []
  if flagfile is not None:
    (tmp_path / "flags").write_text(flagfile)
    args = [f"--flagfile={tmp_path / 'flags'}"]
  status, lines = _main(*args, timeout=120)
  usage = "python -m jaxaug.main --config=FILE --workdir=DIR [--config.<key>=<value> ...]"
  assert status == 2 and lines == [f"error: {missing} missing: {usage}"], lines


def test_a_broken_config_file_is_one_error_line(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return undefined_name\n")
  status, lines = _main(f"--config={broken}", f"--workdir={tmp_path / 'run'}", timeout=120)
  assert status == 2 and len(lines) == 1, lines
  assert lines[0] == f"error: --config={broken}: name 'undefined_name' is not defined", lines


def test_setup_errors_reach_the_terminal_as_one_line(tmp_path):
  (tmp_path / "a_file").write_text("")
  status, lines = _main(f"--config={SMOKE}", f"--workdir={tmp_path / 'a_file'}")
  assert status == 2 and lines[-1] == (f"error: --workdir={tmp_path / 'a_file'} is a file: give "
                                       "the path of a directory"), lines
  assert not any("Traceback" in line for line in lines)


@pytest.mark.parametrize("overrides,message", [
    ({"augment": "randaugment(2, 99)"},
     "config.augment='randaugment(2, 99)': magnitude must be a number in [0, 10], got 99"),
    ({"batch_size": -3}, "config.batch_size=-3 must be a positive integer"),
    ({"num_epochs": 0}, "config.num_epochs=0 must be a finite number > 0"),
    ({"method": "reinforce", "reinforce.augment_after": "cutout(4)+blur"},
     "config.reinforce.augment_after='cutout(4)+blur': unknown augmentation 'blur'"),
    ({"optim.learning_rate": -0.1},
     "config.optim.learning_rate=-0.1 must be a finite number >= 0"),
    ({"method": "reinforce", "reinforce.optim.name": "adamw"},
     "config.reinforce.optim.name='adamw' must be one of adam, sgd"),
    ({"method": "bilevel", "bilevel.optim.momentum": 1.0},
     "config.bilevel.optim.momentum=1.0 must be in [0, 1)"),
    ({"method": "bilevel", "bilevel.augmenter.kind": "warp"},
     "config.bilevel.augmenter.kind='warp'; valid: affine, affine_color, color, translation"),
])
def test_config_mistakes_are_found_before_any_data_is_read(tmp_path, monkeypatch, overrides,
                                                           message):
  def no_data(*args, **kwargs):
    raise AssertionError("data read before the config was checked")

  monkeypatch.setattr(train.data, "load_dataset", no_data)
  config = smoke_config(overrides.pop("method", "supervised"), overrides)
  with pytest.raises(train.SetupError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(error.value).startswith(message)


@pytest.mark.slow
def test_a_diverged_run_is_one_error_line_naming_the_step(tmp_path):
  """The command line's end of train.NonFiniteError (raised as tested in test_train)."""
  status, lines = _main(f"--config={SMOKE}", f"--workdir={tmp_path}",
                        "--config.optim.learning_rate=1e9")
  assert status == 1 and not any("Traceback" in line for line in lines), lines
  kept = (rf"(The last good checkpoint \(step \d+\) is kept in {tmp_path}/checkpoints|No "
          r"checkpoint was saved before it)")
  assert re.fullmatch(rf"error: non-finite loss or hypergradient at train step \d+; stopping\. "
                      rf"{kept}\. Lower the learning rate or clip the gradients "
                      r"\(config\.optim\.grad_clip\), then resume or start a new --workdir",
                      lines[-1]), lines


def test_a_workdir_that_cannot_be_created_is_a_setup_error(tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(train.SetupError, match="cannot be created: Not a directory"):
    train.check_workdir(str(tmp_path / "a_file" / "run"))


def _folder_with_a_broken_image(root, size=8):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in range(2):
      os.makedirs(root / split / f"class{c}")
      for i in range(12):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / split / f"class{c}" / f"{i}.png")
  broken = root / "train" / "class1" / "broken.jpg"
  broken.write_bytes(b"\xff\xd8\xff not a jpeg")
  return broken


@pytest.mark.parametrize("in_memory", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_an_unreadable_image_names_its_path_and_the_way_to_skip_it(tmp_path, capsys, in_memory):
  """Decoded at load (in memory) or on access (every step): the error names the file."""
  broken = _folder_with_a_broken_image(tmp_path / "data")
  config = smoke_config("supervised", {
      "data.dataset": f"folder:{tmp_path / 'data'}", "data.train_examples": None,
      "data.in_memory_max_bytes": 2**31 if in_memory else 0, "data.val_fraction": 0.25,
      "batch_size": 8, "val_batch_size": 8, "num_epochs": 1, "augment": "hflip"})
  with pytest.raises(train.SetupError, match=f"cannot read image {broken} .*: remove it, or set "
                     "config.data.skip_unreadable=True to leave unreadable images out"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  config.data.skip_unreadable = True
  results = train.train_and_evaluate(config, str(tmp_path / "skipping"))
  assert results["steps"] == 2  # 24 readable train images: 18 train, 6 validation
  assert f"left out 1 unreadable image(s) of {tmp_path / 'data' / 'train'}" in (
      capsys.readouterr().out)
