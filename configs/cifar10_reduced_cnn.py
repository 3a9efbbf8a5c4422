"""Reduced CIFAR-10 on the CPU: 4,000 training images, the 6-conv CNN, 60 epochs.

The DABO paper's comparison (Table 1: baseline, predefined, transformation-invariant,
validated magnitude, bilevel) and its ablations, small enough for a 2-core CPU (the
paper's 9-conv `badgan` costs 23x more per image: use it on an accelerator with
--config.model=badgan). Pick the row and ablation with the argument after ':'
(`jaxaug.comparison`; without one: bilevel, affine + colour, after a flip):

  python -m jaxaug.main --config configs/cifar10_reduced_cnn.py:method=baseline \
      --workdir runs/r_none --config.data.dataset=folder:/data/cifar10
  ... --config configs/cifar10_reduced_cnn.py:method=predefined,kind=translation
  ... --config configs/cifar10_reduced_cnn.py:method=invariant,kind=affine
  ... --config configs/cifar10_reduced_cnn.py:method=magnitude,kind=affine,magnitude=0.5
  ... --config configs/cifar10_reduced_cnn.py:method=bilevel,kind=affine,size=medium,T=2

or set the method on the command line as before (--config.method=supervised
--config.augment=predefined).
"""

from jaxaug import comparison
from jaxaug.config import cifar_resnet18_config


def get_config(arg=None):
  config = cifar_resnet18_config("cifar10")
  config.model = "cnn6"
  config.data.train_examples = 4000   # 3,200 train + 800 validation
  config.data.redraw_val_each_epoch = True  # the paper's protocol (section 4.2), for every method
  config.method = "bilevel"
  config.augment = "hflip"
  config.bilevel.augmenter.kind = "affine_color"
  config.bilevel.augmenter.symmetric = True  # no learned constant zoom or colour cast
  config.num_epochs = 60
  config.optim.learning_rate = 0.05
  config.log_every_steps = 25
  config.eval_every_epochs = 5
  config.image_every_epochs = 10
  config.checkpoint_every_steps = 500
  return comparison.apply(config, arg)
