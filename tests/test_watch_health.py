"""A watcher that cannot die silently: a failing watch thread, a failing timer thread and a
real inotify queue overflow each end in "look at every target", and the watches work after."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from kit.agentkit import wait_for

from torchkeeper.daemon.watch import Debouncer, Watcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux")


class Seen:
    """What the watcher told: due bursts, lost events, health changes (any thread)."""

    def __init__(self):
        self.dues, self.lost, self.health = [], [], []
        self._lock = threading.Lock()

    def due(self, name, burst):
        with self._lock:
            self.dues.append(name)

    def on_lost(self, why):
        with self._lock:
            self.lost.append(why)

    def on_health(self, ok, why):
        with self._lock:
            self.health.append((ok, why))


@pytest.fixture
def watcher(tmp_path):
    made = []

    def make(retry_s=(0.0, 0.2)):
        from torchkeeper.daemon.inotify import SharedInotify

        seen = Seen()
        w = Watcher(Debouncer(0.1, 5.0), seen.due, on_lost=seen.on_lost, on_health=seen.on_health,
                    observer=None)
        # the same reader the agent gets, with short retries
        w._observer = SharedInotify(on_lost=seen.on_lost,
                                    on_health=lambda ok, why: w._health("reader", ok, why),
                                    retry_s=retry_s)
        w.start()
        made.append(w)
        sp = tmp_path / "site-packages"
        (sp / "torch" / "lib").mkdir(parents=True)
        w.set_target("t", sp, ["torch/lib"])
        return w, seen, sp

    yield make
    for w in made:
        w.stop()


def test_an_exception_on_the_reader_thread_is_said_and_every_watch_comes_back(watcher, monkeypatch):
    w, seen, sp = watcher()
    reader = w._observer
    real = reader._dispatch
    calls = []

    def failing_once(events):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom in handle_event")
        return real(events)

    monkeypatch.setattr(reader, "_dispatch", failing_once)
    (sp / "torch" / "lib" / "a.dll").write_bytes(b"x")
    wait_for(lambda: seen.health[-1:] == [(True, "")], 5, "degraded, then well again")
    assert seen.health[0][0] is False and "boom in handle_event" in seen.health[0][1]
    assert "file watches made anew" in seen.lost     # the agent then checks every target
    assert reader.failures == 1 and w.health() == (True, "")
    (sp / "torch" / "lib" / "b.dll").write_bytes(b"x")  # watched again, on the new instance
    wait_for(lambda: seen.dues, 5, "a burst from the re-armed watch")


def test_a_reader_that_cannot_come_back_stays_degraded(watcher, monkeypatch):
    """No new inotify instance can be made (out of instances): degraded until it can."""
    from torchkeeper.daemon import inotify

    w, seen, sp = watcher(retry_s=(0.0, 0.1))
    reader = w._observer
    tries = []

    def no_instance():
        tries.append(1)
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(reader, "_dispatch", lambda events: (_ for _ in ()).throw(RuntimeError("x")))
    monkeypatch.setattr(inotify, "INotify", no_instance)
    (sp / "torch" / "lib" / "a.dll").write_bytes(b"x")
    wait_for(lambda: len(tries) >= 3, 5, "retries")
    ok, why = w.health()
    assert not ok and "RuntimeError" in why
    assert seen.health == [(False, why)]              # said once, not once per retry


def test_an_exception_on_the_timer_thread_is_said_and_it_goes_on(watcher, monkeypatch):
    w, seen, sp = watcher()
    real = w.debouncer.due
    calls = []

    def failing_once():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom in due")
        return real()

    monkeypatch.setattr(w.debouncer, "due", failing_once)
    (sp / "torch" / "lib" / "a.dll").write_bytes(b"x")
    wait_for(lambda: seen.health[-1:] == [(True, "")], 5, "degraded, then well again")
    assert seen.health[0][0] is False and "boom in due" in seen.health[0][1]
    assert "file event timer restarted" in seen.lost
    wait_for(lambda: seen.dues, 5, "the burst, handed out after all")


def test_a_real_inotify_queue_overflow_is_reported_and_watching_goes_on(watcher, tmp_path):
    """The reader is held up (a slow handler) while more files are written than the kernel
    queues (/proc/sys/fs/inotify/max_queued_events): IN_Q_OVERFLOW, for real."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    w, seen, sp = watcher()
    gate = threading.Event()
    inside = threading.Event()
    real = w._event

    def slow(watch, ev):
        inside.set()
        gate.wait(30)
        real(watch, ev)

    w._event = slow
    lib = sp / "torch" / "lib"
    (lib / "first.dll").write_bytes(b"x")
    wait_for(inside.is_set, 5, "the reader held up")
    for i in range(limit + 500):
        fd = os.open(lib / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    w._event = real
    gate.set()
    wait_for(lambda: "inotify queue overflow" in seen.lost, 30, "the overflow reported")
    assert w.health() == (True, "")
    wait_for(lambda: seen.dues and not w.debouncer.pending(), 10, "the burst handed out")
    n = len(seen.dues)
    time.sleep(0.3)
    (lib / "after.dll").write_bytes(b"x")
    wait_for(lambda: len(seen.dues) > n, 5, "a burst after the overflow")
