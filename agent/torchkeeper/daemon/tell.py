"""How the agent tells things: the event log (every decision and effect, for `torchkeeper
log`), toasts (through whatever notifier the front end handed over) and lines for the terminal
that started it. Nothing here fails the caller: a full disk or a dead notifier is logged."""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from ..engine.state import log_event
from ..home import Home
from .view import Toast

log = logging.getLogger("torchkeeper.agent")


class Notifier(Protocol):
    def notify(self, toast: Toast) -> None: ...


class Teller:
    def __init__(self, home: Home, notifier: Notifier | None = None):
        self.home = home
        self.notifier = notifier
        self.say_to: Callable[[str], object] | None = None  # a terminal's print, set by `run`

    def event(self, kind: str, **fields) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))
        try:
            log_event(self.home, kind, source="agent", **fields)
        except OSError as e:  # a full disk must not stop the agent
            log.error("cannot write the event log: %s", e)

    def toast(self, toast: Toast) -> None:
        self.event("toast", key=toast.key, title=toast.title, body=toast.body, target=toast.target)
        if self.notifier is None:
            log.info("toast: %s - %s", toast.title, toast.body)
            return
        try:
            self.notifier.notify(toast)
        except Exception:
            log.exception("notification failed")

    def say(self, line: str) -> None:
        if self.say_to is not None:
            try:
                self.say_to(f"torchkeeper: {line}")
            except (OSError, ValueError):  # no terminal any more (closed, or a pythonw start)
                self.say_to = None

    def close(self) -> None:
        if self.notifier is not None and hasattr(self.notifier, "close"):
            self.notifier.close()
