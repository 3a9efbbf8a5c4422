"""Tests for jaxaug.storage on local paths (tests/test_gcs.py runs them against gs://)."""

from __future__ import annotations

from jaxaug import storage


def test_write_file_creates_folders_and_replaces_whole(tmp_path):
  path = tmp_path / "a" / "b" / "x.json"
  assert storage.write_file(path, "first, longer\n") == str(path)
  storage.write_file(path, b"\x00second")
  assert path.read_bytes() == b"\x00second"
  assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temporary left


def test_expand_globs_in_the_last_parts_only(tmp_path):
  for name in ("r_1/x", "r_2/x", "r_1.log", "other/x"):
    storage.write_file(tmp_path / name, "")
  assert storage.expand(f"{tmp_path}/r_*") == [tmp_path / "r_1", tmp_path / "r_1.log",
                                                tmp_path / "r_2"]
  assert storage.expand(f"{tmp_path}/*/x") == [tmp_path / "other/x", tmp_path / "r_1/x",
                                                tmp_path / "r_2/x"]
  assert storage.expand(f"{tmp_path}/missing") == [tmp_path / "missing"]  # no wildcard: as is
  assert storage.expand(f"{tmp_path}/missing_*") == []


def test_remote_paths_are_kept_and_local_ones_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(storage.workdir_path("gs://bucket/run")) == "gs://bucket/run"
  assert str(storage.workdir_path("runs/x")) == str(tmp_path / "runs" / "x")
  assert storage.is_remote("gs://bucket/run") and not storage.is_remote(tmp_path)
