"""A hold on the running agent's decisions about one target, taken by another torchkeeper
process (`bench` swapping stock and bundle): while it lasts the agent checks nothing there,
so a half-swapped target is never taken for drift and re-applied mid-measurement.

A hold is a file ``<data>/holds/<pid>-<n>.json`` (like `torchkeeper stop`'s request, a file:
the agent may be a windowed Windows program no signal reaches). It is not the user's pause
(agent.json ``paused``), which it never reads or writes: a pause set before, during or after
a hold is the user's and stays. A hold whose process is gone (kill -9) counts for nothing and
is removed by the next reader.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from pathlib import Path

from .fsutil import atomic_write_bytes
from ..home import Home

_seq = itertools.count(1)


def holds_dir(home: Home) -> Path:
    return home.data_dir / "holds"


@contextlib.contextmanager
def hold(home: Home, target: str, why: str):
    """Holds the agent off ``target`` until the block ends, however it ends."""
    d = holds_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{os.getpid()}-{next(_seq)}.json"
    atomic_write_bytes(path, json.dumps({"pid": os.getpid(), "target": target, "why": why,
                                         "since": time.time()}).encode(), durable=False)
    try:
        yield path
    finally:
        try:
            path.unlink()
        except OSError:
            pass


def active(home: Home, target: str | None = None) -> list[dict]:
    """The holds in force (on ``target``, or on any target)."""
    import psutil

    out = []
    try:
        paths = sorted(holds_dir(home).glob("*.json"))
    except OSError:
        return out
    for p in paths:
        try:
            h = json.loads(p.read_bytes())
            pid = int(h["pid"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written (it is renamed into place whole) or not ours: no hold
        if pid != os.getpid() and not psutil.pid_exists(pid):
            with contextlib.suppress(OSError):
                p.unlink()  # left by a process that was killed
            continue
        if target is None or h.get("target") == target:
            out.append(h)
    return out
