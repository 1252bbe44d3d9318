"""File helpers: hashing, copying while hashing, atomic writes."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable
from .records import JsonObject, StatKey

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
                 progress: Callable[[int], None] | None = None, fsync: bool = True) -> tuple[str, int]:
    """Copy src to dst (created exclusively) and return (sha256 of src, bytes copied);
    fsync dst unless told not to.

    The copy (in the kernel where it can: copy_file_range) and the hash of the source run
    side by side on two threads, both without the GIL: a 1 GB bundle costs about one
    hash pass of wall time instead of a copy plus a hash.
    """
    result: JsonObject = {}

    def hash_src():
        try:
            result["sha256"] = sha256_file(src)
        except BaseException as e:  # re-raised below
            result["error"] = e

    t = threading.Thread(target=hash_src, name="tk-hash", daemon=True)
    t.start()
    size = 0
    try:
        with open(src, "rb") as fi, open(dst, "xb") as fo:
            if fsync:
                with _EarlyFlush(fo.fileno()) as ef:
                    size = _copy_fd(fi, fo, _chain(progress, ef.copied))
                os.fsync(fo.fileno())
            else:
                size = _copy_fd(fi, fo, progress)
    finally:
        t.join()
    if "error" in result:
        raise result["error"]
    return result["sha256"], size


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def clone_or_copy(src: os.PathLike | str, dst: os.PathLike | str) -> tuple[str, int]:
    """A private copy of src's bytes at dst (created exclusively, fsynced): a reflink where
    the file system offers one (btrfs, XFS: instant, no space until either side changes),
    else a plain copy. Returns (sha256, size) of what dst holds."""
    if sys.platform.startswith("linux"):
        import fcntl

        with open(src, "rb") as fi, open(dst, "xb") as fo:
            try:
                fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
            except OSError:
                pass  # no reflinks here (ext4, tmpfs, another volume): copy below
            else:
                os.fsync(fo.fileno())
                return sha256_file(dst), os.fstat(fo.fileno()).st_size
        os.unlink(dst)
    return copy_hashing(src, dst)


class _EarlyFlush:
    """Flushes a file being written every FLUSH_EVERY bytes, on its own thread: the disk
    writes while the copy goes on, so the final fsync has little left to wait for (the
    kernel would otherwise hold a 1 GB copy in memory until that fsync)."""

    FLUSH_EVERY = 64 << 20

    def __init__(self, fd: int):
        self.fd = fd
        self.written = 0
        self._flushed = 0
        self._cv = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="tk-flush", daemon=True)

    def copied(self, n: int) -> None:
        with self._cv:
            self.written += n
            if self.written - self._flushed >= self.FLUSH_EVERY:
                self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._done and self.written - self._flushed < self.FLUSH_EVERY:
                    self._cv.wait()
                if self._done:
                    return
                self._flushed = self.written
            try:
                os.fdatasync(self.fd) if hasattr(os, "fdatasync") else os.fsync(self.fd)
            except OSError:
                return  # the final fsync reports any real problem

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cv:
            self._done = True
            self._cv.notify()
        self._thread.join()


def _chain(a, b):
    if a is None:
        return b
    return lambda n: (a(n), b(n))


def _copy_fd(fi, fo, progress) -> int:
    size = 0
    if hasattr(os, "copy_file_range"):
        try:
            while n := os.copy_file_range(fi.fileno(), fo.fileno(), 8 * CHUNK):
                size += n
                if progress:
                    progress(n)
            return size
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or size:
                raise
    buf = bytearray(4 * CHUNK)
    view = memoryview(buf)
    while n := fi.readinto(buf):
        fo.write(view[:n])
        size += n
        if progress:
            progress(n)
    fo.flush()
    return size


# -- hashes known by a file's full stat identity ---------------------------------------------
# (device, inode, size, mtime, ctime): any write, truncation, rename-over or chmod moves the
# ctime, which no program can set back, so an identity seen before means the bytes hashed then.
# The agent fills it in the background while an installer writes (remember()), so the repair's
# plan after the install finds what pip wrote already hashed: off the critical path.
_KNOWN_MAX = 4096
_known: dict[tuple, str] = {}
_known_lock = threading.Lock()


def identity(path: os.PathLike | str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def known_sha256(path: os.PathLike | str) -> str | None:
    """The sha256 hashed before for the file as it is now (its identity unchanged); else None."""
    ident = identity(path)
    with _known_lock:
        return _known.get(ident) if ident else None


def remember(path: os.PathLike | str) -> str | None:
    """Hash a file now and keep its hash under its identity (only if it did not change while it
    was read). Returns the hash; None when the file is gone or not a regular file."""
    import stat as st

    before = identity(path)
    if before is None:
        return None
    with _known_lock:
        if before in _known:
            return _known[before]
    try:
        if not st.S_ISREG(os.stat(path).st_mode):
            return None
        digest = sha256_file(path)
    except OSError:
        return None
    if identity(path) == before:
        with _known_lock:
            if len(_known) >= _KNOWN_MAX:
                _known.pop(next(iter(_known)))
            _known[before] = digest
    return digest


def hash_many(paths) -> dict[Path, tuple[str, StatKey]]:
    """{path: (sha256, stat_key before hashing)} for existing files, two at a time
    (hashlib drops the GIL), largest first so the pair finishes together. A file whose
    identity was hashed before (remember) is not read again."""
    from concurrent.futures import ThreadPoolExecutor

    todo = sorted({Path(p) for p in paths if Path(p).is_file()},
                  key=lambda p: p.stat().st_size, reverse=True)

    def one(p: Path):
        st = stat_key(p)
        return p, (known_sha256(p) or remember(p) or sha256_file(p), st)

    if len(todo) <= 1:
        return dict(map(one, todo))
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, todo))


def record_hash_to_hex(value: str) -> str | None:
    """RECORD's 'sha256=<urlsafe b64, no padding>' to hex; None for other algorithms."""
    algo, _, b64 = value.partition("=")
    if algo != "sha256" or not b64:
        return None
    try:
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    except ValueError:
        return None


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace path with data in one rename; durable: fsync the file and its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj, durable: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode(), durable)


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


def stat_key(path: Path) -> StatKey:
    """The stat data quick verification compares: size, mtime, inode."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


# -- reading files a hostile or broken machine may have put there ---------------------------
SMALL = 4 << 20       # configs, records, launcher files, METADATA: 4 MiB is far beyond any real one


class NotARegularFile(OSError):
    """A FIFO, a device, a folder, a socket (or, with follow=False, a link) where a file
    was expected: never read (a FIFO would block, /dev/zero would never end)."""


def _kind(mode: int) -> str:
    import stat as st

    for test, name in ((st.S_ISDIR, "a folder"), (st.S_ISFIFO, "a FIFO"), (st.S_ISCHR, "a device"),
                       (st.S_ISBLK, "a device"), (st.S_ISSOCK, "a socket"), (st.S_ISLNK, "a link")):
        if test(mode):
            return name
    return "not a regular file"


def read_file(path: os.PathLike | str, limit: int = SMALL, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. Anything else raises an OSError
    that says what it is: :class:`NotARegularFile` (opened without blocking, so a FIFO never
    hangs the caller), ``EFBIG`` for a larger file, ``ELOOP`` for a link loop (or, with
    ``follow=False``, any link)."""
    fd = _open_regular(path, follow)
    try:
        chunks, size = [], 0
        while True:
            b = os.read(fd, min(CHUNK, limit + 1 - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_head(path: os.PathLike | str, n: int) -> bytes:
    """The first n bytes of a regular file (OSErrors as read_file: a FIFO never blocks)."""
    fd = _open_regular(path, True)
    try:
        return os.read(fd, n)
    finally:
        os.close(fd)


def _open_regular(path: os.PathLike | str, follow: bool) -> int:
    """A descriptor of a regular file, opened without blocking (see read_file)."""
    import stat as st

    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_NONBLOCK", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
        if os.name == "nt" and os.path.islink(path):
            raise NotARegularFile(errno.ELOOP, "a link, not a file", str(path))
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not st.S_ISREG(mode):
            raise NotARegularFile(errno.EINVAL, f"{_kind(mode)}, not a file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_text(path: os.PathLike | str, limit: int = SMALL, follow: bool = True,
              encoding: str = "utf-8", errors: str = "strict") -> str:
    return read_file(path, limit, follow).decode(encoding, errors)


def parse_json(data: bytes | str):
    """json.loads, with nesting too deep for the parser a ValueError like any bad JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_json(path: os.PathLike | str, limit: int = SMALL, follow: bool = True):
    """A small JSON file: OSError for the file (see :func:`read_file`), ValueError for its text."""
    return parse_json(read_file(path, limit, follow))


def set_aside(path: os.PathLike | str, what: str) -> Path | None:
    """Move something of the wrong type (a link where torchkeeper keeps a folder of its own, a
    folder where it keeps a file) out of the way, without following it or deleting anything in
    it: renamed in place to ``<name>.set-aside-<time>``, with one warning saying so. Returns
    the new name, or None when it could not be moved (then it is only never trusted)."""
    import logging
    import time

    path = Path(path)
    log = logging.getLogger("torchkeeper.engine")
    new = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.rename(path, new)   # renames a link itself, never what it points to
    except OSError as e:
        log.warning("%s is %s, not torchkeeper's; it is ignored (could not move it aside: %s)",
                    path, what, e.strerror)
        return None
    log.warning("%s was %s, not torchkeeper's: moved aside to %s, nothing in it touched", path, what,
                new.name)
    return new


def kind_of(path: os.PathLike | str) -> str | None:
    """'a link', 'a folder', 'a FIFO', ... for what lies at path (not followed); None: nothing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    import stat as st

    return "a file" if st.S_ISREG(mode) else _kind(mode)
