"""DABO on ImageNet: ResNet-50 (ImageNet stem), affine + colour augmenter, 224 px.

Images are read with their shorter side resized to 256 and cut to the centre 256 x 256;
training takes a random-resized crop to 224 and a flip (`config.augment`), evaluation the
centre 224 x 224 (`config.data.eval_crop`): the standard ImageNet crops, here with the
learned augmentation after them. The training crop is drawn from that centre square (the
whole 4:3 image would need ragged batches); the accelerator draws and resizes it, so the
input workers only decode and resize once.

  configs/imagenet_bilevel.py:paper   the paper's setting instead: every image resized to
                                      224 x 224 ("we resize them to a resolution of
                                      224x224"), a flip, no crop

SGD 0.1 x (batch / 256), Nesterov momentum 0.9, weight decay 1e-4, 90 epochs, step decay
at 30/60/80 (the standard ResNet-50 recipe; the paper gives none). Needs the tfds
`imagenet2012` prepared in array_record format, or a folder source, and accelerators.
"""

from jaxaug.config import default_config

CROPS = ("standard", "paper")


def get_config(arg: str | None = None):
  crops = arg or "standard"
  if crops not in CROPS:
    raise ValueError(f"configs/imagenet_bilevel.py takes one of {', '.join(CROPS)} after ':', "
                     f"got {arg!r}")
  config = default_config()
  config.method = "bilevel"
  config.model = "resnet50"
  config.data.dataset = "imagenet2012"
  if crops == "paper":
    config.data.image_size = 224
    config.augment = "hflip"
  else:
    config.data.image_size = 256
    config.data.resize = "center_crop"
    config.data.eval_crop = 224
    config.augment = "random_resized_crop(224)+hflip"
  config.data.val_fraction = 0.02
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  config.bilevel.augmenter.kind = "affine_color"
  config.batch_size = 1024
  config.val_batch_size = 1024
  config.eval_batch_size = 1024
  config.num_epochs = 90
  config.optim.learning_rate = 0.1 * config.batch_size / 256
  config.optim.weight_decay = 1e-4
  config.optim.schedule = "step"
  config.optim.step_epochs = (30, 60, 80)
  config.optim.step_factor = 0.1
  config.optim.warmup_epochs = 5
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  return config
