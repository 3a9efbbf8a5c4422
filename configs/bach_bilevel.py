"""DABO on BACH (breast-cancer histology, 4 classes): folder source, vertical flip, ResNet-18.

BACH has no public test split; the paper uses 50% of the 400 images for training
and validation and 50% for test. Arrange them as <root>/train/<class>/ and
<root>/test/<class>/ and pass --config.data.dataset=folder:<root>. Images are
resized to `image_size` (the paper works at 2048x1536; 512 keeps memory sane).
"""

from jaxaug.config import default_config


def get_config():
  config = default_config()
  config.method = "bilevel"
  config.model = "resnet18"
  config.data.dataset = "folder:/path/to/bach"
  config.data.image_size = 512
  config.augment = "vflip"
  config.bilevel.augmenter.kind = "affine_color"
  config.batch_size = 16
  config.val_batch_size = 16
  config.eval_batch_size = 16
  config.num_epochs = 100
  config.optim.learning_rate = 0.01
  config.log_every_steps = 10
  return config
