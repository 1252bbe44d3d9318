"""Start at login: one small interface, a back end per OS.

- Windows (``windows.RunKeyAutostart``): a value under
  ``HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run``; Task Manager's switch lives in
  ``...\\Explorer\\StartupApproved\\Run`` and is read, never overwritten.
- Linux and other XDG desktops (``posix.XdgAutostart``): ``$XDG_CONFIG_HOME/autostart/torchkeeper.desktop``;
  ``Hidden=true`` or ``X-GNOME-Autostart-enabled=false`` in it is the user's "off".
- macOS (``macos.LaunchAgent``): ``~/Library/LaunchAgents/<label>.plist`` with RunAtLoad.

A back end only reads and writes the OS's entry. Whether to write it at all (the user's
consent, a choice recorded earlier) is decided above, in ``torchkeeper.engine.autostart``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .autostart_interface import (APP_ID, DISABLED, ENABLED, TURNED_OFF, Autostart, AutostartStatus,
                                  FileEntry)

# the interface, for callers that know only this module (engine/autostart.py)
__all__ = ["APP_ID", "DISABLED", "ENABLED", "TURNED_OFF", "Autostart", "AutostartStatus", "FileEntry",
           "backend", "agent_command"]


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
