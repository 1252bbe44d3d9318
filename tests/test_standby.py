"""Repair without copying (issue 12): the standby copy of a target's overlay.

* a repair after a real pip reinstall links the standby's files in: the placed files are the
  standby's inodes, nothing is copied, `verify --full` is 0, and the standby is ready again;
* a standby written to in place, truncated, deleted, or below the free-space floor: the
  repair copies from the bundle and is still correct, and its event says why;
* kill -9 during a standby repair and during a standby preparation: stock or patched, never
  mixed, nothing left behind;
* revert and `target remove` leave no standby behind.

Real venvs, real pip, the real CLI; crashes are real SIGKILLs at checkpoints.
"""

from __future__ import annotations

import os

import pytest

from kit.agentkit import events, write_config
from kit.wayback import (KILLED, NAME, assert_patched, assert_stock, classify, inodes, journals, ok,
                     status_of, windows_target)
from kit.standby import last_via, patched_with_standby, reinstall, standby_dir, standby_inodes


def _assert_linked_from_standby(t, files: dict) -> dict:
    """Every file of the bundle in place is the standby's inode (linked, not copied);
    returns {rel: inode} of the target's libraries."""
    now, sb = inodes(t), standby_inodes(t)
    for rel in t.stock:
        sha = files.get(rel.rsplit("/", 1)[1])
        if sha:
            assert now[rel] == sb[sha], f"{rel} was copied, not linked from the standby"
    return now


def _reinstall_repair_and_revert(t, run_tk, files: dict) -> None:
    """One more reinstall, repaired from the standby alone, then the way back to stock."""
    reinstall(t)
    r = ok(run_tk("apply", "--json"))
    assert last_via(r)["standby"] == len(files), str(r)
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


def _applied_event(tk_home) -> dict:
    return [e for e in events(tk_home, "applied")][-1]


def _identities(t) -> dict[str, tuple]:
    return {p.name: (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            for p in standby_dir(t).iterdir() for st in [p.stat()]}


def test_a_standby_of_copies_is_untouched_by_a_reinstall_and_linked_in(build, tmp_path, run_tk, tk_home):
    """The default (standby_copy): inodes of their own, which pip's unlinks never reach, so the
    repair trusts them by identity alone (no hash), links them in, and copies anew after."""
    t = patched_with_standby(build, tmp_path, run_tk, tk_home, copy=True)
    files = t.bundles["a"]["files"]
    placed, sb = inodes(t), standby_inodes(t)
    assert not set(sb.values()) & set(placed.values()), "a standby copy is a placed file's inode"
    tgt, _ = status_of(run_tk)
    s = tgt["standby"]
    assert s["state"] == "ready" and s["mode"] == "copy" and s["disk_bytes"] == s["bytes"] > 0, tgt
    before = _identities(t)

    reinstall(t)
    assert _identities(t) == before, "pip's reinstall moved a standby copy's identity"
    r = ok(run_tk("apply", "--json"))
    assert last_via(r) == {"standby": len(files), "copy": 0, "why_copy": None}, str(r)
    assert_patched(t, run_tk, "a")
    _assert_linked_from_standby(t, files)     # the copies themselves, linked in
    ok(run_tk("verify", "--full"))

    r = ok(run_tk("standby", "--json"))       # what the agent does after a repair
    assert r.json()[NAME]["mode"] == "copy", str(r)
    placed, sb = inodes(t), standby_inodes(t)
    assert not set(sb.values()) & set(placed.values()), "the new standby shares the placed inodes"
    _reinstall_repair_and_revert(t, run_tk, files)
    assert not standby_dir(t).exists()


def test_copies_only_while_the_floor_stays_free_links_for_the_rest(build, tmp_path, run_tk, tk_home,
                                                                  monkeypatch):
    """Room above standby_min_free_mb for one file alone: it is copied, the others are
    linked (mode "mixed"); a repair uses both."""
    from torchkeeper.engine import standby
    from torchkeeper.engine.core import Engine

    t = patched_with_standby(build, tmp_path, run_tk, tk_home, copy=True)
    files = t.bundles["a"]["files"]
    sizes = sorted((p.stat().st_size for p in standby_dir(t).iterdir()), reverse=True)
    assert len(sizes) >= 2 and sizes[-1] * 2 > sizes[0], sizes   # room for one, never two
    standby.drop(Engine().home, NAME, t.sp)
    floor = standby.floor_bytes(None)
    monkeypatch.setattr(standby, "free_bytes", lambda p: floor + sizes[0] + sizes[-1] // 2)
    res = Engine().prepare_standby(NAME)
    assert res["state"] == "ready" and res["mode"] == "mixed", res
    nlinks = sorted(p.stat().st_nlink for p in standby_dir(t).iterdir())
    assert nlinks == [1] + [2] * (len(sizes) - 1), nlinks
    monkeypatch.undo()
    reinstall(t)
    r = ok(run_tk("apply", "--json"))
    assert last_via(r) == {"standby": len(files), "copy": 0, "why_copy": None}, str(r)
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


def test_repair_links_the_standby_in_without_copying(build, tmp_path, run_tk, tk_home):
    """standby_copy = false: the standby is the overlay's own inodes."""
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    placed = inodes(t)
    files = t.bundles["a"]["files"]
    # the standby's files are the overlay's own inodes: no disk of their own
    sb = standby_inodes(t)
    for rel, ino in placed.items():
        sha = files.get(rel.rsplit("/", 1)[1])
        if sha:
            assert sb[sha] == ino
    tgt, _ = status_of(run_tk)
    assert tgt["standby"]["state"] == "ready" and tgt["standby"]["disk_bytes"] == 0, tgt

    reinstall(t)
    tgt, _ = status_of(run_tk)
    assert tgt["state"] == "drifted"
    assert tgt["standby"]["state"] == "ready" and tgt["standby"]["disk_bytes"] > 0, tgt

    r = ok(run_tk("apply", "--json"))
    via = last_via(r)
    assert via == {"standby": len(files), "copy": 0, "why_copy": None}, str(r)
    assert _applied_event(tk_home)["via"] == via
    assert_patched(t, run_tk, "a")
    now = _assert_linked_from_standby(t, files)
    for rel in t.stock:
        if rel.rsplit("/", 1)[1] in files:
            assert now[rel] == placed[rel], f"{rel} is not the overlay's first inode"
    ok(run_tk("verify", "--full"))
    tgt, _ = status_of(run_tk)
    assert tgt["standby"]["state"] == "ready", tgt  # ready for the next reinstall, at once

    # and again: a second reinstall is repaired from the same standby
    _reinstall_repair_and_revert(t, run_tk, files)


def _tamper(t, how: str) -> None:
    d = standby_dir(t)
    victim = sorted(d.iterdir())[0]
    if how == "written in place":
        with open(victim, "r+b") as f:
            f.seek(100)
            f.write(b"\0garbage\0")
    elif how == "truncated":
        os.truncate(victim, 10)
    elif how == "deleted":
        victim.unlink()
    elif how == "replaced":
        data = victim.read_bytes()
        victim.unlink()
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.parametrize("how", ["written in place", "truncated", "deleted", "replaced"])
def test_a_damaged_standby_falls_back_to_the_copy(build, tmp_path, run_tk, tk_home, how):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    reinstall(t)  # after it, the standby holds the only link: damage cannot reach the target
    _tamper(t, how)
    r = ok(run_tk("apply", "--json"))
    via = last_via(r)
    assert via["copy"] >= 1 and via["why_copy"] == "standby damaged", str(r)
    assert _applied_event(tk_home)["via"]["why_copy"] == "standby damaged"
    assert_patched(t, run_tk, "a")
    ok(run_tk("verify", "--full"))
    ok(run_tk("standby"))  # prepared again from the files in place
    tgt, _ = status_of(run_tk)
    assert tgt["standby"]["state"] == "ready", tgt
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


def test_an_overlay_file_written_in_place_is_never_linked_back(build, tmp_path, run_tk, tk_home):
    """The standby is the overlay's own inode: a tool writing into the overlay file writes into
    the standby too. The repair sees it changed and copies from the bundle."""
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    rel = next(r for r in t.stock if r.rsplit("/", 1)[1] in t.bundles["a"]["files"])
    with open(t.sp / rel, "r+b") as f:
        f.seek(64)
        f.write(b"\0in place\0")
    r = ok(run_tk("apply", "--force", "--json"))  # neither stock nor ours: foreign
    assert last_via(r) == {"standby": 0, "copy": 1, "why_copy": "standby damaged"}, str(r)
    assert_patched(t, run_tk, "a")
    ok(run_tk("verify", "--full"))


def test_below_the_free_space_floor_the_repair_copies(build, tmp_path, run_tk, tk_home):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    reinstall(t)
    write_config(tk_home, "[agent]\nstandby_min_free_mb = 1000000000\n")  # more than any disk
    r = ok(run_tk("apply", "--json"))
    via = last_via(r)
    assert via["standby"] == 0 and via["why_copy"] == "disk space below the standby floor", str(r)
    assert_patched(t, run_tk, "a")
    assert not standby_dir(t).exists(), "the standby kept disk space below the floor"
    r = ok(run_tk("standby", "--json"))
    assert r.json()[NAME]["state"] == "skipped", str(r)
    assert not standby_dir(t).exists()


def test_standby_off(build, tmp_path, run_tk, tk_home):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    write_config(tk_home, "[agent]\nstandby = false\n")
    reinstall(t)
    r = ok(run_tk("apply", "--json"))
    assert last_via(r)["why_copy"] == "standby off", str(r)
    assert_patched(t, run_tk, "a")
    ok(run_tk("standby"))
    assert not standby_dir(t).exists()


def _crash(run_tk, cmd, n, tmp_path):
    trace = tmp_path / f"trace-{n}.txt"
    r = run_tk(*cmd, extra_env={"TORCHKEEPER_TEST_CRASH_AT": n, "TORCHKEEPER_TEST_CRASH_TRACE": trace})
    if r.rc == 0:
        return None
    assert r.rc in KILLED, str(r)
    return trace.read_text().splitlines()[-1].partition(" ")[2]


def _no_leftovers(t):
    left = sorted(str(p) for p in t.sp.rglob("*") if p.name.endswith((".tk-new", ".tk-restore", ".tk-prep")))
    assert left == [], left
    assert journals(t) == []


def test_kill_during_a_standby_repair(build, tmp_path, run_tk, tk_home):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    labels = []
    for n in [*range(1, 40, 3), *range(40, 200)]:
        reinstall(t)
        ok(run_tk("standby"))  # ready again for this round (a crash may have spent it)
        label = _crash(run_tk, ["apply"], n, tmp_path)
        if label is None:
            break
        labels.append(label)
        tgt, r = status_of(run_tk)  # finishes the interrupted transaction
        assert "recovered" in r.err, str(r)
        which = classify(t, {"stock": None, "a": "a"})
        assert tgt["state"] == ("patched" if which == "a" else "drifted"), str(r)
        _no_leftovers(t)
        ok(run_tk("apply"))
        assert_patched(t, run_tk, "a")
    assert any(x.startswith("linked ") for x in labels), labels
    assert any(x.startswith("swapped ") for x in labels), labels
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert not standby_dir(t).exists()


@pytest.mark.parametrize("copy", [True, False], ids=["copies", "links"])
def test_kill_during_standby_preparation(build, tmp_path, run_tk, tk_home, copy):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    if not copy:
        write_config(tk_home, "[agent]\nstandby_copy = false\n")
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    labels = []
    for n in [*range(1, 24, 3), *range(24, 100)]:
        label = _crash(run_tk, ["standby"], n, tmp_path)
        if label is None:
            break
        labels.append(label)
        tgt, r = status_of(run_tk)
        assert "standby preparation was thrown away" in r.err, str(r)
        assert tgt["state"] == "patched" and tgt["standby"]["state"] == "none", str(r)
        classify(t, {"a": "a"})
        assert not standby_dir(t).exists(), "an interrupted standby was left behind"
        _no_leftovers(t)
        # a reinstall now is repaired by the copy, correctly
        reinstall(t)
        r = ok(run_tk("apply", "--json"))
        assert last_via(r)["standby"] == 0, str(r)
        assert_patched(t, run_tk, "a")
    assert any(x.startswith("standby: copied" if copy else "standby: linked") for x in labels), labels
    assert any(x.startswith("standby: hashed") for x in labels), labels
    tgt, _ = status_of(run_tk)
    assert tgt["standby"]["state"] == "ready"


def test_revert_and_target_remove_leave_no_standby(build, tmp_path, run_tk, tk_home):
    t = patched_with_standby(build, tmp_path, run_tk, tk_home)
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert not standby_dir(t).exists()
    assert not (tk_home / "data" / "standby" / f"{NAME}.json").exists()

    ok(run_tk("apply"))
    ok(run_tk("standby"))
    reinstall(t)  # the standby now holds the only link to the old overlay's files
    assert standby_dir(t).is_dir()
    ok(run_tk("target", "remove", NAME, "--force"))
    assert not standby_dir(t).exists()
    assert not (tk_home / "data" / "standby" / f"{NAME}.json").exists()
    classify(t, {"stock": None})


def test_the_agent_repairs_through_the_standby_and_prepares_the_next(build, tmp_path, run_tk, tk_home):
    """The agent prepares the standby (copies, the default) by itself after an apply, repairs a
    real pip reinstall from it (the placed files are the copies' inodes), then copies anew, so
    the next reinstall is repaired the same way."""
    from kit.agentkit import end_process, spawn_agent, wait_for

    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))  # the CLI prepares no standby: the agent does, at its first check
    assert not standby_dir(t).exists()
    files = t.bundles["a"]["files"]

    def copies_ready() -> bool:
        sb = status_of(run_tk)[0]["standby"]
        return sb["state"] == "ready" and sb["mode"] == "copy" \
            and not set(standby_inodes(t).values()) & set(inodes(t).values())

    p = spawn_agent(tk_home)
    try:
        wait_for(copies_ready, 60, "the standby")
        copies = standby_inodes(t)
        reinstall(t, agent_bundle="a")
        wait_for(lambda: [e for e in events(tk_home, "repaired") if e.get("source") == "agent"], 60,
                 "the repair")
        (rep,) = [e for e in events(tk_home, "repaired") if e.get("source") == "agent"]
        assert rep["via"] == {"standby": len(files), "copy": 0, "why_copy": None}, rep
        assert_patched(t, run_tk, "a")
        now = inodes(t)
        for rel in t.stock:
            sha = files.get(rel.rsplit("/", 1)[1])
            if sha:
                assert now[rel] == copies[sha], f"{rel} was copied, not linked from the standby"
        ok(run_tk("verify", "--full"))
        wait_for(copies_ready, 60, "the next standby's copies")
        # a second reinstall: repaired from the new copies
        reinstall(t, agent_bundle="a")
        wait_for(lambda: len([e for e in events(tk_home, "repaired") if e.get("source") == "agent"]) == 2,
                 60, "the second repair")
        rep2 = [e for e in events(tk_home, "repaired") if e.get("source") == "agent"][-1]
        assert rep2["via"]["standby"] == len(files), rep2
    finally:
        end_process(p)
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert not standby_dir(t).exists()
