"""The state store: targets, desired bundles, applied overlays and the event log.

One JSON file, replaced atomically under a cross-process lock; readers never see a
half-written state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from pathlib import Path

from ..errors import OperationFailed, UsageError
from .fsutil import atomic_write_json
from ..home import Home

SCHEMA = 1
TARGET_NAME_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOCK_TIMEOUT_S = 30


def empty() -> dict:
    return {"schema": SCHEMA, "targets": {}, "overlays": {}, "default_bundle": None}


class StateStore:
    def __init__(self, home: Home):
        self.home = home
        self.path = home.state_file

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return empty()
        except (OSError, ValueError) as e:
            raise UsageError(f"the state file {self.path} is unreadable: {e}",
                             f"restore it from {self.path}.bak if present, or move it away to "
                             "start over (backups in the data folder are kept)") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(f"the state file {self.path} has an unknown format",
                             "upgrade torchkeeper, or move the file away to start over")
        for k, v in empty().items():
            data.setdefault(k, v)
        problem = _shape_problem(data)
        if problem:
            raise UsageError(f"the state file {self.path} is damaged: {problem}",
                             f"restore it from {self.path.name}.bak beside it, or move it away to "
                             "start over (backups in the data folder are kept)")
        return data

    def write(self, data: dict) -> None:
        # Keep the previous state as state.json.bak: a hard link to the current file, which
        # the atomic write then replaces by a new one. state.json itself never goes missing.
        bak = self.path.with_suffix(".json.bak")
        tmp = self.path.with_suffix(".json.bak.tmp")
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        with contextlib.suppress(OSError):
            os.link(self.path, tmp)
            os.replace(tmp, bak)
        atomic_write_json(self.path, data)

    @contextlib.contextmanager
    def edit(self):
        """Read-modify-write under the state lock."""
        with self.lock():
            data = self.read()
            yield data
            self.write(data)

    def lock(self):
        self.home.data_dir.mkdir(parents=True, exist_ok=True)
        return _timed_lock(self.home.data_dir / "state.lock", "the torchkeeper state")


def _shape_problem(data: dict) -> str | None:
    """What is wrong with the shape of a state file, or None."""
    if not isinstance(data["targets"], dict) or not isinstance(data["overlays"], dict):
        return "'targets' and 'overlays' must be tables"
    for name, t in data["targets"].items():
        if not TARGET_NAME_RX.match(name) or not isinstance(t, dict) \
                or not isinstance(t.get("site_packages"), str) or not isinstance(t.get("path"), str):
            return f"target {name[:40]!r} is malformed"
    for name, o in data["overlays"].items():
        if not isinstance(o, dict) or not isinstance(o.get("files"), dict) \
                or not isinstance(o.get("bundle"), str):
            return f"the overlay of {name[:40]!r} is malformed"
        if not all(isinstance(f, dict) for f in o["files"].values()):
            return f"the overlay of {name[:40]!r} is malformed"
    if data["default_bundle"] is not None and not isinstance(data["default_bundle"], str):
        return "'default_bundle' must be a bundle id"
    return None


_held = threading.local()  # the target locks this thread holds


@contextlib.contextmanager
def target_lock(home: Home, name: str):
    """Cross-process lock per target: the CLI and the agent never apply at once. Re-entrant
    in one thread: a decision taken under the lock may call apply, which takes it too."""
    if not TARGET_NAME_RX.match(name):  # a name becomes a file name: never a path
        raise UsageError(f"no target named {name[:64]!r}",
                         "see `torchkeeper target list` for the names")
    held = _held.__dict__.setdefault("keys", set())
    key = (str(home.locks_dir), name)
    if key in held:
        yield
        return
    home.locks_dir.mkdir(parents=True, exist_ok=True)
    with _timed_lock(home.locks_dir / f"{name}.lock", f"target '{name}'"):
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)


@contextlib.contextmanager
def _timed_lock(path: Path, what: str):
    from filelock import FileLock, Timeout  # imported here: status never locks

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise OperationFailed(f"{what} is locked by another torchkeeper process ({path})",
                              "wait for the other command or the agent to finish, then retry") from None
    try:
        yield
    finally:
        lock.release()


def log_event(home: Home, kind: str, **fields) -> dict:
    """Append one event to the event log (JSON lines): the CLI's and the agent's history."""
    ev = {"ts": time.time(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": kind, **fields}
    home.log_dir.mkdir(parents=True, exist_ok=True)
    with open(home.events_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(ev, sort_keys=True) + "\n")
    return ev


def read_events(home: Home, n: int | None = None) -> list[dict]:
    try:
        lines = home.events_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines[-n:] if n else lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
