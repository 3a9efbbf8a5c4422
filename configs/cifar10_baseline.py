"""CIFAR-10 baseline: ResNet-18 with no augmentation (same recipe as cifar10_bilevel)."""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "supervised"
  config.augment = "none"
  return config
