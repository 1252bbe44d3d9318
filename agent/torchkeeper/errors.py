"""Errors a user can meet. Each says what happened, to what, and what to do next.

The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits with ``exit_code``;
no traceback for any of these.
"""

from __future__ import annotations
from typing import Any

# Exit codes, everywhere.
OK = 0
DRIFT = 1
USAGE = 2
REFUSED = 3
FAILED = 4


class TKError(Exception):
    exit_code = USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.message, "hint": self.hint, "exit_code": self.exit_code,
                "kind": type(self).__name__}


class UsageError(TKError):
    """Bad arguments, config or input (exit 2)."""

    exit_code = USAGE


class NotFound(UsageError):
    pass


class BadArchive(TKError):
    """A bundle archive failed its checks (exit 3: refused, nothing written)."""

    exit_code = REFUSED


class Refused(TKError):
    """The compatibility gate refused (exit 3)."""

    exit_code = REFUSED

    def __init__(self, message: str, hint: str | None = None, reasons: list | None = None):
        super().__init__(message, hint)
        self.reasons = reasons or []   # the gate's Reason records (level, message, hint)

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d["reasons"] = [r.to_dict() for r in self.reasons]
        return d


class OperationFailed(TKError):
    """An operation failed and was rolled back (exit 4)."""

    exit_code = FAILED


class FileInUse(OperationFailed):
    def __init__(self, path, holders: list[str] | None = None):
        self.path = str(path)
        self.holders = holders or []
        who = f" by {', '.join(self.holders)}" if self.holders else ""
        super().__init__(
            f"{self.path} is in use{who}",
            "close the program using it (a running webui or trainer), then run the command again")
