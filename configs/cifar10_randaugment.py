"""CIFAR-10 with RandAugment(N=3, M=5): WRN-28-10, the AutoAugment recipe otherwise.

RandAugment (Cubuk et al., 2020) reports N = 3, M = 5 for WRN-28-10 on CIFAR-10
(recalled from the paper, not checked against its text here). M is on the paper's
10-level scale (see `jaxaug.augment.policies.randaugment`). Per image: RandAugment,
pad-4 crop and horizontal flip, 16 x 16 Cutout, as for AutoAugment; optimiser as in
configs/cifar10_autoaugment.py.

  python -m jaxaug.main --config configs/cifar10_randaugment.py --workdir runs/c10_ra \
      --config.augment='randaugment(2, 9)+crop+hflip+cutout(16)'   # another N, M
"""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "supervised"
  config.model = "wrn28_10"
  config.augment = "randaugment(3, 5)+crop+hflip+cutout(16)"
  config.data.val_fraction = 0.02
  config.num_epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  return config
