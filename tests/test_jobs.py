"""The agent's work queue on a fake clock: order, merging, stopping. No thread runs a job here
(take() is only called when something is due, so it never blocks)."""

from __future__ import annotations

import pytest

from torchkeeper.daemon.decide import Why
from torchkeeper.daemon.jobs import JobKind, JobQueue


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def q():
    c = Clock()
    queue = JobQueue(c)
    queue.clock_ = c
    return queue


def test_due_jobs_come_out_in_time_order_then_by_arrival(q):
    q.put(JobKind.CHECK, "b", delay=2)
    q.put(JobKind.CHECK, "a")
    q.put(JobKind.REAPPLY, "a")
    assert [(j.kind, j.target) for j in (q.take(), q.take())] == [(JobKind.CHECK, "a"), (JobKind.REAPPLY, "a")]
    q.clock_.t += 2
    assert q.take().target == "b"


@pytest.mark.parametrize("first,second,want", [
    # (delay, detected, explicit, last_write) twice -> the merged job's (at, detected, explicit, last_write)
    ((5, None, False, None), (0, 10.0, False, 11.0), (100.0, 10.0, False, 11.0)),   # earliest time wins
    ((0, 10.0, False, 11.0), (5, 20.0, False, 21.0), (100.0, 10.0, False, 21.0)),   # first detection, last write
    ((0, None, False, None), (0, None, True, None), (100.0, None, True, None)),     # a person's ask is kept
    ((0, None, True, None), (0, None, False, None), (100.0, None, True, None)),
])
def test_a_job_asked_for_again_before_it_ran_is_merged(q, first, second, want):
    for delay, detected, explicit, last_write in (first, second):
        q.put(JobKind.CHECK, "t", Why.FILE_EVENTS, delay=delay, detected=detected, explicit=explicit,
              last_write=last_write)
    j = q.take()
    assert (j.at, j.detected, j.explicit, j.last_write) == want
    q.done()
    assert q.idle()          # one job, not two


def test_a_request_while_the_same_job_runs_is_queued_again(q):
    q.put(JobKind.CHECK, "t")
    running = q.take()
    assert not q.idle() and q.running is running
    q.put(JobKind.CHECK, "t")      # the files changed again while it checked
    q.done()
    assert not q.idle() and q.take().target == "t"


def test_waiting_jobs_of_some_kinds_are_no_work_in_hand(q):
    q.put(JobKind.SUGGEST, "t", delay=30)
    assert q.idle(waiting_is_not_work=(JobKind.SUGGEST,)) and not q.idle()


def test_stop_drops_what_waits_and_refuses_more(q):
    q.put(JobKind.CHECK, "t", delay=5)
    q.stop()
    assert q.take() is None
    q.put(JobKind.CHECK, "u")
    assert q.take() is None and q.idle()
