"""The DABO paper's comparison (Table 1) and ablations as the argument of `get_config(arg)`.

Mounsaveng et al., WACV 2021, Table 1 compares, on CIFAR-10 with ResNet-18, for
translation and for affine transformations, five ways of choosing the transformation
(the `method` argument, one row each):

  baseline    no augmentation (`supervised`, augment none).
  predefined  a hand-set augmentation: the fixed stages, then pad-4 crop for translation
              (the paper's random translation of -4..4 px) or, for the other kinds, the
              kind's random transformation at `magnitude` (`random_transform`; the paper
              does not give its predefined affine ranges).
  invariant   transformation-invariant, STN-style (`jaxaug.methods.invariant`).
  magnitude   validated magnitude: the fixed stages, then `random_transform(kind,
              magnitude)` (`supervised`); the magnitude is chosen by a grid on the
              validation split (`python -m jaxaug.sweep ... --select val_accuracy`), so
              this row holds the validation split out (`data.redraw_val_each_epoch=False`).
  bilevel     the paper's method (`jaxaug.methods.bilevel`).

and the ablations: `kind` (translation | affine | color | affine_color), `size` (small |
medium | large), `T` (truncation) and `K` (update frequency), `fixed` (the predefined stages
kept before the learned or random transformation, e.g. `hflip`, `crop+hflip`, `none`).

  --config=configs/cifar10_reduced_cnn.py:method=bilevel,kind=affine,fixed=crop+hflip

A key that the chosen row does not use is rejected. Command-line overrides
(`--config.x=y`) apply after `get_config`, so for `invariant` override the augmenter under
`config.invariant`, for `bilevel` under `config.bilevel`.
"""

from __future__ import annotations

import ml_collections

from jaxaug.augment import augmenters
from jaxaug.augment import fixed as fixed_stages
from jaxaug.config import given_args
from jaxaug.config import parse_arg

# Row -> the argument keys it uses (besides `method`).
ROWS = {
    "baseline": (),
    "predefined": ("kind", "fixed", "magnitude"),
    "invariant": ("kind", "size", "fixed"),
    "magnitude": ("kind", "fixed", "magnitude"),
    "bilevel": ("kind", "size", "T", "K", "fixed"),
}


def arg_defaults(config: ml_collections.ConfigDict) -> dict:
  """The argument's keys with their defaults: the base config's bilevel settings, the flip."""
  return {"method": "bilevel", "kind": config.bilevel.augmenter.kind,
          "size": config.bilevel.augmenter.size, "T": config.bilevel.truncation,
          "K": config.bilevel.update_every, "fixed": "hflip", "magnitude": 1.0}


def apply(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """`config` set up for the row and ablation `arg` names (module docstring); returns it.

  Raises ValueError for an unknown row, key, kind, size or fixed stage, or a key the row
  does not use, naming the valid choices.
  """
  args = parse_arg(arg, **arg_defaults(config))
  if args.method not in ROWS:
    raise ValueError(f"unknown method={args.method!r}; valid: {', '.join(ROWS)}")
  unused = sorted(given_args(arg) - {"method", *ROWS[args.method]})
  if unused:
    raise ValueError(f"method={args.method} does not use {', '.join(unused)}; it uses: "
                     f"{', '.join(ROWS[args.method]) or 'nothing else'}")
  augmenters.AUGMENTERS.get(args.kind)
  augmenters.AUGMENTER_SIZES.get(args.size)
  fixed_stages.compose(args.fixed)
  random = f"random_transform({args.kind!r}, {args.magnitude!r})"
  if args.method == "baseline":
    config.update(method="supervised", augment="none")
  elif args.method == "predefined":
    hand_set = "crop" if args.kind == "translation" else random
    config.update(method="supervised", augment=f"{args.fixed}+{hand_set}")
  elif args.method == "magnitude":
    config.update(method="supervised", augment=f"{args.fixed}+{random}")
    config.data.redraw_val_each_epoch = False
  else:
    config.update(method=args.method, augment=args.fixed)
    if args.method == "invariant":  # the same augmenter settings as bilevel's
      config.invariant.augmenter = ml_collections.ConfigDict(config.bilevel.augmenter.to_dict())
    config[args.method].augmenter.update(kind=args.kind, size=args.size)
    if args.method == "bilevel":
      config.bilevel.update(truncation=args.T, update_every=args.K)
  fixed_stages.compose(config.augment)  # e.g. a magnitude out of range
  return config
