"""`bundle fetch` and `suggest` against a real local package index (tests/kit/pkgindex.py: a PEP 503
index over HTTP on 127.0.0.1, or a --find-links folder) filled with nvidia-*-shaped wheels, the
real pip doing every download, and the NVML stub answering as the driver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit import pkgindex
from kit import wayback
from kit.nvmlstub import write_answers
from torchkeeper.engine import libs, suggest
from kit.wheelcache import cache_wheels


@pytest.fixture(scope="module")
def wheel_dir(build, tmp_path_factory) -> Path:
    return pkgindex.fill(build, tmp_path_factory.mktemp("index"))


@pytest.fixture
def index(wheel_dir):
    with pkgindex.PackageIndex(wheel_dir) as idx:
        yield idx


def driver_env(nvml_stub, tmp_path, *, driver="551.86", cuda=12040, cc="8.9", name="NVIDIA GeForce RTX 4070"):
    answers = write_answers(tmp_path / f"nvml-{driver}-{cc}.txt", driver=driver, cuda=cuda,
                            gpus=[(name, "GPU-1", {"cc": cc})])
    return {"LD_LIBRARY_PATH": str(nvml_stub), "TK_NVML_STUB_FILE": str(answers)}


def no_leftovers(home: Path) -> None:
    tmp = home / "cache" / "tmp"
    assert not tmp.is_dir() or list(tmp.iterdir()) == [], list(tmp.iterdir())


def test_fetch_for_a_windows_target_takes_what_the_gate_accepts_and_applies(
        build, tmp_path, run_tk, tk_home, index, nvml_stub):
    t = wayback.make_target(build, tmp_path, run_tk, tk_home, "windows")  # torch cu121, cuDNN 8.8.1.3
    env = {**pkgindex.pip_env(PIP_INDEX_URL=index.url), **driver_env(nvml_stub, tmp_path)}
    r = wayback.ok(run_tk("bundle", "fetch", "--for", wayback.NAME, "--name", "fetched", "--json",
                          extra_env=env))
    out = r.json()
    chosen = {f: c["version"] for f, c in out["suggestion"]["chosen"].items()}
    # cuDNN 9 is another major; CUDA 12.8 is newer than the driver's 12.4
    assert chosen == {"cudnn": "8.9.7.29", "cublas": "12.4.5.8", "cudart": "12.4.127"}, str(r)
    why = {(c["package"], c["version"]): c["why"] for c in out["suggestion"]["candidates"]}
    assert "same major" in why[("nvidia-cudnn-cu12", "9.5.1.17")]
    assert "newer than the driver's CUDA 12.4" in why[("nvidia-cublas-cu12", "12.8.4.1")]
    assert "570.65" in why[("nvidia-cublas-cu12", "12.8.4.1")]  # NVIDIA's Windows driver for 12.8
    assert "fits, but 8.9.7.29 is newer" in why[("nvidia-cudnn-cu12", "8.9.2.26")]
    m = out["bundle"]
    assert m["platform"] == "windows" and m["cudnn"] == "8.9.7.29" and m["cuda"] == "12.4"
    assert sorted(f["name"] for f in m["files"]) == sorted(
        libs.cudnn_keys(8, libs.WINDOWS) + ["cudart64_12.dll", "cublas64_12.dll", "cublasLt64_12.dll"])
    assert all(f.endswith("-py3-none-win_amd64.whl") for f in cache_wheels(tk_home))
    downloads = dict(index.downloads)
    assert sum(downloads.values()) == 3

    # fetched again: every wheel from the cache, the same bundle
    r2 = wayback.ok(run_tk("bundle", "fetch", "--for", wayback.NAME, extra_env=env))
    assert dict(index.downloads) == downloads
    assert r2.err.count("from the cache") == 3 and "already in the cache: fetched" in r2.out, str(r2)

    # the bundle is an ordinary one: applied through the gate, and back
    t.bundles["fetched"] = {"id": m["id"], "files": {f["name"]: f["sha256"] for f in m["files"]}}
    wayback.ok(run_tk("use", "fetched", "--target", wayback.NAME))
    wayback.ok(run_tk("apply", extra_env=env))
    wayback.assert_patched(t, run_tk, "fetched")
    wayback.ok(run_tk("revert"))
    wayback.assert_stock(t, run_tk)
    no_leftovers(tk_home)


def test_fetch_cuda13_from_find_links_uses_the_merged_names_and_skips_the_stubs(
        run_tk, tk_home, wheel_dir):
    env = pkgindex.pip_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheel_dir))
    r = wayback.ok(run_tk("bundle", "fetch", "--cublas", "--cudart", "--cuda", "13", "--platform", "linux",
                          "--json", extra_env=env))
    out = r.json()
    chosen = {f: c for f, c in out["suggestion"]["chosen"].items()}
    # nvidia-cublas / nvidia-cuda-runtime, never the -cu13 stubs; one CUDA release for both
    assert chosen["cublas"] == {"package": "nvidia-cublas", "version": "13.0.0.19"}
    assert chosen["cudart"] == {"package": "nvidia-cuda-runtime", "version": "13.0.96"}
    assert not any("-cu13" in c["package"] for c in out["suggestion"]["candidates"])
    m = out["bundle"]
    assert m["platform"] == "linux" and m["cuda"] == "13.0"
    assert sorted(f["name"] for f in m["files"]) == ["libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13"]
    assert {w["file"].rsplit("/", 1)[1] for w in out["wheels"]} == {
        "nvidia_cublas-13.0.0.19-py3-none-manylinux_2_27_x86_64.whl",
        "nvidia_cuda_runtime-13.0.96-py3-none-manylinux_2_27_x86_64.whl"}

    # a version asked for: cuDNN for CUDA 13 (keeps its -cu13 name), Windows wheels left alone
    r = wayback.ok(run_tk("bundle", "fetch", "--cudnn", "9.13", "--cuda", "13", "--platform", "linux",
                          "--json", extra_env=env))
    assert r.json()["bundle"]["cudnn"] == "9.13.0.50"
    assert r.json()["wheels"][0]["package"] == "nvidia-cudnn-cu13"


def test_interrupted_download_leaves_nothing_and_the_next_fetch_works(run_tk, tk_home, index):
    index.truncate.add("nvidia_cublas_cu12-12.8.4.1-py3-none-manylinux_2_27_x86_64.whl")
    env = pkgindex.pip_env(PIP_INDEX_URL=index.url)
    args = ("bundle", "fetch", "--cublas", "12.8", "--platform", "linux")
    r = run_tk(*args, extra_env=env)
    assert r.rc == 2 and "Traceback" not in r.err, str(r)
    errs = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and "nvidia-cublas-cu12 12.8.4.1" in errs[0], str(r)
    assert cache_wheels(tk_home) == [] and wayback.ok(run_tk("bundle", "list", "--json")).json() == []
    no_leftovers(tk_home)
    index.truncate.clear()
    r = wayback.ok(run_tk(*args, extra_env=env))
    assert "created bundle cuda12.8-linux" in r.out, str(r)


def test_a_wheel_that_does_not_match_the_index_hash_is_refused(run_tk, tk_home, index):
    index.wrong_hash.add("nvidia_cuda_runtime_cu12-12.8.90-py3-none-win_amd64.whl")
    r = run_tk("bundle", "fetch", "--cudart", "--cuda", "12", "--platform", "windows",
               extra_env=pkgindex.pip_env(PIP_INDEX_URL=index.url))
    assert r.rc == 2 and "Traceback" not in r.err, str(r)
    assert "nvidia-cuda-runtime-cu12 12.8.90" in r.err and "HASH" in r.err.upper(), str(r)
    assert cache_wheels(tk_home) == []
    no_leftovers(tk_home)


def test_offline_is_one_clear_error(run_tk, tk_home):
    r = run_tk("bundle", "fetch", "--cudnn", "--cuda", "12", "--platform", "windows",
               extra_env=pkgindex.pip_env(PIP_INDEX_URL="http://127.0.0.1:9/simple"))
    assert r.rc == 2 and "Traceback" not in r.err, str(r)
    lines = r.err.strip().splitlines()
    assert lines[0].startswith("error: ") and "nvidia-cudnn-cu12" in lines[0], str(r)
    assert lines[1].startswith("hint: ") and "PIP_INDEX_URL" in lines[1] and "--find-links" in lines[1]
    no_leftovers(tk_home)


@pytest.mark.parametrize("args, says", [
    ((), "say what to fetch"),
    (("--cudnn",), "which CUDA major"),
    (("--cudnn", "nine"), "not a version"),
    (("--cublas", "12.4", "--cudart", "13.0"), "different CUDA majors"),
])
def test_fetch_usage_errors(run_tk, tk_home, args, says):
    r = run_tk("bundle", "fetch", *args, extra_env=pkgindex.pip_env(PIP_INDEX_URL="http://127.0.0.1:9/simple"))
    assert r.rc == 2 and says in r.err and "hint:" in r.err and "Traceback" not in r.err, str(r)


# -- suggest -----------------------------------------------------------------------------------


def test_suggest_each_layout_with_different_drivers(build, tmp_path, run_tk, tk_home, index, nvml_stub):
    win = wayback.make_target(build, tmp_path / "w", run_tk, tk_home, "windows")
    run_tk("target", "remove", wayback.NAME)
    wayback.ok(run_tk("target", "add", win.venv, "--name", "win"))
    lin = wayback.make_target(build, tmp_path / "l", run_tk, tk_home, "linux-nvidia")  # cu121, cuDNN 9.1
    env = pkgindex.pip_env(PIP_INDEX_URL=index.url)

    # a new driver (CUDA 12.8) but an old GPU (Pascal, 6.1): cuDNN 9.11 refuses it
    old_gpu = {**env, **driver_env(nvml_stub, tmp_path, driver="570.86", cuda=12080, cc="6.1",
                                   name="NVIDIA GeForce GTX 1080")}
    r = wayback.ok(run_tk("suggest", "--json", extra_env=old_gpu))
    by = {s["target"]: s for s in r.json()}
    assert by["t"]["chosen"]["cudnn"]["version"] == "9.10.2.21"
    assert by["t"]["chosen"]["cublas"]["version"] == "12.8.4.1"
    why = {c["version"]: c["why"] for c in by["t"]["candidates"] if c["family"] == "cudnn"}
    assert "compute capability >= 7.5" in why["9.11.0.98"] and "6.1" in why["9.11.0.98"]
    assert by["win"]["chosen"]["cudnn"]["version"] == "8.9.7.29"
    assert by["win"]["headline"] == "cuDNN 8.9.7 + CUDA 12.8 fit"
    assert not (tk_home / "cache" / "wheels").exists()  # nothing downloaded
    assert index.downloads == {}

    # an Ada GPU on an older driver (CUDA 12.4): 9.11 fits, CUDA 12.8 does not
    new_gpu = {**env, **driver_env(nvml_stub, tmp_path, driver="551.86", cuda=12040, cc="8.9")}
    r = wayback.ok(run_tk("suggest", "t", "--verbose", extra_env=new_gpu))
    assert "take nvidia-cudnn-cu12 9.11.0.98: the newest that fits" in r.out, str(r)
    assert "skip nvidia-cublas-cu12 12.8.4.1: CUDA 12.8 is newer than the driver's CUDA 12.4" in r.out
    assert "NVIDIA CUDA release notes" in r.out and "suggestion: cuDNN 9.11.0 + CUDA 12.4 fit" in r.out
    assert "bundle fetch --for t" in r.out
    # without --verbose: the choice and why in a few lines, the skipped ones counted
    short = wayback.ok(run_tk("suggest", "t", extra_env=new_gpu)).out
    assert "take nvidia-cudnn-cu12 9.11.0.98: the newest that fits" in short
    assert "suggestion: cuDNN 9.11.0 + CUDA 12.4 fit" in short and "skip " not in short
    assert "skipped " in short and "--verbose" in short
    assert len(short.splitlines()) <= 10, short

    # a driver too old for CUDA 12 at all: no CUDA part fits, and it says why
    r = wayback.ok(run_tk("suggest", "win", "--json", extra_env={
        **env, **driver_env(nvml_stub, tmp_path, driver="522.06", cuda=11080, cc="8.6")}))
    s = r.json()
    assert "cublas" not in s["chosen"] and any("older than the 528.33" in p for p in s["problems"]), str(r)
    wayback.assert_stock(lin, run_tk)


def test_choose_without_a_driver_or_target():
    s = suggest.choose(libs.LINUX, 12, {libs.CUDNN: "9.5"}, {libs.CUDNN: ["9.5.0.50", "9.5.1.17", "9.10.2.21"]})
    assert s.chosen == {libs.CUDNN: {"package": "nvidia-cudnn-cu12", "version": "9.5.1.17"}}
    assert [c.taken for c in s.candidates] == [False, True, False]
    assert s.headline() == "cuDNN 9.5.1 fits"
    empty = suggest.choose(libs.WINDOWS, 13, {libs.CUBLAS: None}, {libs.CUBLAS: ["0.0.1"]})
    assert empty.chosen == {} and empty.headline() is None
    assert "placeholder" in empty.candidates[0].why


def test_pre_release_dev_and_local_versions_are_chosen_only_with_pre():
    found = {libs.CUDNN: ["9.5.1.17", "9.6.0.0rc1", "9.27.0.21.dev65563384", "9.5.2.1+local", "9.6.0.0a2"]}
    s = suggest.choose(libs.LINUX, 12, {libs.CUDNN: None}, found)
    assert s.chosen[libs.CUDNN]["version"] == "9.5.1.17"
    skipped = {c.version: c.why for c in s.candidates if not c.taken}
    for v in ("9.6.0.0rc1", "9.27.0.21.dev65563384", "9.5.2.1+local", "9.6.0.0a2"):
        assert "--pre" in skipped[v], (v, skipped)
    assert "pre-release" in suggest.render(s)   # said, in the short form too
    pre = suggest.choose(libs.LINUX, 12, {libs.CUDNN: None}, found, pre=True)
    assert pre.chosen[libs.CUDNN]["version"] == "9.27.0.21.dev65563384"
    # PEP 440 order: a release candidate is older than its release
    rc = suggest.choose(libs.LINUX, 12, {libs.CUDNN: "9.6"}, {libs.CUDNN: ["9.6.0.0rc1", "9.6.0.0"]}, pre=True)
    assert rc.chosen[libs.CUDNN]["version"] == "9.6.0.0"


# -- a full disk, a killed fetch ---------------------------------------------------------------


def _mount_tmpfs(where: Path, size: int) -> None:
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tk-fetch-test", str(where)], check=True,
                   capture_output=True)


def _umount(where: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _one_error(r, *want: str) -> str:
    assert "Traceback" not in r.err, str(r)
    lines = r.err.strip().splitlines()
    errs = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errs) == 1 and lines[-1].startswith("hint: ") and lines[-2] == errs[0], str(r)
    for w in want:
        assert w in errs[0], (w, str(r))
    return errs[0]


def test_a_full_disk_during_the_download_is_a_clear_error_and_leaves_nothing(run_tk, tk_home, index):
    """pip writes the wheel it downloads into the cache's tmp folder: a small file system there."""
    tmp = tk_home / "cache" / "tmp"
    env = pkgindex.pip_env(PIP_INDEX_URL=index.url)
    args = ("bundle", "fetch", "--cublas", "12.8", "--platform", "linux")
    _mount_tmpfs(tmp, 8 << 10)   # the folders and pip's log fit; the wheel (6 kB) does not
    try:
        r = run_tk(*args, extra_env=env)
        assert r.rc == 4, str(r)
        _one_error(r, "no space", "nvidia-cublas-cu12 12.8.4.1", str(tmp))
        assert "free" in r.err.splitlines()[-1], str(r)
        assert cache_wheels(tk_home) == [] and wayback.ok(run_tk("bundle", "list", "--json")).json() == []
        no_leftovers(tk_home)
    finally:
        _umount(tmp)
    r = wayback.ok(run_tk(*args, extra_env=env))
    assert "created bundle cuda12.8-linux" in r.out, str(r)


def test_a_full_bundle_store_after_the_download_leaves_no_half_bundle(run_tk, tk_home, index):
    env = {**pkgindex.pip_env(PIP_INDEX_URL=index.url),
           "TORCHKEEPER_TEST_NO_SPACE": str(tk_home / "cache" / "bundles")}
    args = ("bundle", "fetch", "--cudart", "12.8", "--platform", "linux")
    r = run_tk(*args, extra_env=env)
    assert r.rc == 4, str(r)
    _one_error(r, "no space", str(tk_home / "cache" / "bundles"))
    assert wayback.ok(run_tk("bundle", "list", "--json")).json() == []
    bundles = tk_home / "cache" / "bundles"
    assert not bundles.is_dir() or list(bundles.iterdir()) == []
    no_leftovers(tk_home)
    # the wheel itself was whole: it is kept, and the next fetch takes it from the cache
    assert cache_wheels(tk_home) == ["nvidia_cuda_runtime_cu12-12.8.90-py3-none-manylinux_2_27_x86_64.whl"]
    r = wayback.ok(run_tk(*args, extra_env={**env, "TORCHKEEPER_TEST_NO_SPACE": None}))
    assert "from the cache" in r.err and "created bundle" in r.out, str(r)
    assert sum(index.downloads.values()) == 1


def test_what_a_killed_fetch_left_is_cleaned_at_the_next_fetch(run_tk, tk_home, index, tmp_path):
    """kill -9 in the middle of a download: its temporary folder (a partial wheel in it) stays
    behind until the next fetch, which removes it -- but never the folder of a fetch that runs."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import tk_env

    index.stall.add("nvidia_cublas_cu12-12.8.4.1-py3-none-manylinux_2_27_x86_64.whl")
    env = pkgindex.pip_env(PIP_INDEX_URL=index.url)
    p = subprocess.Popen([sys.executable, "-m", "torchkeeper", "bundle", "fetch", "--cublas", "12.8",
                          "--platform", "linux"], env=tk_env(tk_home, env), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tmp = tk_home / "cache" / "tmp"
    try:
        deadline = time.monotonic() + 60
        while not index.stalled.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert index.stalled.is_set(), "the download never started"
        os.killpg(p.pid, signal.SIGKILL)   # torchkeeper and its pip, as a crash would
        p.wait(10)
    finally:
        index.stall.clear()
    left = sorted(x.name for x in tmp.iterdir())
    assert left and all(n.startswith("fetch-") for n in left), left
    # a live fetch's folder is not the dead one's: made by this (running) process
    import tempfile
    live = Path(tempfile.mkdtemp(prefix=f"fetch-{os.getpid()}-", dir=tmp))
    r = wayback.ok(run_tk("bundle", "fetch", "--cudart", "12.8", "--platform", "linux", extra_env=env))
    assert "created bundle" in r.out, str(r)
    assert sorted(x.name for x in tmp.iterdir()) == [live.name]
    live.rmdir()
