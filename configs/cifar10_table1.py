"""The DABO paper's Table 1 on CIFAR-10 with ResNet-18 (for an accelerator), and its ablations.

Mounsaveng et al., WACV 2021: the recipe of configs/cifar10_bilevel.py (ResNet-18, 200
epochs, 20% of the training set for validation, re-split each epoch); the row, its
transformation kind (Table 1's columns: translation, affine) and the ablations are the
argument after ':' (`jaxaug.comparison`), by default the paper's model on affine
transformations after a flip:

  python -m jaxaug.main --config configs/cifar10_table1.py:method=baseline --workdir runs/t1_base
  python -m jaxaug.main --config configs/cifar10_table1.py:method=predefined,kind=translation ...
  python -m jaxaug.main --config configs/cifar10_table1.py:method=invariant,kind=affine ...
  python -m jaxaug.sweep --config configs/cifar10_table1.py:method=magnitude,kind=affine \\
      --grid magnitude=0.25,0.5,0.75,1.0,1.25,1.5,2.0 --select val_accuracy --workdir runs/t1_mag
  python -m jaxaug.main --config configs/cifar10_table1.py:method=bilevel,kind=translation ...

`--config.data.dataset=folder:/path/to/cifar10` reads the JPEG folder instead of tfds.
"""

from jaxaug import comparison
from jaxaug.config import cifar_resnet18_config


def get_config(arg=None):
  config = cifar_resnet18_config("cifar10")
  config.data.redraw_val_each_epoch = True  # the paper's protocol (section 4.2)
  config.bilevel.augmenter.kind = "affine"
  config.bilevel.augmenter.size = "small"
  config.bilevel.truncation = 1
  config.bilevel.update_every = 1
  return comparison.apply(config, arg)
