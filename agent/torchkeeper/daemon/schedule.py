"""The safety net: timed checks that catch what file events missed (an inotify overflow,
a Windows watch-buffer overflow, changes while the agent was not running or the machine
slept), and the NVML poll.

APScheduler runs the jobs; what they decide lives in small pure pieces with an injected
clock (:class:`ResumeDetector`, :func:`triggers`) so tests can step them without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Callable
from ..engine.records import Config, JsonObject

log = logging.getLogger("torchkeeper.agent")

# how often the resume detector ticks, and how late a tick must be to mean "we slept"
RESUME_TICK_SECONDS = 15
RESUME_SLACK_SECONDS = 30


class ResumeDetector:
    """A wall-clock jump between two ticks means the machine slept (or the clock was
    set): the caller then verifies everything. Wall time, not monotonic: on Linux the
    monotonic clock stops during suspend, on Windows it does not, so only the wall
    clock tells both."""

    def __init__(self, period: float = RESUME_TICK_SECONDS, slack: float = RESUME_SLACK_SECONDS,
                 wall: Callable[[], float] = time.time):
        self.period, self.slack, self.wall = period, slack, wall
        self._last: float | None = None

    def tick(self) -> float | None:
        """Seconds lost since the last tick if that looks like a sleep, else None."""
        now = self.wall()
        last, self._last = self._last, now
        if last is None:
            return None
        gap = now - last
        if gap > self.period + self.slack or gap < -self.slack:
            return gap
        return None


def triggers(cfg: Config) -> JsonObject:
    """The APScheduler triggers for the agent's jobs, from the [agent] config table."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    hh, mm = (int(x) for x in cfg["full_verify_at"].split(":"))
    return {
        "driver": IntervalTrigger(seconds=float(cfg["driver_poll_seconds"])),
        "quick": IntervalTrigger(minutes=float(cfg["verify_every_minutes"])),
        "full": CronTrigger(hour=hh, minute=mm),
        "resume": IntervalTrigger(seconds=RESUME_TICK_SECONDS),
    }


class SafetyNet:
    """Owns the APScheduler scheduler. Jobs only call back into the agent, which queues
    work for its single worker; nothing here touches a target."""

    def __init__(self, cfg: Config, on_driver_poll: Callable[[], None],
                 on_quick: Callable[[str], None], on_full: Callable[[], None],
                 resume: ResumeDetector | None = None):
        from apscheduler.schedulers.background import BackgroundScheduler

        self._on_driver_poll, self._on_quick, self._on_full = on_driver_poll, on_quick, on_full
        self.resume = resume or ResumeDetector()
        # coalesce: a run missed while asleep happens once on wake, not once per missed slot
        self._sched = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                        "misfire_grace_time": None},
                                          daemon=True)
        self._lock = threading.Lock()
        self._add_jobs(cfg)

    def _add_jobs(self, cfg: Config) -> None:
        t = triggers(cfg)
        self._sched.add_job(self._guard(self._on_driver_poll), t["driver"], id="driver",
                            replace_existing=True)
        self._sched.add_job(self._guard(lambda: self._on_quick("scheduled")), t["quick"],
                            id="quick", replace_existing=True)
        self._sched.add_job(self._guard(self._on_full), t["full"], id="full", replace_existing=True)
        self._sched.add_job(self._guard(self._resume_tick), t["resume"], id="resume",
                            replace_existing=True)

    def _resume_tick(self) -> None:
        gap = self.resume.tick()
        if gap is not None:
            log.info("the wall clock jumped %.0f s (resume from sleep?): checking every target", gap)
            self._on_quick("resume from sleep")
            self._on_driver_poll()

    @staticmethod
    def _guard(fn):
        def run():
            try:
                fn()
            except Exception:  # a failing job must not stop the schedule
                log.exception("scheduled job failed")
        return run

    def start(self) -> None:
        self.resume.tick()
        self._sched.start()

    def reconfigure(self, cfg: Config) -> None:
        with self._lock:
            t = triggers(cfg)
            for job_id in ("driver", "quick", "full"):
                self._sched.reschedule_job(job_id, trigger=t[job_id])

    def next_runs(self) -> dict[str, datetime | None]:
        return {j.id: j.next_run_time for j in self._sched.get_jobs()}

    def stop(self) -> None:
        if self._sched.running:
            self._sched.shutdown(wait=False)


def next_fire(trigger, after: datetime) -> datetime:
    """When a trigger fires next after ``after`` (for tests and `torchkeeper status`)."""
    return trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
