"""A patched target with its standby prepared, a reinstall, and what the repair said.

Shared by several test modules (it was in test_standby.py)."""

from __future__ import annotations

from kit import builders
from kit.agentkit import write_config
from kit.wayback import (NAME, classify, ok, windows_target)


STANDBY = ".torchkeeper-standby"


def standby_dir(t):
    return t.sp / STANDBY


def standby_inodes(t) -> dict[str, int]:
    d = standby_dir(t)
    return {p.name: p.stat().st_ino for p in d.iterdir()} if d.is_dir() else {}


def patched_with_standby(build, tmp_path, run_tk, tk_home, copy: bool = False):
    """``copy``: the default standby of copies; False (the tests written for it): hard links
    to the placed files, whose ctime pip's unlink moves."""
    t = windows_target(build, tmp_path, run_tk, tk_home)
    if not copy:
        write_config(tk_home, "[agent]\nstandby_copy = false\n")
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    r = ok(run_tk("standby", "--json"))
    assert r.json()[NAME]["state"] == "ready", str(r)
    files = t.bundles["a"]["files"]
    assert set(standby_inodes(t)) == set(files.values()), "one standby file per bundle file"
    return t


def reinstall(t, agent_bundle: str | None = None):
    """pip puts the stock files back; with an agent running (agent_bundle) it may have
    repaired them already when pip exits (0.1 s after pip's last step): never mixed."""
    builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
    classify(t, {"stock": None} if agent_bundle is None else {"stock": None, "patched": agent_bundle})


def last_via(r) -> dict:
    (res,) = r.json()
    return res["via"]
