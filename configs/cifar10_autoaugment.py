"""CIFAR-10 with the AutoAugment CIFAR-10 policy: WRN-28-10, the AutoAugment paper's recipe.

Per image, as the AutoAugment reference code does: the policy, then pad-4 crop and
horizontal flip, then a 16 x 16 Cutout. WRN-28-10 with SGD (Nesterov momentum 0.9),
learning rate 0.1, weight decay 5e-4, batch 128, cosine decay over 200 epochs (the
paper's appendix). The paper trains on all 50,000 training images; 2% are held out
here so that validation metrics exist.

  python -m jaxaug.main --config configs/cifar10_autoaugment.py --workdir runs/c10_aa \
      --config.data.dataset=folder:/path/to/cifar10     # default: the tfds name cifar10
"""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "supervised"
  config.model = "wrn28_10"
  config.augment = "autoaugment_cifar10+crop+hflip+cutout(16)"
  config.data.val_fraction = 0.02
  config.num_epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  return config
