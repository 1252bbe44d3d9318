"""Where torchkeeper keeps its config, state, cache and logs, and where its icons are.

``TORCHKEEPER_HOME=DIR`` puts everything under DIR (tests use this); otherwise the
platform's usual per-user locations from platformdirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP = "torchkeeper"


@dataclass(frozen=True)
class Home:
    config_dir: Path
    data_dir: Path
    cache_dir: Path
    log_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def bundles_dir(self) -> Path:
        return self.cache_dir / "bundles"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def locks_dir(self) -> Path:
        return self.data_dir / "locks"

    @property
    def events_file(self) -> Path:
        return self.log_dir / "events.jsonl"

    def tmp_dir(self) -> Path:
        d = self.cache_dir / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d


def icons_dir() -> Path:
    """The installed wheel's torchkeeper/_data/icons, else a source checkout's <repo>/icons."""
    package = Path(__file__).resolve().parent
    shipped = package / "_data" / "icons"
    return shipped if shipped.is_dir() else package.parents[1] / "icons"


def app_icon() -> Path:
    """The application's icon file for menus and login entries (.ico on Windows)."""
    name = "torchkeeper.ico" if os.name == "nt" else "ok-256.png"
    return icons_dir() / name


def get_home() -> Home:
    root = os.environ.get("TORCHKEEPER_HOME")
    if root:
        r = Path(root).expanduser().absolute()
        return Home(r / "config", r / "data", r / "cache", r / "logs")
    import platformdirs

    return Home(
        Path(platformdirs.user_config_dir(APP, appauthor=False)),
        Path(platformdirs.user_data_dir(APP, appauthor=False)),
        Path(platformdirs.user_cache_dir(APP, appauthor=False)),
        Path(platformdirs.user_log_dir(APP, appauthor=False)),
    )
