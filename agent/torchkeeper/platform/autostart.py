"""Start at login: one small interface, a back end per OS.

- Windows (``windows.RunKeyAutostart``): a value under
  ``HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run``; Task Manager's switch lives in
  ``...\\Explorer\\StartupApproved\\Run`` and is read, never overwritten.
- Linux and other XDG desktops (``posix.XdgAutostart``): ``$XDG_CONFIG_HOME/autostart/torchkeeper.desktop``;
  ``Hidden=true`` or ``X-GNOME-Autostart-enabled=false`` in it is the user's "off".
- macOS (``macos.LaunchAgent``): ``~/Library/LaunchAgents/<label>.plist`` with RunAtLoad.

A back end only reads and writes the OS's entry. Whether to write it at all (the user's
consent, a choice recorded earlier) is decided above, in ``torchkeeper.engine.login``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

APP_ID = "torchkeeper"

ENABLED = "enabled"        # the entry is there and the OS will run it
DISABLED = "disabled"      # no entry
TURNED_OFF = "turned off"  # the entry is there, but the user switched it off in the OS's own settings


@dataclass
class AutostartStatus:
    state: str                 # ENABLED, DISABLED or TURNED_OFF
    where: str                 # the registry value, file or plist, for the user to find
    command: str | None = None  # what the entry runs, as the OS stores it
    how_to_turn_on: str | None = None  # for TURNED_OFF: what the user must do in the OS's settings

    @property
    def enabled(self) -> bool:
        return self.state == ENABLED

    def to_dict(self) -> dict:
        return {"state": self.state, "enabled": self.enabled, "where": self.where,
                "command": self.command, "how_to_turn_on": self.how_to_turn_on}


class Autostart(Protocol):
    """What every back end offers. ``argv`` is the agent's command line, absolute paths."""

    def status(self) -> AutostartStatus: ...

    def enable(self, argv: list[str]) -> AutostartStatus: ...

    def disable(self) -> AutostartStatus: ...


class FileEntry:
    """A back end whose entry is one file (an XDG .desktop, a LaunchAgent plist)."""

    path: Path

    def status(self) -> AutostartStatus: ...

    def _read(self, limit: int = 64 << 10) -> bytes:
        """The entry's bytes, only from a small regular file: a FIFO there must not block a
        login's status (OSError for anything else, FileNotFoundError when there is none)."""
        import stat

        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                raise OSError(f"{self.path} is not a small file")
            return os.read(fd, limit)
        finally:
            os.close(fd)

    def _write(self, data: bytes) -> AutostartStatus:
        """The whole entry in one rename: a login never reads half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        return self.status()

    def disable(self) -> AutostartStatus:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        return self.status()


def backend(platform: str | None = None, icon: str | None = None) -> Autostart:
    """The back end for this OS; ``icon``: an image file for entries that show one."""
    platform = platform or sys.platform
    if platform == "win32":
        from .windows import RunKeyAutostart

        return RunKeyAutostart()
    if platform == "darwin":
        from .macos import LaunchAgent

        return LaunchAgent()
    from .posix import XdgAutostart

    return XdgAutostart(icon=icon)


def agent_command(home: str | None = None, executable: str | None = None,
                  frozen: bool | None = None, platform: str | None = None) -> list[str]:
    """The command line that starts the agent at login, with no console window.

    The frozen app (PyInstaller) is its own windowed exe; on Windows a Python install runs
    ``pythonw.exe -m torchkeeper run`` (python.exe would open a console); elsewhere the
    installed ``torchkeeper`` script beside the interpreter, else ``python -m torchkeeper``.
    ``home``: a TORCHKEEPER_HOME to carry over (a Run value cannot set variables).
    """
    executable = executable or sys.executable
    frozen = getattr(sys, "frozen", False) if frozen is None else frozen
    platform = platform or sys.platform
    exe = Path(executable)
    if frozen:
        # torchkeeper-cli.exe (a console program) enables it from an installer: login starts
        # the windowed torchkeeper.exe beside it, which opens no console window
        windowed = exe.with_name("torchkeeper.exe" if platform == "win32" else "torchkeeper")
        argv = [str(windowed if windowed.is_file() else exe), "run"]
    elif platform == "win32":
        pythonw = exe.with_name("pythonw.exe")
        argv = [str(pythonw if pythonw.is_file() else exe), "-m", "torchkeeper", "run"]
    else:
        script = exe.parent / "torchkeeper"  # the console script pip / pipx / uv put beside it
        argv = [str(script), "run"] if script.is_file() else [str(exe), "-m", "torchkeeper", "run"]
    if home:
        argv += ["--home", str(home)]
    return argv
