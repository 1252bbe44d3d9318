"""A hold on the running agent's decisions about one target, taken by another torchkeeper
process (`bench` swapping stock and bundle): while it lasts the agent checks nothing there,
so a half-swapped target is never taken for drift and re-applied mid-measurement.

A hold is a file ``<data>/holds/<pid>-<n>.json`` (like `torchkeeper stop`'s request, a file:
the agent may be a windowed Windows program no signal reaches). It is not the user's pause
(agent.json ``paused``), which it never reads or writes: a pause set before, during or after
a hold is the user's and stays.

A hold counts only while the process that took it is that same process: its pid *and* that
process's start time, recorded in the file, must still match. A killed bench's pid taken by
another process (pid reuse), pid 1, a pid out of range, a hold file that is not a small
regular file or not the expected JSON: each counts for nothing, with a warning, and the
stale or malformed file is removed (a link is removed as a link; anything else is moved aside).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .fsutil import NotARegularFile, atomic_write_bytes, kind_of, load_json, set_aside
from ..home import Home
from .records import JsonObject

log = logging.getLogger("torchkeeper.engine")
_seq = itertools.count(1)
MAX_BYTES = 4096
PID_MAX = 1 << 22          # Linux's own ceiling (pid_max <= 4194304); Windows pids stay far below
START_SLACK_S = 0.01       # psutil's create_time is a float rounded by the OS


@dataclass(frozen=True)
class Hold:
    pid: int
    target: str
    why: str
    since: float
    started: float           # the holder's process start time (psutil create_time)

    def describe(self) -> str:
        return (f"held by {self.why} (pid {self.pid}) since "
                f"{time.strftime('%H:%M:%S', time.localtime(self.since))}")

    def to_dict(self) -> JsonObject:
        return {"pid": self.pid, "target": self.target, "why": self.why, "since": self.since,
                "started": self.started}


def holds_dir(home: Home) -> Path:
    return home.data_dir / "holds"


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError, OverflowError, ValueError):
        return None


@contextlib.contextmanager
def hold(home: Home, target: str, why: str):
    """Holds the agent off ``target`` until the block ends, however it ends."""
    import json

    d = holds_dir(home)
    if kind_of(d) not in (None, "a folder"):
        set_aside(d, kind_of(d))
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{os.getpid()}-{next(_seq)}.json"
    h = Hold(os.getpid(), target, why, time.time(), _start_time(os.getpid()) or 0.0)
    atomic_write_bytes(path, json.dumps(h.to_dict()).encode(), durable=False)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def parse(data) -> Hold | None:
    """A hold record, every field checked; None for anything else."""
    if not isinstance(data, dict):
        return None
    pid, started = data.get("pid"), data.get("started")
    if type(pid) is not int or not 1 < pid < PID_MAX:
        return None   # pid 0/1 (init) or beyond any real pid: never a bench
    if not isinstance(started, (int, float)) or isinstance(started, bool) or started <= 0:
        return None
    target, why, since = data.get("target"), data.get("why"), data.get("since")
    if not isinstance(target, str) or not isinstance(why, str) or not isinstance(since, (int, float)):
        return None
    return Hold(pid, target, why[:80], float(since), float(started))


def alive(h: Hold) -> bool:
    """Whether the process that took the hold still runs (the same process, not its pid reused)."""
    now = _start_time(h.pid)
    return now is not None and abs(now - h.started) <= START_SLACK_S


def _drop(p: Path, kind: str | None, why: str) -> None:
    log.warning("ignoring the hold %s: %s", p, why)
    if kind in ("a file", "a link"):
        with contextlib.suppress(OSError):
            p.unlink()
    elif kind is not None:
        set_aside(p, kind)


def active(home: Home, target: str | None = None) -> list[Hold]:
    """The holds in force (on ``target``, or on any target)."""
    out = []
    try:
        paths = sorted(holds_dir(home).glob("*.json"))
    except OSError:
        return out
    for p in paths:
        kind = kind_of(p)
        try:
            data = load_json(p, MAX_BYTES, follow=False)
        except FileNotFoundError:
            continue    # released meanwhile
        except NotARegularFile:
            _drop(p, kind, f"it is {kind}, not a file")
            continue
        except (OSError, ValueError) as e:
            _drop(p, kind, f"unreadable ({getattr(e, 'strerror', None) or e})")
            continue
        h = parse(data)
        if h is None:
            _drop(p, kind, "not a hold torchkeeper wrote (a pid, its start time, a target)")
            continue
        if not alive(h):
            with contextlib.suppress(OSError):
                p.unlink()  # left by a process that was killed (its pid may run something else now)
            continue
        if target is None or h.target == target:
            out.append(h)
    return out
