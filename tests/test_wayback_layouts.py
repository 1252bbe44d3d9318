"""The way back on unusual library layouts and names (issue 8), through the real CLI:

* Windows names are case-insensitive: a bundle and a target whose DLLs are spelt in other
  cases are matched file for file, the target keeps its spelling, nothing is "added" beside a
  stock DLL (on a real Windows disk that would overwrite it with no backup);
* a library folder that is a link to a folder outside the target's root: plan names the real
  folder, apply needs --force;
* Windows torch taking its CUDA libraries from nvidia-* wheels (nvidia/<part>/bin, CUDA 13's
  merged nvidia/cu13/bin/x86_64), found through RECORD: the whole way there and back;
* a target made and reinstalled by the real uv in its hard-link mode: uv's cache is never
  written through a link.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kit import builders
from torchkeeper.engine import libs
from torchkeeper.engine import target as targetmod
from kit.wayback import (NAME, add_bundle, assert_patched, assert_stock, classify, key_of, make_target, ok,
                     record_libs, win_sources)

# ----------------------------------------------------------------------------- 1. case


def _mixed(name: str) -> str:
    """cudnn_ops_infer64_8.dll -> Cudnn_Ops_Infer64_8.DLL"""
    stem, _, ext = name.rpartition(".")
    return "_".join(p[:1].upper() + p[1:] for p in stem.split("_")) + "." + ext.upper()


def _lib_names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if libs.parse(p.name))


def test_windows_names_match_in_any_case(build, tmp_path, run_tk, tk_home):
    t = make_target(build, tmp_path, run_tk, tk_home, "windows", spell=_mixed)
    lib = t.sp / "torch" / "lib"
    spelt = _lib_names(lib)
    assert "Cudnn_Adv_Infer64_8.DLL" in spelt and len(spelt) == 10
    src = tmp_path / "src"
    archive = build.cudnn_archive(src, version="8.9.7.29", cuda_major=12, platform="windows", spell=str.upper)
    toolkit = build.cuda_toolkit(src, version="12.4.127", platform="windows")
    assert (archive / "bin" / "CUDNN_ADV_INFER64_8.DLL").is_file()

    r = ok(run_tk("bundle", "create", archive, toolkit, "--name", "a", "--json"))
    names = sorted(f["name"] for f in r.json()["files"])
    assert names == sorted(libs.cudnn_keys(8, "windows") + libs.cuda_keys(12, "windows")), str(r)
    add_bundle(t, run_tk, "a", archive, toolkit)  # the same files: the same bundle

    ok(run_tk("use", "a"))
    p = ok(run_tk("plan", NAME, "--json")).json()
    assert sorted(s["action"] for s in p["files"]) == ["replace"] * 10, p
    assert sorted(s["rel"].rsplit("/", 1)[1] for s in p["files"]) == spelt, p
    assert all(s["prior"] == "stock" for s in p["files"]), p
    assert {s["rel"]: s["stock_sha256"] for s in p["files"]} == t.stock, p  # RECORD's, in any case
    assert p["verdict"] in ("ok", "warn") and not [x for x in p["reasons"] if x["level"] != "note"], p

    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    assert _lib_names(lib) == spelt  # the target's spelling, nothing beside it
    ok(run_tk("verify", "--full"))
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert _lib_names(lib) == spelt


def test_windows_record_lookup_ignores_case(build, tmp_path, run_tk, tk_home):
    """RECORD says cudnn64_8.dll, the disk says CUDNN64_8.DLL: the same file, stock hash known."""
    t = make_target(build, tmp_path, run_tk, tk_home, "windows")
    lib = t.sp / "torch" / "lib"
    os.rename(lib / "cudnn64_8.dll", lib / "CUDNN64_8.DLL")
    t.stock["torch/lib/CUDNN64_8.DLL"] = t.stock.pop("torch/lib/cudnn64_8.dll")
    add_bundle(t, run_tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    ok(run_tk("use", "a"))
    p = ok(run_tk("plan", NAME, "--json")).json()
    (step,) = [s for s in p["files"] if s["key"] == "cudnn64_8.dll"]
    assert step["rel"] == "torch/lib/CUDNN64_8.DLL" and step["prior"] == "stock", p
    assert step["stock_sha256"] == t.stock["torch/lib/CUDNN64_8.DLL"], p
    assert not [x for x in p["reasons"] if x["rule"] == "stock-unknown"], p
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


def test_linux_names_stay_case_sensitive():
    assert libs.parse("libcudnn_ops.so.9").key == "libcudnn_ops.so.9"
    assert libs.parse("LIBCUDNN_OPS.so.9") is None
    assert libs.parse("libcudnn_OPS.so.9") is None
    assert libs.parse("CUBLASLT64_12.DLL").key == "cublasLt64_12.dll"
    assert libs.parse("Cudnn_Ops64_9.Dll").key == "cudnn_ops64_9.dll"


# ----------------------------------------------------------------------------- 2. linked folder


def test_lib_folder_linked_outside_the_target_needs_force(build, tmp_path, run_tk, tk_home):
    t = make_target(build, tmp_path, run_tk, tk_home, "windows")
    add_bundle(t, run_tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    ok(run_tk("use", "a"))
    lib = t.sp / "torch" / "lib"
    shared = tmp_path / "shared" / "torch-lib"
    shared.parent.mkdir()
    shutil.move(lib, shared)
    lib.symlink_to(shared, target_is_directory=True)
    before = {p.name: builders.sha256_file(p) for p in shared.iterdir()}

    p = ok(run_tk("plan", NAME, "--json")).json()
    (why,) = [x for x in p["reasons"] if x["rule"] == "outside-target"]
    assert why["level"] == "force" and str(shared) in why["message"], p
    assert p["verdict"] == "needs-force", p
    text = ok(run_tk("plan", NAME)).out
    assert str(shared) in text and "needs --force" in text, text

    r = run_tk("apply")
    assert r.rc == 3, str(r)
    assert str(shared) in r.err and "error:" in r.err and "hint:" in r.err and "--force" in r.err, str(r)
    assert "Traceback" not in r.err, str(r)
    assert {p.name: builders.sha256_file(p) for p in shared.iterdir()} == before

    ok(run_tk("apply", "--force"))
    assert_patched(t, run_tk, "a")
    assert lib.is_symlink()
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert {p.name: builders.sha256_file(p) for p in shared.iterdir()} == before


def test_lib_folder_linked_inside_the_target_needs_nothing(build, tmp_path, run_tk, tk_home):
    t = make_target(build, tmp_path, run_tk, tk_home, "windows")
    add_bundle(t, run_tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    ok(run_tk("use", "a"))
    lib = t.sp / "torch" / "lib"
    inside = t.venv / "libstore"
    shutil.move(lib, inside)
    lib.symlink_to(inside, target_is_directory=True)
    p = ok(run_tk("plan", NAME, "--json")).json()
    assert not [x for x in p["reasons"] if x["level"] == "force"], p
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)


# ----------------------------------------------------------------------------- 3. nvidia-* on Windows

NEWER = {  # layout -> bundle sources: (nvidia lib, version)
    "windows-nvidia": (12, "nvidia/cublas/bin", [("cudnn", "9.5.1.17"), ("cublas", "12.6.4.1")]),
    "windows-nvidia-cu13": (13, "nvidia/cu13/bin/x86_64", [("cudnn", "9.14.0.64"), ("cublas", "13.2.0.1")]),
}


@pytest.mark.parametrize("layout", sorted(NEWER))
def test_windows_torch_from_nvidia_wheels_there_and_back(build, tmp_path, run_tk, tk_home, layout):
    cuda_major, cuda_dir, newer = NEWER[layout]
    t = make_target(build, tmp_path, run_tk, tk_home, layout)
    dirs = {rel.rsplit("/", 1)[0] for rel in t.stock}
    assert "nvidia/cudnn/bin" in dirs and cuda_dir in dirs and "torch/lib" not in dirs, dirs
    info = targetmod.inspect(t.sp)
    assert info.platform == "windows" and sorted(f.rel for f in info.libs.values()) == sorted(t.stock)
    assert all(f.stock_sha256 == t.stock[f.rel] for f in info.libs.values())

    src = tmp_path / "src"
    wheels = [build.nvidia_wheel(src, lib=lib, version=v, cuda_major=cuda_major, platform="windows")
              for lib, v in newer]
    add_bundle(t, run_tk, "a", *wheels)
    ok(run_tk("use", "a"))
    p = ok(run_tk("plan", NAME, "--json")).json()
    assert p["verdict"] != "refused", p
    assert {s["rel"].rsplit("/", 1)[0] for s in p["files"]} == {"nvidia/cudnn/bin", cuda_dir}, p
    assert {s["action"] for s in p["files"]} == {"replace"}, p

    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("verify", "--full"))

    builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
    classify(t, {"stock": None})
    r = run_tk("verify", "--full")
    assert r.rc == 1, str(r)

    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert {rel: builders.sha256_file(t.sp / rel) for rel in t.stock} == record_libs(t.sp)


def test_library_folders_come_from_record(build, tmp_path, run_tk, tk_home):
    """A folder no installed dist lists (left by an uninstalled wheel) is not one torch loads
    from; a folder only RECORD names (outside the usual nvidia/<part>/bin) is."""
    t = make_target(build, tmp_path, run_tk, tk_home, "windows-nvidia")
    stale = t.sp / "nvidia" / "cublas_old" / "bin"
    stale.mkdir(parents=True)
    shutil.copy(t.sp / "nvidia" / "cublas" / "bin" / "cublas64_12.dll", stale / "cublas64_11.dll")
    odd = builders.write_wheel(tmp_path / "odd", "nvidia-cuda-runtime-cu12", "12.4.127", {
        "nvidia/cuda_runtime/redist/win64/cudart64_12.dll":
            (t.sp / "nvidia" / "cuda_runtime" / "bin" / "cudart64_12.dll").read_bytes()})
    builders.pip_install(t.venv, odd, force_reinstall=True)
    info = targetmod.inspect(t.sp)
    assert "nvidia/cublas_old/bin" not in info.lib_dirs, info.lib_dirs
    assert info.libs["cudart64_12.dll"].rel == "nvidia/cuda_runtime/redist/win64/cudart64_12.dll", info.libs
    assert info.libs["cudart64_12.dll"].stock_sha256 is not None
    assert "cublas64_11.dll" not in info.libs


# ----------------------------------------------------------------------------- 4. uv


def _tree_hashes(root: Path) -> dict[str, str]:
    """{path: sha256} of the files in uv's cache that packages are installed from. uv's own
    interpreter records (interpreter-v*/) are left out: uv rewrites them itself, on any run."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            rel = p.relative_to(root)
            if rel.parts[0].startswith("interpreter-v"):
                continue
            if p.is_file() and not p.is_symlink():
                out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _uv(cache: Path):
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is in the test extra (pyproject.toml): run ./run-tests to install it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(UV_LINK_MODE="hardlink", UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")

    def install(venv, *wheels, reinstall: bool = False):
        cmd = [uv, "pip", "install", "--python", str(builders.venv_python(venv)), "--cache-dir", str(cache),
               "--offline", "--no-index", "--no-deps", "--find-links", str(Path(wheels[0]).parent),
               *(["--reinstall"] if reinstall else []), *map(str, wheels)]
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"

    return install


def test_uv_hardlinked_target_keeps_uvs_cache_intact(build, tmp_path, run_tk, tk_home):
    cache = tmp_path / "uv-cache"
    install = _uv(cache)
    t = make_target(build, tmp_path, run_tk, tk_home, "windows", install=install)
    di = builders.dist_info(t.sp, "torch")
    assert (di / "INSTALLER").read_text() == "uv"
    some = t.sp / "torch" / "lib" / "cudnn64_8.dll"
    assert some.stat().st_nlink >= 2, "uv should have hard-linked torch's files from its cache"
    add_bundle(t, run_tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    cached = _tree_hashes(cache)
    assert any(n.endswith("cudnn64_8.dll") for n in cached)

    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    assert _tree_hashes(cache) == cached

    install(t.venv, *t.wheels, reinstall=True)
    classify(t, {"stock": None})
    assert run_tk("verify", "--full").rc == 1
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    ok(run_tk("revert"))
    assert_stock(t, run_tk)
    assert _tree_hashes(cache) == cached
    assert {key_of(rel) for rel in t.stock} >= set(t.bundles["a"]["files"])
