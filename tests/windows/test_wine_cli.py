"""The CLI story on real Windows environments, under Wine: a Windows venv (virtualenv --copies)
or a ComfyUI-portable python_embeded whose torch-shaped wheel the Windows pip installed, bundles
made from Windows DLL sources, and torchkeeper running as a Windows program:
target add, bundle create, plan, apply, verify, a pip --force-reinstall, verify (drift), apply,
revert -- checked with tests/kit/wayback.py: every library is stock or the bundle's, never mixed,
and revert gives RECORD's bytes back.

Also, with Windows semantics for real: a DLL another Windows process has loaded (ctypes.WinDLL)
cannot be replaced, so apply and revert fail whole (exit 4) naming it; and a Windows process
killed at a transaction checkpoint (TerminateProcess) is recovered by the next command.
"""

from __future__ import annotations

import re

from kit.wayback import (NAME, Target, add_bundle, assert_clean, assert_patched, assert_stock, backup_files,
                     classify, journals, ok, record_libs, status_of, win_sources)

CUDNN8 = dict(version="2.3.1+cu121", cuda="12.1", layout="windows", cudnn="8.8.1.3")
CUDNN9 = dict(version="2.4.1+cu124", cuda="12.4", layout="windows", cudnn="9.1.0.70")
# os.kill(pid, SIGTERM) on Windows is TerminateProcess(handle, 15): the exit code is 15
TERMINATED = 15
RECOVERED = re.compile(rf"recovered target '{NAME}': an interrupted (\w+) "
                       r"(was rolled back|had put every file in place; it was completed)")


def venv_target(win, build, tmp_path, torch: dict) -> Target:
    whl = build.torch_wheel(tmp_path / "wheels", **torch)
    venv = win.venv(tmp_path / "stable-diffusion-webui" / "venv")
    win.pip_install(venv, whl)
    sp = win.site_packages(venv)
    ok(win.tk("target", "add", venv, "--name", NAME))
    return Target(venv, sp, win.home, [whl], record_libs(sp))


def reinstall(win, t: Target) -> None:
    """What a webui update does: the venv's own pip puts the stock torch back."""
    win.pip(t.venv, "install", "-q", "--no-index", "--no-deps", "--force-reinstall", *t.wheels)


def story(win, t: Target, sources, reinstall_torch) -> None:
    add_bundle(t, win.tk, "a", *sources)
    ok(win.tk("use", "a"))
    plan = ok(win.tk("plan", NAME, "--json")).json()
    replaced = sorted(f["key"] for f in plan["files"] if f["action"] == "replace")
    assert replaced == sorted(t.bundles["a"]["files"]), plan
    ok(win.tk("apply"))
    assert_patched(t, win.tk, "a")
    assert ok(win.tk("verify")).rc == 0
    reinstall_torch()
    classify(t, {"stock": None})  # the Windows pip put the stock files back
    v = win.tk("verify")
    assert v.rc == 1 and NAME in v.out + v.err and "Traceback" not in v.err, v
    ok(win.tk("apply"))
    assert_patched(t, win.tk, "a")
    ok(win.tk("revert"))
    assert_stock(t, win.tk)  # every file is RECORD's bytes again
    assert backup_files(t) == []


def test_venv_cudnn8(win, build, tmp_path):
    """torch 2.3.1+cu121 (cuDNN 8 names in torch\\lib); a cuDNN archive + a CUDA toolkit folder."""
    t = venv_target(win, build, tmp_path, CUDNN8)
    assert {rel.rsplit("/", 1)[1] for rel in t.stock} >= {"cudnn64_8.dll", "cudnn_ops_infer64_8.dll",
                                                          "cublasLt64_12.dll", "cudart64_12.dll"}
    story(win, t, win_sources(build, tmp_path, "8.9.7.29"), lambda: reinstall(win, t))


def test_venv_cudnn9_from_nvidia_wheels(win, build, tmp_path):
    """torch 2.4.1+cu124 (cuDNN 9 names); the bundle from Windows nvidia-* wheels (files)."""
    t = venv_target(win, build, tmp_path, CUDNN9)
    assert "torch/lib/cudnn_graph64_9.dll" in t.stock and "torch/lib/cudnn64_8.dll" not in t.stock
    src = tmp_path / "src"
    sources = [build.nvidia_wheel(src, lib="cudnn", version="9.5.1.17", cuda_major=12, platform="windows"),
               build.nvidia_wheel(src, lib="cublas", version="12.6.4.1", cuda_major=12, platform="windows")]
    story(win, t, sources, lambda: reinstall(win, t))


def test_comfyui_portable(win, build, tmp_path):
    """A ComfyUI_windows_portable folder: python.org's embeddable Python as python_embeded, torch
    installed by its own pip; `target add` of the portable's root folder."""
    root = tmp_path / "ComfyUI_windows_portable"
    pe = win.portable(root)
    whl = build.torch_wheel(tmp_path / "wheels", **CUDNN8)
    python = pe / "python.exe"

    def pip_install(*extra):
        r = win.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                     "--disable-pip-version-check", *extra, whl], timeout=300)
        assert r.rc == 0, r

    pip_install()
    r = win.run([python, "-s", "-c", "import sys, torch; print(torch.__version__, sys.prefix)"])
    assert r.rc == 0 and r.out.split() == ["2.3.1+cu121", win.path(pe)], r  # a working portable Python
    sp = pe / "Lib" / "site-packages"
    d = ok(win.tk("target", "add", root, "--name", NAME, "--json")).json()
    assert d["site_packages"].lower() == win.path(sp).lower(), d
    t = Target(pe, sp, win.home, [whl], record_libs(sp))
    story(win, t, win_sources(build, tmp_path, "8.9.7.29"), lambda: pip_install("--force-reinstall"))


# ----------------------------------------------------------------------------- a DLL in use


def _load(win, dll):
    """Another Windows program that has `dll` loaded (like a running webui); prints its pid."""
    p = win.popen(["python", "-c",
                   "import ctypes, os, sys, time\n"
                   "ctypes.WinDLL(sys.argv[1])\n"
                   "print('ready', os.getpid(), flush=True)\n"
                   "time.sleep(120)\n", dll])
    line = p.stdout.readline().split()
    assert line[:1] == ["ready"], p.stderr.read()
    return p, int(line[1])


def _stop(p):
    p.kill()
    p.wait(10)


def _in_use(t: Target, r, path, pid) -> None:
    assert r.rc == 4, r
    assert "Traceback" not in r.err, r
    err = r.err.lower()
    assert f"error: {path}".lower() in err and "is in use" in err and "hint:" in err, r
    # psutil finds the holder under Wine through memory_maps; its name through cmdline (name() fails)
    assert f"python.exe (pid {pid})" in r.err, r
    assert_clean(t)


def test_a_loaded_dll_fails_apply_and_revert_whole(win, build, tmp_path):
    t = venv_target(win, build, tmp_path, CUDNN8)
    add_bundle(t, win.tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    ok(win.tk("use", "a"))
    order = [f["key"] for f in ok(win.tk("plan", NAME, "--json")).json()["files"] if f["action"] == "replace"]
    locked = order[len(order) // 2]  # files before it are swapped, then put back
    dll = t.sp / "torch" / "lib" / locked
    holder, pid = _load(win, dll)
    try:
        r = win.tk("apply")
        _in_use(t, r, win.path(dll), pid)
        assert locked in r.err
        classify(t, {"stock": None})
        # the backup of the loaded DLL is a hard link to it: Windows (and Wine) refuse to delete
        # a link of a mapped image, so it stays until a later command finds it released
        assert {p.name for p in backup_files(t)} <= {t.stock[f"torch/lib/{locked}"]}
        assert_stock(t, win.tk)
    finally:
        _stop(holder)
    ok(win.tk("apply"))  # the program was closed
    assert_patched(t, win.tk, "a")
    holder, pid = _load(win, dll)  # now it holds the bundle's DLL
    try:
        r = win.tk("revert")
        _in_use(t, r, win.path(dll), pid)
        assert_patched(t, win.tk, "a")
    finally:
        _stop(holder)
    ok(win.tk("revert"))
    assert_stock(t, win.tk)
    assert backup_files(t) == []


# ----------------------------------------------------------------------------- crashes


def _crash(win, t: Target, cmd: str, n: int, trace, want_phase: str, before, after) -> None:
    r = win.tk(cmd, env={"TORCHKEEPER_TEST_CRASH_AT": n, "TORCHKEEPER_TEST_CRASH_TRACE": trace})
    assert r.rc == TERMINATED, r
    label = trace.read_text().splitlines()[-1].partition(" ")[2]
    assert journals(t) == [f"{NAME}.json"], f"crash at {n} ({label}) left no journal"
    tgt, s = status_of(win.tk)  # the next command recovers
    m = RECOVERED.search(s.err)
    assert m and m.group(1) == cmd, f"crash at {n} ({label}): no recovery message\n{s}"
    completed = m.group(2) != "was rolled back"
    assert completed == (want_phase == "commit"), f"crash at {n} ({label}): {s.err}"
    got = classify(t, {"before": before, "after": after})
    assert got == ("after" if completed else "before"), f"crash at {n} ({label})"
    assert_clean(t)
    return label


def test_terminated_at_checkpoints_recovers(win, build, tmp_path):
    """TerminateProcess (TORCHKEEPER_TEST_CRASH_AT) in prepare, mid-swap and at commit, for an
    apply and a revert: the next command rolls back or completes; never a mixed target."""
    t = venv_target(win, build, tmp_path, CUDNN8)
    add_bundle(t, win.tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    ok(win.tk("use", "a"))
    k = len(t.bundles["a"]["files"])
    # checkpoints: 1 journal + 2 per file in prepare, "swap begins" + 1 per file, 2 in commit
    points = [(2, "prepare"), (2 + 2 * k + k // 2, "swap"), (2 + 3 * k + 1, "commit")]
    trace = tmp_path / "trace.txt"
    for cmd, before, after in (("apply", None, "a"), ("revert", "a", None)):
        for n, phase in points:
            label = _crash(win, t, cmd, n, trace, phase, before, after)
            assert (phase == "prepare" and label.startswith(("backed up ", "staged "))) or \
                (phase == "swap" and label.startswith("swapped ")) or \
                (phase == "commit" and label == "commit begins"), (n, label)
            if phase != "commit":
                continue
            # completed: the command's own end state
            (assert_patched if after else assert_stock)(t, win.tk, *([after] if after else []))
    assert backup_files(t) == []
    assert_stock(t, win.tk)
