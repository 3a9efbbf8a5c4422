"""Tiny stand-ins for what tfds downloads for cifar10, cifar100 and svhn_cropped, put where
tfds's download manager finds a finished download, and tfds mocking for jaxaug.

The archives have the layout and byte format of the real files (the CIFAR binary
tarballs, SVHN's MATLAB .mat files), so tfds's own builders prepare them: its extraction,
its `_generate_examples` and its array_record writer run, not a mock.
"""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
from unittest import mock

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.download import resource

from jaxaug.data import sources

CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


@contextlib.contextmanager
def mock_tfds(**kwargs):
  """`tfds.testing.mock_data(**kwargs)`, under which preparing a dataset is a no-op (as
  tfds's `download_and_prepare` is there): jaxaug's `prepare_tfds` neither probes hosts nor
  asks for manual downloads."""
  with tfds.testing.mock_data(**kwargs), mock.patch.object(sources, "prepare_tfds"):
    yield


def offline(monkeypatch) -> None:
  """Sends this test's HTTP(S) requests (requests, urllib) to a proxy on a closed local port,
  so that every download and probe fails at once, whatever network the machine has."""
  with socket.socket() as unused:
    unused.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{unused.getsockname()[1]}"
  for variable in ("http_proxy", "https_proxy"):
    monkeypatch.setenv(variable, proxy)
    monkeypatch.setenv(variable.upper(), proxy)
  for variable in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
    monkeypatch.delenv(variable, raising=False)


def random_examples(rng: np.random.Generator, count: int, num_labels: tuple[int, ...]):
  """(uint8 images [count, 32, 32, 3], uint8 labels [count, len(num_labels)])."""
  images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
  labels = np.stack([rng.integers(0, n, count) for n in num_labels], axis=1).astype(np.uint8)
  return images, labels


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
  """The CIFAR binary format: per image its label bytes, then the red, green and blue
  32x32 planes, row-major."""
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  return b"".join(row_labels.tobytes() + row.tobytes() for row_labels, row in zip(labels, planes))


def tar_gz(members: dict[str, bytes]) -> bytes:
  """A .tar.gz holding `members` (path in the archive -> content)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name, content in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return buffer.getvalue()


def names_file(names: list[str]) -> bytes:
  return ("\n".join(names) + "\n\n").encode()


def svhn_mat(images: np.ndarray, labels: np.ndarray) -> bytes:
  """SVHN's cropped-digits .mat: X uint8 [32, 32, 3, N], y [N, 1] in 1..10 (10 is digit 0)."""
  buffer = io.BytesIO()
  digits = labels[:, 0].astype(np.uint8)
  scipy.io.savemat(buffer, {"X": images.transpose(1, 2, 3, 0),
                            "y": np.where(digits == 0, 10, digits)[:, None]})
  return buffer.getvalue()


def fake_downloads(name: str, rng: np.random.Generator, *, train: int, test: int):
  """(file name -> content of each file tfds downloads for `name`, expected examples).

  The expected examples: split -> (uint8 images [n, 32, 32, 3], int labels [n]), the
  labels those the dataset reports (CIFAR-100's fine label).
  """
  if name == "cifar10":
    (train_images, train_labels), (test_images, test_labels) = (
        random_examples(rng, count, (10,)) for count in (train, test))
    per_batch = np.array_split(np.arange(train), 5)
    members = {f"cifar-10-batches-bin/data_batch_{i + 1}.bin":
               cifar_records(train_images[rows], train_labels[rows])
               for i, rows in enumerate(per_batch)}
    members["cifar-10-batches-bin/test_batch.bin"] = cifar_records(test_images, test_labels)
    members["cifar-10-batches-bin/batches.meta.txt"] = names_file(CIFAR10_CLASSES)
    files = {"cifar-10-binary.tar.gz": tar_gz(members)}
    label_column = 0
  elif name == "cifar100":
    (train_images, train_labels), (test_images, test_labels) = (
        random_examples(rng, count, (20, 100)) for count in (train, test))
    files = {"cifar-100-binary.tar.gz": tar_gz({
        "cifar-100-binary/train.bin": cifar_records(train_images, train_labels),
        "cifar-100-binary/test.bin": cifar_records(test_images, test_labels),
        "cifar-100-binary/coarse_label_names.txt": names_file([f"c{i}" for i in range(20)]),
        "cifar-100-binary/fine_label_names.txt": names_file([f"f{i}" for i in range(100)]),
    })}
    label_column = 1  # coarse label first, then the fine one
  elif name == "svhn_cropped":
    (train_images, train_labels), (test_images, test_labels), extra = (
        random_examples(rng, count, (10,)) for count in (train, test, 2))
    files = {"train_32x32.mat": svhn_mat(train_images, train_labels),
             "test_32x32.mat": svhn_mat(test_images, test_labels),
             "extra_32x32.mat": svhn_mat(*extra)}
    label_column = 0
  else:
    raise ValueError(f"no fake downloads for {name!r}; have cifar10, cifar100, svhn_cropped")
  expected = {"train": (train_images, train_labels[:, label_column].astype(int)),
              "test": (test_images, test_labels[:, label_column].astype(int))}
  return files, expected


def put_in_download_cache(name: str, data_dir: epath.Path, files: dict[str, bytes]) -> None:
  """Writes `files` (file name as tfds registers it -> content) where tfds keeps a finished
  download of dataset `name`: <data_dir>/downloads/<name>/<name made from the URL and its
  registered checksum>, with the .INFO file tfds writes beside it."""
  builder = tfds.builder(name, data_dir=data_dir)
  for url, info in builder.url_infos.items():
    path = epath.Path(data_dir) / "downloads" / name / resource.get_dl_fname(url, info.checksum)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(files[info.filename])
    resource.write_info_file(url=url, path=path, dataset_name=name,
                             original_fname=info.filename, url_info=info)
