"""Damaged files torchkeeper reads: state.json with wrong-typed values, events.jsonl with
bytes that are not UTF-8, agent.json with nonsense, and a bad agent-only setting in
config.toml. Each gives one error line and a hint (exit 2) or a warning, never a traceback
and never exit 1 (which means drift)."""

from __future__ import annotations

import copy
import json
import time

import pytest
from kit.agentkit import end_process, events, spawn_agent, wait_for, write_config
from kit.wayback import NAME, assert_patched, assert_stock, ok, windows_target

pytestmark = pytest.mark.timeout(300)

A = "overlays"


def _first_file(st):
    return next(iter(st[A][NAME]["files"].values()))


# (what, how to damage a good state): each a value of the wrong type where the code reads one
DAMAGES = {
    "dict as bundle id": lambda st: st["targets"][NAME].__setitem__("bundle", {"id": "x"}),
    "list as target path": lambda st: st["targets"][NAME].__setitem__("path", ["C:\\\\"]),
    "list as site-packages": lambda st: st["targets"][NAME].__setitem__("site_packages", [1]),
    "number as overlay bundle": lambda st: st[A][NAME].__setitem__("bundle", 7),
    "number as file hash": lambda st: _first_file(st).__setitem__("sha256", 12345),
    "list as stock hash": lambda st: _first_file(st).__setitem__("stock_sha256", ["ab"]),
    "dict as backup ref": lambda st: _first_file(st).__setitem__("stock_backup", {}),
    "text as size": lambda st: _first_file(st).__setitem__("size", "big"),
    "path leaving site-packages": lambda st: st[A][NAME].__setitem__(
        "files", {"../../../evil.dll": _first_file(st)}),
    "list as overlay timestamp": lambda st: st[A][NAME].__setitem__("applied", []),
    "number as default bundle": lambda st: st.__setitem__("default_bundle", 3),
}


def _one_error(r, what):
    assert r.rc == 2, f"{what}: {r}"
    assert "Traceback" not in r.err, f"{what}: {r}"
    lines = r.err.strip().splitlines()
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1 and "state.json" in errors[0], f"{what}: {r}"
    assert any(x.startswith("hint:") for x in lines), f"{what}: {r}"


def test_wrong_typed_values_in_state_json_are_one_error_line(tmp_path, build, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a", "--target", NAME))
    ok(run_tk("apply", NAME))
    path = tk_home / "data" / "state.json"
    good = json.loads(path.read_text())
    for what, damage in DAMAGES.items():
        st = copy.deepcopy(good)
        damage(st)
        path.write_text(json.dumps(st))
        for cmd in (["status"], ["verify"], ["apply", NAME], ["revert", NAME]):
            _one_error(run_tk(*cmd), f"{what}, {cmd[0]}")
        assert not (t.sp.parent.parent.parent.parent / "evil.dll").exists()
    # deep nesting is not a crash either
    path.write_text("[" * 100_000 + "]" * 100_000)
    _one_error(run_tk("status"), "deep nesting")
    path.write_text(json.dumps(good))
    assert_patched(t, run_tk, "a")  # nothing was written meanwhile
    ok(run_tk("revert", NAME))
    assert_stock(t, run_tk)


def test_log_skips_and_counts_lines_it_cannot_read(tmp_path, run_tk, tk_home):
    f = tk_home / "logs" / "events.jsonl"
    f.parent.mkdir(parents=True, exist_ok=True)
    good = [json.dumps({"ts": time.time() + i, "time": "t", "event": f"ev{i}", "source": "agent"})
            for i in range(3)]
    f.write_bytes(b"\n".join([good[0].encode(), b"\xff\xfe{not utf-8}", good[1].encode(),
                              b"{broken json", b"[1, 2]", good[2].encode()]) + b"\n")
    for args in (["log"], ["log", "--agent"], ["log", "--json"]):
        r = run_tk(*args)
        assert r.rc == 0 and "Traceback" not in r.err, r
        assert "skipped 3 unreadable lines" in r.err, r
    r = run_tk("log", "--json")
    assert [e["event"] for e in r.json()] == ["ev0", "ev1", "ev2"]


@pytest.mark.parametrize("content", [
    b"\xff\xfe not utf-8",
    b'{"paused": "yes", "driver": [1, 2], "autostart": {}}',
    b'{"driver": {"state": 1, "gpus": "RTX"}}',
    b"[]",
    b"[" * 50_000,
])
def test_a_damaged_agent_json_crashes_neither_status_nor_the_agent(tmp_path, run_tk, tk_home, content):
    f = tk_home / "data" / "agent.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(content)
    r = run_tk("status", "--json")
    assert r.rc == 0 and "Traceback" not in r.err, r
    assert r.json()["agent"]["paused"] is False
    p = spawn_agent(tk_home)
    try:
        wait_for(lambda: [e for e in events(tk_home, "started") if e.get("source") == "agent"],
                 30, "the agent's start")
        time.sleep(1.0)
        assert p.poll() is None
    finally:
        end_process(p)
    _, err = p.communicate()
    assert "Traceback" not in err, err
    assert "Traceback" not in (tk_home / "logs" / "agent.log").read_text()
    json.loads(f.read_text())  # the agent wrote a good one back (the driver it saw)


GOOD_CONFIG = "[agent]\nauto_reapply = false\n"
BAD_AGENT_ONLY = GOOD_CONFIG + "[notifications]\ndedupe_seconds = -1\n"


def test_a_bad_agent_only_setting_warns_the_cli_and_goes_on(tmp_path, build, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a", "--target", NAME))
    write_config(tk_home, BAD_AGENT_ONLY)
    for cmd in (["status"], ["apply", NAME], ["verify"], ["revert", NAME]):
        r = run_tk(*cmd)
        assert r.rc == 0 and "Traceback" not in r.err, r
        warn = [x for x in r.err.splitlines() if x.startswith("warning:")]
        assert len(warn) == 1 and "dedupe_seconds" in warn[0] and "line 4" in warn[0], r
        assert "error:" not in r.err, r
    assert_stock(t, run_tk)
    # a bad value in a key the CLI reads still stops it
    write_config(tk_home, "[apply]\nprogress = 3\n")
    r = run_tk("status")
    assert r.rc == 2 and r.err.startswith("error:") and "progress" in r.err, r


def test_the_agent_starts_with_the_last_good_settings(tmp_path, tk_home):
    from kit.agentkit import start_agent

    write_config(tk_home, GOOD_CONFIG)
    agent = start_agent(tk_home, watch=False, schedule=False)
    agent.stop()
    assert agent.cfg["agent"]["auto_reapply"] is False
    write_config(tk_home, BAD_AGENT_ONLY)
    agent = start_agent(tk_home, watch=False, schedule=False)
    try:
        wait_for(lambda: agent.notifier.toasts, 10, "the config toast")
    finally:
        agent.stop()
    # not the defaults (auto_reapply = true): the settings the user last had
    assert agent.cfg["agent"]["auto_reapply"] is False
    assert agent.cfg["notifications"]["dedupe_seconds"] >= 0
    (toast,) = [x for x in agent.notifier.toasts if x.key == "config"]
    assert "dedupe_seconds" in toast.body and "last good settings" in toast.body
