"""The way back never breaks: the transaction engine's own failures (issue 8).

* a journal damaged after a crash mid-swap (truncated), or of the wrong JSON shape: set aside,
  never deleted; no backup collected while the target is mixed; status says "mixed"; revert
  gives back the stock files;
* backups that would share bytes with something else (a stock file uv hard-linked from its
  cache, a stock file that is a symlink): the backup store holds private copies;
* a rollback undoes only what its transaction did: pip rewriting the files of an interrupted
  transaction (in prepare, in the swap) is left alone;
* the event log failing after the commit warns and never turns the commit into "rolled back".

Real venvs, real pip, the real CLI; crashes are real SIGKILLs at transaction checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from kit import builders
from kit.wayback import (NAME, add_bundle, assert_patched, assert_stock, backup_files, classify, crash_at,
                     hashes, inodes, journal_file, journals, leftovers, ok, set_aside_journals, state,
                     status_of, win_sources, windows_target)

# windows-apply of bundle "a" from stock changes 10 files: checkpoints 1-21 are prepare
# (journal written, then a backup and a staged copy per file), 22 "swap begins", 23.. "swapped X"
PREPARE_LAST, SWAP_BEGINS = 21, 22


def _problems(tgt: dict) -> str:
    return " | ".join(tgt.get("problems", []))


# ----------------------------------------------------------------------------- 1. damaged journal


def test_truncated_journal_after_crash_mid_swap_keeps_the_way_back(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    label = crash_at(t, run_tk, tmp_path, ["apply"], SWAP_BEGINS + 3)
    assert label.startswith("swapped "), label
    with pytest.raises(AssertionError):
        classify(t, {"stock": None, "a": "a"})  # 3 files swapped: mixed
    text = journal_file(t).read_text()
    journal_file(t).write_text(text[: len(text) // 2])
    kept = backup_files(t)
    assert len(kept) == 10

    tgt, r = status_of(run_tk)
    assert "unreadable" in r.err and "set aside" in r.err, str(r)
    assert tgt["state"] == "drifted", str(r)
    assert "mixed" in _problems(tgt) and "torchkeeper revert" in _problems(tgt), str(r)
    (aside,) = set_aside_journals(t)
    assert aside.read_text() == text[: len(text) // 2]  # renamed, not deleted
    assert backup_files(t) == kept, "backups a damaged journal may need were collected"
    v = run_tk("verify")
    assert v.rc == 1 and "Traceback" not in v.err, str(v)

    a = run_tk("apply")  # an overlay over a mixed target would record the bundle's bytes as stock
    assert a.rc == 4 and "mixed" in a.err and "hint: " in a.err and "Traceback" not in a.err, str(a)
    assert backup_files(t) == kept

    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert backup_files(t) == [], "the stock copies outlived the way back"
    assert [p.suffix for p in set_aside_journals(t)] == [".resolved"]
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


def _journal(t, **over) -> dict:
    j = {"txn": "0123456789ab", "op": "apply", "target": NAME, "root": str(t.sp), "phase": "swap",
         "meta": {}, "changes": []}
    j.update(over)
    return j


def test_journal_of_the_wrong_shape_is_set_aside(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    rel = next(iter(t.stock))
    change = {"rel": rel, "src": None, "new_sha256": None, "old_sha256": t.stock[rel]}
    shapes = {
        "list": [], "empty": {}, "null": None, "number": 3, "truncated": "{\"txn\": \"01",
        "missing keys": {"target": NAME, "phase": "swap"},
        "unknown key": _journal(t, extra=1),
        "other target": _journal(t, target="other"),
        "unknown phase": _journal(t, phase="later"),
        "changes not a list": _journal(t, changes={}),
        "change of unknown key": _journal(t, changes=[dict(change, evil=True)]),
        "change outside the target": _journal(t, changes=[dict(change, rel="../../../etc/passwd")]),
        "commit without overlay": _journal(t, phase="commit"),
    }
    for what, j in shapes.items():
        text = j if isinstance(j, str) else json.dumps(j)
        journal_file(t).parent.mkdir(parents=True, exist_ok=True)
        journal_file(t).write_text(text)
        tgt, r = status_of(run_tk)
        assert "set aside" in r.err, f"{what}: {r}"
        assert tgt["state"] == "stock", f"{what}: {r}"
        assert hashes(t) == t.stock, what
    # a journal whose file name is no target name at all
    (journal_file(t).parent / "not a name.json").write_text("[]")
    ok(run_tk("status"))
    assert journals(t) == []
    assert len(set_aside_journals(t)) == len(shapes) + 1
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert backup_files(t) == []


# ----------------------------------------------------------------------------- 2. shared bytes


@pytest.mark.parametrize("shared", ["hard-link", "absolute-symlink", "relative-symlink"])
def test_backup_shares_bytes_with_nothing(shared, build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    rel = "torch/lib/cudnn64_8.dll"
    assert rel in t.stock and "cudnn64_8.dll" in t.bundles["a"]["files"]
    p = t.sp / rel
    outside = tmp_path / "uv-cache" / "cudnn64_8.dll"  # the same volume, outside the venv
    outside.parent.mkdir()
    if shared == "hard-link":  # uv installs from its cache by hard link
        os.link(p, outside)
    else:
        os.replace(p, outside)
        os.symlink(outside if shared == "absolute-symlink" else os.path.relpath(outside, p.parent), p)
    classify(t, {"stock": None})

    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    for b in backup_files(t):
        assert not b.is_symlink() and b.stat().st_nlink == 1, f"backup {b} shares its bytes"
    # another tool writes in place into the shared file (into another venv, say)
    other = t.sp / "torch" / "lib" / "cudart64_12.dll"
    shutil.copy2(other, outside)

    ok(run_tk("revert"))
    assert_stock(t, run_tk)


# ----------------------------------------------------------------------------- 3. rollbacks


def test_pip_rewrites_files_of_a_transaction_interrupted_in_prepare(build, tmp_path, run_tk, tk_home):
    """The issue's case: a re-apply interrupted before its swap, then pip finishes writing the
    files: the rollback removes its staged copies and touches nothing pip wrote."""
    t = windows_target(build, tmp_path, run_tk, tk_home)
    add_bundle(t, run_tk, "b", *win_sources(build, tmp_path, "8.9.5.30", cuda=None))
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("use", "b"))
    label = crash_at(t, run_tk, tmp_path, ["apply"], 6)
    assert label.startswith(("backed up ", "staged ")), label
    builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
    pips = inodes(t)

    tgt, r = status_of(run_tk)
    assert "was rolled back" in r.err, str(r)
    assert inodes(t) == pips, "the rollback rewrote files pip had written"
    classify(t, {"stock": None})
    assert leftovers(t) == [] and journals(t) == []
    assert tgt["state"] == "drifted", str(r)  # overlay a is recorded; pip put stock back
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "b")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert backup_files(t) == []


def test_swap_rollback_restores_only_what_it_swapped(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    label = crash_at(t, run_tk, tmp_path, ["apply"], SWAP_BEGINS + 1)
    assert label.startswith("swapped "), label
    swapped = label.split(" ", 1)[1]
    waiting = sorted(rel for rel in t.stock if rel.rsplit("/", 1)[1] in t.bundles["a"]["files"]
                     and rel != swapped and os.path.exists(f"{t.sp / rel}.tk-new"))
    assert waiting, "no file was left to swap"
    # a third party puts its own bytes at a file the swap had not reached (unlink + write, as pip)
    x = t.sp / waiting[0]
    data = builders.sha256_file(t.sp / swapped).encode() * 100
    x.unlink()
    x.write_bytes(data)
    theirs = x.stat().st_ino

    tgt, r = status_of(run_tk)
    assert "was rolled back" in r.err, str(r)
    assert x.read_bytes() == data and x.stat().st_ino == theirs, "the rollback touched a third party's file"
    now = hashes(t)
    assert now[swapped] == t.stock[swapped], "the file the swap replaced was not put back"
    assert {rel: sha for rel, sha in now.items() if rel != waiting[0]} == \
        {rel: sha for rel, sha in t.stock.items() if rel != waiting[0]}
    assert leftovers(t) == [] and journals(t) == []
    assert tgt["state"] == "drifted", str(r)  # the third party's file differs from RECORD
    assert NAME not in state(t)["overlays"]
    builders.pip_install(t.venv, *t.wheels, force_reinstall=True)  # the user's way out
    assert_stock(t, run_tk)
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


# ----------------------------------------------------------------------------- 4. logging after commit


def test_event_log_failing_after_commit_is_a_warning(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    logs = tk_home / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.write_text("not a folder")  # the log folder replaced by a file

    for args in (["use", "a"], ["apply"]):
        r = run_tk(*args)
        assert r.rc == 0 and "Traceback" not in r.err, str(r)
        assert "warning: " in r.err and str(logs) in r.err and "rolled back" not in r.err, str(r)
    assert_patched(t, run_tk, "a")
    logs.unlink()
    logs.mkdir()
    full = {"TORCHKEEPER_TEST_NO_SPACE": logs}  # a full disk under the log folder
    r = run_tk("revert", extra_env=full)
    assert r.rc == 0 and "warning: " in r.err and "rolled back" not in r.err, str(r)
    assert_stock(t, run_tk)
    other = builders.make_venv(tmp_path / "venv2")
    builders.pip_install(other, *t.wheels)
    for args in (["target", "add", other, "--name", "u"], ["target", "remove", "u"],
                 ["verify"], ["apply"]):
        r = run_tk(*args, extra_env=full)
        assert r.rc == 0 and "warning: " in r.err and "Traceback" not in r.err, str(r)
    assert_patched(t, run_tk, "a")
