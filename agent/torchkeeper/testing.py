"""Fault injection, for the test suite and for scripts outside it: the one place that reads
the ``TORCHKEEPER_TEST_*`` variables. Production code asks this module for the real thing
and gets a simulated one only when a variable says so.

- ``TORCHKEEPER_TEST_LOCKED``: file names (os.pathsep-separated) that behave like a DLL a
  running process holds on Windows: they cannot be replaced or removed.
- ``TORCHKEEPER_TEST_NO_SPACE``: folders (os.pathsep-separated) where creating a file fails
  with ENOSPC, for tests that cannot mount a small file system.
- ``TORCHKEEPER_TEST_CRASH_AT=N``: SIGKILL at the N-th transaction checkpoint
  (``TORCHKEEPER_TEST_CRASH_TRACE``: a file that gets the checkpoint's label first).
- ``TORCHKEEPER_TEST_PAUSE_AT=N``: at the N-th checkpoint, write its label to the file
  ``TORCHKEEPER_TEST_PAUSE_FILE`` and sleep 2 s (a test acts in the middle of a transaction).
- ``TORCHKEEPER_TEST_PAUSE_POINT=LABEL``: at the named point outside a transaction (the
  agent's "decided" between its decision and the apply), write the label to the pause file
  and wait until the test deletes it (60 s at most).
- ``TORCHKEEPER_TEST_DRIVER_SIGNAL=FILE``: the file whose contents and stat data stand for
  the installed driver (engine/driversignal.py), in place of /sys/module/nvidia/version or
  System32's nvml.dll: the NVML stub's answers file, which a test rewrites to "update" it.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

from .errors import FileInUse
from .platform.files import FileOps, get_ops, holders

LOCKED = "TORCHKEEPER_TEST_LOCKED"
NO_SPACE = "TORCHKEEPER_TEST_NO_SPACE"
CRASH_AT = "TORCHKEEPER_TEST_CRASH_AT"
CRASH_TRACE = "TORCHKEEPER_TEST_CRASH_TRACE"
PAUSE_AT = "TORCHKEEPER_TEST_PAUSE_AT"
PAUSE_FILE = "TORCHKEEPER_TEST_PAUSE_FILE"
PAUSE_POINT = "TORCHKEEPER_TEST_PAUSE_POINT"
DRIVER_SIGNAL = "TORCHKEEPER_TEST_DRIVER_SIGNAL"


def driver_signal_file() -> str | None:
    return os.environ.get(DRIVER_SIGNAL) or None


def file_ops() -> FileOps:
    """The platform's FileOps, or one that simulates locked files when LOCKED names some."""
    locked = os.environ.get(LOCKED)
    if locked:
        return SimulatedLockOps({n for n in locked.split(os.pathsep) if n})
    return get_ops()


class SimulatedLockOps(FileOps):
    """Behaves like Windows for the named files: they cannot be replaced or removed."""

    def __init__(self, locked: set[str]):
        self.locked = locked

    def _check(self, path: Path) -> None:
        if path.name in self.locked:
            raise FileInUse(path, holders(path))

    def replace(self, src: Path, dst: Path) -> None:
        self._check(dst)
        super().replace(src, dst)

    def remove(self, path: Path) -> None:
        self._check(path)
        super().remove(path)


def check_space(folder: Path) -> None:
    """Raise ENOSPC when ``folder`` is one NO_SPACE names."""
    full = os.environ.get(NO_SPACE)
    if full and os.path.realpath(folder) in {os.path.realpath(p) for p in full.split(os.pathsep) if p}:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))


class Checkpoints:
    """A transaction's numbered checkpoints: kill or pause at the one CRASH_AT / PAUSE_AT
    names (the agent's tests send SIGTERM in the middle of a transaction)."""

    def __init__(self):
        v = os.environ.get(CRASH_AT)
        self.at = int(v) if v and v.isdigit() else None
        v = os.environ.get(PAUSE_AT)
        self.pause_at = int(v) if v and v.isdigit() else None
        self.n = 0
        self.lock = threading.Lock()  # prepare passes checkpoints from two threads

    def __call__(self, label: str) -> None:
        if self.at is None and self.pause_at is None:
            return
        with self.lock:
            self.n += 1
            if self.n == self.pause_at:
                # written whole, then renamed: a test that sees the file can read the label
                pause_file = os.environ[PAUSE_FILE]
                with open(pause_file + ".tmp", "w") as f:
                    f.write(f"{self.n} {label}\n")
                os.replace(pause_file + ".tmp", pause_file)
                time.sleep(2)
            if self.n == self.at:
                trace = os.environ.get(CRASH_TRACE)
                if trace:
                    with open(trace, "a") as f:
                        f.write(f"{self.n} {label}\n")
                os.kill(os.getpid(), signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)


def pause_point(label: str) -> None:
    """Wait at a named point while a test acts (see PAUSE_POINT); a no-op otherwise."""
    if os.environ.get(PAUSE_POINT) != label:
        return
    pause_file = os.environ[PAUSE_FILE]
    with open(pause_file + ".tmp", "w") as f:
        f.write(label + "\n")
    os.replace(pause_file + ".tmp", pause_file)
    deadline = time.monotonic() + 60
    while os.path.exists(pause_file) and time.monotonic() < deadline:
        time.sleep(0.02)
