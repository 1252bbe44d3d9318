"""The agent's work queue, on an injected clock: one job per (kind, target), merged when asked
for again before it ran (the earliest time, the first detection, any person's ask kept); a
request that arrives while the same job runs is queued again, never dropped. One worker thread
takes the jobs in time order; nothing here runs a job."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from .decide import Why


class JobKind(str, Enum):
    """What a job does. The values of the kinds a front end may ask for are view.py's actions."""
    CHECK = "check"                   # one target: read it, decide, act
    FULL = "full check"               # every target's files re-hashed (the daily check)
    FULL_ONE = "full check of one"    # one target's files re-hashed (its standby found other bytes)
    DRIVER = "driver"                 # every target checked after a driver change
    POLL = "poll"                     # every target, again and again, while the file watches fail
    CONFIG = "config"                 # config.toml changed: read it again
    TARGETS = "targets"               # state.json changed: targets the CLI added or removed
    SUGGEST = "suggest"               # ask the index what fits a target (for the tray's line)
    SUGGEST_FOUND = "suggest found"   # the same for a found install (target = its path)
    REAPPLY = "reapply"
    REVERT = "revert"
    FETCH_APPLY = "fetch and apply"
    MANAGE = "manage"
    MANAGE_FETCH_APPLY = "manage, fetch and apply"


@dataclass(order=True)
class Job:
    at: float                                  # not before (clock time)
    seq: int
    kind: JobKind = field(compare=False)
    target: str | None = field(compare=False, default=None)
    why: Why = field(compare=False, default=Why.USER)
    detected: float | None = field(compare=False, default=None)  # wall time of the first event
    explicit: bool = field(compare=False, default=False)         # the user asked (click, button)
    lib_stats: dict[str, tuple] | None = field(compare=False, default=None)  # the debouncer's last look at the files
    last_write: float | None = field(compare=False, default=None)  # wall time of the last file event


class JobQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._cv = threading.Condition()
        self._jobs: dict[tuple, Job] = {}
        self._seq = 0
        self.running: Job | None = None
        self.stopping = False

    def put(self, kind: JobKind, target: str | None, why: Why = Why.USER, delay: float = 0.0,
            detected: float | None = None, explicit: bool = False,
            lib_stats: dict[str, tuple] | None = None, last_write: float | None = None) -> None:
        key = (kind, target)
        with self._cv:
            if self.stopping:
                return
            at = self.clock() + delay
            old = self._jobs.get(key)
            if old is not None:
                # merge: keep the earliest time, the first detection, and any explicit ask
                old.at = min(old.at, at)
                old.detected = old.detected or detected
                old.explicit = old.explicit or explicit
                old.lib_stats = lib_stats or old.lib_stats
                old.last_write = max(filter(None, (old.last_write, last_write)), default=None)
                self._cv.notify_all()
                return
            self._seq += 1
            self._jobs[key] = Job(at, self._seq, kind, target, why, detected, explicit, lib_stats,
                                  last_write)
            self._cv.notify_all()

    def take(self) -> Job | None:
        """The next job once it is due (blocking; no wake-up while nothing waits); None once
        the queue is stopped."""
        with self._cv:
            while True:
                if self.stopping:
                    return None
                if self._jobs:
                    job = min(self._jobs.values())
                    wait = job.at - self.clock()
                    if wait <= 0:
                        del self._jobs[(job.kind, job.target)]
                        self.running = job
                        return job
                    self._cv.wait(timeout=wait)
                else:
                    self._cv.wait()

    def done(self) -> None:
        with self._cv:
            self.running = None

    def idle(self, waiting_is_not_work: tuple[JobKind, ...] = ()) -> bool:
        """No job running or queued (jobs of the kinds named are no work in hand)."""
        with self._cv:
            return self.running is None and all(j.kind in waiting_is_not_work
                                                for j in self._jobs.values())

    def stop(self) -> None:
        with self._cv:
            self.stopping = True
            self._jobs.clear()
            self._cv.notify_all()
