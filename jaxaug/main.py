"""Entry point: python -m jaxaug.main --config configs/X.py --workdir runs/X [--config.key=value].

Resumes automatically when the workdir holds a checkpoint. Ctrl-C or SIGTERM (only SIGTERM when
several processes run) saves one at the current step and exits with status 128 + the signal
number. A configuration or data set it rejects ends it with the message alone (no traceback)
and status 2, as absl does for bad flags.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxaug import reporting
from jaxaug import stopping
from jaxaug import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, images and results.")
flags.mark_flags_as_required(["config", "workdir"])


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
  except stopping.TrainingInterrupted as stopped:
    reporting.say(str(stopped), file=sys.stderr)
    sys.exit(128 + stopped.signum)


if __name__ == "__main__":
  app.run(main)
