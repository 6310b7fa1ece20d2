"""Manifests: written last, sizes checked cheaply, hashes in full, errors naming the file."""

from __future__ import annotations

import json

import pytest

from torchrl_offline.data.errors import DatasetError
from torchrl_offline.integrity import (
    MANIFEST,
    content_digest,
    file_digest,
    verify_manifest,
    write_manifest,
)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "sub" / "b.json").write_text('{"x": 1}')
    write_manifest(tmp_path)
    return tmp_path


def test_manifest_lists_every_file_with_size_and_hash(folder):
    record = json.loads((folder / MANIFEST).read_text())
    assert sorted(record["files"]) == ["a.bin", "sub/b.json"]
    assert record["files"]["a.bin"] == {"size": 10240, "hash": file_digest(folder / "a.bin")}
    assert file_digest(folder / "a.bin") == content_digest((folder / "a.bin").read_bytes())
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    verify_manifest(folder, full=True)


def test_truncated_file_fails_the_size_check_naming_file_and_sizes(folder):
    with open(folder / "a.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DatasetError, match=r"a\.bin': size 1000 bytes, the manifest records 10240"):
        verify_manifest(folder, error=DatasetError)


def test_bit_flip_passes_sizes_and_fails_the_full_check(folder):
    data = bytearray((folder / "a.bin").read_bytes())
    data[5000] ^= 0x01
    (folder / "a.bin").write_bytes(data)
    verify_manifest(folder)  # sizes only: same size
    with pytest.raises(ValueError, match=r"a\.bin': content hash .* the manifest records"):
        verify_manifest(folder, full=True)


def test_missing_file_and_missing_or_damaged_manifest(folder):
    (folder / "sub" / "b.json").unlink()
    with pytest.raises(ValueError, match=r"b\.json': missing \(the manifest records 8 bytes\)"):
        verify_manifest(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="Manifest .* is unreadable"):
        verify_manifest(folder)
    (folder / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ValueError, match="damaged or of an unknown format"):
        verify_manifest(folder)
    (folder / MANIFEST).write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="damaged or of an unknown format"):
        verify_manifest(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(ValueError, match="has no manifest"):
        verify_manifest(folder)


def test_skipped_files_are_not_listed(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.json").write_text("{}")
    (tmp_path / "data" / "main.bin").write_bytes(b"123")
    write_manifest(tmp_path, skip=("data/metadata.json",))
    assert sorted(json.loads((tmp_path / MANIFEST).read_text())["files"]) == ["data/main.bin"]
    (tmp_path / "data" / "metadata.json").write_text('{"rewritten": true}')
    verify_manifest(tmp_path, full=True)


def test_files_added_after_the_manifest_are_ignored(folder):
    (folder / "notes.txt").write_text("added later")
    verify_manifest(folder, full=True)
