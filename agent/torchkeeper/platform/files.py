"""The one platform-specific concern of a transaction: putting a file in place.

Windows refuses to replace or delete a DLL that a running process has loaded (a sharing
violation); POSIX never does. :class:`FileOps` is the small interface the transaction uses;
``torchkeeper.testing`` simulates a locked file through the same interface.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import FileInUse

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


def get_ops() -> FileOps:
    """The platform's FileOps (``torchkeeper.testing.file_ops`` may stand a simulated one in)."""
    return FileOps()


def holders(path: Path) -> list[str]:
    """Processes that have the file open or mapped, as 'name (pid N)'; best effort."""
    try:
        import psutil
    except ImportError:
        return []
    target = os.path.realpath(path)
    out = []
    try:
        for proc in psutil.process_iter(["pid", "name"]):
            try:
                files = [f.path for f in proc.open_files()]
                if target not in files:
                    files = [m.path for m in proc.memory_maps(grouped=True)]
                if target in files:
                    out.append(f"{proc.info['name']} (pid {proc.info['pid']})")
            except (psutil.Error, OSError):
                continue
    except OSError:  # the listing itself failed (Wine: WinError 87): the file is still in use
        pass
    return out


def is_no_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or getattr(e, "winerror", None) in (39, 112)
