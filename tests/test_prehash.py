"""Hashing off the repair's critical path: a file's hash is known by its full stat identity
(device, inode, size, mtime, ctime), hashed while the installer writes, and never trusted past
any change of the file."""

from __future__ import annotations

import os
import time

import builders
from agentkit import patched_target, start_agent, wait_for, wait_idle
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


def test_the_agent_hashes_what_pip_writes_while_it_writes(tmp_path, build, run_tk, tk_home):
    venv, w, m = patched_target(tmp_path, build, run_tk)
    agent = start_agent(tk_home)
    try:
        wait_idle(agent, 0.5)
        before = agent.prehashed
        builders.pip_install(venv, w, force_reinstall=True)
        wait_for(lambda: agent.prehashed > before, 20, "the libraries pip wrote, hashed")
        lib = builders.site_packages(venv) / "torch" / "lib"
        wait_idle(agent, 0.5)
        time.sleep(0.2)
    finally:
        agent.stop()
    assert run_tk("verify", "--full").rc == 0
    assert any(fsutil.known_sha256(p) for p in lib.glob("*.dll")), "nothing pip wrote was hashed"
