"""macOS: a per-user LaunchAgent that runs at load (login). No CUDA there today; kept so
the interface stays honest."""

from __future__ import annotations

import os
import plistlib
from pathlib import Path

from .autostart import DISABLED, ENABLED, TURNED_OFF, AutostartStatus

LABEL = "io.github.torchkeeper.agent"


class LaunchAgent:
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            plistlib.dump({"Label": LABEL, "ProgramArguments": list(argv), "RunAtLoad": True,
                           "ProcessType": "Interactive"}, f)
        os.replace(tmp, self.path)
        return self.status()

    def disable(self) -> AutostartStatus:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        return self.status()
