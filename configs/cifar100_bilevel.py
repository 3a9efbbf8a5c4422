"""DABO on CIFAR-100: as cifar10_bilevel, 100 classes."""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar100")
  config.method = "bilevel"
  config.augment = "hflip"
  config.data.redraw_val_each_epoch = True
  config.bilevel.augmenter.kind = "affine_color"
  return config
