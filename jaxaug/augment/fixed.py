"""Fixed (non-learned) augmentations, named by string and composed with '+' (big_vision style).

A spec is a '+'-joined chain of stages applied left to right, each a registered
name, optionally called with Python-literal arguments:

  "predefined"                                   pad-4 crop + horizontal flip
  "autoaugment_cifar10+crop+hflip+cutout(16)"    the AutoAugment paper's CIFAR-10 recipe
  "randaugment(2, 9)"                            RandAugment N=2, M=9
  "cutout(20, fill=0.5)"
  "learned('runs/hba/policy')+crop+hflip"         a policy a run learned, replayed
  "hflip+random_transform('affine', 0.5)"        DABO's validated-magnitude sampler
  "random_resized_crop(224)+hflip"               the ImageNet training crop

`FIXED` maps each name to a factory: `factory(*args, **kwargs)` validates its
arguments and returns a sampler `(rng, images) -> images` over a batch, float32 NHWC
in [0, 1], with independent draws per image. Arguments are read with
`ast.literal_eval` (numbers, strings, tuples, ...): nothing in a spec is executed.
A scheduled sampler (`learned`, whose policy changes over training) is marked by a
true `follows_progress` attribute and also takes `progress`, the fraction of training
done; `compose` passes it on.
"""

from __future__ import annotations

import ast
import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax

from jaxaug.augment import augmenters
from jaxaug.augment import learned
from jaxaug.augment import policies
from jaxaug.augment import transforms
from jaxaug.registry import Registry

Sampler = Callable[[jax.Array, jax.Array], jax.Array]
FIXED: Registry[Callable[..., Sampler]] = Registry("augmentation")


class Stage(NamedTuple):
  """One stage of a spec: the registered name and the literal arguments of its factory."""
  name: str
  args: tuple[Any, ...]
  kwargs: dict[str, Any]


@FIXED.register("none")
def identity() -> Sampler:
  """No augmentation."""
  return lambda rng, images: images


@FIXED.register("hflip")
def random_hflip() -> Sampler:
  """Horizontal flip with probability 1/2 per image."""
  return functools.partial(transforms.random_flip, horizontal=True, vertical=False)


@FIXED.register("vflip")
def random_vflip() -> Sampler:
  """Vertical flip with probability 1/2 per image."""
  return functools.partial(transforms.random_flip, horizontal=False, vertical=True)


@FIXED.register("crop")
def random_crop(padding: int = 4) -> Sampler:
  """Zero-pad by `padding` pixels and crop back at a uniform offset per image."""
  if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
    raise ValueError(f"crop padding must be an integer >= 0, got {padding!r}")
  return functools.partial(transforms.random_pad_and_crop, padding=padding)


@FIXED.register("random_resized_crop")
def random_resized_crop(size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Sampler:
  """The Inception / ImageNet training crop: a random box (area fraction in `scale`, aspect
  ratio in `ratio`) resized to size x size; see `transforms.resized_crop_boxes`."""
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"random_resized_crop size must be a positive integer, got {size!r}")
  transforms.check_crop_bounds(scale=scale, ratio=ratio)
  if scale[1] > 1:
    raise ValueError(f"random_resized_crop scale is a fraction of the image area, at most 1, "
                     f"got {scale!r}")
  return functools.partial(transforms.random_resized_crop, size=size, scale=scale, ratio=ratio)


@FIXED.register("predefined")
def predefined() -> Sampler:
  """Pad-4 random crop then horizontal flip: the standard CIFAR augmentation."""
  return compose("crop+hflip")


FIXED.register("autoaugment_cifar10")(functools.partial(policies.autoaugment, "cifar10"))
FIXED.register("autoaugment_svhn")(functools.partial(policies.autoaugment, "svhn"))
FIXED.register("autoaugment_imagenet")(functools.partial(policies.autoaugment, "imagenet"))
FIXED.register("randaugment")(policies.randaugment)
FIXED.register("trivialaugment_wide")(policies.trivial_augment_wide)
FIXED.register("cutout")(policies.cutout)
FIXED.register("color_jitter")(policies.color_jitter)
FIXED.register("pba")(policies.pba)
FIXED.register("learned")(learned.replay)
FIXED.register("random_transform")(augmenters.random_transform)


def _malformed(spec: str, why: str) -> ValueError:
  """The error for a spec that does not parse."""
  return ValueError(f"malformed augmentation spec {spec!r}: {why}; expected names or "
                    f"name(literal arguments) joined by '+', e.g. 'randaugment(2, 9)+cutout(16)'")


def _parse_stage(node: ast.expr, spec: str) -> Stage:
  """The `Stage` of one '+'-operand: a bare name or a call with literal arguments."""
  if isinstance(node, ast.Name):
    return Stage(node.id, (), {})
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise _malformed(spec, f"{ast.unparse(node)!r} is not a name or a call of a name")
  if any(isinstance(arg, ast.Starred) for arg in node.args) or any(
      keyword.arg is None for keyword in node.keywords):
    raise _malformed(spec, f"{ast.unparse(node)!r} unpacks arguments")
  try:
    args = tuple(ast.literal_eval(arg) for arg in node.args)
    kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
  except ValueError:
    raise _malformed(spec, f"the arguments of {ast.unparse(node)!r} must be Python literals "
                           "(quote strings, e.g. learned('runs/x'))") from None
  return Stage(node.func.id, args, kwargs)


def parse(spec: str) -> list[Stage]:
  """The stages of `spec`, left to right; ValueError naming the spec if it is malformed."""
  if not isinstance(spec, str) or not spec.strip():
    raise _malformed(str(spec), "it is empty or not a string")
  try:
    tree = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError:
    raise _malformed(spec, "it is not valid syntax") from None
  operands = []
  while isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Add):
    operands.append(tree.right)
    tree = tree.left
  operands.append(tree)
  return [_parse_stage(node, spec) for node in reversed(operands)]


def _build(stage: Stage, spec: str) -> Sampler:
  """The sampler of one stage: its factory called with its arguments."""
  factory = FIXED.get(stage.name)
  try:
    inspect.signature(factory).bind(*stage.args, **stage.kwargs)
  except TypeError as error:
    raise ValueError(f"augmentation spec {spec!r}: bad arguments for {stage.name!r} "
                     f"{inspect.signature(factory)}: {error}") from None
  return factory(*stage.args, **stage.kwargs)


def check_spec(spec: str, key: str) -> None:
  """ValueError naming the config `key` (e.g. 'config.augment') and `spec` unless `compose`
  accepts the spec."""
  try:
    compose(spec)
  except ValueError as error:
    raise ValueError(f"{key}={spec!r}: {error}") from None


def compose(spec: str) -> Sampler:
  """The sampler for `spec` (module docstring): its stages applied left to right.

  Each stage gets its own key folded from `rng`, so stages draw independently.
  Unknown names raise a ValueError listing the valid ones; malformed specs and bad
  arguments raise a ValueError naming the spec.

  Returns:
    `sample(rng, images float32 [B, H, W, C] in [0, 1], progress=0.0) -> images`;
    `progress` (fraction of training done, a scalar in [0, 1]) reaches scheduled stages.
  """
  samplers = [_build(stage, spec) for stage in parse(spec)]

  def apply(rng: jax.Array, images: jax.Array, progress: jax.Array | float = 0.0) -> jax.Array:
    for index, sampler in enumerate(samplers):
      key = jax.random.fold_in(rng, index)
      if getattr(sampler, "follows_progress", False):
        images = sampler(key, images, progress)
      else:
        images = sampler(key, images)
    return images

  return apply
