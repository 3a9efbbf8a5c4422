"""Adversarial AutoAugment on CIFAR-10 (Zhang et al., ICLR 2020): WRN-28-10, the paper's Table 7.

The paper's CIFAR-10 setting: a batch of N = 128 images repeated M = 8 times (one policy
per copy), SGD learning rate 0.1, weight decay 5e-4, 200 epochs, a step learning-rate
schedule for Wide-ResNets (its epochs are not given: this config divides the rate by 5 at
epochs 60, 120 and 160, the Wide-ResNet paper's schedule), pad-4 crop and horizontal flip
before the policy and a 16 x 16 Cutout after it, all on the full training set (no
validation split: the reward is the training loss). An accelerator run.

  python -m jaxaug.main --config configs/cifar10_adversarial_autoaugment.py --workdir runs/c10_adv \
      --config.data.dataset=folder:/path/to/cifar10     # default: the tfds name cifar10
"""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "reinforce"
  config.model = "wrn28_10"
  config.augment = "crop+hflip"
  config.reinforce.augment_after = "cutout(16)"
  config.reinforce.num_policies = 8
  config.data.val_fraction = 0.0  # the full training set
  config.batch_size = 128
  config.num_epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "step"
  config.optim.step_epochs = (60, 120, 160)
  config.optim.step_factor = 0.2
  return config
