"""The way back with the agent running: re-applies that wait for pip to finish, and a
user's revert that an agent decision taken before it never undoes. Real venvs, real pip,
`torchkeeper run --headless` as a real process; its event log read from outside."""

from __future__ import annotations

import subprocess
import sys
import time

from kit import builders
import pytest
from kit.agentkit import end_process, events, padded_wheel, spawn_agent, wait_for, write_config
from kit.wayback import (NAME, add_bundle, assert_patched, assert_stock, make_target, ok,
                     windows_target)

pytestmark = pytest.mark.timeout(300)

BIG = 400 * 1024 * 1024
QUIET = 0.05


def agent_events(home, kind=None):
    return [e for e in events(home, kind) if e.get("source") == "agent"]


def _linux_target_with_big_cudnn(build, tmp_path, run_tk, tk_home):
    t = make_target(build, tmp_path, run_tk, tk_home, "linux-nvidia")
    src = tmp_path / "src"
    add_bundle(t, run_tk, "a", build.cudnn_archive(src, version="9.5.1.17", cuda_major=12,
                                                   platform="linux"))
    cudnn = next(w for w in t.wheels if w.name.startswith("nvidia_cudnn"))
    big = padded_wheel(cudnn, tmp_path / "big", "libcudnn_engines_precompiled.so.9", BIG)
    builders.pip_install(t.venv, big, force_reinstall=True)
    from kit.wayback import record_libs

    t.stock = record_libs(t.sp)
    t.wheels = [big if w == cudnn else w for w in t.wheels]
    ok(run_tk("use", "a", "--target", NAME))
    ok(run_tk("apply", NAME))
    return t, big


def _pip_reinstall_watching(t, wheel, stash):
    """pip install --force-reinstall of wheel; returns the last wall time pip's stash was
    seen (while pip still ran) and the wall time pip had finished."""
    cmd = [sys.executable, "-m", "pip", "--python", str(builders.venv_python(t.venv)), "install",
           "--no-index", "--no-deps", "--disable-pip-version-check", "-q", "--force-reinstall",
           str(wheel)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while p.poll() is None:
        now = time.time()
        if stash.exists():
            seen.append(now)
        time.sleep(0.005)
    out = p.stdout.read()
    assert p.returncode == 0, out
    return seen, time.time()


def test_reapply_waits_until_pip_has_written_a_large_library(tmp_path, build, run_tk, tk_home):
    t, big = _linux_target_with_big_cudnn(build, tmp_path, run_tk, tk_home)
    assert_patched(t, run_tk, "a")
    # a quiet period far shorter than pip's write of the big file: a debouncer that only waits
    # for quiet decides in the middle of it (how fast pip writes 400 MB depends on the disk)
    write_config(tk_home, f"[agent]\nquiet_seconds = {QUIET}\n")
    p = spawn_agent(tk_home)
    try:
        wait_for(lambda: agent_events(tk_home, "started"), 30, "the agent's start")
        time.sleep(1.0)  # its first check (nothing to do: patched)
        assert not agent_events(tk_home, "drift")
        stash = t.sp / "nvidia" / "~udnn"
        seen, _ = _pip_reinstall_watching(t, big, stash)
        assert seen, "pip's stash was never seen: the wheel is written too fast to test this"
        assert seen[-1] - seen[0] > 4 * QUIET, f"pip wrote it in {seen[-1] - seen[0]:.2f} s"
        wait_for(lambda: agent_events(tk_home, "repaired"), 60, "the re-apply")
        time.sleep(2.0)  # anything after it would show now
    finally:
        end_process(p)
    drift = agent_events(tk_home, "drift")
    early = [e for e in drift + agent_events(tk_home, "repaired") + agent_events(tk_home, "reapply failed")
             if e["ts"] <= seen[-1]]
    assert early == [], f"decided while pip's stash was there (last seen {seen[-1]:.3f}): {early}"
    assert len(drift) == 1 and drift[0]["decision"] == "re-apply", drift
    assert len(agent_events(tk_home, "repaired")) == 1
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert", NAME))
    assert_stock(t, run_tk)


# ---- what "the install has finished" means, on real folders (no agent) ----------------------

def _burst(lib_dirs=()):
    from torchkeeper.daemon.watch import Burst

    return Burst(0, 0, 0, lib_dirs=tuple(lib_dirs))


def test_a_stashed_dist_info_is_a_stash_not_a_new_dist_info(tmp_path):
    from torchkeeper.daemon.watch import Debouncer

    clock = [100.0]
    d = Debouncer(quiet=1, max_wait=60, clock=lambda: clock[0])
    stash = tmp_path / "~vidia_cudnn_cu12-9.1.0.70.dist-info"
    stash.mkdir()
    (stash / "RECORD").write_text("")  # the old dist-info, RECORD and all
    d.event("t", tmp_path, "nvidia_cudnn_cu12-9.1.0.70.dist-info", "moved_from")
    d.event("t", tmp_path, stash.name, "moved_to")
    clock[0] += 5
    assert d.due() == []          # pip still installs: its stash is there
    stash.joinpath("RECORD").unlink()
    stash.rmdir()
    assert [n for n, _ in d.due()] == ["t"]


def test_a_stash_beside_a_nested_package_folder_blocks(tmp_path):
    from torchkeeper.daemon.watch import install_finished, is_stash_of

    (tmp_path / "nvidia" / "cudnn" / "lib").mkdir(parents=True)
    (tmp_path / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9").write_bytes(b"\x7fELF")
    b = _burst(["nvidia/cudnn/lib"])
    assert install_finished(tmp_path, b) is False and install_finished(tmp_path, b)  # two looks
    for stash in ("nvidia/~udnn", "nvidia/~-dnn", "nvidia/cudnn/~ib"):
        (tmp_path / stash).mkdir()
        assert not install_finished(tmp_path, b), stash
        (tmp_path / stash).rmdir()
    assert install_finished(tmp_path, b)
    (tmp_path / "nvidia" / "~ublas").mkdir()  # another package's stash: not this folder's
    assert install_finished(tmp_path, b)
    assert is_stash_of("~orch", "torch") and is_stash_of("~~rch", "torch")
    assert not is_stash_of("~orchvision", "torch") and not is_stash_of("torch", "torch")


def test_a_library_still_growing_blocks(tmp_path):
    from torchkeeper.daemon.watch import install_finished

    lib = tmp_path / "nvidia" / "cudnn" / "lib"
    lib.mkdir(parents=True)
    b = _burst(["nvidia/cudnn/lib"])
    with open(lib / "libcudnn_engines_precompiled.so.9", "wb") as f:
        for _ in range(3):
            f.write(b"\0" * 4096)
            f.flush()
            assert not install_finished(tmp_path, b)  # each look sees another size
    assert install_finished(tmp_path, b)  # closed, the same twice


# ---- a user's revert wins over an agent decision taken before it ----------------------------

@pytest.mark.parametrize("cli", ["revert", "use"])
def test_a_revert_or_use_while_the_agent_decides_is_not_undone(tmp_path, build, run_tk, tk_home, cli):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a", "--target", NAME))
    ok(run_tk("apply", NAME))
    if cli == "use":
        add_bundle(t, run_tk, "b", *win_sources_b(build, tmp_path))
    pause = tmp_path / "paused"
    p = spawn_agent(tk_home, {"TORCHKEEPER_TEST_PAUSE_POINT": "agent decided",
                              "TORCHKEEPER_TEST_PAUSE_FILE": pause})
    try:
        wait_for(lambda: agent_events(tk_home, "started"), 30, "the agent's start")
        time.sleep(1.0)  # its first check: patched, nothing to do
        builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
        wait_for(pause.exists, 60, "the agent's decision to re-apply")
        assert [e["decision"] for e in agent_events(tk_home, "drift")] == ["re-apply"]
        if cli == "revert":
            ok(run_tk("revert", NAME))
        else:
            ok(run_tk("use", "b", "--target", NAME))
        pause.unlink()  # the agent goes on
        (why,) = wait_for(lambda: agent_events(tk_home, "not re-applied"), 30, "the agent's second look")
        time.sleep(2.0)  # a late re-apply would show now
    finally:
        end_process(p)
    assert "reverted" in why["why"] if cli == "revert" else "another bundle" in why["why"], why
    assert agent_events(tk_home, "repaired") == []
    if cli == "revert":
        assert_stock(t, run_tk)
    else:  # pip's stock files stay until the user applies the bundle they chose
        from kit.wayback import classify

        classify(t, {"stock": None})
        ok(run_tk("apply", NAME))
        assert_patched(t, run_tk, "b")
        ok(run_tk("revert", NAME))
        assert_stock(t, run_tk)


def win_sources_b(build, tmp_path):
    from kit.wayback import win_sources

    return win_sources(build, tmp_path, "8.9.6.50")
