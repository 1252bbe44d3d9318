"""schedule: the resume detector on a fake wall clock, the triggers against fixed datetimes,
and the SafetyNet with a real APScheduler BackgroundScheduler."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from kit.agentkit import wait_for
from torchkeeper.engine import config as configmod
from torchkeeper.daemon.schedule import (RESUME_SLACK_SECONDS, RESUME_TICK_SECONDS, ResumeDetector, SafetyNet, next_fire, triggers)


class Wall:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def agent_cfg(**over) -> dict:
    a = dict(configmod.defaults()["agent"])
    a.update(over)
    return a


# ---- ResumeDetector -------------------------------------------------------------------------

def test_resume_detector_normal_ticks_and_gaps():
    wall = Wall()
    r = ResumeDetector(period=15, slack=30, wall=wall)
    assert r.tick() is None                   # first tick: nothing to compare with
    for step in (15, 15, 14, 20, 44, 45):     # late ticks (a busy machine) within slack
        wall.advance(step)
        assert r.tick() is None, step
    wall.advance(46)                          # period + slack exceeded: we slept
    assert r.tick() == 46
    wall.advance(15)
    assert r.tick() is None                   # measured from the late tick, not before
    wall.advance(8 * 3600)                    # a night's sleep
    assert r.tick() == 8 * 3600


def test_resume_detector_clock_set_backwards():
    wall = Wall()
    r = ResumeDetector(period=15, slack=30, wall=wall)
    r.tick()
    wall.advance(-30)                         # within slack: an NTP step, not a resume
    assert r.tick() is None
    wall.advance(-31)
    assert r.tick() == -31
    wall.advance(-3600)
    assert r.tick() == -3600
    wall.advance(15)
    assert r.tick() is None


def test_resume_detector_defaults():
    r = ResumeDetector()
    assert (r.period, r.slack) == (RESUME_TICK_SECONDS, RESUME_SLACK_SECONDS)
    assert r.tick() is None
    assert r.tick() is None                   # the real clock, an instant later


# ---- triggers -------------------------------------------------------------------------------

def test_defaults_give_intervals():
    t = triggers(agent_cfg())
    assert set(t) == {"driver", "quick", "full", "resume"}
    assert t["driver"].interval == timedelta(seconds=60)
    assert t["quick"].interval == timedelta(minutes=30)      # config.defaults()'s 30 min
    assert t["resume"].interval == timedelta(seconds=RESUME_TICK_SECONDS)
    t = triggers(agent_cfg(driver_poll_seconds=1, verify_every_minutes=5))
    assert t["driver"].interval == timedelta(seconds=1)
    assert t["quick"].interval == timedelta(minutes=5)
    t = triggers(agent_cfg(driver_poll_seconds=2.5, verify_every_minutes=0.5 + 1))
    assert t["driver"].interval == timedelta(seconds=2.5)
    assert t["quick"].interval == timedelta(seconds=90)


@pytest.mark.parametrize("job,every", [("driver", timedelta(seconds=60)),
                                       ("quick", timedelta(minutes=30))])
def test_interval_next_fire(job, every):
    t = triggers(agent_cfg())[job]
    # an interval trigger counts from when it was made (the scheduler's start): ask about a
    # moment after that, and successive fires are one interval apart
    after = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=2, seconds=7)
    f1 = next_fire(t, after)
    assert timedelta(0) < f1 - after <= every
    f2 = next_fire(t, f1)
    assert f2 - f1 == every
    assert next_fire(t, f2) - f2 == every
    # just before a fire: that fire
    assert next_fire(t, f2 - timedelta(seconds=1)) == f2


def test_full_daily_at_local_time():
    t = triggers(agent_cfg())["full"]          # full_verify_at = "04:00"
    tz = t.timezone                              # the machine's local zone
    cases = [
        (datetime(2025, 6, 10, 3, 0, tzinfo=tz), datetime(2025, 6, 10, 4, 0)),
        (datetime(2025, 6, 10, 3, 59, 59, tzinfo=tz), datetime(2025, 6, 10, 4, 0)),
        (datetime(2025, 6, 10, 4, 0, tzinfo=tz), datetime(2025, 6, 11, 4, 0)),   # strictly after
        (datetime(2025, 6, 10, 5, 0, tzinfo=tz), datetime(2025, 6, 11, 4, 0)),
        (datetime(2025, 6, 30, 23, 0, tzinfo=tz), datetime(2025, 7, 1, 4, 0)),    # month end
        (datetime(2025, 12, 31, 4, 30, tzinfo=tz), datetime(2026, 1, 1, 4, 0)),   # year end
    ]
    for after, want in cases:
        got = next_fire(t, after)
        assert got.tzinfo is not None
        assert got.replace(tzinfo=None) == want, (after, got)
        assert got.utcoffset() == want.replace(tzinfo=tz).utcoffset()


def test_full_daily_other_times():
    tz = triggers(agent_cfg())["full"].timezone
    after = datetime(2025, 6, 10, 12, 0, tzinfo=tz)
    for at, want in [("00:00", datetime(2025, 6, 11, 0, 0)), ("23:59", datetime(2025, 6, 10, 23, 59)),
                     ("12:00", datetime(2025, 6, 11, 12, 0)), ("12:01", datetime(2025, 6, 10, 12, 1))]:
        got = next_fire(triggers(agent_cfg(full_verify_at=at))["full"], after)
        assert got.replace(tzinfo=None) == want, at


def test_full_daily_from_another_zone():
    """An ``after`` in another zone still means 04:00 local."""
    t = triggers(agent_cfg())["full"]
    tz = t.timezone
    local_3am = datetime(2025, 6, 10, 3, 0, tzinfo=tz)
    as_utc = local_3am.astimezone(timezone.utc)
    got = next_fire(t, as_utc)
    assert got.astimezone(tz).replace(tzinfo=None) == datetime(2025, 6, 10, 4, 0)
    assert got - as_utc == timedelta(hours=1)


# ---- SafetyNet with a real scheduler ----------------------------------------------------------

class Calls:
    def __init__(self, fail: bool = False):
        self.n = 0
        self.args = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.n += 1
            self.args.append(args)
        if self.fail:
            raise RuntimeError("a failing job")


@pytest.fixture
def nets():
    made = []
    yield made
    for n in made:
        n.stop()


@pytest.mark.timeout(30)
def test_safety_net_polls_the_driver(nets):
    driver, quick, full = Calls(fail=True), Calls(), Calls()   # a failing job keeps its schedule
    net = SafetyNet(agent_cfg(driver_poll_seconds=1), driver, quick, full)
    nets.append(net)
    net.start()
    wait_for(lambda: driver.n >= 2, 4.0, "two driver polls")   # at ~1 s and ~2 s
    assert quick.n == 0 and full.n == 0       # 30 minutes / 04:00 are far away
    runs = net.next_runs()
    assert set(runs) == {"driver", "quick", "full", "resume"}
    now = datetime.now(timezone.utc)
    assert runs["quick"] - now > timedelta(minutes=29)
    assert runs["full"].astimezone(runs["full"].tzinfo).strftime("%H:%M") == "04:00"
    assert timedelta(0) < runs["resume"] - now <= timedelta(seconds=RESUME_TICK_SECONDS)


@pytest.mark.timeout(30)
def test_safety_net_reconfigure_and_stop(nets):
    driver = Calls()
    net = SafetyNet(agent_cfg(driver_poll_seconds=1), driver, Calls(), Calls())
    nets.append(net)
    net.start()
    before = net.next_runs()
    assert before["driver"] - datetime.now(timezone.utc) <= timedelta(seconds=1.5)
    net.reconfigure(agent_cfg(driver_poll_seconds=3600, verify_every_minutes=5,
                              full_verify_at="13:37"))
    after = net.next_runs()
    now = datetime.now(timezone.utc)
    assert timedelta(minutes=59) < after["driver"] - now <= timedelta(hours=1)
    assert timedelta(minutes=4) < after["quick"] - now <= timedelta(minutes=5)
    assert after["full"].strftime("%H:%M") == "13:37"
    assert after["resume"] == before["resume"]        # not a config setting
    time.sleep(0.2)                                    # a poll already under way ends
    n = driver.n
    time.sleep(1.5)
    assert driver.n == n                               # no longer every second
    net.reconfigure(agent_cfg(driver_poll_seconds=1))
    wait_for(lambda: driver.n >= n + 1, 3.0, "polling every second again")
    net.stop()
    net.stop()                                         # twice is fine
    time.sleep(0.2)
    n = driver.n
    time.sleep(1.5)
    assert driver.n == n


def test_safety_net_resume_tick(nets):
    driver, quick, full = Calls(), Calls(), Calls()
    net = SafetyNet(agent_cfg(), driver, quick, full)
    nets.append(net)
    net.start()
    wall = Wall()
    net.resume.wall = wall
    net._resume_tick()                 # the first tick on the new clock: a jump from real time
    driver.n = quick.n = 0
    quick.args.clear()
    wall.advance(RESUME_TICK_SECONDS)
    net._resume_tick()
    assert (driver.n, quick.n) == (0, 0)
    wall.advance(3600)                 # the machine slept for an hour
    net._resume_tick()
    assert quick.args == [("resume from sleep",)]
    assert driver.n == 1
    assert full.n == 0
    wall.advance(RESUME_TICK_SECONDS)
    net._resume_tick()
    assert (driver.n, quick.n) == (1, 1)


def test_safety_net_resume_tick_guarded(nets):
    """A failing callback inside a resume tick does not escape the scheduled job."""
    driver = Calls(fail=True)
    net = SafetyNet(agent_cfg(), driver, Calls(), Calls())
    nets.append(net)
    wall = Wall()
    net.resume.wall = wall
    net.resume.tick()
    wall.advance(3600)
    net._guard(net._resume_tick)()     # what the scheduler runs: logs, does not raise
    assert driver.n == 1
