"""HBA's policy search on reduced CIFAR-10 (the HBA paper, table 8): an accelerator run.

4,000 training and 10,000 validation images drawn from the CIFAR-10 training set,
WRN-40-2, 200 epochs, batch 128, SGD 0.1 with cosine decay and weight decay 5e-4 for the
hypernetwork; lambda by Adam 3e-3 (constant), the first-BN weight-sharing strategy.
As in PBA's search, the policy comes before the pad-4 crop and flip (no Cutout). The
learned schedule is written to <workdir>/policy/ and replayed by any run with
`--config.augment="learned('<workdir>')+crop+hflip"`.

  python -m jaxaug.main --config configs/cifar10_hba.py --workdir runs/c10_hba
"""

from jaxaug.config import cifar_resnet18_config


def get_config():
  config = cifar_resnet18_config("cifar10")
  config.method = "hba"
  config.model = "wrn40_2"
  config.augment = "crop+hflip"
  config.data.train_examples = 14000
  config.data.val_fraction = 10000 / 14000  # 4,000 train + 10,000 validation
  config.num_epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.eval_every_epochs = 10
  return config
