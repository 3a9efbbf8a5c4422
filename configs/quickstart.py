"""Quickstart: learn augmentation on scikit-learn's bundled digits (no download), CPU minutes.

python -m jaxaug.main --config configs/quickstart.py --workdir runs/quickstart
"""

from jaxaug.config import default_config


def get_config():
  config = default_config()
  config.method = "bilevel"
  config.model = "small_cnn"
  config.data.dataset = "sklearn_digits"
  config.data.image_size = 16
  config.augment = "none"           # digits are not flip-invariant
  config.bilevel.augmenter.kind = "affine"
  config.batch_size = 64
  config.val_batch_size = 64
  config.num_epochs = 15
  config.optim.learning_rate = 0.05
  config.log_every_steps = 20
  config.eval_every_epochs = 5
  config.image_every_epochs = 5
  return config
