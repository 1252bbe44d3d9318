"""Logoff, shutdown and restart on Windows, with the agent running in the tray.

Windows asks every top-level window first (WM_QUERYENDSESSION), then tells it
(WM_ENDSESSION); once that second handler returns, the process may be ended at any moment.
pystray's window answers 0 to every message it has no handler for, and 0 to
WM_QUERYENDSESSION means "cancel": Windows would list torchkeeper as an app that prevents
signing out. So the tray answers both messages itself:

- the question: always yes. A change in progress is journaled, so even a kill is recovered
  at the next start; while one runs, Windows shows why we take a moment (a block reason);
- the ending: stop the agent inside the handler, which lets the running job finish, and
  return only then.

Only the Win32 calls differ by platform: they sit behind ``Blocker``; the logic here runs
and is tested anywhere.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

log = logging.getLogger("torchkeeper.agent")

WM_QUERYENDSESSION = 0x0011
WM_ENDSESSION = 0x0016


class Blocker(Protocol):
    """ShutdownBlockReasonCreate / Destroy for the tray's window."""

    def create(self, reason: str) -> None: ...

    def destroy(self) -> None: ...


class SessionEnd:
    """Message handlers for pystray's win32 window: ``handler(wparam, lparam) -> int``.

    writing_to() names the target a transaction is writing to, or None; finish(timeout)
    stops the agent and returns once its running job is done (or the timeout passed)."""

    def __init__(self, writing_to: Callable[[], str | None], finish: Callable[[float], None],
                 blocker: Blocker, finish_timeout: float = 60.0):
        self._writing_to = writing_to
        self._finish = finish
        self._blocker = blocker
        self._timeout = finish_timeout
        self._blocking = False

    def handlers(self) -> dict[int, Callable[[int, int], int]]:
        return {WM_QUERYENDSESSION: self.on_query, WM_ENDSESSION: self.on_end}

    def on_query(self, wparam: int, lparam: int) -> int:
        self._block_if_writing()
        return 1  # never cancel the user's logoff

    def on_end(self, wparam: int, lparam: int) -> int:
        if not wparam:          # the logoff was cancelled (by another app): carry on
            self._unblock()
            return 0
        log.info("the session is ending: stopping after the running job")
        self._block_if_writing()
        try:
            self._finish(self._timeout)
        finally:
            self._unblock()
        return 0

    def _block_if_writing(self) -> None:
        target = self._writing_to()
        if target is None:
            return
        try:
            self._blocker.create(f"torchkeeper is finishing a change to '{target}'")
            self._blocking = True
        except OSError as e:    # only the message Windows shows is lost
            log.warning("could not set a shutdown block reason: %s", e)

    def _unblock(self) -> None:
        if self._blocking:
            self._blocking = False
            try:
                self._blocker.destroy()
            except OSError as e:
                log.warning("could not clear the shutdown block reason: %s", e)
