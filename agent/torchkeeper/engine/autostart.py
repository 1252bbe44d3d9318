"""Start at login, with the user's consent: the one place that decides whether to write the
OS's autostart entry (``torchkeeper.platform.autostart`` writes it).

- Only a person turns it on: ``torchkeeper autostart enable``, the tray's "Start at login",
  or an installer whose "start at login" box the user left ticked. The agent never does.
- A choice is remembered (``autostart.json`` in the data folder, kept by the uninstallers):
  an installer run again, or an upgrade, passes ``if_not_declined`` and leaves "off" off.
- Switched off in the OS's own settings (Task Manager's Startup tab, a desktop's startup
  settings): never switched back on behind the user's back; we say where to do it.
"""

from __future__ import annotations

import os
import time

from ..errors import UsageError
from ..home import Home, app_icon
from ..platform import autostart as osauto
from .fsutil import atomic_write_json, load_json
from .records import JsonObject
from ..i18n import _

ON, OFF = "on", "off"


class Autostart:
    def __init__(self, home: Home, backend: osauto.Autostart | None = None, argv: list[str] | None = None):
        self.home = home
        self.backend = backend or osauto.backend(icon=str(app_icon()))
        self._argv = argv
        self.choice_file = home.data_dir / "autostart.json"

    def argv(self) -> list[str]:
        if self._argv is None:
            self._argv = osauto.agent_command(os.environ.get("TORCHKEEPER_HOME"))
        return self._argv

    def choice(self) -> JsonObject | None:
        """The last choice a person made ({"choice": "on"|"off", "by": ..., "at": ...}), or None."""
        try:
            d = load_json(self.choice_file, 64 << 10)
        except (OSError, ValueError):   # absent, a FIFO or folder, nonsense: no choice made
            return None
        return d if isinstance(d, dict) and d.get("choice") in (ON, OFF) else None

    def _remember(self, choice: str, by: str) -> None:
        self.home.data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.choice_file, {"choice": choice, "by": by,
                                             "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def status(self) -> JsonObject:
        s = self.backend.status().to_dict()
        s["choice"] = self.choice()
        return s

    def enable(self, by: str = "user", if_not_declined: bool = False) -> tuple[JsonObject, str]:
        """Turn it on; returns (status, what happened). ``if_not_declined``: an installer's
        default, which an earlier "off" (ours or the OS's) overrides."""
        now = self.backend.status()
        if now.state == osauto.TURNED_OFF:
            if if_not_declined:
                return self.status(), f"left off: it was turned off outside torchkeeper ({now.where})"
            raise UsageError(
                _("start at login is turned off in the system's settings (%(where)s)") % {"where": now.where},
                now.how_to_turn_on,
            )
        prior = self.choice()
        if if_not_declined and prior and prior["choice"] == OFF:
            return self.status(), (
                f"left off: you turned start at login off ({prior.get('by')}, "
                f"{prior.get('at')}); `torchkeeper autostart enable` turns it on"
            )
        self.backend.enable(self.argv())
        self._remember(ON, by)
        return self.status(), f"torchkeeper will start at login ({now.where})"

    def disable(self, by: str = "user") -> tuple[JsonObject, str]:
        now = self.backend.disable()
        self._remember(OFF, by)
        return self.status(), f"torchkeeper will not start at login ({now.where})"

    def forget(self) -> tuple[JsonObject, str]:
        """An uninstaller's removal: the entry goes, the user's choice stays for a reinstall."""
        now = self.backend.disable()
        return self.status(), f"removed the start-at-login entry ({now.where})"
