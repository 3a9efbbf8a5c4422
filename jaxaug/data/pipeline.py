"""Stateless train/val/test batching: any batch is a pure function of its number.

Index arithmetic only; pixels come from the Dataset's sources. Every permutation is
drawn from numpy's generator seeded by (seed, purpose, epoch...), so all processes
compute the same global batch and a resumed run asks for the same batch numbers.

  cap     the first `train_examples` of a permutation of the train source (seed, CAP)
  split   a permutation of the capped set: val = first round(val_fraction * n), train =
          the rest; drawn once (epoch 0) or per train epoch with redraw_val_each_epoch;
          val_fraction 0 holds nothing out (for methods that read no validation batch)
  train   batch b is in epoch e = b // batches_per_epoch, at position b % batches_per_epoch
          of a permutation of that epoch's train part (seed, TRAIN, e); remainder dropped
  val     an endless stream over the val part of train epoch e: val epoch v is a
          permutation (seed, VAL, e, v); val batch i is stream entries
          [i * val_batch_size, (i + 1) * val_batch_size)

A trainer step s that consumes train_batches(s * T, T) takes
val_batch(s, epoch=pipeline.epoch_of_batch(s * T)); with train_batches_per_step=T the
epoch length is a multiple of T, so those T batches and the val batch come from one
split and never share an example.

`step_batches` and `eval_batches` read through Grain: a `grain.MapDataset` over step (or
eval chunk) numbers whose first map is the index arithmetic above (the sampler) and whose
second gathers the pixels (decode, resize, stack). With `workers` >= 1 Grain runs the
second map in that many processes, each on its own steps, and yields in step order; with
0 one background thread reads ahead. Either way a step's batch is the same.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from typing import Iterator, TypeVar

from absl import flags
import grain
import ml_collections
import numpy as np

from jaxaug.data.sources import ArraySource, Dataset, center_offsets

CAP, SPLIT, TRAIN, VAL = range(4)
T = TypeVar("T")


def seeded_permutation(size: int, *seed_words: int) -> np.ndarray:
  """int64 [size]: a permutation of range(size) determined by the non-negative seed words."""
  return np.random.default_rng(list(seed_words)).permutation(size)


def check_positive(name: str, value: int) -> None:
  """Raises ValueError naming `value` unless it is an int >= 1."""
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Pipeline:
  """Train, val and test batches of one Dataset for process `process_index` of `process_count`.

  Batch sizes are global; each process gets rows [p * local, (p + 1) * local) of every
  global batch, local = global // process_count. Images are uint8 [..., H, W, C],
  labels int32.
  """

  def __init__(self, dataset: Dataset, *, global_batch_size: int, val_batch_size: int,
               seed: int, val_fraction: float, redraw_val_each_epoch: bool,
               train_examples: int | None, process_index: int = 0, process_count: int = 1,
               train_batches_per_step: int = 1, workers: int = 0,
               eval_crop: int | None = None):
    if not isinstance(workers, (int, np.integer)) or workers < 0:
      raise ValueError(f"workers must be a non-negative integer (0: read in this process), "
                       f"got {workers!r}")
    for name, value in (("global_batch_size", global_batch_size),
                        ("val_batch_size", val_batch_size), ("process_count", process_count),
                        ("train_batches_per_step", train_batches_per_step)):
      check_positive(name, value)
    for name, value in (("global_batch_size", global_batch_size),
                        ("val_batch_size", val_batch_size)):
      if value % process_count:
        raise ValueError(f"{name} {value} is not divisible by process_count {process_count}")
    height, width = dataset.image_shape[:2]
    if eval_crop is not None and (isinstance(eval_crop, bool) or not isinstance(
        eval_crop, (int, np.integer)) or not 1 <= eval_crop <= min(height, width)):
      raise ValueError(f"eval_crop must be a whole number of pixels in [1, {min(height, width)}] "
                       f"for {height}x{width} images, got {eval_crop!r}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= val_fraction < 1.0:
      raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    available = len(dataset.train)
    if train_examples is not None:
      check_positive("train_examples", train_examples)
      if train_examples > available:
        raise ValueError(f"train_examples {train_examples} exceeds the {available} "
                         "train examples available")
    self.dataset = dataset
    self.global_batch_size = global_batch_size
    self.val_batch_size = val_batch_size
    self.seed = seed
    self.redraw_val_each_epoch = redraw_val_each_epoch
    self.process_index = process_index
    self.process_count = process_count
    self.workers = int(workers)
    self.eval_crop = eval_crop
    self.pool = (np.arange(available) if train_examples is None
                 else seeded_permutation(available, seed, CAP)[:train_examples])
    self.num_val_examples = round(val_fraction * len(self.pool))
    self.num_train_examples = len(self.pool) - self.num_val_examples
    if val_fraction > 0 and self.num_val_examples < 1:
      raise ValueError(f"val_fraction {val_fraction} of {len(self.pool)} examples leaves "
                       "no validation example (0 holds none out on purpose)")
    full_batches = self.num_train_examples // global_batch_size
    self.batches_per_epoch = full_batches // train_batches_per_step * train_batches_per_step
    if self.batches_per_epoch < 1:
      raise ValueError(
          f"{self.num_train_examples} train examples (after val_fraction {val_fraction}) make "
          f"no {train_batches_per_step} full batches of global_batch_size {global_batch_size}")
    self._make_caches()

  def _make_caches(self) -> None:
    """Memoises the permutations: the last two splits and train orders, the last four val
    orders (a val batch may straddle two val epochs)."""
    self._split = functools.lru_cache(maxsize=2)(self._draw_split)
    self._train_order = functools.lru_cache(maxsize=2)(self._draw_train_order)
    self._val_order = functools.lru_cache(maxsize=4)(self._draw_val_order)

  def __getstate__(self) -> dict:
    """Pickled (for Grain's worker processes) without the caches."""
    return {key: value for key, value in self.__dict__.items()
            if key not in ("_split", "_train_order", "_val_order")}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._make_caches()

  def _draw_split(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices [num_train], val indices [num_val]) into dataset.train for `epoch`."""
    order = self.pool[seeded_permutation(len(self.pool), self.seed, SPLIT, epoch)]
    return order[self.num_val_examples:], order[:self.num_val_examples]

  def split(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) int indices into dataset.train used in train `epoch`; disjoint."""
    return self._split(epoch if self.redraw_val_each_epoch else 0)

  def _draw_train_order(self, epoch: int) -> np.ndarray:
    """Indices [num_train] into dataset.train in the order train `epoch` visits them."""
    train, _ = self.split(epoch)
    return train[seeded_permutation(len(train), self.seed, TRAIN, epoch)]

  def _draw_val_order(self, train_epoch: int, val_epoch: int) -> np.ndarray:
    """Indices [num_val] into dataset.train in the order val epoch `val_epoch` of the val part
    of train epoch `train_epoch` visits them."""
    _, val = self.split(train_epoch)
    return val[seeded_permutation(len(val), self.seed, VAL, train_epoch, val_epoch)]

  def epoch_of_batch(self, batch: int) -> int:
    """The train epoch that train batch number `batch` belongs to."""
    return batch // self.batches_per_epoch

  def _local(self, global_indices: np.ndarray) -> np.ndarray:
    """This process's columns [..., local] of global_indices [..., global batch]."""
    local = global_indices.shape[-1] // self.process_count
    return global_indices[..., self.process_index * local:(self.process_index + 1) * local]

  def _gather(self, source, indices: np.ndarray) -> dict[str, np.ndarray]:
    """dict(image=uint8 [*indices.shape, H, W, C], label=int32 [*indices.shape])."""
    batch = source.get(indices.reshape(-1))
    return {key: value.reshape(*indices.shape, *value.shape[1:]) for key, value in batch.items()}

  def _crop_for_eval(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`batch` with its images [..., H, W, C] cut to their centre eval_crop x eval_crop pixels
    (`center_offsets`), or unchanged without eval_crop."""
    if self.eval_crop is None:
      return batch
    height, width = batch["image"].shape[-3:-1]
    top, left = center_offsets(height, width, self.eval_crop)
    crop = batch["image"][..., top:top + self.eval_crop, left:left + self.eval_crop, :]
    return {**batch, "image": crop}

  def train_indices(self, first_batch: int, count: int) -> np.ndarray:
    """Indices of train batches first_batch .. first_batch + count - 1.

    Returns int [count, global_batch_size] indices into dataset.train, all processes' rows.
    """
    if first_batch < 0 or count < 1:
      raise ValueError(f"train batches need first_batch >= 0 and count >= 1, "
                       f"got first_batch {first_batch}, count {count}")
    rows = []
    for batch in range(first_batch, first_batch + count):
      start = batch % self.batches_per_epoch * self.global_batch_size
      order = self._train_order(self.epoch_of_batch(batch))
      rows.append(order[start:start + self.global_batch_size])
    return np.stack(rows)

  def train_batches(self, first_batch: int, count: int) -> dict[str, np.ndarray]:
    """This process's rows of train batches first_batch .. first_batch + count - 1.

    Returns dict(image=uint8 [count, local_bs, H, W, C], label=int32 [count, local_bs]).
    """
    return self._gather(self.dataset.train, self._local(self.train_indices(first_batch, count)))

  def val_indices(self, index: int, epoch: int | None = None) -> np.ndarray:
    """Indices of val batch `index`, drawn from the val part of train `epoch`.

    `epoch` is needed only with redraw_val_each_epoch (else every epoch has one val part).
    Returns int [val_batch_size] indices into dataset.train, all processes' rows.
    """
    if index < 0:
      raise ValueError(f"val batch index must be >= 0, got {index}")
    if not self.num_val_examples:
      raise ValueError("no validation examples: val_fraction is 0")
    if self.redraw_val_each_epoch and epoch is None:
      raise ValueError("redraw_val_each_epoch needs the train epoch: val_batch(index, epoch=...)")
    train_epoch = epoch if self.redraw_val_each_epoch else 0
    positions = index * self.val_batch_size + np.arange(self.val_batch_size)
    val_epochs = positions // self.num_val_examples
    indices = np.empty(self.val_batch_size, np.int64)
    for val_epoch in np.unique(val_epochs):
      in_epoch = val_epochs == val_epoch
      order = self._val_order(train_epoch, int(val_epoch))
      indices[in_epoch] = order[positions[in_epoch] % self.num_val_examples]
    return indices

  def val_batch(self, index: int, epoch: int | None = None) -> dict[str, np.ndarray]:
    """This process's rows of val batch `index` for train `epoch` (see `val_indices`).

    Returns dict(image=uint8 [local_val_bs, H, W, C], label=int32 [local_val_bs]), the
    images centre-cropped to eval_crop if set.
    """
    batch = self._gather(self.dataset.train, self._local(self.val_indices(index, epoch)))
    return self._crop_for_eval(batch)

  def host_step(self, step: int, *, batches_per_step: int,
                with_val: bool) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(step, train batches, val batch or None) that trainer step `step` consumes.

    The train batches are train_batches(step * batches_per_step, batches_per_step); the val
    batch is val_batch(step) of the epoch of the first of them, read only when `with_val`.
    """
    first_batch = step * batches_per_step
    val = (self.val_batch(step, epoch=self.epoch_of_batch(first_batch)) if with_val else None)
    return step, self.train_batches(first_batch, batches_per_step), val

  def step_batches(self, start_step: int, stop_step: int, *, batches_per_step: int,
                   with_val: bool) -> Iterator[tuple[int, dict[str, np.ndarray],
                                                     dict[str, np.ndarray] | None]]:
    """`host_step` of steps start_step .. stop_step - 1 in order, read ahead (see `read_ahead`)."""
    if not 0 <= start_step <= stop_step:
      raise ValueError(f"steps need 0 <= start_step <= stop_step, got {start_step}, {stop_step}")
    steps = grain.MapDataset.range(start_step, stop_step).map(functools.partial(
        self.host_step, batches_per_step=batches_per_step, with_val=with_val))
    return read_ahead(steps, workers=self.workers)

  def eval_chunk(self, chunk: int, *, split: str, indices: np.ndarray,
                 batch_size: int) -> dict[str, np.ndarray]:
    """Eval batch number `chunk` over `indices` [n] into dataset.<split> ('train' or 'test').

    Returns this process's rows: dict(image=uint8 [local, H, W, C], label=int32 [local],
    mask=bool [local]), the images centre-cropped to eval_crop if set; rows past the end of `indices` repeat indices[0] with mask False.
    """
    rows = indices[chunk * batch_size:(chunk + 1) * batch_size]
    mask = np.arange(batch_size) < len(rows)
    padded = np.concatenate([rows, np.full(batch_size - len(rows), indices[0])])
    batch = self._gather(getattr(self.dataset, split), self._local(padded))
    return {**self._crop_for_eval(batch), "mask": self._local(mask)}

  def eval_batches(self, split: str, batch_size: int,
                   epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches covering split 'val' (of train `epoch`) or 'test' once, in index order.

    batch_size is global; the last batch is padded to it with mask=False rows. Yields
    this process's rows (see `eval_chunk`), read ahead (see `read_ahead`).
    """
    if split not in ("val", "test"):
      raise ValueError(f"eval split must be 'val' or 'test', got {split!r}")
    check_positive("eval batch_size", batch_size)
    if batch_size % self.process_count:
      raise ValueError(f"eval batch_size {batch_size} is not divisible by process_count "
                       f"{self.process_count}")
    if split == "val":
      source, indices = "train", np.sort(self.split(epoch)[1])
    else:
      source, indices = "test", np.arange(len(self.dataset.test))
    chunks = grain.MapDataset.range(-(-len(indices) // batch_size)).map(functools.partial(
        self.eval_chunk, split=source, indices=indices, batch_size=batch_size))
    return read_ahead(chunks, workers=self.workers)


def read_ahead(dataset: grain.MapDataset, *, workers: int) -> Iterator:
  """The elements of `dataset` in order, computed ahead of the consumer.

  workers >= 1: by Grain in that many worker processes (`mp_prefetch`; element i in
  process i % workers, each reading sequentially, two elements ahead). workers == 0: by one
  background thread of this process (`prefetch`).
  """
  if workers == 0:
    yield from prefetch(dataset[i] for i in range(len(dataset)))
    return
  if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; outside absl.app, their defaults
    flags.FLAGS.mark_as_parsed()
  iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
                  .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                            per_worker_buffer_size=2)))
  try:
    yield from iterator
  finally:
    iterator.close()


def default_workers(dataset: Dataset) -> int:
  """Grain worker processes for `dataset` when config.data.workers is None: none when both
  splits are held in memory (nothing to decode), else one per CPU core but one (left to the
  trainer), at least one."""
  if isinstance(dataset.train, ArraySource) and isinstance(dataset.test, ArraySource):
    return 0
  return max(1, (os.cpu_count() or 1) - 1)


def pipeline_from_config(dataset: Dataset, config: ml_collections.ConfigDict, *,
                         global_batch_size: int, val_batch_size: int, process_index: int = 0,
                         process_count: int = 1, train_batches_per_step: int = 1) -> Pipeline:
  """Pipeline over `dataset` with the split/cap/seed/workers/eval_crop fields of config.data
  (workers None: `default_workers`)."""
  workers = default_workers(dataset) if config.workers is None else config.workers
  return Pipeline(dataset, global_batch_size=global_batch_size, val_batch_size=val_batch_size,
                  seed=config.seed, val_fraction=config.val_fraction,
                  redraw_val_each_epoch=config.redraw_val_each_epoch,
                  train_examples=config.train_examples, process_index=process_index,
                  process_count=process_count, train_batches_per_step=train_batches_per_step,
                  workers=workers, eval_crop=config.eval_crop)


def prefetch(iterator: Iterator[T], size: int = 2) -> Iterator[T]:
  """Yields the items of `iterator`, produced up to `size` ahead by a background thread.

  Exceptions raised by `iterator` are re-raised here; closing the generator stops the thread.
  """
  check_positive("prefetch size", size)
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    """Puts `item` unless the consumer stopped; True if it was put."""
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for item in iterator:
        if not put((item, None)):
          return
      put((done, None))
    except BaseException as error:  # pylint: disable=broad-except
      put((done, error))

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item, error = items.get()
      if error is not None:
        raise error
      if item is done:
        return
      yield item
  finally:
    stop.set()
