"""OHL-Auto-Aug on CIFAR-10 (Lin et al., ICCV 2019): WRN-28-10, K = 8 copies.

A distribution over ordered pairs of 36 operations, learned by REINFORCE from the
accuracy of K = 8 copies of the classifier on held-out validation images at the end of
each epoch (`jaxaug.methods.ohl`, which says where each constant comes from). 10% of the
training set is held out for that reward (drawn once); each trajectory's copies are scored
on the same 1,000 of those images (`val_batch_size`). The classifier's recipe, which the
text available here does not give, is the AutoAugment one (SGD 0.1, Nesterov, weight
decay 5e-4, cosine over 200 epochs, pad-4 crop and flip before the element, Cutout 16
after it). An accelerator run: each step trains K copies.

  python -m jaxaug.main --config configs/cifar10_ohl.py --workdir runs/c10_ohl \
      --config.data.dataset=folder:/path/to/cifar10     # default: the tfds name cifar10
"""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "ohl"
  config.model = "wrn28_10"
  config.augment = "crop+hflip"
  config.ohl.augment_after = "cutout(16)"
  config.ohl.copies = 8
  config.data.val_fraction = 0.1
  config.data.redraw_val_each_epoch = False
  config.val_batch_size = 1000
  config.num_epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  return config
