"""Output to terminals, pipes and files: `reporting.say` flushes every line and never raises."""

import io
import os
import subprocess
import sys
import threading

from jaxaug import reporting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pipe():
  """(reader, writer) file objects of a new pipe; the writer is block-buffered, as a pipe is."""
  read_fd, write_fd = os.pipe()
  return os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")


def _python(script, **kwargs):
  """Popen of `python -c script` importing this tree's jaxaug, with PYTHONUNBUFFERED unset."""
  env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, env=env,
                          **kwargs)


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
  process = _python(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  process.stdout.close()  # the reader goes away (like a `tee` killed by Ctrl-C)
  _, stderr = process.communicate(b"go\n", timeout=120)
  assert process.returncode == 0, stderr.decode()
  assert stderr.decode().splitlines()[-2:] == ["error line", "done"]


def test_a_printed_line_reaches_a_pipe_while_the_process_runs():
  # PYTHONUNBUFFERED unset: stdout to a pipe is block-buffered unless each line is flushed.
  script = ("import sys; from jaxaug import reporting; reporting.say('first'); "
            "sys.stdin.readline()")
  process = _python(script, stdout=subprocess.PIPE, text=True)
  watchdog = threading.Timer(120, process.kill)  # a buffered line would never come: stop waiting
  watchdog.start()
  try:
    assert process.stdout.readline() == "first\n"
    assert process.poll() is None  # read while the process runs, not at its exit
  finally:
    watchdog.cancel()
    process.communicate("\n", timeout=120)
