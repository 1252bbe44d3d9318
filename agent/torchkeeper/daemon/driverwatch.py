"""The driver, watched without waking the GPU: what the OS shows of it (engine/driversignal.py)
is read on every poll; NVML is asked only at start and when that changed. A change is saved in
agent.json, said in one toast, and queues a check of every target (does the bundle still suit
the driver?). Runs on the scheduler's thread; writes only agent.json (under its lock) and the
board."""

from __future__ import annotations

from typing import Callable

from .agentstate import AgentState
from .board import Board
from .decide import Why
from .jobs import JobKind
from .tell import Teller
from . import view as V
from ..engine.records import JsonObject
from ..i18n import _


class DriverWatch:
    def __init__(self, engine, state: AgentState, board: Board, tell: Teller, put: Callable[..., None]):
        self.engine, self.state, self.board, self.tell, self.put = engine, state, board, tell, put
        self._signal = None   # what the OS showed of the driver at the last NVML query
        self.nvml_queries = 0

    def poll(self, initial: bool = False) -> None:
        from ..engine import driversignal

        sig = driversignal.current()
        if not initial and sig == self._signal:
            return
        self._signal = sig
        self.nvml_queries += 1
        d = self.engine.driver(refresh=True)
        now = {"state": d.state, "version": d.version, "cuda": d.cuda,
               "gpus": sorted(g.get("name") or "?" for g in d.gpus)}
        before = self.state.get("driver")
        if before != now:
            self.state.set(driver=now)
            if before is not None:
                title, body = change_text(before, now, d)
                self.tell.event("driver changed", before=before, after=now)
                # the state in the kind: "reboot needed" is never merged into a "changed" toast
                self.tell.toast(V.Toast(f"driver-{now['state']}:{now['version']}", title, body,
                                        level="warning" if not d.ok else "info"))
                self.put(JobKind.DRIVER, None, Why.DRIVER)
        self.board.set(driver_error=d.state in ("error", "reboot_needed"),
                       driver_line=d.summary() if d.ok else (d.message or d.state))


def change_text(before: JsonObject, now: JsonObject, d) -> tuple[str, str]:
    """A driver change's toast: (title, body)."""
    if now["state"] == "ok" and before.get("state") == "ok":
        parts = []
        if before.get("version") != now["version"]:
            parts.append(
                _("Driver %(old)s → %(new)s") % {"old": before.get("version"), "new": now["version"]}
            )
        if before.get("cuda") != now["cuda"]:
            parts.append(f"CUDA {before.get('cuda')} → {now['cuda']}")
        if before.get("gpus") != now["gpus"]:
            parts.append(_("GPUs: %(gpus)s") % {"gpus": ", ".join(now["gpus"]) or _("none")})
        return _("torchkeeper: driver changed"), ", ".join(parts) or d.summary()
    if now["state"] == "ok":
        return _("torchkeeper: driver available"), d.summary()
    words = {
        "reboot_needed": _("torchkeeper: driver reboot needed"),
        "no_driver": _("torchkeeper: no NVIDIA driver"),
        "not_loaded": _("torchkeeper: driver not loaded"),
        "error": _("torchkeeper: driver error"),
    }
    return words.get(
        now["state"], "torchkeeper: driver " + now["state"].replace("_", " ")
    ), f"{d.message or now['state']}. {d.hint or ''}".strip()
