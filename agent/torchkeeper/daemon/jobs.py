"""The agent's work queue, on an injected clock: one job per (kind, target), merged when asked
for again before it ran (the earliest time, the first detection, any person's ask kept); a
request that arrives while the same job runs is queued again, never dropped. One worker thread
takes the jobs in time order; nothing here runs a job."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(order=True)
class Job:
    at: float                                  # not before (clock time)
    seq: int
    action: str = field(compare=False)
    target: str | None = field(compare=False, default=None)
    reason: str = field(compare=False, default="")
    detected: float | None = field(compare=False, default=None)  # wall time of the first event
    explicit: bool = field(compare=False, default=False)         # the user asked (click, button)
    lib_stats: dict | None = field(compare=False, default=None)  # the debouncer's last look at the files
    last_write: float | None = field(compare=False, default=None)  # wall time of the last file event


class JobQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._cv = threading.Condition()
        self._jobs: dict[tuple, Job] = {}
        self._seq = 0
        self.running: Job | None = None
        self.stopping = False

    def put(self, action: str, target: str | None, reason: str = "", delay: float = 0.0,
            detected: float | None = None, explicit: bool = False, lib_stats: dict | None = None,
            last_write: float | None = None) -> None:
        key = (action, target)
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
            self._jobs[key] = Job(at, self._seq, action, target, reason, detected, explicit, lib_stats,
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
                        del self._jobs[(job.action, job.target)]
                        self.running = job
                        return job
                    self._cv.wait(timeout=wait)
                else:
                    self._cv.wait()

    def done(self) -> None:
        with self._cv:
            self.running = None

    def idle(self, waiting_is_not_work: tuple[str, ...] = ()) -> bool:
        """No job running or queued (jobs of the kinds named are no work in hand)."""
        with self._cv:
            return self.running is None and all(j.action in waiting_is_not_work
                                                for j in self._jobs.values())

    def stop(self) -> None:
        with self._cv:
            self.stopping = True
            self._jobs.clear()
            self._cv.notify_all()
