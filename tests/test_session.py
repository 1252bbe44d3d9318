"""Windows logoff / shutdown with the agent running (torchkeeper.platform.session).

The Win32 calls (ShutdownBlockReason*) are the only fake here: a recording Blocker behind
the same two-method interface. The agent, its transaction and pip are real."""

from __future__ import annotations

import threading

from kit import builders
import pytest
from kit.agentkit import events, patched_target, start_agent, wait_for, wait_idle
from kit.flow import lib_hashes, record_libs
from tray_demo import FakeController

from torchkeeper.desktop import tray as traymod
from torchkeeper.platform.session import WM_ENDSESSION, WM_QUERYENDSESSION, SessionEnd

pytestmark = pytest.mark.timeout(120)


class Blocker:
    def __init__(self, fail: bool = False):
        self.calls = []
        self.fail = fail

    def create(self, reason):
        self.calls.append(("create", reason))
        if self.fail:
            raise OSError("access denied")

    def destroy(self):
        self.calls.append(("destroy",))


def dispatch(handlers: dict, msg: int, wparam: int = 0, lparam: int = 0) -> int:
    """What pystray's win32 window procedure returns for a message."""
    return int(handlers.get(msg, lambda w, l: 0)(wparam, lparam) or 0)


def test_logoff_is_never_refused_and_an_idle_agent_stops_at_once():
    finished, b = [], Blocker()
    s = SessionEnd(lambda: None, finished.append, b, finish_timeout=30)
    assert dispatch(s.handlers(), WM_QUERYENDSESSION) == 1
    assert dispatch(s.handlers(), WM_ENDSESSION, 1) == 0
    assert finished == [30]
    assert b.calls == []  # nothing to explain to Windows


def test_a_cancelled_logoff_clears_the_reason_and_keeps_the_agent():
    finished, b = [], Blocker()
    s = SessionEnd(lambda: "a1111", finished.append, b)
    assert s.on_query(0, 0) == 1
    assert b.calls == [("create", "torchkeeper is finishing a change to 'a1111'")]
    assert s.on_end(0, 0) == 0  # another app cancelled the logoff
    assert finished == [] and b.calls[-1] == ("destroy",)


def test_a_failing_block_reason_only_loses_the_message():
    finished = []
    s = SessionEnd(lambda: "a1111", finished.append, Blocker(fail=True))
    assert s.on_query(0, 0) == 1
    assert s.on_end(1, 0) == 0 and len(finished) == 1


def test_the_tray_answers_logoff_only_on_win32(monkeypatch):
    s = SessionEnd(lambda: None, lambda t: None, Blocker())
    t = traymod.Tray(FakeController(), backend="dummy")
    assert t.handle_session_end(s) is False
    # pystray's win32 Icon keeps its handlers in _message_handlers; any other message
    # (WM_QUERYENDSESSION among them) is answered 0, which refuses the logoff
    monkeypatch.setattr(traymod, "_backend_name", lambda cls: "win32")
    t = traymod.Tray(FakeController(), backend="dummy")
    t.icon._message_handlers = {}
    assert dispatch(t.icon._message_handlers, WM_QUERYENDSESSION) == 0
    assert t.handle_session_end(s) is True
    assert dispatch(t.icon._message_handlers, WM_QUERYENDSESSION) == 1


def test_logoff_during_a_reapply_finishes_it_first(tmp_path, build, run_tk, tk_home, monkeypatch):
    venv, w, m = patched_target(tmp_path, build, run_tk)
    sp = builders.site_packages(venv)
    stock = record_libs(sp)
    agent = start_agent(tk_home)
    b = Blocker()
    s = SessionEnd(agent.writing_to, agent.stop, b)
    try:
        wait_idle(agent, 0.5)
        # the re-apply sleeps 2 s at checkpoint 20: 3 of its 7 files swapped in
        monkeypatch.setenv("TORCHKEEPER_TEST_PAUSE_AT", "20")
        monkeypatch.setenv("TORCHKEEPER_TEST_PAUSE_FILE", str(tmp_path / "paused"))
        builders.pip_install(venv, w, force_reinstall=True)
        wait_for(lambda: (tmp_path / "paused").exists(), 30, "the re-apply to reach the pause")
        assert " swapped " in (tmp_path / "paused").read_text()
        assert dispatch(s.handlers(), WM_QUERYENDSESSION) == 1
        assert b.calls == [("create", "torchkeeper is finishing a change to 'a1111'")]
        # WM_ENDSESSION: the handler returns only once the transaction is done
        ended = threading.Event()
        threading.Thread(target=lambda: (dispatch(s.handlers(), WM_ENDSESSION, 1), ended.set()),
                         daemon=True).start()
        assert not ended.wait(0.3)  # still inside the swap
        assert ended.wait(30)
    finally:
        agent.stop()
    assert b.calls[-1] == ("destroy",)
    assert agent.wait_stopped(0) and agent.writing_to() is None
    assert [e for e in events(tk_home, "repaired") if e.get("source") == "agent"]
    assert not list((tk_home / "data" / "journal").glob("*"))
    want = {f["name"] for f in m["files"]}
    now = lib_hashes(sp, stock)
    assert {r for r in stock if now[r] != stock[r]} == {r for r in stock if r.rsplit("/", 1)[-1] in want}
    assert run_tk("verify", "--full").rc == 0
