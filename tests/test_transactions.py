"""Transactions under stress, through the real CLI on venvs filled by the real pip.

* crash injection at every checkpoint (TORCHKEEPER_TEST_CRASH_AT=N) of an apply, a revert and an
  apply of a second bundle over a first, Windows and Linux layouts: after each crash the next
  command recovers, and the target is all stock or all patched, never mixed, with every stock
  file recoverable;
* disk full (a small tmpfs under the target, then under TORCHKEEPER_HOME's data folder);
* permission denied (an unwritable lib folder; as root the CLI runs without CAP_DAC_OVERRIDE);
* a locked file (TORCHKEEPER_TEST_LOCKED, with a real process holding the file open);
* a second apply over a first never backs up the first overlay as stock;
* revert after ``pip install --force-reinstall`` of the same torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from kit import builders
from conftest import TkResult, tk_env
from kit.wayback import (KILLED, NAME, Target, add_bundle, assert_clean, assert_patched, assert_stock, backup_files,
                     classify, journals, linux_target, ok, state, status_of, win_sources, windows_target)

# ----------------------------------------------------------------------------- 1. crashes

PHASES = [("prepare", re.compile(r"^(journal written|backed up .+|staged .+)$")),
          ("swap", re.compile(r"^(swap begins|swapped .+)$")),
          ("commit", re.compile(r"^(commit begins|state committed)$"))]
RECOVERED = re.compile(rf"recovered target '{NAME}': an interrupted (\w+) "
                       r"(was rolled back|had put every file in place; it was completed)")


def phase_of(label: str) -> str:
    for phase, rx in PHASES:
        if rx.match(label):
            return phase
    raise AssertionError(f"checkpoint label {label!r} belongs to no known phase")


class Snapshot:
    """The venv and TORCHKEEPER_HOME as they are now, put back before each crash run.

    The venv comes back as hard links to the same inodes, so the stat data an applied overlay
    recorded (size, mtime, inode) still matches; the transaction only ever renames over files,
    so the snapshot's files never change (checked at the end)."""

    def __init__(self, t: Target, where: Path):
        self.t = t
        self.venv = where / "venv"
        self.home = where / "home"
        shutil.copytree(t.venv, self.venv, symlinks=True, copy_function=os.link)
        shutil.copytree(t.home, self.home, symlinks=True)
        self.sums = {rel: builders.sha256_file(self.venv / t.sp.relative_to(t.venv) / rel)
                     for rel in t.stock}

    def restore(self) -> None:
        for live, snap, fn in ((self.t.venv, self.venv, os.link), (self.t.home, self.home, shutil.copy2)):
            shutil.rmtree(live)
            shutil.copytree(snap, live, symlinks=True, copy_function=fn)

    def check_untouched(self) -> None:
        now = {rel: builders.sha256_file(self.venv / self.t.sp.relative_to(self.t.venv) / rel)
               for rel in self.t.stock}
        assert now == self.sums, "the snapshot changed: a transaction wrote into a file in place"


def crash_every_checkpoint(t: Target, run_tk, tmp_path: Path, cmd: list[str], before: str | None,
                           after: str | None) -> list[tuple[int, str, str]]:
    """Run `cmd` with TORCHKEEPER_TEST_CRASH_AT=1, 2, ... from the same start until a run is not
    killed; after each crash check recovery. before/after: the bundle applied before and after
    the command (None: stock). Returns [(n, label, how)] for each crash."""
    candidates = {"before": before, "after": after}
    snap = Snapshot(t, tmp_path / "snapshot")
    trace = tmp_path / "crash-trace.txt"
    crashes = []
    n = 0
    while True:
        n += 1
        assert n < 200, "the transaction never finished"
        snap.restore()
        r = run_tk(*cmd, extra_env={"TORCHKEEPER_TEST_CRASH_AT": n, "TORCHKEEPER_TEST_CRASH_TRACE": trace})
        if r.rc not in KILLED:
            ok(r)
            break
        lines = trace.read_text().splitlines()
        assert len(lines) == len(crashes) + 1, f"crash {n} wrote no trace line:\n{r}"
        num, _, label = lines[-1].partition(" ")
        assert int(num) == n, lines
        phase = phase_of(label)
        assert journals(t) == [f"{NAME}.json"], f"crash {n} ({label}) left no journal"

        tgt, s = status_of(run_tk)  # the first command after a crash recovers
        m = RECOVERED.search(s.err)
        assert m, f"crash {n} ({label}): no recovery message\n{s}"
        assert m.group(1) == cmd[0], str(s)
        how = "rolled back" if m.group(2) == "was rolled back" else "completed"
        # a crash before the commit phase rolls back; from the commit phase on it completes
        assert how == ("completed" if phase == "commit" else "rolled back"), f"crash {n} ({label}): {how}"
        got = classify(t, candidates)
        assert got == ("after" if how == "completed" else "before"), f"crash {n} ({label}): {got} after {how}"
        assert_clean(t)
        want = candidates[got]
        assert tgt["state"] == ("stock" if want is None else "patched"), f"crash {n} ({label})\n{s}"
        if want is not None:
            assert tgt["applied"]["bundle"] == t.bundles[want]["id"], str(s)
            ok(run_tk("revert"))  # every stock file is still recoverable
            classify(t, {"stock": None})
            assert_clean(t)
            assert NAME not in state(t)["overlays"]
            assert backup_files(t) == [], "revert left backups behind"
        crashes.append((n, label, how))

    assert trace.read_text().count("\n") == len(crashes)
    # the uninterrupted run: the command's own end state, and stock after a revert
    if after is None:
        assert_stock(t, run_tk)
    else:
        assert_patched(t, run_tk, after)
        ok(run_tk("revert"))
        assert_stock(t, run_tk)
    snap.check_untouched()
    # every checkpoint was crashed at once: prepare passes one per backup and one per staged
    # file (from two threads, so their order varies), swap one per file, commit two
    labels = [label for _, label, _ in crashes]
    phases = [phase_of(lb) for lb in labels]
    assert phases == sorted(phases, key=[p for p, _ in PHASES].index), labels
    swapped = [lb.split(" ", 1)[1] for lb in labels if lb.startswith("swapped ")]
    assert swapped and len(set(swapped)) == len(swapped), labels
    assert labels[0] == "journal written" and labels[-2:] == ["commit begins", "state committed"]
    assert labels[phases.index("swap")] == "swap begins"
    # (every file these scenarios change existed before, so each one is backed up)
    assert phases.count("prepare") == 1 + 2 * len(swapped), labels
    return crashes


CRASH_SCENARIOS = ["windows-apply", "windows-revert", "windows-apply-over", "linux-apply"]


@pytest.mark.parametrize("scenario", CRASH_SCENARIOS)
def test_crash_at_every_checkpoint(scenario, build, tmp_path, run_tk, tk_home):
    layout, _, what = scenario.partition("-")
    if layout == "windows":
        t = windows_target(build, tmp_path, run_tk, tk_home)
    else:
        t = linux_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    if what == "apply":
        cmd, before, after = ["apply"], None, "a"
    elif what == "revert":
        ok(run_tk("apply"))
        assert_patched(t, run_tk, "a")
        cmd, before, after = ["revert"], "a", None
    else:  # a second bundle over the first: cuDNN only, so cudart/cuBLAS go back to stock
        add_bundle(t, run_tk, "b", *win_sources(build, tmp_path, "8.9.5.30", cuda=None))
        ok(run_tk("apply"))
        assert_patched(t, run_tk, "a")
        ok(run_tk("use", "b"))
        cmd, before, after = ["apply"], "a", "b"
    crashes = crash_every_checkpoint(t, run_tk, tmp_path, cmd, before, after)
    # 10 files change in each scenario: 1 + 2 * 10 checkpoints in prepare, 1 + 10 in swap, 2 in commit
    assert len(crashes) == 34, crashes


# ----------------------------------------------------------------------------- 2. disk full


def _mount_tmpfs(where: Path, size: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tk-test", str(where)], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _resize_tmpfs(where: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _used(where: Path) -> int:
    s = os.statvfs(where)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def _free(where: Path) -> int:
    s = os.statvfs(where)
    return s.f_bavail * s.f_frsize


def _pages(n: int) -> int:
    return -(-n // 4096) * 4096


def _bundle_bytes(t: Target, name: str) -> int:
    return sum(_pages((t.sp / rel).stat().st_size) for rel in t.stock
               if rel.rsplit("/", 1)[1] in t.bundles[name]["files"])


def _can_mount() -> bool:
    return os.geteuid() == 0


def assert_failed_unchanged(t: Target, r, *needles: str) -> None:
    assert r.rc == 4, str(r)
    assert "Traceback" not in r.err, str(r)
    for s in needles:
        assert s in r.err, f"{s!r} not in stderr:\n{r}"
    classify(t, {"stock": None})
    assert_clean(t)
    assert backup_files(t) == []


def test_disk_full_under_target(build, tmp_path, run_tk, tk_home):
    """New files are staged beside the targets: the target's volume must hold a second copy."""
    if not _can_mount():
        return _disk_full_simulated(build, tmp_path, run_tk, tk_home, "stage")
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, 64 << 20)
    try:
        t = windows_target(build, tmp_path, run_tk, tk_home, venv=mnt / "venv")
        ok(run_tk("use", "a"))
        need = _bundle_bytes(t, "a")
        _resize_tmpfs(mnt, _pages(_used(mnt) + need // 2))  # the wheel fits, the staged copies don't
        assert _free(mnt) < need
        r = run_tk("apply")
        assert_failed_unchanged(t, r, "disk full", f"target '{NAME}'")
        assert_stock(t, run_tk)
        _resize_tmpfs(mnt, _pages(_used(mnt) + 2 * need))
        ok(run_tk("apply"))
        assert_patched(t, run_tk, "a")
    finally:
        _umount(mnt)


def test_disk_full_under_backups(build, tmp_path, run_tk, tk_home):
    """Backups are hard links when TORCHKEEPER_HOME shares the target's volume (no space needed);
    on another volume they are copies, and that volume can be full."""
    if not _can_mount():
        return _disk_full_simulated(build, tmp_path, run_tk, tk_home, "backup")
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    data = tk_home / "data"
    keep = tmp_path / "data-copy"
    shutil.copytree(data, keep)
    shutil.rmtree(data)
    _mount_tmpfs(data, 16 << 20)
    try:
        shutil.copytree(keep, data, dirs_exist_ok=True)
        # room for the journal, not for the backups
        need = _bundle_bytes(t, "a")
        _resize_tmpfs(data, _pages(_used(data) + max(need // 2, 16 * 1024)))
        assert _free(data) < need
        r = run_tk("apply")
        assert_failed_unchanged(t, r, "disk full", f"target '{NAME}'", str(data / "backups"))
        assert [p for p in (data / "backups").rglob("*") if p.is_file()] == []
        assert_stock(t, run_tk)
    finally:
        _umount(data)


def _disk_full_simulated(build, tmp_path, run_tk, tk_home, where: str) -> None:
    """Not root (no mount): ENOSPC injected where the transaction creates files."""
    assert os.geteuid() != 0, "as root the tmpfs path must be taken"
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    full = t.lib_dirs()[0] if where == "stage" else tk_home / "data" / "backups"
    r = run_tk("apply", extra_env={"TORCHKEEPER_TEST_NO_SPACE": full})
    assert_failed_unchanged(t, r, "disk full", f"target '{NAME}'", str(full))
    assert_stock(t, run_tk)


# ----------------------------------------------------------------------------- 3. permissions


def _without_dac_override(argv: list[str]) -> list[str]:
    """argv run without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so root meets file modes."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    capsh = shutil.which("capsh")
    assert capsh, "running as root needs setpriv (util-linux) or capsh (libcap2-bin) to drop CAP_DAC_OVERRIDE"
    return [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
            " ".join(map(_sh_quote, argv))]


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def test_permission_denied(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    (lib,) = t.lib_dirs()
    mode = lib.stat().st_mode
    os.chmod(lib, 0o555)
    try:
        argv = _without_dac_override([sys.executable, "-m", "torchkeeper", "apply"])
        p = subprocess.run(argv, env=tk_env(tk_home), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
        r = TkResult(["apply"], p.returncode, p.stdout, p.stderr)
        assert_failed_unchanged(t, r, "permission denied", str(lib), f"target '{NAME}'")
        assert r.err.startswith("error: "), r.err
    finally:
        os.chmod(lib, mode)
    assert_stock(t, run_tk)
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")


# ----------------------------------------------------------------------------- 4. locked file


def test_locked_file_names_holder_and_rolls_back(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    locked = "cudnn_cnn_infer64_8.dll"
    plan = ok(run_tk("plan", NAME, "--json")).json()
    order = [f["key"] for f in plan["files"] if f["action"] == "replace"]
    assert order.index(locked) >= 3, f"files must be swapped before the locked one: {order}"
    path = t.sp / "torch" / "lib" / locked
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nf = open(sys.argv[1], 'rb')\nprint('ready', flush=True)\n"
         "time.sleep(120)\n", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        name = psutil.Process(holder.pid).name()
        r = run_tk("apply", extra_env={"TORCHKEEPER_TEST_LOCKED": locked})
        assert_failed_unchanged(t, r, locked, "in use", f"{name} (pid {holder.pid})")
        assert str(path) in r.err, str(r)
        assert_stock(t, run_tk)
    finally:
        holder.kill()
        holder.wait()
    ok(run_tk("apply"))  # the program was closed: no lock now
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


# ----------------------------------------------------------------------------- 5. second apply


@pytest.mark.parametrize("b_cuda", [None, "12.6.77"], ids=["b-cudnn-only", "b-cudnn-and-cuda"])
def test_second_apply_never_backs_up_overlay_as_stock(b_cuda, build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    add_bundle(t, run_tk, "b", *win_sources(build, tmp_path, "8.9.5.30", cuda=b_cuda))
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("use", "b"))
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "b")
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    st = json.loads((tk_home / "data" / "state.json").read_text())
    for rel, f in st["overlays"][NAME]["files"].items():
        assert f["stock_sha256"] == t.stock[rel], rel
        assert f.get("stock_backup") in (None, t.stock[rel]), (rel, f)
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert backup_files(t) == []


# ----------------------------------------------------------------------------- 6. pip reinstall


def test_revert_after_pip_force_reinstall(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
    classify(t, {"stock": None})  # pip put the stock files back
    tgt, r = status_of(run_tk)
    assert tgt["state"] == "drifted", str(r)
    rv = ok(run_tk("revert"))
    assert "reverted" in rv.out, str(rv)
    st = json.loads((tk_home / "data" / "state.json").read_text())
    assert NAME not in st["overlays"]
    assert_stock(t, run_tk)
    assert backup_files(t) == []
    ok(run_tk("revert"))  # nothing left to revert
    ok(run_tk("apply"))   # and the overlay applies again over the reinstalled files
    assert_patched(t, run_tk, "a")
