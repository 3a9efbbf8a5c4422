"""CIFAR-10 predefined augmentation: ResNet-18, pad 4 + random crop + horizontal flip."""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "supervised"
  config.augment = "predefined"
  return config
