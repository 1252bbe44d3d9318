"""Hashing off the repair's critical path: a file's hash is known by its full stat identity
(device, inode, size, mtime, ctime), hashed while the installer writes, and never trusted past
any change of the file."""

from __future__ import annotations

import os

from kit import builders
from kit.agentkit import events, patched_target, start_agent, wait_for, wait_idle
from torchkeeper.engine import fsutil


def test_a_known_identity_is_not_read_again_and_any_change_is(tmp_path, monkeypatch):
    f = tmp_path / "cudnn64_9.dll"
    f.write_bytes(os.urandom(1 << 16))
    digest = fsutil.remember(f)
    reads = []
    real = fsutil.sha256_file
    monkeypatch.setattr(fsutil, "sha256_file", lambda p: reads.append(p) or real(p))
    assert fsutil.hash_many([f])[f][0] == digest and reads == []
    st = os.stat(f)
    with open(f, "r+b") as fh:                    # the same size, the mtime put back
        fh.write(b"\0" * 16)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fsutil.known_sha256(f) is None         # the ctime moved: not the bytes hashed
    new = fsutil.hash_many([f])[f][0]
    assert new != digest and reads == [f]


def test_the_watcher_hands_every_library_written_whole_to_the_hasher(tmp_path):
    """A library closed after writing, or renamed into a watched folder, reaches on_written;
    the agent's hasher then knows it by its identity. (A pip reinstall is not used here: how
    many of its files land before the watch is re-armed on pip's new torch/ depends on speed.)"""
    import sys

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("inotify: Linux")
    from torchkeeper.daemon.watch import Debouncer, Watcher

    seen = []
    w = Watcher(Debouncer(0.1, 5.0), lambda n, b: None, on_written=lambda t, p: seen.append((t, p)))
    w.start()
    try:
        lib = tmp_path / "site-packages" / "torch" / "lib"
        lib.mkdir(parents=True)
        w.set_target("t", lib.parents[1], ["torch/lib"])
        (lib / "cudnn64_9.dll").write_bytes(os.urandom(4096))
        (tmp_path / "cublas64_12.dll").write_bytes(os.urandom(4096))
        os.rename(tmp_path / "cublas64_12.dll", lib / "cublas64_12.dll")
        wait_for(lambda: len(seen) >= 2, 5, "both files")
    finally:
        w.stop()
    assert sorted(os.path.basename(p) for _, p in seen) == ["cublas64_12.dll", "cudnn64_9.dll"]


def test_the_agents_hasher_remembers_what_it_is_handed(tmp_path, build, run_tk, tk_home):
    venv, w, m = patched_target(tmp_path, build, run_tk)
    agent = start_agent(tk_home)
    try:
        wait_idle(agent, 0.5)
        lib = builders.site_packages(venv) / "torch" / "lib"
        dll = next(lib.glob("cudnn*.dll"))
        fresh = tmp_path / dll.name                 # not yet known by its identity
        fresh.write_bytes(dll.read_bytes())
        assert fsutil.known_sha256(fresh) is None
        before = agent.prehashed
        agent._want_hash("a1111", str(fresh))       # what on_written does for a library
        agent._want_hash("a1111", str(tmp_path / "notes.txt"))   # not a library: ignored
        wait_for(lambda: agent.prehashed > before, 20, "the file hashed")
        assert fsutil.known_sha256(fresh) == fsutil.sha256_file(fresh)
        builders.pip_install(venv, w, force_reinstall=True)     # and a repair still comes
        wait_for(lambda: events(tk_home, "repaired"), 30, "the repair")
        wait_idle(agent, 0.5)
    finally:
        agent.stop()
    assert run_tk("verify", "--full").rc == 0
