"""The repaired event's last_write when file events were missed: the newest mtime of what the
installer writes (the library files, their folders, site-packages) counts too, never a time
in the future, never one earlier than the last event seen."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from torchkeeper.daemon.repair import _newest_write


def _status(sp, libs):
    info = SimpleNamespace(lib_dirs=["nvidia/cudnn/lib"],
                           libs={n: SimpleNamespace(rel=f"nvidia/cudnn/lib/{n}") for n in libs})
    return SimpleNamespace(site_packages=str(sp), info=info)


@pytest.mark.parametrize("seen_ago, lib_ago, want", [
    (5.0, 1.0, "lib"),     # the library closed after the last event seen: its mtime
    (1.0, 5.0, "seen"),    # the events saw it all: the event's time
    (None, 2.0, "lib"),    # no event time at all
    (5.0, -60.0, "seen"),  # an mtime in the future (a clock set back) is never taken
])
def test_newest_write(tmp_path, seen_ago, lib_ago, want):
    now = time.time()
    lib = tmp_path / "nvidia" / "cudnn" / "lib"
    lib.mkdir(parents=True)
    f = lib / "libcudnn.so.9"
    f.write_bytes(b"x")
    old = now - 100
    for p in (tmp_path, tmp_path / "nvidia", tmp_path / "nvidia" / "cudnn", lib):
        os.utime(p, (old, old))
    os.utime(f, (now - lib_ago, now - lib_ago))
    seen = None if seen_ago is None else now - seen_ago
    got = _newest_write(_status(tmp_path, ["libcudnn.so.9"]), seen)
    assert got == pytest.approx(now - lib_ago if want == "lib" else seen, abs=0.01)
