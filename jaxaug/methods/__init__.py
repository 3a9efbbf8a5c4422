"""Training methods, each a module with the same step-function contract.

A method module provides:
  init(config, rng, sample_batch, info: DataInfo) -> state
  train_step(state, train_batch, val_batch, rng) -> (state, metrics)
  eval_step(state, batch) -> metric sums
  augment(state, images, rng) -> images           (for visualisation)
  train_batches_per_step(config) -> int           (leading axis of train_batch)
  USES_VAL_BATCH: bool                             (False: train_step gets val_batch=None)
`METHODS.get(config.method)` returns the module.
"""

from __future__ import annotations

from jaxaug.methods import bilevel, supervised
from jaxaug.registry import Registry

METHODS = Registry("method")
METHODS.register("supervised")(supervised)
METHODS.register("bilevel")(bilevel)
