"""The agent's view model: what the tray and toasts show, under one lock. The parts of the
agent write here (a target's line, a found install, why the watches fail, the driver's line);
``view()`` turns it into one :class:`~.view.AgentView`, and every change is handed to the
listeners (the tray) on the writer's thread."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..engine.records import TargetStatus
from ..engine.records import DRIFTED, INCOMPATIBLE, MISSING, PATCHED, STOCK
from . import view as V
from ..engine.records import JsonObject
from ..i18n import _, ngettext

log = logging.getLogger("torchkeeper.agent")

DEGRADED_POLL_S = 10.0    # every target checked this often while the file watches fail


@dataclass(frozen=True)
class Shown:
    """What the board says beside the targets (each written by one part of the agent)."""
    driver_line: str = "driver: not checked yet"
    driver_error: bool = False
    degraded: str | None = None      # why the file watches do not work; None: they do
    working: str | None = None       # the target an apply or revert is writing to
    fetching: str | None = None      # the tooltip while "get it and apply" downloads
    autostart: bool | None = None    # start at login; None: cannot tell


class Board:
    def __init__(self, paused: Callable[[], bool]):
        self._paused = paused
        self._lock = threading.Lock()
        self._views: dict[str, V.TargetView] = {}
        self._found: list[V.FoundView] = []
        self.asks: dict[str, str] = {}        # target -> why it needs the user
        self.holds: dict[str, JsonObject] = {}      # target -> another process's hold on it (status's `held`)
        self.shown = Shown()
        self._listeners: list[Callable[[V.AgentView], object]] = []

    # -- listeners
    def listen(self, callback: Callable[[V.AgentView], object]) -> None:
        self._listeners.append(callback)

    @property
    def listened(self) -> bool:
        return bool(self._listeners)

    def changed(self) -> None:
        v = self.view()
        for cb in list(self._listeners):
            try:
                cb(v)
            except Exception:
                log.exception("a view listener failed")

    def set(self, **shown) -> None:
        """Change what is shown beside the targets (Shown's fields) and tell the listeners. Under
        the lock: the driver's thread and the worker may each change a field at once."""
        with self._lock:
            self.shown = replace(self.shown, **shown)
        self.changed()

    # -- targets
    def names(self) -> set[str]:
        with self._lock:
            return set(self._views)

    def target(self, name: str, s: TargetStatus, state: str, message: str,
               suggestion: str | None) -> None:
        """A target's line and details, from what a check read."""
        lib_dirs = s.info.lib_dirs if s.info else []
        folder = str(Path(s.site_packages) / lib_dirs[0]) if lib_dirs else s.site_packages
        details = [_("target: %(name)s") % {"name": name}, _("path: %(path)s") % {"path": s.path},
                   _("state: %(state)s") % {"state": V.state_word(state)},
                   f"torch: {s.torch_version} (CUDA {s.torch_cuda})"]
        b = s.bundle
        if b:
            vs = ", ".join(f"{label} {v}" for v, label in ((b.cuda, "CUDA"), (b.cudnn, "cuDNN")) if v)
            details.append(_("bundle: %(name)s") % {"name": b.name} + (f" ({vs})" if vs else ""))
        details += [_("problem: %(problem)s") % {"problem": p} for p in s.problems]
        with self._lock:
            old = self._views.get(name)
            if old is not None and not lib_dirs:
                folder = old.folder
            self._views[name] = V.TargetView(name, state, b.name if b else None, message, folder,
                                             "\n".join(details), suggestion)
        self.changed()

    def suggest(self, name: str, line: str | None) -> None:
        with self._lock:
            old = self._views.get(name)
            if old is not None:
                self._views[name] = replace(old, suggestion=line)
        self.changed()

    def forget(self, name: str) -> None:
        with self._lock:
            self._views.pop(name, None)
        self.changed()

    # -- found installs
    def found(self) -> list[V.FoundView]:
        with self._lock:
            return list(self._found)

    def set_found(self, found: list[V.FoundView]) -> None:
        with self._lock:
            self._found = list(found)
        self.changed()

    def found_changed(self, path: str, **fields) -> None:
        """One found install's fields (``suggestion``), or ``gone=True``: managed since."""
        gone = fields.pop("gone", False)
        with self._lock:
            self._found = [f for f in self._found if not (gone and f.path == path)]
            self._found = [replace(f, **fields) if f.path == path else f for f in self._found]
        self.changed()

    # -- the whole
    def view(self) -> V.AgentView:
        with self._lock:
            targets = [self._views[n] for n in sorted(self._views)]
            found = list(self._found)
            sh = self.shown
        paused = self._paused()
        states = {t.state for t in targets}
        if states & {MISSING} or sh.driver_error:
            overall = V.ERROR
        elif sh.degraded is not None:
            overall = V.ATTENTION
        elif sh.working is not None:
            overall = V.WORKING
        elif states & {DRIFTED, INCOMPATIBLE, V.WAITING} or self.asks:
            overall = V.ATTENTION
        elif paused:
            overall = V.PAUSED
        else:
            overall = V.OK
        bad = [t for t in targets if t.state not in (PATCHED, STOCK)]
        if not targets:
            tip = (_("torchkeeper: no targets yet - choose Manage on a found install") if found
                   else _("torchkeeper: no targets yet - add one with `torchkeeper target add PATH`"))
        elif not bad:
            tip = ngettext("torchkeeper: %(n)d target ok", "torchkeeper: %(n)d targets ok",
                           len(targets)) % {"n": len(targets)}
        else:
            tip = "torchkeeper: " + "; ".join(f"{t.name} {V.state_word(t.state)}" for t in bad[:3])
        if paused:
            tip += _(" (auto re-apply paused)")
        if sh.degraded is not None:
            tip += _("; watching: degraded - checking every %(s).0f s") % {"s": DEGRADED_POLL_S}
        holds = dict(self.holds)
        if holds:
            tip += "; " + ", ".join(f"'{n}' {h['describe']}" for n, h in sorted(holds.items()))
        if sh.fetching:
            overall, tip = V.WORKING, sh.fetching
        return V.AgentView(overall, tip, targets, sh.driver_line, paused, sh.autostart, found,
                           sh.degraded)
