"""The one platform-specific concern of a transaction: putting a file in place.

Windows refuses to replace or delete a DLL that a running process has loaded (a sharing
violation); POSIX never does. :class:`FileOps` is the small interface the transaction uses;
:func:`get_ops` picks the implementation. Tests simulate a locked file through the same
interface with ``TORCHKEEPER_TEST_LOCKED`` (file names separated by os.pathsep), and a full
disk with ``TORCHKEEPER_TEST_NO_SPACE`` (folders separated by os.pathsep: creating a file
there fails with ENOSPC; for tests that cannot mount a small filesystem).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import FileInUse

# Windows error codes for a file another process holds open.
_WIN_IN_USE = {32, 33, 5}  # sharing violation, lock violation, access denied on a mapped image


class FileOps:
    def replace(self, src: Path, dst: Path) -> None:
        """Atomically rename src over dst. Raises FileInUse if dst is held by a process."""
        try:
            os.replace(src, dst)
        except PermissionError as e:
            if getattr(e, "winerror", None) in _WIN_IN_USE:
                raise FileInUse(dst, holders(dst)) from None
            raise

    def remove(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except PermissionError as e:
            if getattr(e, "winerror", None) in _WIN_IN_USE:
                raise FileInUse(path, holders(path)) from None
            raise


class SimulatedLockOps(FileOps):
    """Behaves like Windows for the named files: they cannot be replaced or removed."""

    def __init__(self, locked: set[str]):
        self.locked = locked

    def _check(self, path: Path) -> None:
        if path.name in self.locked:
            raise FileInUse(path, holders(path))

    def replace(self, src: Path, dst: Path) -> None:
        self._check(dst)
        super().replace(src, dst)

    def remove(self, path: Path) -> None:
        self._check(path)
        super().remove(path)


def get_ops() -> FileOps:
    locked = os.environ.get("TORCHKEEPER_TEST_LOCKED")
    if locked:
        return SimulatedLockOps({n for n in locked.split(os.pathsep) if n})
    return FileOps()


def holders(path: Path) -> list[str]:
    """Processes that have the file open or mapped, as 'name (pid N)'; best effort."""
    try:
        import psutil
    except ImportError:
        return []
    target = os.path.realpath(path)
    out = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            files = [f.path for f in proc.open_files()]
            if target not in files:
                files = [m.path for m in proc.memory_maps(grouped=True)]
            if target in files:
                out.append(f"{proc.info['name']} (pid {proc.info['pid']})")
        except (psutil.Error, OSError):
            continue
    return out


def check_space(folder: Path) -> None:
    """Test hook: raise ENOSPC when ``folder`` is one TORCHKEEPER_TEST_NO_SPACE names."""
    full = os.environ.get("TORCHKEEPER_TEST_NO_SPACE")
    if full and os.path.realpath(folder) in {os.path.realpath(p) for p in full.split(os.pathsep) if p}:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))


def is_no_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or getattr(e, "winerror", None) in (39, 112)
