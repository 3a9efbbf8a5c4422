"""Entry point: python -m jaxaug.main --config configs/X.py --workdir runs/X [--config.key=value].

Resumes automatically when the workdir holds a checkpoint. Ctrl-C or SIGTERM (only SIGTERM when
several processes run) saves one at the current step and exits with status 128 + the signal
number. A mistake in the command line, the configuration or the data ends it with one line,
`error: ...` (no traceback), and status 2, as absl does for bad flags; a loss that
becomes NaN or infinite ends it with one `error:` line naming the step, and status 1.
"""

import difflib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxaug import config as config_lib
from jaxaug import reporting
from jaxaug import stopping
from jaxaug import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, images and results.")


def config_spec(argv: list[str]) -> str | None:
  """The value of --config in `argv` ('FILE' or 'FILE:arg'), None if it is not given."""
  for index, word in enumerate(argv):
    if word.startswith("--config="):
      return word.partition("=")[2]
    if word == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the config file and its overrides checked first so that a
  mistake in them, an unknown flag or a missing --config or --workdir ends the run with one
  `error:` line and status 2."""
  spec = config_spec(argv)
  try:
    if spec is not None:
      config_lib.check_overrides(config_lib.load_config_file(spec), argv)
    remaining = FLAGS(argv)
    missing = [name for name in ("config", "workdir") if FLAGS[name].value is None]
    if missing:
      reporting.say(f"error: {' and '.join(f'--{name}' for name in missing)} missing: python -m "
                    "jaxaug.main --config=FILE --workdir=DIR [--config.<key>=<value> ...]",
                    file=sys.stderr)
      sys.exit(2)
    FLAGS.config  # pylint: disable=pointless-statement  (loads the file, applies overrides)
  except flags.UnrecognizedFlagError as error:
    close = difflib.get_close_matches(error.flagname, ["config", "workdir"], n=1)
    hint = f"did you mean --{close[0]}? " if close else ""
    reporting.say(f"error: unknown flag --{error.flagname}; {hint}this program takes "
                  "--config=FILE, --workdir=DIR, --config.<key>=<value> and absl's flags "
                  "(--helpfull)", file=sys.stderr)
    sys.exit(2)
  except Exception as error:  # pylint: disable=broad-except  (a config file may raise anything)
    message = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    about_the_file = spec is not None and not isinstance(error, flags.Error) and not (
        message.startswith(("--config", "flag --config", "no such config file")))
    where = f"--config={spec}: " if about_the_file else ""
    reporting.say(f"error: {where}{message}", file=sys.stderr)
    sys.exit(2)
  return remaining


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.is_parsed() or FLAGS["verbosity"].present == 0:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows it
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.SetupError as rejected:
    reporting.say(f"error: {rejected}", file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteError as diverged:
    reporting.say(f"error: {diverged}. Lower the learning rate or clip the gradients "
                  "(config.optim.grad_clip), then resume or start a new --workdir",
                  file=sys.stderr)
    sys.exit(1)
  except stopping.TrainingInterrupted as stopped:
    reporting.say(str(stopped), file=sys.stderr)
    sys.exit(128 + stopped.signum)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
