"""Hostile input, round 3: every file torchkeeper reads, fed what a hostile or broken machine
puts there: a FIFO (a plain read blocks forever), a link to /dev/zero (never ends), a folder,
a link loop, 100,000 nested brackets, and the right syntax with the wrong types. Each command
finishes (in seconds), prints no traceback, and either goes on (exit 0, the file ignored) or
says one `error:` line naming the file and one `hint:` line (exit 2)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kit.agentkit import end_process, events, patched_target, spawn_agent, wait_for
from kit.wayback import NAME, assert_stock, ok, windows_target

pytestmark = pytest.mark.timeout(300)

KINDS = ["fifo", "dev-zero", "folder", "link-loop", "nested", "wrong-types"]


def _plant(path: Path, kind: str, nested: str = "[" * 100_000, wrong: str = '[1, "x", null]') -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "link-loop":
        path.symlink_to(path.name)
    elif kind == "nested":
        path.write_text(nested)
    else:
        path.write_text(wrong)


def _finishes_cleanly(r, *codes: int, names: str | None = None) -> None:
    assert r.rc in codes, str(r)
    assert "Traceback" not in r.err and "Traceback" not in r.out, str(r)
    if r.rc == 2:
        lines = r.err.strip().splitlines()
        errs = [ln for ln in lines if ln.startswith("error: ")]
        assert len(errs) == 1 and lines[-1].startswith("hint: "), str(r)
        if names:
            assert names in errs[0], str(r)


@pytest.mark.parametrize("kind", KINDS)
def test_config_toml(run_tk, tk_home, kind):
    cfg = tk_home / "config" / "config.toml"
    _plant(cfg, kind, nested="a = " + "[" * 100_000, wrong='[apply]\nprogress = "yes"\n')
    t0 = time.monotonic()
    r = run_tk("status", timeout=30)
    assert time.monotonic() - t0 < 30
    _finishes_cleanly(r, 2, names="config")


@pytest.mark.parametrize("kind", KINDS)
def test_state_json(run_tk, tk_home, kind):
    _plant(tk_home / "data" / "state.json", kind)
    _finishes_cleanly(run_tk("status", timeout=30), 0, 2, names="state")


@pytest.mark.parametrize("what", ["agent.json", "autostart.json", "agent.pid", "agent.stop"])
@pytest.mark.parametrize("kind", KINDS)
def test_small_data_files_are_ignored(run_tk, tk_home, what, kind):
    _plant(tk_home / "data" / what, kind)
    _finishes_cleanly(run_tk("status", timeout=30), 0)
    _finishes_cleanly(run_tk("autostart", "status", timeout=30), 0)


@pytest.mark.parametrize("kind", KINDS)
def test_the_event_log(run_tk, tk_home, kind):
    _plant(tk_home / "logs" / "events.jsonl", kind)
    _finishes_cleanly(run_tk("log", timeout=30), 0, 2, names="events.jsonl")


@pytest.mark.parametrize("kind", KINDS)
def test_launcher_configs_in_discover(run_tk, tk_home, tmp_path, kind):
    home = tmp_path / "user"
    for cfg in (home / ".pinokio" / "config.json", home / ".config" / "ComfyUI" / "config.json",
                home / ".config" / "StabilityMatrix" / "library.json"):
        _plant(cfg, kind)
    t0 = time.monotonic()
    r = run_tk("discover", extra_env={"HOME": home, "XDG_CONFIG_HOME": home / ".config"}, timeout=60)
    assert time.monotonic() - t0 < 30, "discover went past its own time limit"
    _finishes_cleanly(r, 0)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder", "link-loop"])
def test_torch_version_py_in_status(run_tk, tk_home, tmp_path, build, kind):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    _plant(t.sp / "torch" / "version.py", kind)
    _finishes_cleanly(run_tk("status", timeout=30), 0)
    _finishes_cleanly(run_tk("status", "--json", timeout=30), 0)


@pytest.mark.parametrize("kind", ["fifo", "folder", "link-loop", "dev-zero", "nested"])
def test_a_journal_that_is_not_a_file_is_set_aside_and_the_target_stays_whole(
        run_tk, tk_home, tmp_path, build, kind):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    _plant(tk_home / "data" / "journal" / f"{NAME}.json", kind)
    r = run_tk("status", timeout=30)
    _finishes_cleanly(r, 0, 2)
    ok(run_tk("status", timeout=30))         # set aside by the first: the next is clean
    assert_stock(t, run_tk)


def test_the_agent_with_a_fifo_config_starts_and_stops_on_sigterm(tk_home, tmp_path, build, run_tk):
    patched_target(tmp_path, build, run_tk)
    _plant(tk_home / "config" / "config.toml", "fifo")
    p = spawn_agent(tk_home, {"DISPLAY": None, "WAYLAND_DISPLAY": None})
    try:
        wait_for(lambda: events(tk_home, "started"), 30, "the agent's start")
        p.terminate()
        assert p.wait(15) == 0
    finally:
        end_process(p)
    assert "Traceback" not in p.stderr.read()


def test_a_stop_request_that_is_a_folder_does_not_stop_the_agent(tk_home, tmp_path, build, run_tk):
    patched_target(tmp_path, build, run_tk)
    (tk_home / "data" / "agent.stop").mkdir(parents=True)
    p = spawn_agent(tk_home, {"DISPLAY": None, "WAYLAND_DISPLAY": None})
    try:
        wait_for(lambda: events(tk_home, "started"), 30, "the agent's start")
        time.sleep(2.5)                                  # past two looks for a stop request
        assert p.poll() is None, "a folder named agent.stop stopped the agent"
        r = run_tk("stop", "--timeout", "20")            # a real request still works
        assert r.rc == 0, str(r)
        assert p.wait(20) == 0
    finally:
        end_process(p)
    assert any(".set-aside-" in x.name for x in (tk_home / "data").iterdir())
