"""HBA's policy search on reduced SVHN (the HBA paper, table 8): an accelerator run.

4,000 training and 10,000 validation images from tfds `svhn_cropped`'s training set,
WRN-40-2, 160 epochs, batch 128, SGD 0.005 (the paper's SVHN rate for policy evaluation;
its search-table value was lost in the extracted text) with cosine decay and weight decay
1e-3; lambda by Adam 3e-3. SVHN gets no crop or flip (as in AutoAugment): the policy alone.

  python -m jaxaug.main --config configs/svhn_hba.py --workdir runs/svhn_hba
"""

from jaxaug.config import SVHN_STATS, cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("svhn_cropped")
  config.method = "hba"
  config.model = "wrn40_2"
  config.augment = "none"
  config.data.mean, config.data.std = SVHN_STATS
  config.data.train_examples = 14000
  config.data.val_fraction = 10000 / 14000
  config.num_epochs = 160
  config.optim.learning_rate = 0.005
  config.optim.weight_decay = 1e-3
  config.eval_every_epochs = 10
  return config
