"""SVHN with the AutoAugment SVHN policy and a 20 x 20 Cutout: WRN-28-10.

tfds `svhn_cropped` (32 x 32 digits; its 73,257 core training images: the paper also
trains on the 531,131 'extra' images, which this pipeline does not read). As in the
AutoAugment paper, SVHN gets no crop or flip: the policy, then Cutout 20 x 20.
Optimiser from the paper's appendix for full SVHN (from memory, check before quoting):
SGD (Nesterov momentum 0.9), learning rate 0.005, weight decay 1e-3, batch 128,
cosine decay over 160 epochs. Standardisation: SVHN training-set mean and std.

  python -m jaxaug.main --config configs/svhn_autoaugment.py --workdir runs/svhn_aa
"""

from jaxaug.config import SVHN_STATS, cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("svhn_cropped")
  config.method = "supervised"
  config.model = "wrn28_10"
  config.augment = "autoaugment_svhn+cutout(20)"
  config.data.mean, config.data.std = SVHN_STATS
  config.data.val_fraction = 0.02
  config.num_epochs = 160
  config.optim.learning_rate = 0.005
  config.optim.weight_decay = 1e-3
  return config
