"""Hostile input, round 3: holds. A hold counts only while the very process that took it runs
(its pid and its start time); a reused pid, pid 1, a pid beyond any range and a malformed or
non-file hold count for nothing, with a warning, and never leave a target unrepaired. A live
hold is said by `status` ("held by bench (pid N) since ...")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kit import agentkit
from kit import builders
from torchkeeper.engine import hold
from torchkeeper.home import Home


@pytest.fixture
def home(tk_home) -> Home:
    os.environ["TORCHKEEPER_HOME"] = str(tk_home)
    from torchkeeper.home import get_home

    h = get_home()
    hold.holds_dir(h).mkdir(parents=True)
    return h


@pytest.fixture
def sleeper():
    """A live process that is not a bench: its pid is what a reused pid looks like."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def _write(home: Home, name: str, body) -> None:
    (hold.holds_dir(home) / name).write_text(body if isinstance(body, str) else json.dumps(body))


def _rec(pid, started=123.0, target="t"):
    return {"pid": pid, "target": target, "why": "bench", "since": 1.0, "started": started}


@pytest.mark.parametrize("what,rec", [
    ("a reused pid (another process's start time)", "sleeper"),
    ("pid 1", _rec(1)),
    ("a pid beyond C's range", _rec(2 ** 70)),
    ("a negative pid", _rec(-5)),
    ("a pid as a string", _rec("123")),
    ("no start time (an older or forged file)", {"pid": os.getpid(), "target": "t", "why": "bench"}),
    ("this process with a wrong start time", _rec(os.getpid(), 5.0)),
    ("a list", [1, 2]),
    ("nested brackets", "[" * 100_000),
    ("not JSON", "pid=12"),
])
def test_a_hold_that_is_not_a_live_bench_counts_for_nothing(home, sleeper, caplog, what, rec):
    if rec == "sleeper":
        rec = _rec(sleeper.pid, 1.0)          # the pid runs, but it is not the process that held
    _write(home, "999-1.json", rec)
    assert hold.active(home, "t") == [], what
    assert hold.active(home) == []
    assert list(hold.holds_dir(home).iterdir()) == []   # removed: it will not be read again


@pytest.mark.parametrize("kind", ["folder", "fifo", "link to /dev/zero", "huge"])
def test_a_hold_that_is_not_a_small_file_is_never_read(home, kind):
    p = hold.holds_dir(home) / "999-1.json"
    if kind == "folder":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "link to /dev/zero":
        p.symlink_to("/dev/zero")
    else:
        p.write_text(json.dumps(_rec(os.getpid())) + " " * 10_000)
    assert hold.active(home, "t") == []            # and it returned: a FIFO did not block it
    assert not p.exists() and not p.is_symlink()   # removed, or moved aside (a folder, a FIFO)


def test_a_live_hold_is_honoured_and_said_by_status(home, tk_home, run_tk, tmp_path, build):
    from kit.agentkit import patched_target

    patched_target(tmp_path, build, run_tk)
    with hold.hold(home, "a1111", "bench"):
        (h,) = hold.active(home, "a1111")
        assert h.pid == os.getpid() and hold.alive(h)
        st = run_tk("status")
        assert f"held by bench (pid {os.getpid()}) since " in st.out, st.out
        assert run_tk("status", "--json").json()["targets"][0]["held"]["pid"] == os.getpid()
    assert "held by" not in run_tk("status").out


def test_the_agent_repairs_past_a_hold_whose_pid_was_reused(tmp_path, build, run_tk, tk_home, sleeper):
    """A bench killed with -9 left its hold; its pid now runs something else. The agent must
    not wait forever: the next reinstall is repaired as usual."""
    venv, w, _ = agentkit.patched_target(tmp_path, build, run_tk)
    d = tk_home / "data" / "holds"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{sleeper.pid}-1.json").write_text(json.dumps(_rec(sleeper.pid, 1.0, "a1111")))
    agent = agentkit.start_agent(tk_home)
    try:
        agentkit.wait_idle(agent, 0.5)
        builders.pip_install(venv, w, force_reinstall=True)
        agentkit.wait_for(lambda: agentkit.events(tk_home, "repaired"), 30, "the repair")
        agentkit.wait_idle(agent, 0.3)
    finally:
        agent.stop()
    assert not agentkit.events(tk_home, "held")
    assert run_tk("verify", "--full").rc == 0
