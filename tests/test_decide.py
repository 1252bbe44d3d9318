"""The agent's decisions as a table: (what a check saw, the settings, the job) -> what to do.
No subprocess, no thread, no file: daemon/decide.py is pure."""

from __future__ import annotations

import pytest

from torchkeeper.daemon.decide import (INSTALL_CAP_S, INSTALL_POLL_S, RETRY_FIRST_S, RETRY_MAX_S,
                                       InstallSigns, JobView, Kind, Outcome, Settings, Snapshot,
                                       State, Why, after_attempt, decide)

ON = Settings(auto_reapply=True, paused=False, max_wait_s=10.0)
OFF = Settings(auto_reapply=False)
PAUSED = Settings(auto_reapply=True, paused=True)

UNDONE = Snapshot(State.DRIFTED, applied=True, bundle="b", problems=("torch/lib/cudnn64_9.dll changed",))
PATCHED = Snapshot(State.PATCHED, applied=True, bundle="b")
STOCK = Snapshot(State.STOCK, bundle="b")
NOT_OURS = Snapshot(State.DRIFTED, applied=False, bundle="b", problems=("x differs from RECORD",))
REFUSED = Snapshot(State.INCOMPATIBLE, applied=True, bundle="b",
                   problems=("torch here uses cuDNN 8; the bundle has cuDNN 9",))
MISSING = Snapshot(State.MISSING, problems=("no torch in /venv",))
NO_BUNDLE = Snapshot(State.STOCK)

STASH = InstallSigns(stash="~orch")
NO_RECORD = InstallSigns(dist_info_without_record="torch-2.5.1.dist-info")
LIB_GONE = InstallSigns(library_missing="torch/lib/cudnn64_9.dll")
GROWING = InstallSigns(growing="torch/lib/cublasLt64_12.dll")


def mid(s: Snapshot, signs: InstallSigns) -> Snapshot:
    return Snapshot(s.state, s.applied, s.bundle, s.problems, signs, s.held_by)


EVENTS = JobView(Why.FILE_EVENTS, waited_s=0.2)
EVENTS_LATE = JobView(Why.FILE_EVENTS, waited_s=10.0)        # max_wait_seconds reached
EVENTS_STUCK = JobView(Why.FILE_EVENTS, waited_s=INSTALL_CAP_S + 1)
START = JobView(Why.START)
DAILY = JobView(Why.DAILY)
CLICK = JobView(Why.USER, reapply=True, explicit=True)
ALL = JobView(Why.REAPPLY_ALL, reapply=True, explicit=True)
FETCHED = JobView(Why.GET_AND_APPLY, reapply=True, explicit=True)
AGENT_REAPPLY = JobView(Why.FILE_EVENTS, reapply=True, explicit=False)

CASES = [
    # id, snapshot, settings, job -> kind, words contain, delay, force, toast
    ("undone, auto on: re-apply", UNDONE, ON, EVENTS, Kind.REAPPLY, "cudnn64_9.dll", 0, False, True),
    ("undone at start: re-apply", UNDONE, ON, START, Kind.REAPPLY, "", 0, False, True),
    ("undone, daily check: re-apply", UNDONE, ON, DAILY, Kind.REAPPLY, "", 0, False, True),
    ("undone, auto off: ask", UNDONE, OFF, EVENTS, Kind.ASK, "auto re-apply is off", 0, False, True),
    ("undone, paused: ask", UNDONE, PAUSED, EVENTS, Kind.ASK, "auto re-apply is paused", 0, False, True),
    ("patched: leave alone", PATCHED, ON, EVENTS, Kind.LEAVE_ALONE, "", 0, False, True),
    ("stock, nothing applied: leave alone", STOCK, ON, EVENTS, Kind.LEAVE_ALONE, "", 0, False, True),
    ("changed, not ours: leave alone", NOT_OURS, ON, EVENTS, Kind.LEAVE_ALONE, "outside torchkeeper", 0, False, True),
    ("gate refuses: refuse", REFUSED, ON, EVENTS, Kind.REFUSE, "cuDNN 8", 0, False, True),
    ("gate refuses at start: refuse", REFUSED, ON, START, Kind.REFUSE, "cuDNN 8", 0, False, True),
    ("no torch after events: look again", MISSING, ON, EVENTS, Kind.WAIT, "no torch", 10.0, False, False),
    ("no torch at start: refuse", MISSING, ON, START, Kind.REFUSE, "no torch", 0, False, True),
    # mid-install: never judged, whatever the state looks like
    ("stash, undone: wait", mid(UNDONE, STASH), ON, EVENTS, Kind.WAIT, "~orch", INSTALL_POLL_S, False, False),
    ("stash, refused-looking: wait", mid(REFUSED, STASH), ON, EVENTS, Kind.WAIT, "pip's stash", INSTALL_POLL_S, False, False),
    ("stash, missing torch: wait", mid(MISSING, STASH), ON, EVENTS, Kind.WAIT, "", INSTALL_POLL_S, False, False),
    ("dist-info without RECORD: wait", mid(UNDONE, NO_RECORD), ON, EVENTS, Kind.WAIT, "without its RECORD", INSTALL_POLL_S, False, False),
    ("library missing: wait", mid(REFUSED, LIB_GONE), ON, EVENTS, Kind.WAIT, "cudnn64_9.dll", INSTALL_POLL_S, False, False),
    ("library growing: wait", mid(UNDONE, GROWING), ON, EVENTS, Kind.WAIT, "still growing", INSTALL_POLL_S, False, False),
    ("max wait reached, stash: still wait", mid(REFUSED, STASH), ON, EVENTS_LATE, Kind.WAIT, "", INSTALL_POLL_S, False, False),
    ("max wait reached, no RECORD: still wait", mid(UNDONE, NO_RECORD), ON, EVENTS_LATE, Kind.WAIT, "", INSTALL_POLL_S, False, False),
    ("max wait reached, library missing: still wait", mid(REFUSED, LIB_GONE), ON, EVENTS_LATE, Kind.WAIT, "", INSTALL_POLL_S, False, False),
    ("max wait reached, growing: still wait", mid(UNDONE, GROWING), ON, EVENTS_LATE, Kind.WAIT, "", INSTALL_POLL_S, False, False),
    ("install past the cap: ask, in those words", mid(REFUSED, STASH), ON, EVENTS_STUCK, Kind.ASK, "has not finished after 10 minutes", 0, False, True),
    ("install signs, paused: still wait", mid(UNDONE, STASH), PAUSED, EVENTS, Kind.WAIT, "", INSTALL_POLL_S, False, False),
    ("install signs at start: wait", mid(UNDONE, STASH), ON, START, Kind.WAIT, "", INSTALL_POLL_S, False, False),
    ("a stash left for days (a crashed pip): ask, at once", mid(UNDONE, InstallSigns(stash="~orch", age_s=3 * 86400)),
     ON, START, Kind.ASK, "has not finished after 3 days", 0, False, True),
    # held by bench
    ("held: wait", Snapshot(State.DRIFTED, True, "b", held_by="held by bench (pid 7) since 10:00:00"), ON, EVENTS, Kind.WAIT, "held by bench", 1.0, False, False),
    ("held, a click: wait too", Snapshot(State.DRIFTED, True, "b", held_by="held by bench (pid 7)"), ON, CLICK, Kind.WAIT, "held", 1.0, False, False),
    # the user wins
    ("click on undone, paused: re-apply with force", UNDONE, PAUSED, CLICK, Kind.REAPPLY, "as asked", 0, True, True),
    ("click on undone, auto off: re-apply", UNDONE, OFF, CLICK, Kind.REAPPLY, "", 0, True, True),
    ("click on patched: re-apply (hashes fix what stat data cannot)", PATCHED, ON, CLICK, Kind.REAPPLY, "", 0, True, True),
    ("click mid-install: a person's yes goes ahead", mid(UNDONE, STASH), ON, CLICK, Kind.REAPPLY, "", 0, True, True),
    ("click, no bundle: refuse with a toast", NO_BUNDLE, ON, CLICK, Kind.REFUSE, "no bundle chosen", 0, False, True),
    ("reapply all, no bundle: refuse quietly", NO_BUNDLE, ON, ALL, Kind.REFUSE, "no bundle chosen", 0, False, False),
    ("click, gate refuses: refuse (never forced)", REFUSED, ON, CLICK, Kind.REFUSE, "cuDNN 8", 0, False, True),
    ("fetch and apply: re-apply", STOCK, ON, FETCHED, Kind.REAPPLY, "", 0, True, True),
    ("agent's re-apply of patched: leave alone", PATCHED, ON, AGENT_REAPPLY, Kind.LEAVE_ALONE, "", 0, False, True),
    ("agent's re-apply of undone: re-apply, no force", UNDONE, ON, AGENT_REAPPLY, Kind.REAPPLY, "", 0, False, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_decide(case):
    _, snap, settings, job, kind, words, delay, force, toast = case
    d = decide(snap, settings, job)
    assert d.kind is kind, d
    assert words in d.words, d
    assert d.delay == delay and d.force is force and d.toast is toast, d


def test_no_decision_mid_install_ever_alarms():
    """Every mid-install state, every setting, every time before the cap: never a toast."""
    for signs in (STASH, NO_RECORD, LIB_GONE, GROWING):
        for s in (UNDONE, REFUSED, MISSING, PATCHED, NOT_OURS):
            for settings in (ON, OFF, PAUSED):
                for waited in (0.0, 5.0, 10.0, 60.0, INSTALL_CAP_S - 1):
                    for why in (Why.FILE_EVENTS, Why.START, Why.SCHEDULED, Why.EVENTS_LOST):
                        d = decide(mid(s, signs), settings, JobView(why, waited_s=waited))
                        assert d.kind is Kind.WAIT and not d.toast, (signs, s, settings, waited, d)


ATTEMPTS = [
    ("in use, first: retry with one toast", Outcome.IN_USE, None, Kind.RETRY, RETRY_FIRST_S, True),
    ("in use, again: doubled, no toast", Outcome.IN_USE, 2.0, Kind.RETRY, 4.0, False),
    ("in use, capped", Outcome.IN_USE, 40.0, Kind.RETRY, RETRY_MAX_S, False),
    ("warned: ask", Outcome.WARNED, None, Kind.ASK, 0, True),
    ("refused: refuse", Outcome.REFUSED, None, Kind.REFUSE, 0, True),
    ("failed: ask", Outcome.FAILED, None, Kind.ASK, 0, True),
    ("done", Outcome.DONE, None, Kind.LEAVE_ALONE, 0, True),
    ("not wanted any more", Outcome.NOT_WANTED, None, Kind.LEAVE_ALONE, 0, True),
]


@pytest.mark.parametrize("case", ATTEMPTS, ids=[c[0] for c in ATTEMPTS])
def test_after_attempt(case):
    _, outcome, backoff, kind, delay, toast = case
    d = after_attempt(outcome, "words", backoff, explicit=False)
    assert (d.kind, d.delay, d.toast) == (kind, delay, toast), d


def test_every_why_has_words_for_a_toast():
    for why in Why:
        assert why.because and why.because[0].islower(), why


def test_the_decision_module_does_no_io():
    import ast
    from pathlib import Path

    import torchkeeper.daemon.decide as m

    tree = ast.parse(Path(m.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    # i18n: the words in the user's language, a lookup in the catalog loaded at start
    assert imported <= {"__future__", "dataclasses", "enum", "i18n"}, imported
