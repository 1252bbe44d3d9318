"""What the agent shows and what it can be asked to do: the small contract between the
agent loop and its front ends (tray, toasts). Plain data, no threads, no GUI imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..i18n import N_, _

# overall states, one icon each (icons/<state>-<size>.png)
OK, ATTENTION, ERROR, WORKING, PAUSED = "ok", "attention", "error", "working", "paused"
ICON_STATES = (OK, ATTENTION, ERROR, WORKING, PAUSED)

# per-target states: the engine's (patched, drifted, stock, incompatible, missing) plus
# the agent's own: checking / applying (a job is running), waiting (files in use, retrying)
CHECKING, APPLYING, WAITING = "checking", "applying", "waiting"
# each state as a person reads it (the values above are what --json and events say)
_STATE_WORDS = {"patched": N_("patched"), "drifted": N_("drifted"), "stock": N_("stock"),
                "incompatible": N_("incompatible"), "missing": N_("missing"), CHECKING: N_("checking"),
                APPLYING: N_("applying"), WAITING: N_("waiting")}


def state_word(state: str) -> str:
    """A target's state in the user's language."""
    return _(_STATE_WORDS[state]) if state in _STATE_WORDS else state

# actions a front end may request (Controller.request)
CHECK_ALL = "check all"         # quick verification of every target
REAPPLY_ALL = "reapply all"     # re-apply every drifted target the gate accepts
REAPPLY = "reapply"             # one target (target=name); an explicit ask, so gate warnings pass
REVERT = "revert"               # one target back to stock
FETCH_APPLY = "fetch and apply" # one target: fetch the suggested wheels, make the bundle, use it, apply
MANAGE = "manage"               # a found install (target=its path): add it as a target
MANAGE_FETCH_APPLY = "manage, fetch and apply"  # a found install: MANAGE, then FETCH_APPLY
QUIT = "quit"

# `torchkeeper dashboard` asks the agent through two small files in the data folder
DASHBOARD_ASK, DASHBOARD_ANSWER = "dashboard-ask.json", "dashboard.json"
ASK_FRESH_S = 60.0   # an ask found at the agent's start older than this was left by a killed CLI


@dataclass
class TargetView:
    name: str
    state: str                  # patched / drifted / stock / incompatible / missing / checking / applying / waiting
    bundle: str | None          # name of the bundle chosen for it, if any
    message: str                # one line for a menu or a toast ("cuDNN 9.5.1 applied", "...")
    folder: str | None          # the library folder to open ("Open folder")
    details: str = ""           # several lines for "Show details"
    suggestion: str | None = None  # "cuDNN 9.10.2 fits — get it and apply" (FETCH_APPLY), if any


@dataclass
class FoundView:
    """A torch install discover found that is not a target yet ("Found, not managed")."""
    path: str                   # what Manage adds (the env folder)
    app: str                    # "ComfyUI portable", "Forge (Stability Matrix)", ...
    torch_version: str | None
    cudnn: str | None           # the cuDNN that torch ships
    suggestion: str | None = None  # "cuDNN 9.10.2 fits — manage it, get it and apply" (MANAGE_FETCH_APPLY)

    @property
    def label(self) -> str:
        what = ", ".join(x for x in (self.torch_version, f"cuDNN {self.cudnn}" if self.cudnn else None) if x)
        return f"{self.app} ({what})" if what else self.app


@dataclass
class AgentView:
    overall: str                # one of ICON_STATES
    tooltip: str                # one or two lines, e.g. "torchkeeper: 3 targets ok"
    targets: list[TargetView] = field(default_factory=list)
    driver: str = "driver: not checked yet"
    paused: bool = False        # auto re-apply paused by the user
    autostart: bool | None = None  # start at login; None = not available on this system
    found: list[FoundView] = field(default_factory=list)  # installs found, not managed yet
    watching: str | None = None  # why file watching is degraded (every target polled); None: it works


@dataclass
class Toast:
    key: str                    # de-duplication key, e.g. "drift:a1111"; same key within
                                # [notifications] dedupe_seconds -> one toast
    title: str
    body: str
    target: str | None = None
    actions: tuple[str, ...] = ()   # e.g. (REAPPLY,): a button, where the backend has them
    level: str = "info"         # info / warning / error


class Controller(Protocol):
    """What the tray (and a toast button) may call, safe from any thread. ``request`` and
    ``set_paused`` return at once (work goes to the agent's queue); ``set_autostart`` writes
    the OS's start-at-login entry on the caller's thread (a file or a registry value: quick)."""

    config_file: Path
    log_file: Path

    def view(self) -> AgentView: ...

    def request(self, action: str, target: str | None = None) -> None: ...

    def set_paused(self, paused: bool) -> None: ...

    def set_autostart(self, enabled: bool) -> None: ...

    def open_dashboard(self) -> str:
        """Serve the local dashboard (if not already) and return a one-time login URL."""

    def subscribe(self, callback) -> None:
        """callback(view) after every change of the view, from the agent's threads."""
