"""Tiny CPU smoke configuration for tests: small CNN, 8x8 images, a few steps.

  python -m jaxaug.main --config configs/smoke.py --workdir /tmp/smoke --config.method=bilevel

An argument selects a row of the DABO comparison (`jaxaug.comparison`), e.g.
configs/smoke.py:method=magnitude,magnitude=0.5 (the sweep driver's tests use it).
"""

from jaxaug import comparison
from jaxaug.config import default_config


def get_config(arg=None):
  config = default_config()
  config.method = "supervised"
  config.model = "small_cnn"
  config.data.dataset = "sklearn_digits"
  config.data.train_examples = 160
  config.augment = "predefined"
  config.bilevel.augmenter.kind = "affine"  # digits are grey: no colour
  config.batch_size = 16
  config.val_batch_size = 16
  config.eval_batch_size = 64
  config.num_epochs = 2
  config.log_every_steps = 4
  config.eval_every_epochs = 1
  config.checkpoint_every_steps = 4
  config.image_every_epochs = 1
  return config if arg is None else comparison.apply(config, arg)
