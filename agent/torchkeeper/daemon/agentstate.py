"""The agent's own small state, ``<data>/agent.json``: auto re-apply paused, the last driver
seen, the last config.toml that was valid, whether the file watches work. Written by the tray's
thread (pause), the worker (config), the scheduler's thread (driver) and the watcher (health):
every change and every write happens under one lock, so no thread's change is lost to another's.

Each value is checked when read: a damaged one is dropped (and logged), never a crash of the
agent or of `torchkeeper status`; keys this version does not know are kept (a newer agent's).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..engine.fsutil import atomic_write_json, load_json
from ..home import Home
from ..engine.records import JsonObject

log = logging.getLogger("torchkeeper.agent")


def path_of(home: Home) -> Path:
    return home.data_dir / "agent.json"


def _driver_ok(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("state"), str) \
        and all(v.get(k) is None or isinstance(v.get(k), str) for k in ("version", "cuda")) \
        and isinstance(v.get("gpus", []), list) and all(isinstance(g, str) for g in v.get("gpus", []))


def _watching_ok(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("ok"), bool) and isinstance(v.get("why", ""), str) \
        and isinstance(v.get("since", 0), (int, float))


# each key and what it must hold
CHECKS = {
    "paused": lambda v: isinstance(v, bool),
    "autostart": lambda v: v is None or isinstance(v, bool),
    "driver": _driver_ok,
    "config_text": lambda v: isinstance(v, str),   # the last config.toml that was valid
    "watching": _watching_ok,                        # the running agent's file watches
}


def read(home: Home) -> JsonObject:
    """agent.json, each value checked (a regular file of at most 4 MiB: a FIFO never blocks)."""
    path = path_of(home)
    try:
        data = load_json(path)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s); starting from an empty agent state", path, e)
        return {}
    if not isinstance(data, dict):
        log.warning("%s is not a JSON object; starting from an empty agent state", path)
        return {}
    out = {}
    for key, value in data.items():
        check = CHECKS.get(key)
        if check is None or check(value):
            out[key] = value
        else:
            log.warning("%s: ignoring a damaged %r", path, key)
    return out


class AgentState:
    """agent.json in memory; ``set`` changes and saves under one lock (from any thread)."""

    def __init__(self, home: Home):
        self.home = home
        self._lock = threading.Lock()
        self._data = read(home)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    @property
    def paused(self) -> bool:
        return bool(self.get("paused"))

    def set(self, **changes) -> bool:
        """Change and save (None removes a key); False when the file could not be written
        (said in the log; the change holds in memory)."""
        with self._lock:
            for k, v in changes.items():
                if v is None:
                    self._data.pop(k, None)
                else:
                    self._data[k] = v
            try:
                self.home.data_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path_of(self.home), self._data, durable=False)
                return True
            except OSError as e:
                log.error("cannot write %s: %s", path_of(self.home), e)
                return False

    def set_watching(self, ok: bool, why: str) -> None:
        self.set(watching={"ok": ok, "why": why, "since": time.time()})
