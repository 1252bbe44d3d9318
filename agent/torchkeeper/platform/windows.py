"""Win32 calls (ctypes, winreg), imported only on Windows by the pieces that need them."""

from __future__ import annotations

import subprocess
from typing import Callable, Protocol

from .autostart_interface import APP_ID, DISABLED, ENABLED, TURNED_OFF, AutostartStatus

RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
APPROVED_KEY = r"Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\Run"
REG_SZ, REG_BINARY = 1, 3


class Registry(Protocol):
    """Values under HKEY_CURRENT_USER: the little of winreg the Run key needs."""

    def get(self, key: str, name: str) -> tuple[object, int] | None: ...

    def set(self, key: str, name: str, value: object, kind: int) -> None: ...

    def delete(self, key: str, name: str) -> None: ...


class WinReg:
    """The real registry (winreg), current user only: no admin rights needed."""

    def __init__(self):
        import winreg

        self._w = winreg

    def get(self, key, name):
        w = self._w
        try:
            with w.OpenKey(w.HKEY_CURRENT_USER, key) as k:
                return w.QueryValueEx(k, name)
        except FileNotFoundError:
            return None

    def set(self, key, name, value, kind):
        w = self._w
        with w.CreateKeyEx(w.HKEY_CURRENT_USER, key, 0, w.KEY_SET_VALUE) as k:
            w.SetValueEx(k, name, 0, kind, value)

    def delete(self, key, name):
        w = self._w
        try:
            with w.OpenKey(w.HKEY_CURRENT_USER, key, 0, w.KEY_SET_VALUE) as k:
                w.DeleteValue(k, name)
        except FileNotFoundError:
            pass


class RunKeyAutostart:
    r"""HKCU's Run value ``torchkeeper``. Task Manager's Startup tab does not remove a Run
    value to turn it off: it writes a 12-byte REG_BINARY under StartupApproved\Run whose
    first byte is odd (0x03) for "disabled" and even (0x02, 0x06) for "enabled". We read it
    and never write it: turning it back on is the user's own act, in Task Manager."""

    def __init__(self, registry: Registry | None = None, name: str = APP_ID):
        self.reg = registry or WinReg()
        self.name = name
        self.where = rf"HKCU\{RUN_KEY}\{name}"

    def status(self) -> AutostartStatus:
        v = self.reg.get(RUN_KEY, self.name)
        if v is None:
            return AutostartStatus(DISABLED, self.where)
        cmd = str(v[0])
        approved = self.reg.get(APPROVED_KEY, self.name)
        flags = approved[0] if approved is not None else b""
        if isinstance(flags, (bytes, bytearray)) and flags[:1] and flags[0] & 1:
            return AutostartStatus(TURNED_OFF, self.where, cmd,
                                   "open Task Manager > Startup apps, select torchkeeper and choose Enable")
        return AutostartStatus(ENABLED, self.where, cmd)

    def enable(self, argv: list[str]) -> AutostartStatus:
        # the program always quoted, as Windows asks of a Run command line; list2cmdline quotes
        # every other argument with a space: "C:\Users\Jürgen Müller\..." stays one argument
        cmd = f'"{argv[0]}"' + "".join(" " + subprocess.list2cmdline([a]) for a in argv[1:])
        self.reg.set(RUN_KEY, self.name, cmd, REG_SZ)
        return self.status()

    def disable(self) -> AutostartStatus:
        self.reg.delete(RUN_KEY, self.name)
        return self.status()


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
