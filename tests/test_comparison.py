"""get_config(arg): big_vision-style arguments and the DABO comparison's rows and ablations."""

import os

import pytest

from jaxaug.config import load_config_file
from jaxaug.config import parse_arg

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _get_config(name, arg=None):
  return load_config_file(os.path.join(CONFIGS, f"{name}.py") + (f":{arg}" if arg else ""))


def test_parse_arg_converts_to_the_defaults_types_and_rejects_the_rest():
  spec = dict(method="bilevel", T=1, magnitude=1.0, flag=False)
  args = parse_arg("method=magnitude, T=3,magnitude=0.5,flag", **spec)
  assert args.to_dict() == dict(method="magnitude", T=3, magnitude=0.5, flag=True)
  assert parse_arg(None, **spec).to_dict() == spec
  assert parse_arg("flag=false", **spec).flag is False
  with pytest.raises(ValueError, match="unknown config argument 'size' in 'size=1'; valid: "
                                       "method, T, magnitude, flag"):
    parse_arg("size=1", **spec)
  with pytest.raises(ValueError, match="T='2.5' in 'T=2.5' must be of type int"):
    parse_arg("T=2.5", **spec)
  with pytest.raises(ValueError, match="'method' in 'method' needs a value"):
    parse_arg("method", **spec)
  with pytest.raises(ValueError, match="flag='maybe' in 'flag=maybe' must be of type bool"):
    parse_arg("flag=maybe", **spec)


def test_reduced_config_without_argument_is_bilevel_affine_color_after_a_flip():
  config = _get_config("cifar10_reduced_cnn")
  assert (config.method, config.augment, config.model) == ("bilevel", "hflip", "cnn6")
  assert config.bilevel.augmenter.kind == "affine_color" and config.bilevel.augmenter.symmetric
  assert config.data.redraw_val_each_epoch and config.data.train_examples == 4000


@pytest.mark.parametrize("name", ["cifar10_reduced_cnn", "cifar10_table1"])
def test_each_row_of_table_1(name):
  rows = {
      "method=baseline": ("supervised", "none", True),
      "method=predefined,kind=translation": ("supervised", "hflip+crop", True),
      "method=predefined,kind=affine,magnitude=0.5":
          ("supervised", "hflip+random_transform('affine', 0.5)", True),
      "method=invariant,kind=translation": ("invariant", "hflip", True),
      "method=magnitude,kind=affine,magnitude=0.25":
          ("supervised", "hflip+random_transform('affine', 0.25)", False),  # held-out val
      "method=bilevel,kind=translation": ("bilevel", "hflip", True),
  }
  for arg, (method, augment, redraw) in rows.items():
    config = _get_config(name, arg)
    assert (config.method, config.augment, config.data.redraw_val_each_epoch) == (
        method, augment, redraw), arg
  invariant = _get_config(name, "method=invariant,kind=affine,size=medium")
  base = _get_config(name)
  # the invariant row trains bilevel's augmenter (its bounds, symmetry) of the kind and size
  assert invariant.invariant.augmenter.to_dict() == {
      **base.bilevel.augmenter.to_dict(), "kind": "affine", "size": "medium"}
  assert _get_config(name, "method=baseline").model == base.model


def test_ablations_set_bilevel_and_the_fixed_stages():
  config = _get_config("cifar10_reduced_cnn",
                       "kind=translation,size=large,T=2,K=4,fixed=crop+hflip")
  assert (config.method, config.augment) == ("bilevel", "crop+hflip")
  assert (config.bilevel.augmenter.kind, config.bilevel.augmenter.size) == ("translation", "large")
  assert (config.bilevel.truncation, config.bilevel.update_every) == (2, 4)
  assert _get_config("cifar10_reduced_cnn", "fixed=none").augment == "none"


@pytest.mark.parametrize("arg,message", [
    ("method=random", "unknown method='random'; valid: baseline, predefined, invariant, "
                      "magnitude, bilevel"),
    ("method=baseline,kind=affine", "method=baseline does not use kind"),
    ("method=invariant,T=2", "method=invariant does not use T; it uses: kind, size, fixed"),
    ("kind=rotation", "unknown augmenter 'rotation'"),
    ("size=tiny", "unknown augmenter size 'tiny'"),
    ("fixed=blur", "unknown augmentation 'blur'"),
    ("method=magnitude,kind=affine,magnitude=2.5", r"must be a number in \[0, 2\]"),
])
def test_bad_arguments_are_rejected_naming_the_choices(arg, message):
  with pytest.raises(ValueError, match=message):
    _get_config("cifar10_reduced_cnn", arg)

