"""Workdir files, local or on an object store (`gs://bucket/run`), through `etils.epath`.

Every file jaxaug reads or writes under a workdir goes through `etils.epath` (these helpers,
or Orbax and the TensorBoard writer, which handle `gs://` themselves), never through `open`
or `os.path`, so a workdir on Google Cloud Storage works as a local one does. An object store
has no append and no rename that is atomic, so files are written whole (`write_file`).
epath reaches `gs://` through fsspec's `gcsfs` when it is installed (the `gcs` extra; the
path the tests exercise against a GCS emulator), else through TensorFlow's `tf.io.gfile`
(installed for tfds's dataset preparation); setting `EPATH_USE_TF` chooses explicitly.
"""

from __future__ import annotations

import importlib.util
import os

from etils import epath

if "EPATH_USE_TF" not in os.environ and importlib.util.find_spec("gcsfs") is not None:
  os.environ["EPATH_USE_TF"] = "false"

WILDCARDS = "*?["


def is_remote(path: epath.PathLike) -> bool:
  """Whether `path` is a URL (`gs://...`, `s3://...`) rather than a local path."""
  return "://" in os.fspath(path)


def workdir_path(path: epath.PathLike) -> epath.Path:
  """`path` as an `epath.Path`; a local one made absolute, a URL kept as it is."""
  path = epath.Path(path)
  return path if is_remote(path) else path.resolve()


def write_file(path: epath.PathLike, data: str | bytes) -> str:
  """Writes `data` (text as UTF-8) to `path` whole, creating its folder; returns str(path).

  No reader sees half a file: a local file is written under a temporary name and renamed;
  an object store makes an object visible only once it is written whole.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    path.write_bytes(data)
  else:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
  return str(path)


def expand(pattern: str) -> list[epath.Path]:
  """The paths `pattern` names, local or remote: itself, or, when it has wildcards (`*?[`)
  in its last parts, the sorted matches of that glob (e.g. `gs://bucket/runs/r_*`, which
  no shell expands)."""
  parts = pattern.rstrip("/").split("/")
  first = next((i for i, part in enumerate(parts) if any(c in part for c in WILDCARDS)), None)
  if first is None:
    return [epath.Path(pattern)]
  base = epath.Path("/".join(parts[:first]) or ".")
  return sorted(base.glob("/".join(parts[first:])))
