"""Hostile input, round 3: fetch. A silent index and a stalled download are said as such
(not "no such package", not "ERROR: Exception:"), within fetch's own time limit; a wheel
refused for what it holds (an unsafe path, a zip bomb, a 7-byte "DLL") never stays in the wheel
cache, so the fetch works again once the index is fixed."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from kit import pkgindex
from kit import wayback
from kit.wheelcache import cache_wheels

pytestmark = pytest.mark.timeout(300)

CUDNN_WIN = "nvidia_cudnn_cu12-9.10.2.21-py3-none-win_amd64.whl"


@pytest.fixture
def index(build, tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    build.nvidia_wheel(folder, lib="cudnn", cuda_major=12, version="9.10.2.21", platform="windows",
                       tagged=True)
    with pkgindex.PackageIndex(folder) as idx:
        yield idx


def _one_error(r, *want) -> str:
    assert r.rc == 2 and "Traceback" not in r.err, str(r)
    errs = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and r.err.strip().splitlines()[-1].startswith("hint:"), str(r)
    for w in want:
        assert w in errs[0], (w, str(r))
    return errs[0]


FETCH = ("bundle", "fetch", "--cudnn", "9.10", "--cuda", "12", "--platform", "windows")


def test_a_silent_index_is_said_as_such_within_the_time_limit(run_tk, tk_home, index):
    index.stall_pages.add("nvidia-cudnn-cu12")
    env = pkgindex.pip_env(PIP_INDEX_URL=index.url)
    t0 = time.monotonic()
    r = run_tk(*FETCH, "--timeout", "1", extra_env=env, timeout=120)
    took = time.monotonic() - t0
    _one_error(r, "the package index did not answer within 1 s", "nvidia-cudnn-cu12")
    assert "has no" not in r.err and took < 30, (took, str(r))
    index.stall_pages.clear()
    wayback.ok(run_tk(*FETCH, extra_env=env))


def test_a_stalled_download_is_said_with_how_far_it_got_and_leaves_nothing(run_tk, tk_home, index):
    index.stall.add(CUDNN_WIN)
    env = pkgindex.pip_env(PIP_INDEX_URL=index.url)
    t0 = time.monotonic()
    r = run_tk(*FETCH, "--timeout", "1", extra_env=env, timeout=120)
    took = time.monotonic() - t0
    err = _one_error(r, "the download of nvidia-cudnn-cu12 9.10.2.21 stalled after")
    assert " MB" in err and "ERROR: Exception" not in r.err and took < 30, (took, str(r))
    assert cache_wheels(tk_home) == []
    index.stall.clear()
    wayback.ok(run_tk(*FETCH, extra_env=env))


def _rewrite(whl: Path, change) -> None:
    """The wheel with change(name, data) -> data for each member (None: left out), RECORD kept."""
    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    tmp.replace(whl)


@pytest.mark.parametrize("how,says", [
    ("a 7-byte DLL", "is named like a DLL but is not a PE file"),
    ("a zip bomb", "a zip bomb, not a library"),
])
def test_a_refused_wheel_is_never_kept_and_a_fixed_index_works(run_tk, tk_home, index, how, says):
    whl = index.folder / CUDNN_WIN
    good = whl.read_bytes()
    if how == "a 7-byte DLL":
        _rewrite(whl, lambda n, d: b"MZ\0\0\0\0\0" if n.endswith("cudnn_adv64_9.dll") else d)
    else:
        with zipfile.ZipFile(whl, "a", zipfile.ZIP_DEFLATED) as z, \
                z.open("nvidia/cudnn/bin/cudnn_extra64_9.dll", "w", force_zip64=True) as f:
            zeros = b"\0" * (1 << 20)
            for _ in range(200):   # 200 MB of zeros: a few hundred KB in the wheel
                f.write(zeros)
    env = pkgindex.pip_env(PIP_INDEX_URL=index.url)
    r = run_tk(*FETCH, extra_env=env)
    _one_error(r, says)
    assert cache_wheels(tk_home) == [], "the refused wheel stayed in the cache"
    assert wayback.ok(run_tk("bundle", "list", "--json")).json() == []
    whl.write_bytes(good)                       # the index is fixed
    r = wayback.ok(run_tk(*FETCH, extra_env=env))
    assert "created bundle" in r.out


def test_bundle_create_refuses_a_seven_byte_mz_file_as_a_dll(run_tk, build, tmp_path):
    src = build.cudnn_archive(tmp_path / "src", version="9.1.0.70", cuda_major=12, platform="windows")
    dll = next(src.rglob("cudnn_adv64_9.dll"))
    dll.write_bytes(b"MZ\0\0\0\0\0")
    r = run_tk("bundle", "create", src)
    _one_error(r, "cudnn_adv64_9.dll", "not a PE file")
