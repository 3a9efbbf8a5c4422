"""Uncertainty-based sampling on CIFAR-10 (Wu et al., ICML 2020): WRN-28-10.

For each image C = 4 random compositions of 2 ops (each at a random level, applied with a
random probability), scored by the current classifier; one is trained on, drawn with
probability proportional to its loss (`jaxaug.methods.uncertainty`, which gives the
source of each setting). Pad-4 crop and horizontal flip before the ops, Cutout 16 after
them. The authors' script's recipe: SGD 0.1 with Nesterov momentum 0.9, weight decay
5e-4, batch 128, cosine over 200 epochs, on the full training set. Compare with
configs/cifar10_randaugment.py. An accelerator run.

  python -m jaxaug.main --config configs/cifar10_uncertainty.py --workdir runs/c10_unc \
      --config.data.dataset=folder:/path/to/cifar10     # default: the tfds name cifar10
"""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "uncertainty"
  config.model = "wrn28_10"
  config.augment = "crop+hflip"
  config.uncertainty.augment_after = "cutout(16)"
  config.data.val_fraction = 0.0  # the full training set
  config.num_epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  return config
