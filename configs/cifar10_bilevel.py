"""DABO on CIFAR-10: ResNet-18, small affine + colour augmenter after a random horizontal flip.

As in the paper (Mounsaveng et al., WACV 2021, Sec. 4.2): T = 1, K = 1, 20% of the
training set for validation, re-split each epoch; flip is the only predefined transform.

  python -m jaxaug.main --config configs/cifar10_bilevel.py --workdir runs/c10 \
      --config.data.dataset=folder:/path/to/cifar10     # default: the tfds name cifar10
"""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "bilevel"
  config.augment = "hflip"
  config.data.redraw_val_each_epoch = True
  config.bilevel.truncation = 1
  config.bilevel.update_every = 1
  config.bilevel.augmenter.kind = "affine_color"
  config.bilevel.augmenter.size = "small"
  return config
