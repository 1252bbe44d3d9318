"""File helpers: hashing, copying while hashing, atomic writes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


def sha256_file(path: os.PathLike | str) -> str:
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
        return h.hexdigest()


def copy_hashing(src: os.PathLike | str, dst: os.PathLike | str,
                 progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy src to dst (created exclusively), hashing the bytes on the way; fsync dst.

    One read pass instead of copy-then-hash: applying a 1 GB bundle reads it once.
    """
    h = hashlib.sha256()
    size = 0
    buf = bytearray(4 * CHUNK)
    view = memoryview(buf)
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while n := fi.readinto(buf):
            chunk = view[:n]
            h.update(chunk)
            fo.write(chunk)
            size += n
            if progress:
                progress(n)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest(), size


def record_hash_to_hex(value: str) -> str | None:
    """RECORD's 'sha256=<urlsafe b64, no padding>' to hex; None for other algorithms."""
    algo, _, b64 = value.partition("=")
    if algo != "sha256" or not b64:
        return None
    try:
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    except ValueError:
        return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stat_key(path: Path) -> dict:
    """The stat data quick verification compares: size, mtime, inode."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
