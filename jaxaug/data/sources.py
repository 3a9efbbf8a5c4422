"""Random-access image sources: .npz arrays, image folders, tfds catalog, sklearn digits.

A source answers `get(indices)` with uint8 NHWC images and int32 labels, holds no
iteration state, and so serves any batch in any order (resume = ask for the same
indices again). `load_dataset(config)` picks the source kind from `config.dataset`:

  npz:/path/file.npz   arrays x_train, y_train, x_test, y_test, held in memory
  folder:/path         /path/{train,test}/<class>/<image file> (tfds ImageFolder layout)
  sklearn_digits       scikit-learn's bundled 8x8 digits, fixed 80/20 train/test split
  any other name       a tfds catalog dataset, read through `tfds.data_source` (no
                       TensorFlow); prepared on first use, the one step that imports TensorFlow
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import posixpath
import sys
import threading
import time
from typing import Callable, Protocol, runtime_checkable
import urllib.parse

from etils import epath
import ml_collections
from ml_collections import config_dict
import numpy as np
from PIL import Image

from jaxaug import reporting
from jaxaug.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# tfds datasets whose held-out split is not called "test".
TFDS_TEST_SPLITS = {"imagenet2012": "validation"}
# tfds datasets are prepared and read in this format (random access by index).
TFDS_FILE_FORMAT = "array_record"
# Device kinds hidden from TensorFlow when it prepares a tfds dataset in the training process.
TENSORFLOW_HIDDEN_DEVICES = ("GPU", "TPU")
# How long the hosts of a tfds dataset's downloads get to answer before a run stops.
DOWNLOAD_PROBE_SECONDS = 5.0
SKLEARN_DIGITS_TRAIN_FRACTION = 0.8
SKLEARN_DIGITS_SPLIT_SEED = 0


@runtime_checkable
class Source(Protocol):
  """Random-access labelled images.

  `get(indices)` takes int indices [n] in [0, len) and returns
  dict(image=uint8 [n, H, W, C], label=int32 [n]); `image_shape` is (H, W, C),
  labels lie in [0, num_classes).
  """

  num_classes: int
  image_shape: tuple[int, int, int]

  def __len__(self) -> int:
    ...

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train and a test source over the same classes and image shape (H, W, C)."""

  train: Source
  test: Source
  num_classes: int
  image_shape: tuple[int, int, int]


def default_data_config() -> ml_collections.ConfigDict:
  """Defaults of `config.data`.

  dataset: "npz:/file.npz", "folder:/dir", "sklearn_digits" or a tfds catalog name.
  data_dir: tfds data directory (None: the tfds default, ~/tensorflow_datasets); a tfds
    dataset not prepared there is downloaded and prepared there on first use.
  image_size: side in pixels every image is resized to (None: keep the stored size).
  resize: how: "squash" (both sides to image_size) or "center_crop" (the shorter side to
    image_size, then the centre square); see `Resize`.
  eval_crop: validation and test images are their centre eval_crop x eval_crop pixels
    (None: the whole image). With config.augment
    "random_resized_crop(224)+hflip", image_size 256 and "center_crop", eval_crop 224 is
    the standard ImageNet evaluation (resize to 256, centre crop 224).
  val_fraction: part of the (capped) train set held out for validation, in [0, 1) (0 only
    for methods that read no validation batch: then nothing is held out and no validation
    metrics are reported).
  redraw_val_each_epoch: re-draw the train/val split every train epoch.
  train_examples: use only this many train examples (None: all).
  seed: seeds the cap, the split and every epoch's order.
  in_memory_max_bytes: a folder split whose decoded uint8 pixels fit in this many
    bytes is decoded once at load; a larger one is decoded on every access.
  skip_unreadable: leave out the image files of a folder dataset that cannot be decoded
    (their count is printed) instead of stopping with the first one's path.
  workers: Grain worker processes that decode, resize and batch ahead of the trainer
    (0: one background thread; None: none for data held in memory, else the CPU count
    less one).
  """
  return ml_collections.ConfigDict({
      "dataset": "sklearn_digits",
      "data_dir": config_dict.placeholder(str),
      "image_size": config_dict.placeholder(int),
      "resize": "squash",
      "eval_crop": config_dict.placeholder(int),
      "val_fraction": 0.2,
      "redraw_val_each_epoch": False,
      "train_examples": config_dict.placeholder(int),
      "seed": 0,
      "in_memory_max_bytes": 2**31,
      "skip_unreadable": False,
      "workers": config_dict.placeholder(int),
  })


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """Raises ValueError naming the first label of `labels` [n] outside [0, num_classes)."""
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"{where}: label {int(bad[0])} is outside [0, {num_classes})")


RESIZE_MODES = ("squash", "center_crop")


def center_offsets(height: int, width: int, size: int) -> tuple[int, int]:
  """(top, left) of the centre size x size square of a height x width image, rounded as
  torchvision's CenterCrop rounds them."""
  return round((height - size) / 2), round((width - size) / 2)


@dataclasses.dataclass(frozen=True)
class Resize:
  """How every image is brought to size x size pixels (PIL, bilinear, antialiased).

  mode "squash": both sides to `size`; the aspect ratio changes (the DABO paper's ImageNet
  setting). Mode "center_crop": the shorter side to `size`, keeping the aspect ratio, then
  the centre size x size (torchvision's `Resize(size)` then `CenterCrop(size)`).
  """

  size: int
  mode: str = "squash"

  def __post_init__(self):
    if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1:
      raise ValueError(
          f"config.data.image_size must be a positive number of pixels, got {self.size!r}")
    if self.mode not in RESIZE_MODES:
      raise ValueError(f"config.data.resize must be one of {', '.join(RESIZE_MODES)}, "
                       f"got {self.mode!r}")

  def pil(self, image: Image.Image) -> Image.Image:
    """`image` (width x height) resized to size x size pixels."""
    width, height = image.size
    if (width, height) == (self.size, self.size):
      return image
    if self.mode == "squash":
      return image.resize((self.size, self.size), Image.BILINEAR)
    # torchvision: the longer side is truncated, the crop offsets rounded.
    if width <= height:
      width, height = self.size, int(self.size * height / width)
    else:
      width, height = int(self.size * width / height), self.size
    if (width, height) != image.size:
      image = image.resize((width, height), Image.BILINEAR)
    top, left = center_offsets(height, width, self.size)
    return image.crop((left, top, left + self.size, top + self.size))

  def array(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [size, size, C], as `pil`."""
    if image.shape[:2] == (self.size, self.size):
      return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return np.asarray(self.pil(pil)).reshape(self.size, self.size, -1)

  def arrays(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, size, size, C], as `pil`."""
    if images.shape[1:3] == (self.size, self.size):
      return images
    return np.stack([self.array(image) for image in images])


def resize_from_config(config: ml_collections.ConfigDict) -> Resize | None:
  """The `Resize` of config.image_size and config.resize (None: images keep their size)."""
  if config.image_size is None:
    if config.resize != "squash":
      raise ValueError(f"config.data.resize={config.resize!r} needs config.data.image_size "
                       "(the side to resize to)")
    return None
  return Resize(config.image_size, config.resize)


class ArraySource:
  """Images and labels held in memory: uint8 [N, H, W, C] and int [N]."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, name: str):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(
          f"{name}: images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"{name}: {labels.shape[0]} labels for {images.shape[0]} images")
    check_labels(labels, num_classes, name)
    self.images = images
    self.labels = labels.astype(np.int32)
    self.num_classes = num_classes
    self.image_shape = tuple(images.shape[1:])

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """dict(image=uint8 [n, H, W, C], label=int32 [n]) for int indices [n]."""
    return {"image": self.images[indices], "label": self.labels[indices]}


class UnreadableImageError(ValueError):
  """An image file that PIL cannot decode; the message names it and the way around it."""


PROGRESS_SECONDS = 2.0  # the least time between two progress lines of a long read
Progress = Callable[[str], None]  # prints one line (e.g. `reporting.say`)


def decode_image(path: str) -> Image.Image:
  """The image at `path` decoded as RGB; UnreadableImageError naming it if PIL cannot."""
  try:
    with Image.open(path) as image:
      return image.convert("RGB")
  except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for a broken file
    raise UnreadableImageError(
        f"cannot read image {path} ({error}): remove it, or set "
        f"config.data.skip_unreadable=True to leave unreadable images out") from None


class FolderSource:
  """Image files decoded with PIL (as RGB) on every access.

  paths[i] has label labels[i]; every image is resized by `resize` when it is
  given, else it must be image_shape[:2] in size.
  """

  def __init__(self, paths: list[str], labels: np.ndarray, num_classes: int,
               image_shape: tuple[int, int, int], resize: Resize | None):
    self.paths = paths
    self.labels = labels.astype(np.int32)
    self.num_classes = num_classes
    self.image_shape = image_shape
    self.resize = resize

  def __len__(self) -> int:
    return len(self.paths)

  def decode(self, index: int) -> np.ndarray:
    """uint8 [H, W, 3] pixels of image `index`; ValueError naming a file of another size."""
    path = self.paths[index]
    image = decode_image(path)
    if self.resize is not None:
      image = self.resize.pil(image)
    pixels = np.asarray(image)
    if pixels.shape != self.image_shape:
      raise ValueError(
          f"image {path} is {pixels.shape[1]}x{pixels.shape[0]}, others are "
          f"{self.image_shape[1]}x{self.image_shape[0]}; set config.data.image_size to resize all")
    return pixels

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """dict(image=uint8 [n, H, W, 3], label=int32 [n]) for int indices [n]."""
    images = np.stack([self.decode(int(i)) for i in indices])
    return {"image": images, "label": self.labels[indices]}


class TfdsSource:
  """A split of a tfds dataset read by index through `tfds.data_source`."""

  def __init__(self, data_source, num_classes: int, image_shape: tuple[int, int, int],
               resize: Resize | None, name: str):
    self.data_source = data_source
    self.num_classes = num_classes
    self.image_shape = image_shape
    self.resize = resize
    self.name = name

  def __len__(self) -> int:
    return len(self.data_source)

  def example(self, index: int) -> tuple[np.ndarray, int]:
    """(uint8 [H, W, C] image, label) of example `index`, resized if a `resize` is set."""
    record = self.data_source[index]
    image = np.asarray(record["image"], np.uint8)
    if self.resize is not None:
      image = self.resize.array(image)
    if image.shape != self.image_shape:
      raise ValueError(
          f"{self.name}[{index}]: image shape {image.shape}, expected {self.image_shape}")
    return image, int(record["label"])

  def get(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """dict(image=uint8 [n, H, W, C], label=int32 [n]) for int indices [n]."""
    examples = [self.example(int(i)) for i in indices]
    images = np.stack([image for image, _ in examples])
    labels = np.array([label for _, label in examples], np.int32)
    check_labels(labels, self.num_classes, self.name)
    return {"image": images, "label": labels}


def as_uint8_nhwc(images: np.ndarray, where: str) -> np.ndarray:
  """uint8 [N, H, W, C] from uint8 or float-in-[0, 1] images [N, H, W] or [N, H, W, C]."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(
        f"{where}: images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
  if np.issubdtype(images.dtype, np.floating):
    low, high = float(images.min(initial=0.0)), float(images.max(initial=0.0))
    if low < 0.0 or high > 1.0:
      raise ValueError(
          f"{where}: float images must lie in [0, 1], found values in [{low}, {high}]")
    return np.round(images * 255.0).astype(np.uint8)
  if images.dtype != np.uint8:
    raise ValueError(f"{where}: images must be uint8 or float in [0, 1], got {images.dtype}")
  return images


def as_labels(labels: np.ndarray, where: str) -> np.ndarray:
  """int32 [N] from integer labels [N] or [N, 1]."""
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{where}: labels must be integers [N], got {labels.dtype} {labels.shape}")
  return labels.astype(np.int32)


def dataset_from_arrays(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                        y_test: np.ndarray, num_classes: int | None, resize: Resize | None,
                        name: str) -> Dataset:
  """In-memory Dataset from image arrays (see `as_uint8_nhwc`) and integer labels.

  num_classes: None means 1 + the largest train label; test labels must lie below it.
  """
  train_images = as_uint8_nhwc(x_train, f"{name} x_train")
  test_images = as_uint8_nhwc(x_test, f"{name} x_test")
  if resize is not None:
    train_images, test_images = resize.arrays(train_images), resize.arrays(test_images)
  train_labels = as_labels(y_train, f"{name} y_train")
  test_labels = as_labels(y_test, f"{name} y_test")
  if num_classes is None:
    num_classes = int(train_labels.max(initial=-1)) + 1
  train = ArraySource(train_images, train_labels, num_classes, f"{name} train")
  test = ArraySource(test_images, test_labels, num_classes, f"{name} test")
  if train.image_shape != test.image_shape:
    raise ValueError(
        f"{name}: train images are {train.image_shape}, test images {test.image_shape}")
  return Dataset(train, test, num_classes, train.image_shape)


# A loader: (argument after "kind:", config.data, progress) -> Dataset; `progress` gets a line
# every few seconds while a loader reads long (see `read_each`).
LOADERS: Registry[Callable[[str, ml_collections.ConfigDict, Progress | None], Dataset]] = (
    Registry("dataset kind"))


@LOADERS.register("npz")
def load_npz(path: str, config: ml_collections.ConfigDict,
             progress: Progress | None = None) -> Dataset:
  """Dataset from a .npz with x_train, y_train, x_test, y_test (and optionally num_classes)."""
  del progress  # one read
  if not os.path.isfile(path):
    raise ValueError(
        f"npz dataset file {path!r} does not exist (dataset is 'npz:/path/file.npz')")
  with np.load(path, allow_pickle=False) as arrays:
    missing = sorted({"x_train", "y_train", "x_test", "y_test"} - set(arrays.files))
    if missing:
      raise ValueError(f"{path} lacks arrays {missing}; it has {sorted(arrays.files)}")
    num_classes = int(arrays["num_classes"]) if "num_classes" in arrays.files else None
    return dataset_from_arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"],
                               arrays["y_test"], num_classes, resize_from_config(config), path)


@LOADERS.register("sklearn_digits")
def load_sklearn_digits(_: str, config: ml_collections.ConfigDict,
                        progress: Progress | None = None) -> Dataset:
  """scikit-learn's 1,797 8x8 grayscale digits: uint8 [N, 8, 8, 1] (0..16 scaled to 0..255).

  The train/test split (80/20) is a fixed permutation, the same for every config.seed.
  """
  del progress  # bundled, read at once
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  order = np.random.default_rng(SKLEARN_DIGITS_SPLIT_SEED).permutation(len(images))
  num_train = round(SKLEARN_DIGITS_TRAIN_FRACTION * len(images))
  train, test = order[:num_train], order[num_train:]
  return dataset_from_arrays(images[train], digits.target[train], images[test],
                             digits.target[test], 10, resize_from_config(config),
                             "sklearn_digits")


def class_folders(split_dir: str) -> list[str]:
  """Sorted names of the sub-folders of split_dir, hidden ones (.ipynb_checkpoints, ...) left out."""
  return sorted(entry.name for entry in os.scandir(split_dir)
                if entry.is_dir() and not entry.name.startswith("."))


def list_image_files(split_dir: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
  """(sorted image paths, int32 labels) under split_dir/<class>/ for the given class order."""
  folders = set(class_folders(split_dir))
  unknown = sorted(folders - set(classes))
  if unknown:
    raise ValueError(
        f"{split_dir}: class folders {unknown} are not among the train classes {classes}")
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  if not paths:
    raise ValueError(f"folder {split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}) "
                     "in class sub-folders")
  return paths, np.array(labels, np.int32)


def readable(path: str) -> bool:
  """Whether PIL can decode the image file at `path`."""
  try:
    decode_image(path)
  except UnreadableImageError:
    return False
  return True


def read_each(items: list, read: Callable, what: str, progress: Progress | None) -> list:
  """[read(item) for item in items], with a line to `progress` every PROGRESS_SECONDS
  ('<what>: 12,000 of 50,000 (24%)') while it takes long."""
  results, last = [], time.monotonic()
  for done, item in enumerate(items):
    results.append(read(item))
    if progress is not None and time.monotonic() - last >= PROGRESS_SECONDS:
      progress(f"{what}: {done + 1:,} of {len(items):,} ({(done + 1) / len(items):.0%})")
      last = time.monotonic()
  return results


def folder_split(split_dir: str, classes: list[str], resize: Resize | None,
                 in_memory_max_bytes: int, *, skip_unreadable: bool = False,
                 progress: Progress | None = None) -> Source:
  """Source over split_dir/<class>/*; decoded into memory once if it fits in_memory_max_bytes.

  With `skip_unreadable` the files PIL cannot decode are left out (a line to `progress`
  says how many), else the first one stops the load (or, read on access, the run) with
  UnreadableImageError.
  """
  paths, labels = list_image_files(split_dir, classes)
  if skip_unreadable:
    kept = np.flatnonzero(read_each(paths, readable, f"checking {split_dir}", progress))
    if len(kept) < len(paths) and progress is not None:
      first = paths[np.setdiff1d(np.arange(len(paths)), kept)[0]]
      progress(f"left out {len(paths) - len(kept):,} unreadable image(s) of {split_dir}, "
               f"e.g. {first}")
    if not len(kept):
      raise ValueError(f"folder {split_dir} holds no readable images")
    paths, labels = [paths[i] for i in kept], labels[kept]
  if resize is None:
    width, height = decode_image(paths[0]).size
  else:
    width = height = resize.size
  source = FolderSource(paths, labels, len(classes), (height, width, 3), resize)
  if len(source) * height * width * 3 > in_memory_max_bytes:
    return source
  images = read_each(range(len(source)), source.decode, f"reading {split_dir}", progress)
  return ArraySource(np.stack(images), labels, len(classes), split_dir)


@LOADERS.register("folder")
def load_folder(root: str, config: ml_collections.ConfigDict,
                progress: Progress | None = None) -> Dataset:
  """Dataset from root/{train,test}/<class>/<image>; labels follow sorted class-folder names.
  `progress` gets a line every few seconds while the images are read."""
  train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
  for split_dir in (train_dir, test_dir):
    if not os.path.isdir(split_dir):
      raise ValueError(f"folder dataset {root!r} needs sub-folders train/ and test/; "
                       f"{split_dir} is missing")
  classes = class_folders(train_dir)
  if not classes:
    raise ValueError(f"folder {train_dir} holds no class sub-folders, so no images")
  resize = resize_from_config(config)
  train, test = (folder_split(split_dir, classes, resize, config.in_memory_max_bytes,
                              skip_unreadable=config.skip_unreadable, progress=progress)
                 for split_dir in (train_dir, test_dir))
  if train.image_shape != test.image_shape:
    raise ValueError(f"folder {root}: train images are {train.image_shape}, test images "
                     f"{test.image_shape}; set config.data.image_size")
  return Dataset(train, test, len(classes), train.image_shape)


def tfds_builder_name(name: str) -> str:
  """The catalog name in a tfds dataset string: "cifar10" for "cifar10/plain:3.0.2"."""
  return name.split(":")[0].split("/")[0]


def check_tfds_name(name: str) -> None:
  """Raises ValueError naming close valid names if `name` is not in the tfds catalog."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds_builder_name(name)
  builders = tfds.list_builders(with_community_datasets=False)
  if builder not in builders:
    containing = [candidate for candidate in builders if builder and builder in candidate]
    close = list(dict.fromkeys(difflib.get_close_matches(builder, builders, n=5) + containing))[:8]
    raise ValueError(
        f"unknown dataset {name!r}: not a tfds catalog name (close ones: {close or 'none'}); "
        f"other datasets are '<kind>:<argument>' or a kind alone, kinds {LOADERS.names()}, "
        "e.g. 'npz:/data/x.npz', 'folder:/data/images', 'sklearn_digits'")


class DatasetNotPrepared(ValueError):
  """A tfds dataset is not prepared in its data_dir, and what preparing it needs is missing
  (a connection to the hosts it downloads from, or files to be put in place by hand)."""


def ways_on(name: str) -> str:
  """The alternatives to preparing tfds dataset `name` here, as command-line overrides."""
  return (f"point --config.data.data_dir at a directory holding a prepared copy ({name}/<version>/ "
          f"in {TFDS_FILE_FORMAT} format), or train on images on disk: "
          "--config.data.dataset=folder:/path (train/<class>/<image>, test/<class>/<image>) or "
          "--config.data.dataset=npz:/path/file.npz (x_train, y_train, x_test, y_test)")


def format_bytes(size: float) -> str:
  """`size` bytes as e.g. "162.2 MiB" (in B, KiB, MiB or GiB)."""
  units = ("B", "KiB", "MiB", "GiB")
  power = 0
  while size >= 1024 and power < len(units) - 1:
    size, power = size / 1024, power + 1
  return f"{size:.1f} {units[power]}"


def download_name(url: str, info) -> str:
  """The file name of a tfds download: the one registered with its checksum (`info`, a
  `tfds.download.checksums.UrlInfo`), else the last part of its URL."""
  return info.filename or posixpath.basename(urllib.parse.urlsplit(url).path)


def uncached_downloads(builder, download_dir: epath.Path, manual_dir: epath.Path) -> dict[str, int]:
  """url -> size in bytes of each file tfds `builder` registers for download that is neither in
  tfds's download cache under download_dir nor, by its file name (`download_name`), in
  manual_dir.

  Mirrors where `tfds.download.DownloadManager` looks before it downloads: the manual
  directory, then `<download_dir>/<dataset name>/` and `<download_dir>/` (older tfds) under
  the file name made from the URL and its registered checksum, with its .INFO file beside it.
  A builder that registers no checksums has no known downloads ({}).
  """
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top

  missing = {}
  for url, info in (builder.url_infos or {}).items():
    cached_name = resource.get_dl_fname(url, info.checksum)
    in_manual_dir = (manual_dir / download_name(url, info)).exists()
    in_cache = any(resource.is_locally_cached(directory / cached_name)
                   for directory in (download_dir / builder.name, download_dir))
    if not (in_manual_dir or in_cache):
      missing[url] = int(info.size)
  return missing


def url_host(url: str) -> str:
  """The host name in `url`."""
  return urllib.parse.urlsplit(url).hostname or url


def unreachable(urls: list[str], timeout: float) -> dict[str, str]:
  """url -> why, for each of `urls` whose host gave no HTTP answer within `timeout` seconds.

  One HEAD request per URL (through the proxies the environment sets, as tfds's downloads),
  all at once, no retries; any HTTP status counts as an answer. Returns after at most
  `timeout` seconds even when name resolution hangs (the probes run in daemon threads).
  """
  import requests  # pylint: disable=g-import-not-at-top

  answers: dict[str, str | None] = {}  # url -> None (answered) or why not, set by the probes

  def probe(url: str) -> None:
    try:
      requests.head(url, timeout=timeout, allow_redirects=False).close()
      answers[url] = None
    except requests.RequestException as error:
      reason = getattr(error.args[0], "reason", None) if error.args else None
      answers[url] = f"{url_host(url)}: {type(reason or error).__name__}"

  threads = [threading.Thread(target=probe, args=(url,), daemon=True) for url in urls]
  for thread in threads:
    thread.start()
  deadline = time.monotonic() + timeout
  for thread in threads:
    thread.join(max(0.0, deadline - time.monotonic()))
  answered = dict(answers)
  late = {url: f"{url_host(url)}: no answer within {timeout:g} s"
          for url in urls if url not in answered}
  return {**{url: why for url, why in answered.items() if why is not None}, **late}


def tensorflow_missing() -> bool:
  """Whether TensorFlow cannot be imported (tfds prepares datasets only with it)."""
  try:
    return importlib.util.find_spec("tensorflow") is None
  except (ImportError, ValueError):  # a finder refused it; sys.modules holds None for it
    return True


def hide_accelerators_from_tensorflow() -> None:
  """Imports TensorFlow to prepare a tfds dataset, and hides GPUs and TPUs from it.

  tfds reads and extracts downloads and generates examples through `tf.io.gfile`; it is the
  only part of a run that imports TensorFlow (reading prepared array_record files does not).
  Hidden before TensorFlow creates its devices, accelerators get no memory reserved by it in
  the training process. If TensorFlow made its devices before (it ran something earlier in
  this process), they cannot be hidden any more: a warning says so.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  for kind in TENSORFLOW_HIDDEN_DEVICES:
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError as error:  # "Visible devices cannot be modified after being initialized"
      reporting.say(f"warning: TensorFlow's {kind} devices were set up before jaxaug prepared "
                    f"a tfds dataset and stay visible to it ({error})", file=sys.stderr)


def prepare_tfds(builder) -> None:
  """Downloads what tfds `builder` needs and writes its splits into its data_dir as
  TFDS_FILE_FORMAT files (tfds's progress bars on stderr).

  TensorFlow, which tfds prepares with, is imported here and only here, with no accelerator
  visible to it (`hide_accelerators_from_tensorflow`).

  Raises DatasetNotPrepared, within DOWNLOAD_PROBE_SECONDS, when a file it must download is
  not cached and its host does not answer, when the builder needs files put by hand into
  its manual directory (<data_dir>/downloads/manual) and they are not there, or when
  TensorFlow is not installed.
  """
  import requests  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  download_dir = epath.Path(builder.data_dir_root) / "downloads"
  manual_dir = download_dir / "manual"
  missing = uncached_downloads(builder, download_dir, manual_dir)
  not_prepared = f"tfds dataset {builder.name!r} is not prepared in {builder.data_dir_root}"
  if missing and builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    files = ", ".join(f"{download_name(url, builder.url_infos[url])} ({format_bytes(size)})"
                      for url, size in missing.items())
    instructions = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    raise DatasetNotPrepared(f"{not_prepared}, and tfds prepares it only from files downloaded "
                             f"by hand into {manual_dir}: {files} (tfds: {instructions}). Or "
                             f"{ways_on(builder.name)}")
  if tensorflow_missing():
    raise DatasetNotPrepared(f"{not_prepared}, and tfds prepares datasets only with TensorFlow, "
                             "which is not installed: pip install tensorflow. Or "
                             f"{ways_on(builder.name)}")
  failures = unreachable(list(missing), DOWNLOAD_PROBE_SECONDS)
  if failures:
    raise DatasetNotPrepared(f"{not_prepared}, and it cannot be downloaded (no connection: "
                             f"{'; '.join(sorted(set(failures.values())))}). To go on, "
                             f"{ways_on(builder.name)}")
  hosts = ", ".join(sorted({url_host(url) for url in missing}))
  reporting.say(f"preparing tfds {builder.name} in {builder.data_dir} (first use)"
                + (f": downloading {format_bytes(sum(missing.values()))} from {hosts}"
                   if missing else ""))
  hide_accelerators_from_tensorflow()
  try:
    builder.download_and_prepare(
        download_dir=download_dir, file_format=TFDS_FILE_FORMAT,
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except (tfds.download.DownloadError, requests.RequestException) as error:
    raise DatasetNotPrepared(f"{not_prepared}, and downloading it failed ({error}). To go on, "
                             f"{ways_on(builder.name)}") from error


@LOADERS.register("tfds")
def load_tfds(name: str, config: ml_collections.ConfigDict,
              progress: Progress | None = None) -> Dataset:
  """Dataset of tfds catalog `name` (train split and 'test', or 'validation' for imagenet2012).

  Read by index from array_record files in config.data_dir (None: tfds's default,
  ~/tensorflow_datasets or $TFDS_DATA_DIR); the first use prepares them there
  (`prepare_tfds`: downloads, then writes them).
  """
  del progress  # tfds shows its own progress bars
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  check_tfds_name(name)
  builder = tfds.builder(name, data_dir=config.data_dir)
  # (tfds's is_prepared() logs a warning about a folder that does not exist; skip it then)
  if not (epath.Path(builder.data_dir).exists() and builder.is_prepared()):
    prepare_tfds(builder)
  test_split = TFDS_TEST_SPLITS.get(tfds_builder_name(name), "test")
  try:
    sources = {split: builder.as_data_source(split=split) for split in ("train", test_split)}
  except NotImplementedError as error:  # prepared only in formats without random access
    raise ValueError(
        f"tfds {name} in {builder.data_dir} is prepared as {builder.info.file_format.value}, "
        f"which cannot be read by index; jaxaug reads {TFDS_FILE_FORMAT}: delete it or choose "
        f"another --config.data.data_dir, and it is prepared again as {TFDS_FILE_FORMAT}"
    ) from error
  features = builder.info.features
  num_classes = features["label"].num_classes
  height, width, channels = features["image"].shape
  if config.image_size is not None:
    height = width = config.image_size
  elif height is None or width is None:
    raise ValueError(f"tfds {name} images vary in size ({features['image'].shape}); "
                     "set config.data.image_size")
  image_shape = (height, width, channels)
  train, test = (TfdsSource(sources[split], num_classes, image_shape, resize_from_config(config),
                            f"{name} {split}") for split in ("train", test_split))
  return Dataset(train, test, num_classes, image_shape)


def load_dataset(config: ml_collections.ConfigDict, progress: Progress | None = None) -> Dataset:
  """The Dataset named by config.dataset (fields: see `default_data_config`). `progress` gets
  a line every few seconds while a loader reads long (a folder's images)."""
  resize_from_config(config)  # checks image_size and resize
  kind, _, argument = config.dataset.partition(":")
  if argument and kind in LOADERS:
    return LOADERS.get(kind)(argument, config, progress)
  if config.dataset in LOADERS and config.dataset != "tfds":
    return LOADERS.get(config.dataset)("", config, progress)
  return LOADERS.get("tfds")(config.dataset, config, progress)
