"""Default configuration shared by every `configs/*.py` file (ml_collections)."""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections

from jaxaug.data.sources import default_data_config
from jaxaug.methods import METHODS
from jaxaug.methods.training import default_optimizer


def default_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults for a quick CPU run.

  Each registered method's own settings are the section `config.<method name>` (its
  `default_config()`), present whatever `config.method` is, so that both
  `--config.method=...` and `--config.<method>.x=...` work from the command line.
  """
  config = ml_collections.ConfigDict()
  config.method = "supervised"      # one of METHODS.names(): supervised | bilevel | hba
  config.model = "small_cnn"
  # Computation dtype of the classifier's convolutions and activations: float32 | bfloat16.
  # Parameters, optimiser states, batch-norm statistics, losses, the augmenters and the
  # hypergradient stay float32 (jaxaug.models.DTYPES).
  config.dtype = "float32"
  config.augment = "none"           # augment.fixed spec, e.g. "randaugment(2, 9)+cutout(16)"
  config.data = default_data_config()
  config.data.mean = (0.5,)         # per-channel standardisation of [0, 1] images
  config.data.std = (0.25,)
  config.batch_size = 128           # global, over all devices and processes
  config.val_batch_size = 128
  config.eval_batch_size = 256
  config.num_epochs = 10
  config.optim = default_optimizer()
  for name in METHODS.names():
    config[name] = METHODS.get(name).default_config()
  config.seed = 0
  config.log_every_steps = 50
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.image_every_epochs = 10.0
  # Several processes (hosts, or one per GPU): jax.distributed.initialize with these
  # arguments; None = detected from the cluster (Cloud TPU, SLURM, Open MPI, ...).
  config.distributed = ml_collections.ConfigDict({
      "enabled": False,
      "coordinator_address": ml_collections.config_dict.placeholder(str),  # "host:port"
      "num_processes": ml_collections.config_dict.placeholder(int),
      "process_id": ml_collections.config_dict.placeholder(int),
  })
  return config


CIFAR_STATS = {  # per-channel mean and std of the training images in [0, 1]
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))  # svhn_cropped train


def cifar_resnet18_config(dataset: str = "cifar10") -> ml_collections.ConfigDict:
  """The shared CIFAR recipe of configs/cifar*.py: ResNet-18, 200 epochs.

  The DABO paper's text gives no classifier optimiser settings; these are the
  standard CIFAR ResNet-18 ones (SGD 0.1, Nesterov momentum 0.9, weight decay
  5e-4, batch 128, cosine decay). 20% of train is held out for validation (as in
  the paper). `dataset` may be a tfds name or e.g. 'folder:/data/cifar10'; the
  standardisation statistics are CIFAR-10's unless it names cifar100.
  """
  config = default_config()
  config.model = "resnet18"
  config.data.dataset = dataset
  config.data.mean, config.data.std = CIFAR_STATS["cifar100" if "cifar100" in dataset
                                                  else "cifar10"]
  config.data.val_fraction = 0.2
  config.batch_size = 128
  config.val_batch_size = 128
  config.num_epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  return config


def _bool(text: str) -> bool:
  """'true'/'1'/'yes' -> True, 'false'/'0'/'no' -> False (any case); ValueError otherwise."""
  lowered = text.lower()
  if lowered in ("true", "1", "yes"):
    return True
  if lowered in ("false", "0", "no"):
    return False
  raise ValueError(f"{text!r} is not a boolean (true or false)")


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """The argument of a `get_config(arg)` (big_vision's `parse_arg`): 'k1=v1,k2=v2' -> ConfigDict.

  `spec` gives every valid key with its default; a given value is converted to the type
  of its default (bool: true/false, a bare `key` meaning true; int; float; str). The
  command line passes what follows the first ':' of `--config=file.py:k1=v1,k2=v2`.

  Raises:
    ValueError naming an unknown key (and the valid ones) or a value of the wrong type.
  """
  values = dict(spec)
  for item in (arg or "").split(","):
    if not item.strip():
      continue
    key, sep, text = (part.strip() for part in item.partition("="))
    if key not in spec:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; valid: {', '.join(spec)}")
    default = spec[key]
    if not sep and not isinstance(default, bool):
      raise ValueError(f"config argument {key!r} in {arg!r} needs a value: {key}=...")
    try:
      if isinstance(default, bool):
        values[key] = _bool(text) if sep else True
      elif isinstance(default, (int, float)):
        values[key] = type(default)(text)
      else:
        values[key] = text
    except ValueError:
      raise ValueError(f"config argument {key}={text!r} in {arg!r} must be of type "
                       f"{type(default).__name__}") from None
  return ml_collections.ConfigDict(values)


def given_args(arg: str | None) -> set[str]:
  """The keys that `arg` ('k1=v1,k2') sets."""
  return {item.partition("=")[0].strip() for item in (arg or "").split(",") if item.strip()}


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of `spec` = 'FILE' or 'FILE:arg': FILE's `get_config()` or `get_config(arg)`
  (what `--config=spec` gives before command-line overrides, unlocked).

  Raises ValueError if FILE does not exist; the config's own errors pass through.
  """
  file, sep, arg = spec.partition(":")
  if not os.path.isfile(file):
    raise ValueError(f"no such config file: {file!r}")
  loader = importlib.util.spec_from_file_location("jaxaug_config_file", file)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  return module.get_config(*([arg] if sep else []))


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every key of `config` and its sections, dotted ('optim.learning_rate')."""
  keys = []
  for key, value in config.items():
    keys.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      keys += dotted_keys(value, f"{prefix}{key}.")
  return keys


def check_overrides(config: ml_collections.ConfigDict, argv: list[str]) -> None:
  """ValueError for the first `--config.<key>` of `argv` that names no key of `config`, with
  the closest valid keys."""
  valid = dotted_keys(config)
  for word in argv:
    if not word.startswith("--config."):
      continue
    key = word.removeprefix("--config.").partition("=")[0]
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=3)
      hint = f"; did you mean {' or '.join(close)}?" if close else ""
      raise ValueError(f"--config.{key}: the config has no key {key!r}{hint}")
