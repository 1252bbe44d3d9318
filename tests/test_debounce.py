"""watch.Debouncer on an injected clock: when a burst of file events is due, and what holds it
back (pip's stash, a dist-info without its RECORD, files still growing). The tests never sleep:
a :class:`Clock` is advanced by hand. (watch.Watcher on real folders: test_watcher.py.)
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from torchkeeper.daemon.watch import NEW, Burst, Debouncer, install_done, install_finished, relevant_top


class Clock:
    """A monotonic clock the test advances (integers and halves: exact in binary)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def sp(tmp_path) -> Path:
    d = tmp_path / "site-packages"
    (d / "torch" / "lib").mkdir(parents=True)
    return d


def names(due):
    return [n for n, _ in due]


# ---- Debouncer ------------------------------------------------------------------------------

def test_one_event_is_due_after_quiet_not_before(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    assert not d.pending() and d.due() == []
    d.event("a", sp)
    assert d.pending() and d.pending_targets() == ["a"]
    clock.advance(1.5)
    assert d.due() == []
    assert d.pending()
    clock.advance(0.5)
    due = d.due()
    assert names(due) == ["a"]
    b = due[0][1]
    assert isinstance(b, Burst)
    assert b.events == 1 and b.first == 1000.0 and b.last == 1000.0
    assert abs(b.first_wall - time.time()) < 60   # wall time, for the event log
    # handed out once: no longer pending
    assert not d.pending() and d.due() == []
    clock.advance(100)
    assert d.due() == []


def test_stream_postpones_until_quiet(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    d.event("a", sp)
    for _ in range(3):  # an event every 1.5 s: never 2 s of quiet
        clock.advance(1.5)
        assert d.due() == []
        d.event("a", sp)
    clock.advance(1.5)
    assert d.due() == []
    clock.advance(0.5)          # 2 s after the last event
    due = d.due()
    assert names(due) == ["a"]
    assert due[0][1].events == 4
    assert due[0][1].first == 1000.0 and due[0][1].last == 1004.5


def test_max_wait_bounds_a_stream_from_the_first_event(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    d.event("a", sp)
    for _ in range(9):
        clock.advance(1)
        d.event("a", sp)
        assert d.due() == []   # t = 1..9: never quiet, not yet max_wait
    clock.advance(1)           # t = 10: still busy (last event 1 s ago), but max_wait is up
    d.event("a", sp)
    due = d.due()
    assert names(due) == ["a"]
    assert due[0][1].events == 11
    # the next event starts a new burst, timed from itself
    d.event("a", sp)
    clock.advance(1.5)
    assert d.due() == []
    clock.advance(0.5)
    assert names(d.due()) == ["a"]


def test_dist_info_without_record_waits_for_record(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)   # finished: the real install_finished
    di = sp / "torch-2.5.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Name: torch\n")
    d.event("a", sp, "torch", "created")
    d.event("a", sp, di.name, "created")
    clock.advance(2)
    assert d.due() == []          # quiet, but pip has not written RECORD yet
    clock.advance(3)
    assert d.due() == []
    (di / "RECORD").write_text("torch/__init__.py,,\n")
    due = d.due()
    assert names(due) == ["a"]
    assert due[0][1].dist_infos == {"torch-2.5.1.dist-info"}


def test_dist_info_without_record_is_due_at_max_wait(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    (sp / "torch-2.5.1.dist-info").mkdir()
    d.event("a", sp, "torch-2.5.1.dist-info", "moved_to")
    clock.advance(9.5)
    assert d.due() == []
    clock.advance(0.5)
    assert names(d.due()) == ["a"]    # never RECORD (a killed pip): checked anyway


def test_dist_info_only_modified_or_gone_does_not_block(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    (sp / "torch-2.5.1.dist-info").mkdir()      # no RECORD, but only modified: not new
    d.event("a", sp, "torch-2.5.1.dist-info", "modified")
    d.event("a", sp, "torch-2.4.0.dist-info", "created")  # created, then removed again
    clock.advance(2)
    due = d.due()
    assert names(due) == ["a"]
    assert due[0][1].dist_infos == {"torch-2.4.0.dist-info"}


@pytest.mark.parametrize("kind", ["created", "moved_to"])
def test_stash_blocks_until_gone(clock, sp, kind):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    stash = sp / "~orch"
    (stash / "lib").mkdir(parents=True)
    d.event("a", sp, "torch", "moved_from")
    d.event("a", sp, "~orch", kind)
    clock.advance(2)
    assert d.due() == []
    clock.advance(5)
    assert d.due() == []
    shutil.rmtree(stash)
    due = d.due()
    assert names(due) == ["a"]
    assert due[0][1].stashes == {"~orch"}


def test_stash_deleted_event_alone_starts_no_burst(clock, sp):
    """pip deleting its stash after the install's check: nothing torch loads changed."""
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    assert d.event("a", sp, "~orch", "deleted") is False
    assert d.event("a", sp, "~orch", "moved_from") is False
    assert not d.pending()
    clock.advance(20)
    assert d.due() == []


def test_stash_deleted_event_in_a_burst_does_not_block(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    assert d.event("a", sp, "torch", "created") == NEW
    (sp / "~orch").mkdir()          # there, but the burst only saw it deleted
    assert d.event("a", sp, "~orch", "deleted") is True
    clock.advance(2)
    due = d.due()
    assert names(due) == ["a"] and due[0][1].stashes == set()


def test_stash_is_due_at_max_wait(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    (sp / "~orch").mkdir()
    d.event("a", sp, "~orch", "created")
    clock.advance(9.5)
    assert d.due() == []
    clock.advance(0.5)
    assert names(d.due()) == ["a"]


def test_targets_are_independent(clock, tmp_path):
    sp_a, sp_b = tmp_path / "a", tmp_path / "b"
    sp_a.mkdir()
    sp_b.mkdir()
    (sp_b / "~orch").mkdir()
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    d.event("a", sp_a)
    clock.advance(1)
    d.event("b", sp_b, "~orch", "created")
    d.event("c", sp_a)
    assert sorted(d.pending_targets()) == ["a", "b", "c"]
    clock.advance(1)
    assert names(d.due()) == ["a"]            # b and c only 1 s quiet
    clock.advance(1)
    assert names(d.due()) == ["c"]            # b's stash is still there
    assert d.pending_targets() == ["b"]
    clock.advance(1)
    d.event("a", sp_a)                        # a new burst for a; b still waits
    clock.advance(2)
    assert names(d.due()) == ["a"]
    (sp_b / "~orch").rmdir()
    assert names(d.due()) == ["b"]
    assert not d.pending()


def test_finished_callback_gets_root_and_burst(clock, sp):
    seen = []
    answer = [False]

    def finished(root, burst):
        seen.append((root, burst.events))
        return answer[0]

    d = Debouncer(quiet=2, max_wait=10, clock=clock, finished=finished)
    d.event("a", sp)
    d.event("a", sp)
    clock.advance(1)
    assert d.due() == [] and seen == []       # not asked before quiet
    clock.advance(1)
    assert d.due() == []
    assert seen == [(sp, 2)]
    answer[0] = True
    assert names(d.due()) == ["a"]


def test_next_wakeup(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    assert d.next_wakeup() is None
    (sp / "~orch").mkdir()
    d.event("a", sp, "~orch", "created")
    assert d.next_wakeup() == pytest.approx(2)
    clock.advance(1.5)
    assert d.next_wakeup() == pytest.approx(0.5)
    clock.advance(1)
    # quiet, but the stash is still there: poll for it
    assert d.next_wakeup() == pytest.approx(0.05)
    assert d.next_wakeup(poll=0.25) == pytest.approx(0.25)
    clock.advance(7.25)                       # 0.25 s before max_wait
    assert d.next_wakeup(poll=0.5) == pytest.approx(0.25)
    clock.advance(1)                          # past max_wait: due now
    assert d.next_wakeup() == 0.0
    # the earliest target decides
    d2 = Debouncer(quiet=2, max_wait=10, clock=clock)
    d2.event("x", sp)
    clock.advance(1.5)
    d2.event("y", sp)
    assert d2.next_wakeup() == pytest.approx(0.5)
    assert names(d2.due()) == []
    clock.advance(0.5)
    assert names(d2.due()) == ["x"]
    assert d2.next_wakeup() == pytest.approx(1.5)
    d2.forget("y")
    assert d2.next_wakeup() is None


def test_configure_applies_to_pending_bursts(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    d.event("a", sp)
    d.configure(5, 20)
    assert (d.quiet, d.max_wait) == (5, 20)
    clock.advance(2)
    assert d.due() == []
    assert d.next_wakeup() == pytest.approx(3)
    clock.advance(3)
    assert names(d.due()) == ["a"]
    # a shorter max_wait bounds a stream sooner
    (sp / "~orch").mkdir()
    d.event("a", sp, "~orch", "created")
    clock.advance(5)
    assert d.due() == []
    d.configure(5, 4)
    assert names(d.due()) == ["a"]
    # quiet 0: due at once when finished
    d.configure(0, 10)
    d.event("a", sp)
    assert names(d.due()) == ["a"]


def test_forget(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock)
    d.event("a", sp)
    d.event("b", sp)
    d.forget("a")
    d.forget("never-seen")
    assert d.pending_targets() == ["b"]
    clock.advance(100)
    assert names(d.due()) == ["b"]
    d.event("a", sp)
    d.forget("a")
    assert not d.pending() and d.next_wakeup() is None and d.due() == []


def test_install_finished_and_relevant_top(sp):
    b = Burst(0, 0, 0)
    assert install_finished(sp, b)
    b.dist_infos.add("nvidia_cudnn_cu12-9.1.0.70.dist-info")
    (sp / "nvidia_cudnn_cu12-9.1.0.70.dist-info").mkdir()
    assert not install_finished(sp, b)
    (sp / "nvidia_cudnn_cu12-9.1.0.70.dist-info" / "RECORD").write_text("")
    assert install_finished(sp, b)
    b.stashes.add("~vidia")
    (sp / "~vidia").write_text("")   # a stash that is a file counts too
    assert not install_finished(sp, b)
    assert relevant_top("torch") and relevant_top("Torch-2.5.1.dist-info")
    assert relevant_top("nvidia") and relevant_top("~orch") and relevant_top("torchvision")
    assert not relevant_top("gradio") and not relevant_top("numpy-2.0.dist-info")


# ---- settle: a short quiet time once the installer's last step is there ------------------------

WHEEL_RECORD = "torch/__init__.py,sha256=x,1\ntorch-2.5.1.dist-info/RECORD,,\n"   # as the wheel ships it
FINAL_RECORD = WHEEL_RECORD + "torch-2.5.1.dist-info/INSTALLER,sha256=y,4\n"      # as pip and uv write it last


def dist_info(sp: Path, record: str | None, name: str = "torch-2.5.1.dist-info") -> Path:
    di = sp / name
    di.mkdir(exist_ok=True)
    if record is not None:
        (di / "RECORD").write_text(record)
    return di


def test_pip_install_done_is_due_after_settle(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock, settle=0.5)
    (sp / "~orch").mkdir()
    d.event("a", sp, "~orch", "moved_to")
    d.event("a", sp, "torch", "created")
    dist_info(sp, WHEEL_RECORD)                 # pip extracts the wheel's RECORD first
    d.event("a", sp, "torch-2.5.1.dist-info", "created")
    assert d.next_wakeup() == pytest.approx(0.5)
    clock.advance(0.5)
    assert d.due() == []                        # the stash is still there
    (sp / "torch-2.5.1.dist-info" / "RECORD").write_text(FINAL_RECORD)
    assert d.due() == []                        # RECORD final, stash not yet removed
    shutil.rmtree(sp / "~orch")
    assert names(d.due()) == ["a"]              # done: no need to wait for the quiet period


def test_uv_install_done_is_due_after_settle(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock, settle=0.5)
    d.event("a", sp, "torch", "created")        # uv: no stash
    dist_info(sp, WHEEL_RECORD)                 # RECORD linked in from uv's cache: not done yet
    d.event("a", sp, "torch-2.5.1.dist-info", "created")
    clock.advance(0.5)
    assert d.due() == []
    clock.advance(1)
    assert d.due() == []
    (sp / "torch-2.5.1.dist-info" / "RECORD").write_text(FINAL_RECORD)
    assert names(d.due()) == ["a"]


def test_settle_waits_for_library_files_to_stop_growing(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock, settle=0.5)
    d.set_lib_dirs("a", ["torch/lib"])
    (sp / "torch" / "lib" / "cudnn64_9.dll").write_bytes(b"x")
    d.event("a", sp, "torch", "created")
    dist_info(sp, FINAL_RECORD)
    d.event("a", sp, "torch-2.5.1.dist-info", "created")
    clock.advance(0.5)
    assert d.due() == []                        # first look at the library files
    (sp / "torch" / "lib" / "cudnn64_9.dll").write_bytes(b"xx")
    clock.advance(0.25)
    assert d.due() == []                        # it grew
    clock.advance(0.25)
    assert names(d.due()) == ["a"]              # the same at two looks


def test_without_evidence_the_full_quiet_period_applies(clock, sp):
    d = Debouncer(quiet=2, max_wait=10, clock=clock, settle=0.5)
    d.event("a", sp)                            # a library folder's event: no installer seen
    assert d.next_wakeup() == pytest.approx(2)
    clock.advance(1.5)
    assert d.due() == []
    clock.advance(0.5)
    assert names(d.due()) == ["a"]
    # a dist-info whose RECORD never gets its INSTALLER line: the quiet period, then due
    d.event("a", sp, "torch", "created")
    dist_info(sp, WHEEL_RECORD)
    d.event("a", sp, "torch-2.5.1.dist-info", "created")
    clock.advance(1.5)
    assert d.due() == []
    clock.advance(0.5)
    assert names(d.due()) == ["a"]
    # settle None (the default) or longer than quiet: the quiet period
    for settle in (None, 5):
        d = Debouncer(quiet=2, max_wait=10, clock=clock, settle=settle)
        d.event("a", sp, "torch-2.5.1.dist-info", "created")
        (sp / "torch-2.5.1.dist-info" / "RECORD").write_text(FINAL_RECORD)
        clock.advance(1.5)
        assert d.due() == []
        clock.advance(0.5)
        assert names(d.due()) == ["a"]


def test_install_done(sp):
    b = Burst(0, 0, 0)
    assert not install_done(sp, b)              # nothing says an installer ran
    b.stashes.add("~orch")
    assert install_done(sp, b)                  # a pip stash (install_finished: gone)
    b = Burst(0, 0, 0, dist_infos={"torch-2.5.1.dist-info"})
    di = dist_info(sp, None)
    assert not install_done(sp, b)              # no RECORD yet
    (di / "RECORD").write_text(WHEEL_RECORD)
    assert not install_done(sp, b)
    (di / "RECORD").write_text(FINAL_RECORD)
    assert install_done(sp, b)
    (di / "RECORD").write_text(WHEEL_RECORD + "torch-2.5.1.dist-info\\INSTALLER,,\n")
    assert install_done(sp, b)                  # Windows separators
    b.dist_infos.add("torch-2.4.0.dist-info")   # created and removed again: not in the way
    assert install_done(sp, b)
    dist_info(sp, FINAL_RECORD, "nvidia_cudnn_cu12-9.1.0.70.dist-info")
    b.dist_infos.add("nvidia_cudnn_cu12-9.1.0.70.dist-info")
    assert not install_done(sp, b)              # that RECORD lists another dist-info's INSTALLER
