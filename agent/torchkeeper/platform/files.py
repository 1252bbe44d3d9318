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
    """Processes that have the file open or mapped, as 'name (pid N)'; best effort, never raises.

    Under Wine (and for some processes on Windows) psutil raises plain OSError (WinError 87
    from NtQuerySystemInformation) for name() and out of process_iter() itself: whoever was
    found before that is kept, and the caller names the file in use either way."""
    try:
        import psutil
    except ImportError:
        return []
    target = os.path.normcase(os.path.realpath(path))
    out: list[str] = []
    try:
        # no attrs: process_iter(attrs) calls as_dict, which lets that OSError escape
        for proc in psutil.process_iter():
            try:
                if _holds(proc, target):
                    out.append(f"{_name(proc)} (pid {proc.pid})")
            except Exception:  # gone, access denied, or psutil failing on this process
                continue
    except Exception:
        pass
    return out


def _holds(proc, target: str) -> bool:
    for read in (lambda: [f.path for f in proc.open_files()],
                 lambda: [m.path for m in proc.memory_maps(grouped=True)]):
        try:
            if target in {os.path.normcase(p) for p in read()}:
                return True
        except Exception:  # one way failing (open_files under Wine) leaves the other
            continue
    return False


def _name(proc) -> str:
    try:
        return proc.name()
    except Exception:
        pass
    try:  # cmdline() still answers where name() does not (Wine)
        return os.path.basename(proc.cmdline()[0].replace("\\", "/"))
    except Exception:
        return "a process"


def is_no_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or getattr(e, "winerror", None) in (39, 112)
