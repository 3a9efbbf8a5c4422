"""Tests of jaxaug.data: sources against PIL / numpy / tfds / sklearn, and batching index maths."""

from __future__ import annotations

import http.server
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
from PIL import Image
import pytest

from jaxaug import data
from jaxaug.data import pipeline as pipeline_lib
from jaxaug.data import sources

from shared_data import CIFAR_TAR
import tfds_fakes


def data_config(**overrides):
  config = data.default_data_config()
  config.update(overrides)
  return config


def index_dataset(num_train: int, num_test: int) -> data.Dataset:
  """Dataset whose label (and pixel value) of example i is i: batches reveal their indices."""

  def source(n: int) -> data.ArraySource:
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1))
    return data.ArraySource(np.array(images), np.arange(n), num_train, "index")

  return data.Dataset(source(num_train), source(num_test), num_train, (2, 2, 1))


def make_pipeline(dataset=None, **overrides) -> data.Pipeline:
  kwargs = dict(global_batch_size=16, val_batch_size=8, seed=3, val_fraction=0.2,
                redraw_val_each_epoch=False, train_examples=None)
  kwargs.update(overrides)
  return data.Pipeline(dataset or index_dataset(100, 23), **kwargs)


def epoch_train_ids(pipe: data.Pipeline, epoch: int) -> np.ndarray:
  """Example ids [batches_per_epoch, batch] of every train batch of `epoch`."""
  return pipe.train_batches(epoch * pipe.batches_per_epoch, pipe.batches_per_epoch)["label"]


def val_set(pipe: data.Pipeline, epoch: int = 0) -> np.ndarray:
  """Ids of the val split, read through eval_batches."""
  batches = list(pipe.eval_batches("val", 7, epoch=epoch))
  return np.concatenate([b["label"][b["mask"]] for b in batches])


def pil_rgb(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- sources


@pytest.mark.parametrize("layout", ["uint8_nhwc", "uint8_nhw", "float_nhwc", "labels_n1"])
def test_npz_round_trip(tmp_path, layout):
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (9, 5, 4, 3), dtype=np.uint8)
  x_test = rng.integers(0, 256, (4, 5, 4, 3), dtype=np.uint8)
  y_train, y_test = rng.integers(0, 7, 9), rng.integers(0, 7, 4)
  y_train[0] = 6
  stored = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  if layout == "uint8_nhw":
    x_train, x_test = x_train[..., 0], x_test[..., 0]
    stored.update(x_train=x_train, x_test=x_test)
    x_train, x_test = x_train[..., None], x_test[..., None]
  elif layout == "float_nhwc":
    float_train, float_test = rng.random(x_train.shape), rng.random(x_test.shape, np.float32)
    float_train[0, 0, 0] = [0.0, 1.0, 0.999]
    stored.update(x_train=float_train, x_test=float_test)
    # Nearest uint8 level: within half a level of x * 255.
    x_train, x_test = (np.floor(x * 255 + 0.5).astype(np.uint8) for x in (float_train, float_test))
  elif layout == "labels_n1":
    stored.update(y_train=y_train[:, None], y_test=y_test[:, None])
  path = tmp_path / "d.npz"
  np.savez(path, **stored)

  ds = data.load_dataset(data_config(dataset=f"npz:{path}"))

  assert ds.num_classes == 7 and ds.image_shape == x_train.shape[1:]
  for source, x, y in ((ds.train, x_train, y_train), (ds.test, x_test, y_test)):
    assert isinstance(source, data.Source) and len(source) == len(y)
    got = source.get(np.array([3, 0, 3]))
    assert got["image"].dtype == np.uint8 and got["label"].dtype == np.int32
    np.testing.assert_array_equal(got["image"], x[[3, 0, 3]])
    np.testing.assert_array_equal(got["label"], y[[3, 0, 3]])


def test_npz_num_classes_key_and_resize(tmp_path):
  x = np.random.default_rng(1).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
  path = tmp_path / "d.npz"
  np.savez(path, x_train=x, y_train=np.array([0, 1, 1]), x_test=x, y_test=np.array([4, 0, 1]),
           num_classes=5)
  ds = data.load_dataset(data_config(dataset=f"npz:{path}", image_size=3))
  assert ds.num_classes == 5 and ds.image_shape == (3, 3, 3)
  reference = np.asarray(Image.fromarray(x[2]).resize((3, 3), Image.BILINEAR))
  np.testing.assert_array_equal(ds.test.get(np.array([2]))["image"][0], reference)


def write_image_folder(root, sizes=None):
  """root/{train,test}/{cat,ant,bee}/ with PNG/JPEG/grayscale files; returns {path: class}."""
  rng = np.random.default_rng(0)
  written = {}
  for split, count in (("train", 3), ("test", 2)):
    for name in ("cat", "ant", "bee"):
      os.makedirs(root / split / name)
      for i in range(count):
        size = (sizes or {}).get((split, name, i), (6, 5))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        path = root / split / name / f"{i}.{('png', 'jpg', 'PNG')[i % 3]}"
        if i == 2:
          image = image.convert("L")
        image.save(path, format="PNG" if str(path).lower().endswith("png") else "JPEG")
        written[str(path)] = name
    (root / split / "cat" / "notes.txt").write_text("not an image")
    os.makedirs(root / split / ".ipynb_checkpoints")  # hidden: not a class
  return written


@pytest.mark.parametrize("in_memory_max_bytes", [2**31, 0])
def test_folder_source_matches_pil(tmp_path, in_memory_max_bytes):
  written = write_image_folder(tmp_path)
  ds = data.load_dataset(data_config(dataset=f"folder:{tmp_path}",
                                     in_memory_max_bytes=in_memory_max_bytes))
  expected_kind = data.ArraySource if in_memory_max_bytes else data.FolderSource
  assert isinstance(ds.train, expected_kind) and isinstance(ds.test, expected_kind)
  assert ds.num_classes == 3 and ds.image_shape == (5, 6, 3)
  classes = ["ant", "bee", "cat"]
  for split, source in (("train", ds.train), ("test", ds.test)):
    paths = sorted(p for p in written if f"/{split}/" in p)
    assert len(source) == len(paths)
    got = source.get(np.arange(len(source)))
    # Sorted class names, then sorted file names within a class.
    order = sorted(paths, key=lambda p: (classes.index(written[p]), os.path.basename(p)))
    np.testing.assert_array_equal(got["label"], [classes.index(written[p]) for p in order])
    np.testing.assert_array_equal(got["image"], np.stack([pil_rgb(p) for p in order]))


@pytest.mark.parametrize("in_memory_max_bytes", [2**31, 0])
def test_folder_mixed_sizes_need_image_size(tmp_path, in_memory_max_bytes):
  write_image_folder(tmp_path, sizes={("train", "bee", 1): (7, 5)})
  odd_file = str(tmp_path / "train" / "bee" / "1.jpg")
  config = data_config(dataset=f"folder:{tmp_path}", in_memory_max_bytes=in_memory_max_bytes)
  with pytest.raises(ValueError, match=re.escape(odd_file)):
    data.load_dataset(config).train.get(np.arange(9))

  config.image_size = 4
  ds = data.load_dataset(config)
  assert ds.image_shape == (4, 4, 3)
  with Image.open(odd_file) as image:
    reference = np.asarray(image.convert("RGB").resize((4, 4), Image.BILINEAR))
  np.testing.assert_array_equal(ds.train.get(np.array([4]))["image"][0], reference)


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
  """3 classes x 5 images per split of the real CIFAR-10 JPEG archive, in tfds folder layout."""
  root = tmp_path_factory.mktemp("cifar")
  classes, files = ("airplane", "automobile", "bird"), {f"{i:04d}.jpg" for i in range(5)}
  wanted = {f"cifar10/{split}/{name}/{file}"
            for split in ("train", "test") for name in classes for file in files}
  with tarfile.open(CIFAR_TAR, "r:gz") as tar:
    for member in tar:
      if member.name in wanted:
        target = root / member.name
        os.makedirs(target.parent, exist_ok=True)
        target.write_bytes(tar.extractfile(member).read())
        wanted.remove(member.name)
        if not wanted:
          break
  assert not wanted
  return root / "cifar10"


@pytest.mark.skipif(not os.path.exists(CIFAR_TAR), reason="needs the shared CIFAR-10 archive")
def test_folder_source_real_cifar(cifar_subset):
  ds = data.load_dataset(data_config(dataset=f"folder:{cifar_subset}"))
  assert ds.num_classes == 3 and ds.image_shape == (32, 32, 3)
  for split, source in (("train", ds.train), ("test", ds.test)):
    got = source.get(np.arange(15))
    np.testing.assert_array_equal(got["label"], np.repeat([0, 1, 2], 5))
    for row, (name, i) in enumerate((n, i) for n in ("airplane", "automobile", "bird")
                                    for i in range(5)):
      np.testing.assert_array_equal(got["image"][row],
                                    pil_rgb(cifar_subset / split / name / f"{i:04d}.jpg"))
    # Natural photographs, not a blank decode: pixel mean near CIFAR's ~120, real spread.
    assert 60 < got["image"].mean() < 190 and got["image"].std() > 30


def test_tfds_source_mock_cifar10():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds_fakes.mock_tfds(num_examples=12):
    ds = data.load_dataset(data_config(dataset="cifar10"))
    assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
    assert len(ds.train) == 12 and len(ds.test) == 12
    for split, source in (("train", ds.train), ("test", ds.test)):
      reference = tfds.data_source("cifar10", split=split)
      indices = np.array([5, 0, 11])
      got = source.get(indices)
      assert got["image"].dtype == np.uint8 and got["label"].dtype == np.int32
      expected = np.stack([reference[i]["image"] for i in indices])
      np.testing.assert_array_equal(got["image"], expected)
      np.testing.assert_array_equal(got["label"], [reference[i]["label"] for i in indices])


def test_tfds_source_mock_resize_grayscale_and_validation_split():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds_fakes.mock_tfds(num_examples=4):
    assert data.load_dataset(data_config(dataset="mnist")).image_shape == (28, 28, 1)
    with pytest.raises(ValueError, match="image_size"):
      data.load_dataset(data_config(dataset="imagenet2012"))
    ds = data.load_dataset(data_config(dataset="imagenet2012", image_size=8))
    assert ds.image_shape == (8, 8, 3) and ds.num_classes == 1000
    raw = tfds.data_source("imagenet2012", split="validation")[2]["image"]
    reference = np.asarray(Image.fromarray(raw).resize((8, 8), Image.BILINEAR))
    np.testing.assert_array_equal(ds.test.get(np.array([2]))["image"][0], reference)


@pytest.mark.parametrize("name,held_out_split", [("cifar10", "test"),
                                                  ("imagenet2012", "validation")])
def test_tfds_source_reads_the_held_out_split(name, held_out_split):
  pytest.importorskip("tensorflow_datasets")
  offsets = {"train": 0, held_out_split: 100}

  def split_records(builder, split, **kwargs):
    """Records whose pixels say which split and index they come from; others fail."""
    del builder, kwargs
    size = 3 if split == "train" else 2
    return [{"image": np.full((32, 32, 3), offsets[split] + i, np.uint8), "label": i}
            for i in range(size)]

  with tfds_fakes.mock_tfds(as_data_source_fn=split_records):
    ds = data.load_dataset(data_config(dataset=name, image_size=None if name == "cifar10" else 4))
    assert (len(ds.train), len(ds.test)) == (3, 2)
    got = ds.test.get(np.array([1, 0]))
    np.testing.assert_array_equal(got["label"], [1, 0])
    np.testing.assert_array_equal(got["image"][:, 0, 0, 0], [101, 100])
    np.testing.assert_array_equal(ds.train.get(np.array([2]))["image"][0, 0, 0], [2, 2, 2])


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100),
                                              ("svhn_cropped", 10)])
def test_tfds_prepares_files_in_the_downloaded_format_offline(tmp_path, monkeypatch, capsys, name,
                                                              num_classes):
  """tfds's own builder (extraction, _generate_examples, array_record writer) prepares tiny
  files in the format it downloads, found in its download cache with no network; jaxaug
  reads back exactly their examples (pixels and labels), and prepares them only once."""
  tfds_fakes.offline(monkeypatch)
  files, expected = tfds_fakes.fake_downloads(name, np.random.default_rng(0), train=10, test=6)
  tfds_fakes.put_in_download_cache(name, tmp_path, files)
  data.load_dataset(data_config(dataset=name, data_dir=str(tmp_path)))
  assert f"preparing tfds {name} in {tmp_path / name}" in capsys.readouterr().out
  assert list((tmp_path / name).rglob(f"{name}-train.array_record*"))
  ds = data.load_dataset(data_config(dataset=name, data_dir=str(tmp_path)))  # prepared
  assert "preparing" not in capsys.readouterr().out
  assert ds.num_classes == num_classes and ds.image_shape == (32, 32, 3)
  for split, source in (("train", ds.train), ("test", ds.test)):
    images, labels = expected[split]
    got = source.get(np.arange(len(source)))
    assert len(source) == len(labels)
    # tfds stores the examples in an order of its own: compare them as sorted lists.
    written = sorted((int(label), image.tobytes()) for label, image in zip(labels, images))
    read = sorted((int(label), image.tobytes()) for label, image in zip(got["label"], got["image"]))
    assert read == written


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn_cropped"])
def test_an_unprepared_tfds_dataset_without_network_stops_within_seconds(tmp_path, monkeypatch,
                                                                         name):
  tfds_fakes.offline(monkeypatch)
  data.load_dataset(data_config(dataset="sklearn_digits"))  # imports out of the timing
  start = time.monotonic()
  with pytest.raises(sources.DatasetNotPrepared) as error:
    data.load_dataset(data_config(dataset=name, data_dir=str(tmp_path)))
  assert time.monotonic() - start < sources.DOWNLOAD_PROBE_SECONDS + 10
  message = str(error.value)
  for part in (f"'{name}' is not prepared in {tmp_path}", "cannot be downloaded",
               "--config.data.data_dir", "--config.data.dataset=folder:",
               "--config.data.dataset=npz:"):
    assert part in message
  assert not list(tmp_path.rglob("*.array_record*"))


def test_a_download_that_fails_after_the_probe_stops_with_one_message(tmp_path, monkeypatch):
  """Hosts that answer, but with 404 (a local HTTP proxy standing in for them): the probe
  passes, tfds's download fails, and the run stops with the reason and the ways on."""

  class NotFound(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # pylint: disable=invalid-name
      self.send_response(404)
      self.end_headers()

    do_GET = do_HEAD  # pylint: disable=invalid-name

    def log_message(self, *args):
      del args

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    for variable in ("http_proxy", "HTTP_PROXY"):  # svhn_cropped's URLs are http://
      monkeypatch.setenv(variable, proxy)
    for variable in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
      monkeypatch.delenv(variable, raising=False)
    with pytest.raises(sources.DatasetNotPrepared, match=r"downloading it failed \(.*404.*\)"
                       r".*--config.data.data_dir.*folder:.*npz:"):
      data.load_dataset(data_config(dataset="svhn_cropped", data_dir=str(tmp_path)))
  finally:
    server.shutdown()
    server.server_close()


def test_tensorflow_prepares_with_no_accelerator_visible_to_it(tmp_path, monkeypatch):
  """TensorFlow, imported only to prepare a tfds dataset, has GPUs and TPUs hidden before
  tfds prepares (so it reserves no accelerator memory in the training process)."""
  tf = pytest.importorskip("tensorflow")
  tfds = pytest.importorskip("tensorflow_datasets")
  tfds_fakes.offline(monkeypatch)
  files, _ = tfds_fakes.fake_downloads("cifar10", np.random.default_rng(2), train=5, test=2)
  tfds_fakes.put_in_download_cache("cifar10", tmp_path, files)
  events = []
  set_visible_devices = tf.config.set_visible_devices

  def record_visible(devices, device_type=None):
    events.append(("visible", device_type, list(devices)))
    set_visible_devices(devices, device_type)

  builder_class = type(tfds.builder("cifar10", data_dir=tmp_path))
  download_and_prepare = builder_class.download_and_prepare

  def record_prepare(self, *args, **kwargs):
    events.append("prepare")
    return download_and_prepare(self, *args, **kwargs)

  monkeypatch.setattr(tf.config, "set_visible_devices", record_visible)
  monkeypatch.setattr(builder_class, "download_and_prepare", record_prepare)
  data.load_dataset(data_config(dataset="cifar10", data_dir=str(tmp_path)))
  assert events == [("visible", "GPU", []), ("visible", "TPU", []), "prepare"]
  assert {device.device_type for device in tf.config.get_visible_devices()} == {"CPU"}


def test_preparing_without_tensorflow_stops_at_once_saying_what_to_install(tmp_path, monkeypatch):
  tfds_fakes.offline(monkeypatch)
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails

  def no_probe(*args):
    raise AssertionError(f"probed the download hosts {args} without TensorFlow to prepare with")

  monkeypatch.setattr(sources, "unreachable", no_probe)
  with pytest.raises(sources.DatasetNotPrepared) as error:
    data.load_dataset(data_config(dataset="cifar10", data_dir=str(tmp_path)))
  message = str(error.value)
  for part in (f"'cifar10' is not prepared in {tmp_path}", "only with TensorFlow",
               "pip install tensorflow", "--config.data.dataset=folder:"):
    assert part in message
  assert not list(tmp_path.rglob("*.array_record*"))


def test_reading_prepared_or_bundled_data_does_not_import_tensorflow(tmp_path, monkeypatch):
  """A run on a prepared tfds dataset or on sklearn digits never imports TensorFlow: the
  trainer's modules, loading and reading batches (in a fresh interpreter)."""
  tfds_fakes.offline(monkeypatch)
  files, _ = tfds_fakes.fake_downloads("cifar10", np.random.default_rng(3), train=10, test=4)
  tfds_fakes.put_in_download_cache("cifar10", tmp_path, files)
  data.load_dataset(data_config(dataset="cifar10", data_dir=str(tmp_path)))  # prepares
  program = f"""
import sys
import numpy as np
from jaxaug import data, main, train
for dataset in ("cifar10", "sklearn_digits"):
  config = data.default_data_config()
  config.update(dataset=dataset, data_dir={str(tmp_path)!r}, workers=0)
  loaded = data.load_dataset(config)
  loaded.train.get(np.arange(3)), loaded.test.get(np.arange(2))
  pipe = data.pipeline_from_config(loaded, config, global_batch_size=4, val_batch_size=2)
  pipe.train_batches(0, 2)
print(sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow"))
"""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
  completed = subprocess.run([sys.executable, "-c", program], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert completed.stdout.strip().splitlines()[-1] == "[]"


def test_imagenet2012_asks_for_the_files_it_cannot_download(tmp_path):
  with pytest.raises(sources.DatasetNotPrepared) as error:
    data.load_dataset(data_config(dataset="imagenet2012", data_dir=str(tmp_path), image_size=8))
  message = str(error.value)
  assert str(tmp_path / "downloads" / "manual") in message
  assert "ILSVRC2012_img_train.tar (137.7 GiB)" in message and "ILSVRC2012_img_val.tar" in message


def test_a_copy_prepared_as_tfrecord_is_rejected_by_name(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  tfds_fakes.offline(monkeypatch)
  files, _ = tfds_fakes.fake_downloads("cifar10", np.random.default_rng(1), train=5, test=2)
  tfds_fakes.put_in_download_cache("cifar10", tmp_path, files)
  tfds.builder("cifar10", data_dir=tmp_path, file_format="tfrecord").download_and_prepare(
      download_dir=tmp_path / "downloads")
  with pytest.raises(ValueError, match="prepared as tfrecord.*reads array_record"):
    data.load_dataset(data_config(dataset="cifar10", data_dir=str(tmp_path)))


def test_a_host_that_never_answers_is_unreachable_after_the_timeout(monkeypatch):
  for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
    monkeypatch.delenv(variable, raising=False)
  with socket.socket() as server:  # accepts connections (backlog) but never answers
    server.bind(("127.0.0.1", 0))
    server.listen()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/data.tar.gz"
    start = time.monotonic()
    failures = sources.unreachable([url], timeout=0.5)
    elapsed = time.monotonic() - start
  assert list(failures) == [url] and failures[url].startswith("127.0.0.1: ")
  assert elapsed < 2.0


def test_a_host_that_answers_is_reachable_whatever_its_status(monkeypatch):
  for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
    monkeypatch.delenv(variable, raising=False)
  server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
  thread = threading.Thread(target=server.handle_request, daemon=True)  # one request: 501
  thread.start()
  try:
    url = f"http://127.0.0.1:{server.server_address[1]}/data.tar.gz"
    assert sources.unreachable([url], timeout=5.0) == {}
  finally:
    thread.join(5.0)
    server.server_close()


def test_format_bytes():
  assert [sources.format_bytes(n) for n in (512, 170052171, 1575594780)] == [
      "512.0 B", "162.2 MiB", "1.5 GiB"]


def test_unknown_dataset_lists_close_names():
  with pytest.raises(ValueError, match=r"cifar_10.*cifar10"):
    data.load_dataset(data_config(dataset="cifar_10"))


def test_sklearn_digits_is_the_bundled_set_split_80_20():
  from sklearn.datasets import load_digits
  digits = load_digits()
  ds = data.load_dataset(data_config(dataset="sklearn_digits", seed=5))
  assert ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
  assert (len(ds.train), len(ds.test)) == (1438, 359)
  got = [source.get(np.arange(len(source))) for source in (ds.train, ds.test)]
  images = np.concatenate([g["image"] for g in got])
  labels = np.concatenate([g["label"] for g in got])
  assert images.dtype == np.uint8 and images.max() == 255
  expected = (digits.images * 255 / 16).round().astype(np.uint8)[..., None]
  as_pairs = lambda x, y: sorted(zip((i.tobytes() for i in x), y.tolist()))
  assert as_pairs(images, labels) == as_pairs(expected, digits.target)
  other_seed = data.load_dataset(data_config(dataset="sklearn_digits", seed=9))
  np.testing.assert_array_equal(other_seed.test.get(np.arange(359))["image"], got[1]["image"])


# ----------------------------------------------------------------------------- pipeline


def test_batches_per_epoch_drops_remainder():
  assert make_pipeline(global_batch_size=16).batches_per_epoch == 5  # 80 train examples
  assert make_pipeline(global_batch_size=12).batches_per_epoch == 6
  assert make_pipeline(global_batch_size=12, train_batches_per_step=4).batches_per_epoch == 4


def test_batch_shapes_and_dtypes():
  pipe = make_pipeline(dataset=index_dataset(100, 23), global_batch_size=12)
  train = pipe.train_batches(3, 4)
  assert train["image"].shape == (4, 12, 2, 2, 1) and train["image"].dtype == np.uint8
  assert train["label"].shape == (4, 12) and train["label"].dtype == np.int32
  np.testing.assert_array_equal(train["image"][..., 0, 0, 0], train["label"])
  val = pipe.val_batch(2)
  assert val["image"].shape == (8, 2, 2, 1) and val["label"].shape == (8,)


@pytest.mark.parametrize("batch_size", [16, 12])
def test_each_epoch_is_a_permutation_of_train_disjoint_from_val(batch_size):
  pipe = make_pipeline(global_batch_size=batch_size)
  val = val_set(pipe)
  assert len(val) == 20 and len(np.unique(val)) == 20
  seen_orders = []
  for epoch in range(3):
    ids = epoch_train_ids(pipe, epoch).ravel()
    assert len(np.unique(ids)) == len(ids) == pipe.batches_per_epoch * batch_size
    assert not np.intersect1d(ids, val).size
    seen_orders.append(ids)
  assert not np.array_equal(seen_orders[0], seen_orders[1])
  if batch_size == 16:  # no remainder: every train example every epoch
    np.testing.assert_array_equal(np.sort(seen_orders[0]), np.setdiff1d(np.arange(100), val))
  for index in range(6):
    assert np.isin(pipe.val_batch(index, epoch=index)["label"], val).all()


@pytest.mark.parametrize("val_batch_size", [10, 30])
def test_val_stream_epochs_are_permutations_of_val(val_batch_size):
  pipe = make_pipeline(val_batch_size=val_batch_size)
  stream = np.concatenate([pipe.val_batch(i)["label"] for i in range(4)])
  val = np.sort(val_set(pipe))
  for start in range(0, len(stream) - 19, 20):
    np.testing.assert_array_equal(np.sort(stream[start:start + 20]), val)
  assert not np.array_equal(stream[:20], stream[20:40])


def test_redraw_val_each_epoch_keeps_step_disjoint():
  steps_per_batch = 3
  pipe = make_pipeline(redraw_val_each_epoch=True, global_batch_size=12,
                       train_batches_per_step=steps_per_batch)
  assert pipe.batches_per_epoch % steps_per_batch == 0
  val_sets = [set(val_set(pipe, epoch)) for epoch in range(3)]
  assert val_sets[0] != val_sets[1] and all(len(v) == 20 for v in val_sets)
  for step in range(3 * pipe.batches_per_epoch // steps_per_batch):
    first = step * steps_per_batch
    epoch = pipe.epoch_of_batch(first)
    assert {pipe.epoch_of_batch(b) for b in range(first, first + steps_per_batch)} == {epoch}
    train = pipe.train_batches(first, steps_per_batch)["label"]
    val = pipe.val_batch(step, epoch=epoch)["label"]
    assert not np.intersect1d(train, val).size
    assert set(val) <= val_sets[epoch]
  with pytest.raises(ValueError, match="epoch"):
    pipe.val_batch(0)


def test_determinism_and_resume_by_batch_number():
  a, b = make_pipeline(seed=11), make_pipeline(seed=11)
  sequential = a.train_batches(0, 12)
  np.testing.assert_array_equal(b.train_batches(0, 12)["label"], sequential["label"])
  one_by_one = np.stack([b.train_batches(i, 1)["label"][0] for i in range(12)])
  np.testing.assert_array_equal(one_by_one, sequential["label"])
  resumed = make_pipeline(seed=11).train_batches(7, 5)
  for key in ("image", "label"):
    np.testing.assert_array_equal(resumed[key], sequential[key][7:])
  np.testing.assert_array_equal(make_pipeline(seed=11).val_batch(4)["label"],
                                a.val_batch(4)["label"])
  assert not np.array_equal(make_pipeline(seed=12).train_batches(0, 12)["label"],
                            sequential["label"])


def test_train_examples_cap_is_a_prefix_of_a_seeded_permutation():
  def used(cap, seed=3):
    pipe = make_pipeline(train_examples=cap, global_batch_size=4, seed=seed)
    ids = np.concatenate([epoch_train_ids(pipe, 0).ravel(), val_set(pipe)])
    assert len(np.unique(ids)) == len(ids)
    return pipe, set(ids.tolist())

  pipe, small = used(30)
  assert pipe.num_val_examples == 6 and pipe.batches_per_epoch == 6 and len(small) == 30
  _, large = used(50)
  assert len(large) == 50 and small < large
  assert small != used(30, seed=4)[1]
  assert small != set(range(30))
  assert used(100)[1] == set(range(100))


def test_two_process_shards_concatenate_to_the_global_batch():
  kwargs = dict(global_batch_size=16, val_batch_size=8, redraw_val_each_epoch=True)
  single = make_pipeline(**kwargs)
  shards = [make_pipeline(process_index=p, process_count=2, **kwargs) for p in range(2)]
  for key in ("image", "label"):
    np.testing.assert_array_equal(
        np.concatenate([s.train_batches(3, 4)[key] for s in shards], axis=1),
        single.train_batches(3, 4)[key])
    np.testing.assert_array_equal(
        np.concatenate([s.val_batch(6, epoch=1)[key] for s in shards]),
        single.val_batch(6, epoch=1)[key])
  for split in ("val", "test"):
    whole = list(single.eval_batches(split, 10, epoch=1))
    parts = [list(s.eval_batches(split, 10, epoch=1)) for s in shards]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for i, batch in enumerate(whole):
      for key in ("image", "label", "mask"):
        np.testing.assert_array_equal(np.concatenate([p[i][key] for p in parts]), batch[key])
        assert parts[0][i][key].shape[0] == 5


@pytest.mark.parametrize("split,size", [("test", 23), ("val", 20)])
def test_eval_batches_cover_split_once_with_mask(split, size):
  pipe = make_pipeline()
  batches = list(pipe.eval_batches(split, 8))
  assert len(batches) == -(-size // 8)
  assert all(b["image"].shape == (8, 2, 2, 1) and b["mask"].dtype == bool for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(len(mask)) < size)
  ids = np.concatenate([b["label"] for b in batches])[mask]
  expected = np.arange(23) if split == "test" else np.sort(
      np.setdiff1d(np.arange(100), epoch_train_ids(pipe, 0)))
  np.testing.assert_array_equal(ids, expected)


def grain_source_kinds(kind: str, tmp_path) -> data.Dataset:
  """A small Dataset of source kind `kind`: ArraySource (npz), FolderSource (a folder decoded
  on every access, resized from mixed sizes) or TfdsSource (tfds mock, resized)."""
  if kind == "npz":
    rng = np.random.default_rng(5)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8),
             y_train=rng.integers(0, 4, 40), x_test=rng.integers(0, 256, (9, 6, 6, 3), np.uint8),
             y_test=rng.integers(0, 4, 9))
    return data.load_dataset(data_config(dataset=f"npz:{path}"))
  if kind == "folder":
    write_image_folder(tmp_path, sizes={("train", "ant", 1): (9, 4)})
    return data.load_dataset(data_config(dataset=f"folder:{tmp_path}", image_size=5,
                                         in_memory_max_bytes=0))
  with tfds_fakes.mock_tfds(num_examples=40):
    return data.load_dataset(data_config(dataset="cifar10", image_size=8))


@pytest.mark.slow
@pytest.mark.parametrize("kind,source_type", [("npz", data.ArraySource),
                                              ("folder", data.FolderSource),
                                              ("tfds", data.TfdsSource)])
def test_grain_workers_yield_the_batches_of_the_step_numbers(tmp_path, kind, source_type):
  dataset = grain_source_kinds(kind, tmp_path)
  assert isinstance(dataset.train, source_type) and isinstance(dataset.test, source_type)
  batch = 4 if kind == "folder" else 8  # the folder holds 9 train images
  kwargs = dict(global_batch_size=batch, val_batch_size=2, train_batches_per_step=1,
                process_index=1, process_count=2)
  reference = make_pipeline(dataset, **kwargs)
  pipe = make_pipeline(dataset, workers=2, **kwargs)
  stop = 2 * reference.batches_per_epoch + 1  # crosses epochs; val batches wrap the val part
  got = list(pipe.step_batches(1, stop, batches_per_step=1, with_val=True))
  assert [step for step, _, _ in got] == list(range(1, stop))
  for step, train_batch, val_batch in got:
    indices = reference._local(reference.train_indices(step, 1))
    np.testing.assert_array_equal(train_batch["image"], dataset.train.get(indices[0])["image"][None])
    np.testing.assert_array_equal(train_batch["label"], dataset.train.get(indices[0])["label"][None])
    expected_val = reference.val_batch(step, epoch=reference.epoch_of_batch(step))
    for key in ("image", "label"):
      np.testing.assert_array_equal(val_batch[key], expected_val[key])
  expected = list(reference.eval_batches("test", 4))  # (val: the same chunks of other indices)
  evaluated = list(pipe.eval_batches("test", 4))
  assert len(evaluated) == len(expected) > 1
  for got_batch, expected_batch in zip(evaluated, expected):
    assert sorted(got_batch) == ["image", "label", "mask"]
    for key in got_batch:
      np.testing.assert_array_equal(got_batch[key], expected_batch[key])
  del got, evaluated  # Grain's shared-memory arrays, released before the workers' files go


def test_default_workers_decode_only_what_is_not_in_memory(tmp_path):
  arrays = index_dataset(10, 4)
  assert pipeline_lib.default_workers(arrays) == 0
  write_image_folder(tmp_path)
  folder = data.load_dataset(data_config(dataset=f"folder:{tmp_path}", in_memory_max_bytes=0))
  assert pipeline_lib.default_workers(folder) == max(1, os.cpu_count() - 1)
  with pytest.raises(ValueError, match="-1"):
    make_pipeline(workers=-1)


def test_val_orders_are_computed_once_per_val_epoch(monkeypatch):
  pipe = make_pipeline(val_batch_size=6)  # 20 val examples: batch 3 straddles val epochs 0 and 1
  calls = []
  original = pipeline_lib.seeded_permutation
  monkeypatch.setattr(pipeline_lib, "seeded_permutation",
                      lambda size, *words: calls.append(words) or original(size, *words))
  first = [pipe.val_indices(i) for i in range(7)]
  again = [pipe.val_indices(i) for i in range(7)]
  assert sum(words[1] == pipeline_lib.VAL for words in calls) == 3  # val epochs 0, 1, 2
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  _, val = pipe.split(0)
  stream = np.concatenate(first)
  for val_epoch in range(2):  # each val epoch is a permutation of the val part
    np.testing.assert_array_equal(np.sort(stream[val_epoch * 20:(val_epoch + 1) * 20]),
                                  np.sort(val))


def test_prefetch_yields_in_order_and_reraises():
  assert list(data.prefetch(iter(range(20)), size=3)) == list(range(20))

  def failing():
    yield 1
    raise RuntimeError("boom")

  with pytest.raises(RuntimeError, match="boom"):
    list(data.prefetch(failing()))


# ----------------------------------------------------------------------------- bad input


def test_val_fraction_zero_holds_nothing_out():
  pipe = make_pipeline(val_fraction=0.0)
  assert pipe.num_val_examples == 0 and pipe.num_train_examples == len(pipe.pool)
  train, val = pipe.split(0)
  assert len(val) == 0 and sorted(train) == sorted(pipe.pool)
  with pytest.raises(ValueError, match="no validation examples: val_fraction is 0"):
    pipe.val_batch(0, epoch=0)
  step, batches, no_val = pipe.host_step(0, batches_per_step=1, with_val=False)
  assert no_val is None and batches["image"].shape[0] == 1


@pytest.mark.parametrize("overrides,bad_value", [
    (dict(val_fraction=0.001), "leaves no validation example"),
    (dict(val_fraction=1.0), "1.0"),
    (dict(val_fraction=-0.5), "-0.5"),
    (dict(train_examples=0), "0"),
    (dict(train_examples=101), "101"),
    (dict(global_batch_size=10, process_count=4), "10"),
    (dict(val_batch_size=6, process_count=4), "6"),
    (dict(global_batch_size=200), "200"),
])
def test_bad_pipeline_arguments_raise(overrides, bad_value):
  with pytest.raises(ValueError, match=re.escape(bad_value)):
    make_pipeline(**overrides)


def test_bad_eval_arguments_raise():
  pipe = make_pipeline(process_count=2, global_batch_size=16, val_batch_size=8)
  with pytest.raises(ValueError, match="train"):
    next(pipe.eval_batches("train", 8))
  with pytest.raises(ValueError, match="7"):
    next(pipe.eval_batches("test", 7))


def test_labels_out_of_range_raise(tmp_path):
  x = np.zeros((3, 2, 2), np.uint8)
  path = tmp_path / "negative.npz"
  np.savez(path, x_train=x, y_train=np.array([0, -3, 1]), x_test=x, y_test=np.array([0, 1, 1]))
  with pytest.raises(ValueError, match="-3"):
    data.load_dataset(data_config(dataset=f"npz:{path}"))
  path = tmp_path / "too_large.npz"
  np.savez(path, x_train=x, y_train=np.array([0, 1, 1]), x_test=x, y_test=np.array([0, 9, 1]),
           num_classes=4)
  with pytest.raises(ValueError, match=r"label 9 is outside \[0, 4\)"):
    data.load_dataset(data_config(dataset=f"npz:{path}"))


def test_bad_npz_contents_raise(tmp_path):
  path = tmp_path / "d.npz"
  np.savez(path, x_train=np.full((2, 2, 2), 1.5), y_train=np.zeros(2, int),
           x_test=np.zeros((2, 2, 2)), y_test=np.zeros(2, int))
  with pytest.raises(ValueError, match="1.5"):
    data.load_dataset(data_config(dataset=f"npz:{path}"))
  np.savez(path, x_train=np.zeros((2, 2, 2), np.uint8), y_train=np.zeros(2, int))
  with pytest.raises(ValueError, match="x_test"):
    data.load_dataset(data_config(dataset=f"npz:{path}"))
  missing = tmp_path / "missing.npz"
  with pytest.raises(ValueError, match=re.escape(str(missing))):
    data.load_dataset(data_config(dataset=f"npz:{missing}"))


def test_folder_without_images_raises(tmp_path):
  write_image_folder(tmp_path)
  for path in (tmp_path / "test").rglob("*"):
    if path.is_file():
      path.unlink()
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "test"))):
    data.load_dataset(data_config(dataset=f"folder:{tmp_path}"))
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nothing" / "train"))):
    data.load_dataset(data_config(dataset=f"folder:{tmp_path / 'nothing'}"))


def test_bad_image_size_and_seed_raise():
  with pytest.raises(ValueError, match="-4"):
    data.load_dataset(data_config(image_size=-4))
  with pytest.raises(ValueError, match="-1"):
    make_pipeline(seed=-1)


def test_seeded_permutation_is_a_permutation():
  perm = pipeline_lib.seeded_permutation(50, 1, 2, 3)
  np.testing.assert_array_equal(np.sort(perm), np.arange(50))
  np.testing.assert_array_equal(perm, pipeline_lib.seeded_permutation(50, 1, 2, 3))


@pytest.mark.parametrize("in_memory_max_bytes", [2**31, 0])
def test_folder_center_crop_resize_is_torchvisions_resize_then_center_crop(
    tmp_path, in_memory_max_bytes):
  """Shorter side to image_size (longer truncated), then the centre square (offsets rounded):
  written out here pixel by pixel for a wide and a tall image."""
  write_image_folder(tmp_path, sizes={("train", "bee", 1): (41, 30), ("train", "ant", 0): (20, 27)})
  config = data_config(dataset=f"folder:{tmp_path}", image_size=15, resize="center_crop",
                       in_memory_max_bytes=in_memory_max_bytes)
  ds = data.load_dataset(config)
  assert ds.image_shape == (15, 15, 3)
  images = ds.train.get(np.arange(len(ds.train)))["image"]
  with Image.open(tmp_path / "train" / "bee" / "1.jpg") as wide:
    # 41 x 30 -> int(15 * 41 / 30) = 20 x 15, columns from round(2.5) = 2
    resized = np.asarray(wide.convert("RGB").resize((20, 15), Image.BILINEAR))
  np.testing.assert_array_equal(images[4], resized[:, 2:17])
  with Image.open(tmp_path / "train" / "ant" / "0.png") as tall:
    # 20 x 27 -> 15 x int(15 * 27 / 20) = 15 x 20, rows from round(2.5) = 2
    resized = np.asarray(tall.convert("RGB").resize((15, 20), Image.BILINEAR))
  np.testing.assert_array_equal(images[0], resized[2:17])
  with pytest.raises(ValueError, match="resize must be one of squash, center_crop, got 'crop'"):
    data.load_dataset(data_config(dataset=f"folder:{tmp_path}", image_size=15, resize="crop"))
  with pytest.raises(ValueError, match="resize='center_crop' needs config.data.image_size"):
    data.load_dataset(data_config(dataset=f"folder:{tmp_path}", resize="center_crop"))


def test_eval_crop_cuts_val_and_test_images_to_their_centre():
  rng = np.random.default_rng(0)
  def source(n):
    return data.ArraySource(rng.integers(0, 256, (n, 7, 6, 1), dtype=np.uint8),
                            np.arange(n) % 3, 3, "random")
  dataset = data.Dataset(source(100), source(23), 3, (7, 6, 1))
  pipe = make_pipeline(dataset, eval_crop=4)
  centre = lambda images: images[..., 2:6, 1:5, :]  # rows round(1.5) = 2, columns 1
  val_ids = pipe.val_indices(0)
  np.testing.assert_array_equal(pipe.val_batch(0)["image"],
                                centre(dataset.train.get(val_ids)["image"]))
  test_batch = next(pipe.eval_batches("test", 10))
  np.testing.assert_array_equal(test_batch["image"], centre(dataset.test.get(np.arange(10))["image"]))
  val_batch = next(pipe.eval_batches("val", 10))
  assert val_batch["image"].shape == (10, 4, 4, 1)
  train = pipe.train_batches(0, 1)
  np.testing.assert_array_equal(train["image"][0],
                                dataset.train.get(pipe.train_indices(0, 1)[0])["image"])
  for bad in (0, 7, 2.5, True):
    with pytest.raises(ValueError, match=re.escape(f"in [1, 6] for 7x6 images, got {bad!r}")):
      make_pipeline(dataset, eval_crop=bad)
