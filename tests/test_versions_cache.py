"""Versions read from file contents once per file: cached by the file's stat identity, in memory
and in a small file in the cache folder (for the CLI's next run), never trusted past a change of
the file, and a damaged cache file is only a slower run."""

from __future__ import annotations

import os

import pytest

from torchkeeper.engine import versions


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(versions, "_cache", {})
    monkeypatch.setattr(versions, "_cache_file", None)
    monkeypatch.setattr(versions, "_dirty", False)
    reads = []
    real = versions._pe_version
    monkeypatch.setattr(versions, "_pe_version", lambda p: reads.append(str(p)) or real(p))
    return reads


def test_read_once_per_file_and_again_after_a_change(build, tmp_path, fresh):
    src = build.cudnn_archive(tmp_path / "src", version="9.5.1.17", cuda_major=12, platform="windows")
    dll = next(src.rglob("cudnn64_9.dll"))
    first = versions.pe_version(dll)
    assert first and first["FileVersion"].startswith("9.5.1")
    for _ in range(5):
        assert versions.pe_version(dll) == first
    assert fresh == [str(dll)]
    os.utime(dll, ns=(1, 1))                 # the same bytes, another identity: read again
    assert versions.pe_version(dll) == first and len(fresh) == 2


def test_the_cache_file_serves_the_next_process_and_a_damaged_one_is_ignored(build, tmp_path, fresh,
                                                                                monkeypatch):
    src = build.cudnn_archive(tmp_path / "src", version="9.5.1.17", cuda_major=12, platform="windows")
    dll = next(src.rglob("cudnn64_9.dll"))
    cache = tmp_path / "versions.json"
    versions.use_cache_file(cache)
    v = versions.pe_version(dll)
    versions.save_cache()
    assert cache.is_file()
    # "the next process": an empty memory, the same file
    monkeypatch.setattr(versions, "_cache", {})
    monkeypatch.setattr(versions, "_cache_file", None)
    versions.use_cache_file(cache)
    assert versions.pe_version(dll) == v and fresh == [str(dll)]
    for damage in (b"[" * 100_000, b'{"x": [[1, 2], {"FileVersion": 7}]}', b"\xff\xfe", b'{"x": "y"}'):
        cache.write_bytes(damage)
        monkeypatch.setattr(versions, "_cache", {})
        monkeypatch.setattr(versions, "_cache_file", None)
        versions.use_cache_file(cache)
        assert versions.pe_version(dll) == v
    os.unlink(cache)
    os.mkfifo(cache)                          # not a file: ignored, never blocks
    monkeypatch.setattr(versions, "_cache", {})
    monkeypatch.setattr(versions, "_cache_file", None)
    versions.use_cache_file(cache)
    assert versions.pe_version(dll) == v
