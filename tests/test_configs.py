"""Every config file loads, and the state of its method builds from it (shapes only)."""

import glob
import os

import jax
import pytest

from jaxaug.augment import fixed
from jaxaug.config import load_config_file
from jaxaug.methods import METHODS
from jaxaug.methods import training

CONFIG_FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))
# (image shape, classes) of the data a config names, where the data itself is not read here.
SHAPES = {"imagenet": ((224, 224, 3), 1000), "bach": ((512, 512, 3), 4),
          "sklearn_digits": ((8, 8, 1), 10)}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_builds_its_methods_state(path):
  config = load_config_file(path)
  method = METHODS.get(config.method)
  fixed.compose(config.augment)
  shape, classes = next((value for key, value in SHAPES.items() if key in config.data.dataset),
                        ((32, 32, 3), 100 if "cifar100" in config.data.dataset else 10))
  if config.data.image_size:
    shape = (config.data.image_size, config.data.image_size, shape[2])
  info = training.DataInfo.create(
      num_classes=classes, image_shape=shape,
      batches_per_epoch=10 * method.train_batches_per_step(config),
      batches_per_step=method.train_batches_per_step(config), num_epochs=config.num_epochs)
  state = jax.eval_shape(lambda: method.init(config, jax.random.PRNGKey(0), info))
  assert state.step.shape == ()
  if method.uses_val_batch(config):
    assert config.data.val_fraction > 0
