"""The Windows side of FileOps, unit-tested here through the same interface: a sharing
violation (winerror 32) or access denied on a mapped DLL (5) is FileInUse; other
permission errors stay what they are."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from torchkeeper import testing
from torchkeeper.platform import files
from torchkeeper.errors import FileInUse


def _win_error(winerror: int) -> PermissionError:
    e = PermissionError(13, "Access is denied")
    e.winerror = winerror  # what Windows sets; a plain attribute here
    return e


@pytest.mark.parametrize("winerror", [32, 33, 5])
def test_in_use_errors_become_file_in_use(tmp_path, monkeypatch, winerror):
    dst = tmp_path / "cudnn_ops64_9.dll"
    dst.write_bytes(b"old")
    (tmp_path / "new").write_bytes(b"new")

    def refuse(*a, **k):
        raise _win_error(winerror)

    monkeypatch.setattr(files.os, "replace", refuse)
    monkeypatch.setattr(files.os, "unlink", refuse)
    with pytest.raises(FileInUse) as ei:
        files.FileOps().replace(tmp_path / "new", dst)
    assert str(dst) in ei.value.message and "close the program" in ei.value.hint
    with pytest.raises(FileInUse):
        files.FileOps().remove(dst)
    assert dst.read_bytes() == b"old"


def test_other_permission_errors_pass_through(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(PermissionError):
        files.FileOps().replace(tmp_path / "a", tmp_path / "b")


def test_holders_names_a_real_process(tmp_path):
    f = tmp_path / "cudnn_cnn_infer64_8.dll"
    f.write_bytes(b"x" * 100)
    p = subprocess.Popen([sys.executable, "-c",
                          "import sys, time; fh = open(sys.argv[1], 'rb'); print('ok', flush=True); time.sleep(60)",
                          str(f)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ok"
        deadline = time.time() + 10
        found = []
        while time.time() < deadline and not found:
            found = files.holders(f)
        assert any(f"pid {p.pid}" in h for h in found), found
    finally:
        p.kill()
        p.wait()
    assert not [h for h in files.holders(f) if f"pid {p.pid}" in h]


def test_simulated_lock_only_for_named_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHKEEPER_TEST_LOCKED", os.pathsep.join(["a.dll", "b.dll"]))
    ops = testing.file_ops()
    (tmp_path / "a.dll").write_bytes(b"1")
    (tmp_path / "c.dll").write_bytes(b"1")
    (tmp_path / "new").write_bytes(b"2")
    with pytest.raises(FileInUse):
        ops.replace(tmp_path / "new", tmp_path / "a.dll")
    ops.replace(tmp_path / "new", tmp_path / "c.dll")
    assert (tmp_path / "c.dll").read_bytes() == b"2"
    monkeypatch.delenv("TORCHKEEPER_TEST_LOCKED")
    assert type(testing.file_ops()) is files.FileOps


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c",
                          "import sys, time; fh = open(sys.argv[1], 'rb'); print('ok', flush=True); time.sleep(60)",
                          str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ok"
    return p


def test_psutil_failing_mid_iteration_still_gives_file_in_use(tmp_path, monkeypatch):
    """psutil under Wine: process_iter() itself raises OSError (WinError 87) part-way, and
    name() raises too. holders() keeps whom it found; replace still raises FileInUse."""
    import psutil

    dst = tmp_path / "cudnn_cnn_infer64_8.dll"
    dst.write_bytes(b"old")
    (tmp_path / "new").write_bytes(b"new")
    p = _holder(dst)
    try:
        def wine_87():
            e = OSError(22, "The parameter is incorrect")
            e.winerror = 87
            return e

        class NoName(psutil.Process):
            def name(self):
                raise wine_87()

        def process_iter(attrs=None, ad_value=None):
            for pid in (os.getpid(), p.pid):
                proc = NoName(pid)
                if attrs is not None:  # like psutil: as_dict only turns AccessDenied/ZombieProcess into ad_value
                    proc.info = proc.as_dict(attrs, ad_value)
                yield proc
            raise wine_87()

        monkeypatch.setattr(psutil, "process_iter", process_iter)
        found = files.holders(dst)
        assert found == [f"{os.path.basename(sys.executable)} (pid {p.pid})"], found

        def refuse(*a, **k):
            raise _win_error(32)

        monkeypatch.setattr(files.os, "replace", refuse)
        with pytest.raises(FileInUse) as ei:
            files.FileOps().replace(tmp_path / "new", dst)
        assert str(dst) in ei.value.message and f"pid {p.pid}" in ei.value.message

        def broken(*a, **k):  # the iterator fails before yielding anything
            raise wine_87()
            yield

        monkeypatch.setattr(psutil, "process_iter", broken)
        assert files.holders(dst) == []
        with pytest.raises(FileInUse) as ei:
            files.FileOps().replace(tmp_path / "new", dst)
        assert ei.value.message == f"{dst} is in use"
    finally:
        p.kill()
        p.wait()
    assert dst.read_bytes() == b"old"
