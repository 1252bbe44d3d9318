"""Hostile input, round 3: the standby. A link where its folder should be is never followed
(it once deleted every file in the folder it pointed to); bytes changed behind a standby
file's back with its size and mtime put back are never trusted; a damaged record never stops
a command. Every case ends with the way back checked: stock or the bundle's bytes, and
revert gives the stock bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit import agentkit
from kit.standby import last_via, patched_with_standby, reinstall, standby_dir
from kit.wayback import NAME, assert_patched, assert_stock, ok, status_of, windows_target


def _victim(tmp_path: Path) -> tuple[Path, dict]:
    """A folder of the user's own files, and their bytes."""
    v = tmp_path / "users-photos"
    v.mkdir()
    files = {f"p{i}.jpg": os.urandom(2000) for i in range(5)}
    for n, b in files.items():
        (v / n).write_bytes(b)
    return v, files


def _untouched(v: Path, files: dict) -> None:
    assert sorted(p.name for p in v.iterdir()) == sorted(files), list(v.iterdir())
    for n, b in files.items():
        assert (v / n).read_bytes() == b, f"{n} was changed"


def test_a_symlinked_standby_folder_is_never_followed(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    v, files = _victim(tmp_path)
    os.symlink(v, standby_dir(t))           # before the first preparation
    ok(run_tk("use", "a"))
    r = ok(run_tk("apply"))    # the first apply drops any standby: the link is moved aside
    assert "moved aside" in r.err and "warning:" in r.err and ".torchkeeper-standby" in r.err, r.err
    r = ok(run_tk("standby", "--json"))
    assert r.json()[NAME]["state"] == "ready", str(r)
    _untouched(v, files)
    assert standby_dir(t).is_dir() and not standby_dir(t).is_symlink()
    aside = [p for p in t.sp.iterdir() if p.name.startswith(".torchkeeper-standby.set-aside-")]
    assert len(aside) == 1 and aside[0].is_symlink() and aside[0].resolve() == v

    # swapped for a link after it was prepared: a repair copies, revert deletes nothing there
    reinstall(t)
    real = standby_dir(t)
    os.rename(real, tmp_path / "moved-standby")
    os.symlink(v, real)
    r = ok(run_tk("apply", "--json"))
    assert last_via(r)["standby"] == 0, str(r)
    assert_patched(t, run_tk, "a")
    _untouched(v, files)
    os.unlink(real) if real.is_symlink() else None
    os.symlink(v, real)
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    _untouched(v, files)
    assert not real.exists() or not real.is_symlink(), "revert left the link in place"


def _keep_times(path: Path, write) -> None:
    """Write into path through write(f), then put its mtime back (what a careful tool does)."""
    st = os.stat(path)
    write()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def _scribble(f_path: Path):
    def write():
        with open(f_path, "r+b") as f:
            f.seek(100)
            f.write(b"\xde\xad\xbe\xef" * 4)
    return write


def test_a_write_after_pips_unlink_that_keeps_size_and_mtime_is_never_linked_back(
        build, tmp_path, run_tk, tk_home):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    reinstall(t)                            # pip unlinked the overlay's names: ctime moved
    victim = sorted(standby_dir(t).iterdir())[0]
    _keep_times(victim, _scribble(victim))
    r = ok(run_tk("apply", "--json"))
    via = last_via(r)
    assert via["copy"] == 1 and via["why_copy"] == "standby damaged", str(r)
    assert_patched(t, run_tk, "a")
    ok(run_tk("verify", "--full"))           # the bytes in place are the bundle's
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


def test_a_write_through_a_second_hard_link_is_never_linked_back(build, tmp_path, run_tk, tk_home):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    victim = sorted(standby_dir(t).iterdir())[0]
    second = tmp_path / "second-link"
    os.link(victim, second)                  # the link count goes up, then down again
    _keep_times(second, _scribble(second))
    second.unlink()
    reinstall(t)
    r = ok(run_tk("apply", "--force", "--json"))
    via = last_via(r)
    assert via["copy"] >= 1 and via["why_copy"] == "standby damaged", str(r)
    assert_patched(t, run_tk, "a")
    ok(run_tk("verify", "--full"))
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


def test_a_clean_reinstall_still_links_everything_back(build, tmp_path, run_tk, tk_home):
    """The normal case after the stricter rule: every ctime moved (pip's unlinks), every
    file is hashed again and linked, nothing copied."""
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    reinstall(t)
    r = ok(run_tk("apply", "--json"))
    assert last_via(r) == {"standby": len(t.bundles["a"]["files"]), "copy": 0, "why_copy": None}, str(r)
    ok(run_tk("verify", "--full"))


def test_changed_bytes_found_while_preparing_make_the_target_drifted_and_repaired(
        build, tmp_path, run_tk, tk_home):
    """The placed file is written in place with its size and mtime put back (a quick check
    still says patched). The agent's preparation hashes it, finds other bytes, and the target
    is checked in full: drifted, repaired, verified; never left "patched"."""
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    rel = next(r for r in t.stock if r.rsplit("/", 1)[1] in t.bundles["a"]["files"])
    _keep_times(t.sp / rel, _scribble(t.sp / rel))
    assert status_of(run_tk)[0]["state"] == "patched"    # stat data cannot see it
    agent = agentkit.start_agent(tk_home, watch=False, schedule=False)
    try:
        rep = agentkit.wait_for(lambda: agentkit.events(tk_home, "repaired"), 60, "the repair")[0]
        agentkit.wait_idle(agent, 0.5)
    finally:
        agent.stop(timeout=30)
    assert rep["reason"] == "standby found changed bytes", rep
    (sb,) = [e for e in agentkit.events(tk_home, "standby") if e.get("bad")][:1]
    assert sb["bad"] == [rel]
    ok(run_tk("verify", "--full"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


@pytest.mark.parametrize("record", [
    '{"dir": "X", "files": {"ab": "not a dict"}}',
    '{"dir": "X", "files": ["a", "list"]}',
    '{"dir": 7, "files": {}}',
    '[' * 100_000,
    "a folder",
])
def test_a_damaged_standby_record_is_no_standby_and_stops_nothing(build, tmp_path, run_tk, tk_home,
                                                                   record):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    path = tk_home / "data" / "standby" / f"{NAME}.json"
    path.unlink()
    if record == "a folder":
        path.mkdir()
        (path / "inside").write_text("keep me")
    else:
        path.write_text(record.replace("X", str(standby_dir(t))))
    r = ok(run_tk("status", "--json"))
    assert "Traceback" not in r.err
    assert r.json()["targets"][0]["standby"]["state"] == "none", str(r)
    reinstall(t)
    r = ok(run_tk("apply", "--json"))          # copies: there is no standby it can trust
    assert last_via(r)["standby"] == 0, str(r)
    assert_patched(t, run_tk, "a")
    ok(run_tk("standby"))                      # prepared again, whole
    assert status_of(run_tk)[0]["standby"]["state"] == "ready"
    if record == "a folder":
        (aside,) = [p for p in path.parent.iterdir() if ".set-aside-" in p.name]
        assert (aside / "inside").read_text() == "keep me"
    agent = agentkit.start_agent(tk_home, watch=False, schedule=False)   # and the agent starts
    try:
        agentkit.wait_idle(agent, 0.3)
    finally:
        agent.stop(timeout=30)
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
