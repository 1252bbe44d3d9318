"""Win32 calls (ctypes), imported only on Windows by the pieces that need them."""

from __future__ import annotations

from typing import Callable


class Win32Blocker:
    """The real Blocker: user32's ShutdownBlockReason* on the tray icon's window."""

    def __init__(self, hwnd: Callable[[], int]):
        import ctypes
        from ctypes import wintypes

        self._hwnd = hwnd
        self._user32 = user32 = ctypes.WinDLL("user32", use_last_error=True)
        user32.ShutdownBlockReasonCreate.argtypes = [wintypes.HWND, wintypes.LPCWSTR]
        user32.ShutdownBlockReasonDestroy.argtypes = [wintypes.HWND]

    def create(self, reason: str) -> None:
        if not self._user32.ShutdownBlockReasonCreate(self._hwnd(), reason):
            self._fail()

    def destroy(self) -> None:
        if not self._user32.ShutdownBlockReasonDestroy(self._hwnd()):
            self._fail()

    @staticmethod
    def _fail():
        import ctypes

        raise ctypes.WinError(ctypes.get_last_error())
