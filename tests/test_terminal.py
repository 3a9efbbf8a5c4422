"""Output to terminals, pipes and files: `reporting.say` flushes every line and never raises."""

import io
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from jaxaug import checkpoint
from jaxaug import reporting
from jaxaug import stopping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/smoke.py, one device, trained far longer than a test waits, a progress line each step
LONG_SMOKE_RUN = ["--config", os.path.join(ROOT, "configs", "smoke.py"), "--config.num_epochs=1000",
                  "--config.log_every_steps=1", "--config.checkpoint_every_steps=100000"]


def _pipe():
  """(reader, writer) file objects of a new pipe; the writer is block-buffered, as a pipe is."""
  read_fd, write_fd = os.pipe()
  return os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")


def _python(*args, **kwargs):
  """Popen of `python ARGS...` on one CPU device, importing this tree's jaxaug, with
  PYTHONUNBUFFERED unset."""
  env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  env["XLA_FLAGS"] = ""
  return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, env=env, **kwargs)


def test_say_flushes_each_line_to_a_pipe():
  reader, writer = _pipe()
  with reader, writer:
    reporting.say("step 4/16", file=writer)
    os.set_blocking(reader.fileno(), False)
    assert os.read(reader.fileno(), 100) == b"step 4/16\n"  # there without writer.flush()


def test_say_ignores_a_pipe_whose_reader_has_gone():
  reader, writer = _pipe()
  reader.close()
  with writer:
    reporting.say("step 4/16", file=writer)  # BrokenPipeError if not ignored
    reporting.say("step 8/16", file=writer)
    writer.flush()  # the descriptor now leads to os.devnull: what is left goes nowhere


def test_say_ignores_a_closed_file_and_a_stream_without_a_descriptor():
  closed = io.StringIO()
  closed.close()
  reporting.say("lost", file=closed)
  memory = io.StringIO()
  reporting.say("kept", file=memory)
  assert memory.getvalue() == "kept\n"


def test_a_process_whose_stdout_reader_has_gone_says_on_and_exits_0():
  # Python exits with 120 when its flush of stdout at exit fails, as it would after a
  # BrokenPipeError left the line in the buffer.
  script = ("import sys; from jaxaug import reporting; sys.stdin.readline(); "
            "[reporting.say(f'line {i}') for i in range(3)]; "
            "reporting.say('error line', file=sys.stderr); print('done', file=sys.stderr)")
  process = _python("-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  process.stdout.close()  # the reader goes away (like a `tee` killed by Ctrl-C)
  _, stderr = process.communicate(b"go\n", timeout=120)
  assert process.returncode == 0, stderr.decode()
  assert stderr.decode().splitlines()[-2:] == ["error line", "done"]


def test_a_printed_line_reaches_a_pipe_while_the_process_runs():
  # PYTHONUNBUFFERED unset: stdout to a pipe is block-buffered unless each line is flushed.
  script = ("import sys; from jaxaug import reporting; reporting.say('first'); "
            "sys.stdin.readline()")
  process = _python("-c", script, stdout=subprocess.PIPE, text=True)
  watchdog = threading.Timer(120, process.kill)  # a buffered line would never come: stop waiting
  watchdog.start()
  try:
    assert process.stdout.readline() == "first\n"
    assert process.poll() is None  # read while the process runs, not at its exit
  finally:
    watchdog.cancel()
    process.communicate("\n", timeout=120)


@pytest.mark.slow
def test_a_run_whose_output_reader_has_gone_checkpoints_on_sigint(tmp_path, sigint_not_ignored):
  # `python -m jaxaug.main ... 2>&1 | tee LOG` and Ctrl-C, which kills tee first
  workdir = tmp_path / "run"
  process = _python("-m", "jaxaug.main", f"--workdir={workdir}", *LONG_SMOKE_RUN,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  watchdog = threading.Timer(300, process.kill)  # a run that hangs before training ends the wait
  watchdog.start()
  try:
    first_step = next(int(line.split()[1].split("/")[0]) for line in process.stdout
                      if line.startswith("step "))
    watchdog.cancel()
    process.stdout.close()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 128 + signal.SIGINT
  train_steps = [record["step"] for record in map(json.loads, open(workdir / "metrics.jsonl"))
                 if record["split"] == "train"]
  assert checkpoint.Checkpointer(str(workdir)).latest_step() == train_steps[-1] > first_step


def test_a_stop_signal_is_taken_when_stderr_is_a_pipe_whose_reader_has_gone(sigint_not_ignored):
  read_fd, write_fd = os.pipe()
  os.close(read_fd)
  stderr = os.dup(2)
  os.dup2(write_fd, 2)
  try:
    with stopping.StopSignals() as stop:
      os.kill(os.getpid(), signal.SIGINT)  # its message cannot be written
      assert stop.requested(1)
  finally:
    os.dup2(stderr, 2)
    os.close(stderr)
    os.close(write_fd)


def test_a_run_prints_its_data_every_interval_each_evaluation_and_a_summary(tmp_path, capsys):
  """The header counts the images, the first logging interval prints, each evaluation is one
  line, and the run ends with its accuracies and where its outputs are."""
  from jaxaug import train
  from test_train import smoke_config

  results = train.train_and_evaluate(smoke_config("supervised"), str(tmp_path))
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "supervised on sklearn_digits: reading the data"
  assert lines[1].startswith("160 of 1,438 training images: 128 train, 32 validation (held "
                             "out); 16 steps (8 an epoch, 1 batch(es) of 16 each) on ")
  assert lines[2].startswith("step 4/16 (25.0%)")  # the first interval of log_every_steps = 4
  evaluations = [line for line in lines if line.startswith("step 8  ")]
  assert len(evaluations) == 1 and " val accuracy " in evaluations[0] and (
      " test accuracy " in evaluations[0])
  assert lines[-5] == (f"done: test accuracy {results['test_accuracy']:.2%} (loss "
                       f"{results['test_loss']:.4f}), validation accuracy "
                       f"{results['val_accuracy']:.2%}; 16 steps in "
                       f"{results['wall_seconds'] / 60:.1f} min")
  assert lines[-4] == f"  results      {tmp_path / 'results.json'}"
