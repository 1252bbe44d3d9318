"""The agent's own writes, told apart from an installer's: while a transaction writes a target,
events on the file names it may write are its own; after it, a path keeps counting as its own
for as long as its stat data is what the write left (late inotify events, a rename's two
halves). Fed by the engine's ``Result.touched``; where the write failed (no Result), by the
overlay's files before and after."""

from __future__ import annotations

import threading
from pathlib import Path

from ..engine.fsutil import stat_key
from ..engine.txn import RESTORE, STAGED
from ..errors import TKError
from ..engine.records import StatKey


class OwnWrites:
    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._busy: dict[str, set[str]] = {}       # target -> file names a running write may touch
        self._before: dict[str, set[str]] = {}     # target -> the overlay's files before it
        self._own: dict[str, StatKey | None] = {}     # path -> stat_key after our write (None: deleted)
        self.working: str | None = None            # the target being written to

    def _overlay(self, name: str) -> tuple[Path, set[str]]:
        st = self.engine.state.read()
        ov = st["overlays"].get(name) or {}
        rec = st["targets"].get(name) or {}
        return Path(ov.get("site_packages") or rec.get("site_packages") or "."), set(ov.get("files", {}))

    def begin(self, name: str) -> None:
        self.working = name
        _, before = self._overlay(name)
        names = {Path(rel).name for rel in before}
        try:
            m = self.engine.desired_bundle(name)
        except TKError:
            m = None
        if m:
            names |= {f["name"] for f in m.get("files", [])}
        with self._lock:
            self._busy[name] = names
            self._before[name] = before

    def end(self, name: str, touched: list[str] | None) -> None:
        """Remember what the write left: ``touched`` (the engine's Result), or where it failed,
        every file of the overlay before and after it."""
        with self._lock:
            before = self._before.pop(name, set())
        if touched is None:
            root, after = self._overlay(name)
            touched = [str(root / rel) for rel in after | before]
        own = {}
        for path in touched:
            try:
                own[path] = stat_key(Path(path))
            except OSError:
                own[path] = None
        with self._lock:
            self._own.update(own)
            self._busy.pop(name, None)
        self.working = None

    def is_own(self, target: str, path: str) -> bool:
        if path.endswith((STAGED, RESTORE)):
            return True
        with self._lock:
            busy = self._busy.get(target)
            if busy is not None and Path(path).name in busy:
                return True
            if path not in self._own:
                return False
            want = self._own[path]
        try:
            now = stat_key(Path(path))
        except OSError:
            now = None
        return now == want
