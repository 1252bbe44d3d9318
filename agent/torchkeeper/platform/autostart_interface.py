"""Start at login: the interface every back end implements (no back end imported here, so the
back ends import this and nothing imports back: see platform/autostart.py for the choice)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
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
