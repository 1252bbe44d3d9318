"""Open a file or folder the way the desktop would (Explorer, Finder, the file manager).

Called from tray menu actions: it must return at once and never raise; when it cannot open
the path it logs why and returns False.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("torchkeeper.agent")


def _command(path: str, platform: str) -> list[str] | None:
    """The opener command for a platform (None on Windows: os.startfile has no command)."""
    if platform == "win32":
        return None
    if platform == "darwin":
        return ["open", path]
    return ["xdg-open", path]


def open_path(path, *, platform: str | None = None, run=None, startfile=None) -> bool:
    """Opens path with the desktop's default handler, in the background: a file, a folder,
    or the local dashboard's URL (http://127.0.0.1:PORT/..., the browser).

    Returns True when the opener was started, False (and logs why) when it could not be.
    platform/run/startfile are for tests: run(argv) starts a process, startfile(path) is
    os.startfile.
    """
    try:
        url = str(path).startswith(("http://127.0.0.1:", "http://localhost:"))
        platform = platform or sys.platform
        path = str(path) if url else str(Path(path))
        shown = path.split("?", 1)[0]   # a URL's query is a one-time login code: never logged
        if not url and not os.path.exists(path):
            log.warning("cannot open %s: it does not exist", shown)
            return False
        argv = _command(path, platform)
        if argv is None:
            # os.startfile returns once the shell has the request; a thread keeps a slow
            # shell (a network folder) from freezing the tray's menu
            start = startfile or getattr(os, "startfile", None)
            if start is None:
                log.warning("cannot open %s: os.startfile is not available here", shown)
                return False
            threading.Thread(target=_startfile, args=(start, path, shown), daemon=True,
                             name="tk-open").start()
            return True
        if run is None and shutil.which(argv[0]) is None:
            log.warning("cannot open %s: %s is not installed", shown, argv[0])
            return False
        (run or _spawn)(argv)
        return True
    except Exception as e:  # a menu action must never take the tray down
        log.warning("cannot open %s: %s", str(path).split("?", 1)[0], e)
        return False


def _startfile(start, path: str, shown: str) -> None:
    try:
        start(path)
    except OSError as e:
        log.warning("cannot open %s: %s", shown, e)


def _spawn(argv: list[str]) -> None:
    """Starts argv detached: no console window, no inherited stdio, reaped by a thread so it
    never lingers as a zombie."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    threading.Thread(target=proc.wait, daemon=True, name="tk-open-reaper").start()
