"""macOS: a per-user LaunchAgent that runs at load (login). No CUDA there today; kept so
the interface stays honest."""

from __future__ import annotations

import os
import plistlib
from pathlib import Path

from .autostart_interface import DISABLED, ENABLED, TURNED_OFF, AutostartStatus, FileEntry

LABEL = "io.github.torchkeeper.agent"


class LaunchAgent(FileEntry):
    def __init__(self, home: str | os.PathLike | None = None):
        self.path = Path(home or Path.home()) / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    def status(self) -> AutostartStatus:
        try:
            with open(self.path, "rb") as f:
                d = plistlib.load(f)
        except FileNotFoundError:
            return AutostartStatus(DISABLED, str(self.path))
        except (OSError, plistlib.InvalidFileException, ValueError):
            return AutostartStatus(DISABLED, str(self.path))
        cmd = " ".join(d.get("ProgramArguments") or []) or None
        if d.get("Disabled") is True or d.get("RunAtLoad") is not True:
            return AutostartStatus(TURNED_OFF, str(self.path), cmd,
                                   "turn torchkeeper on again in System Settings > General > Login Items")
        return AutostartStatus(ENABLED, str(self.path), cmd)

    def enable(self, argv: list[str]) -> AutostartStatus:
        return self._write(plistlib.dumps({"Label": LABEL, "ProgramArguments": list(argv),
                                           "RunAtLoad": True, "ProcessType": "Interactive"}))
