"""torchkeeper.engine.toolkits: CUDA toolkits found via nvcc, CUDA_PATH* and the usual folders.

Every test passes its own env and roots, so a toolkit installed on the test machine never leaks in.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from torchkeeper.engine import toolkits  # noqa: E402

NVCC_12_4 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2024 NVIDIA Corporation
Built on Thu_Mar_28_02:18:24_PDT_2024
Cuda compilation tools, release 12.4, V12.4.131
Build cuda_12.4.r12.4/compiler.34097967_0
"""

VERSION_JSON_12_4 = {
    "cuda": {"name": "CUDA SDK", "version": "12.4.1"},
    "cuda_cudart": {"name": "CUDA Runtime (cudart)", "version": "12.4.127"},
    "cuda_nvcc": {"name": "CUDA NVCC", "version": "12.4.131"},
}

posix_only = pytest.mark.skipif(os.name == "nt", reason="fake nvcc is a shell script")


def make_toolkit(root: Path, *, version_json=None, cudart=None, nvcc_output=None,
                 header_under_targets=False) -> Path:
    """A fake toolkit folder: version.json and/or include/cuda_runtime_api.h, optional bin/nvcc."""
    root.mkdir(parents=True, exist_ok=True)
    if version_json is not None:
        (root / "version.json").write_text(
            version_json if isinstance(version_json, str) else json.dumps(version_json, indent=3))
    if cudart is not None:
        inc = root / ("targets/x86_64-linux/include" if header_under_targets else "include")
        inc.mkdir(parents=True, exist_ok=True)
        (inc / "cuda_runtime_api.h").write_text(
            "#if !defined(__CUDA_RUNTIME_API_H__)\n#define __CUDA_RUNTIME_API_H__\n"
            f"/** CUDA Runtime API Version */\n#define CUDART_VERSION  {cudart}\n"
            "#include \"host_defines.h\"\n#endif\n")
    if nvcc_output is not None:
        make_nvcc(root / "bin", nvcc_output)
    return root


def make_nvcc(bin_dir: Path, output: str = NVCC_12_4, *, body: str | None = None) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    nvcc = bin_dir / "nvcc"
    if body is None:
        body = f"cat <<'EOF'\n{output}EOF\n"
    nvcc.write_text("#!/bin/sh\n" + body)
    nvcc.chmod(0o755)
    return nvcc


def env_with(path_dirs=(), **extra) -> dict:
    env = {"PATH": os.pathsep.join([str(d) for d in path_dirs] + ["/usr/bin", "/bin"])}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---- reading a folder -----------------------------------------------------------------------

def test_version_json_prefers_cudart(tmp_path):
    root = make_toolkit(tmp_path / "v12.4", version_json=VERSION_JSON_12_4, cudart=12040)
    assert toolkits.read_toolkit_version(root) == ("12.4", "12.4.127")


def test_version_json_cuda_only(tmp_path):
    root = make_toolkit(tmp_path / "v11.8", version_json={"cuda": {"name": "CUDA SDK", "version": "11.8.0"}})
    assert toolkits.read_toolkit_version(root) == ("11.8", "11.8.0")


@pytest.mark.parametrize("cudart, expected", [(12040, "12.4"), (11080, "11.8"), (13000, "13.0"),
                                              (12100, "12.10")])
def test_header_fallback(tmp_path, cudart, expected):
    root = make_toolkit(tmp_path / "tk", cudart=cudart)
    assert toolkits.read_toolkit_version(root) == (expected, None)


def test_broken_version_json_falls_back_to_header(tmp_path):
    root = make_toolkit(tmp_path / "tk", version_json="{ not json", cudart=12060)
    assert toolkits.read_toolkit_version(root) == ("12.6", None)
    root2 = make_toolkit(tmp_path / "tk2", version_json={"cuda": {"version": "garbage"}}, cudart=12010)
    assert toolkits.read_toolkit_version(root2) == ("12.1", None)


def test_header_under_targets(tmp_path):
    root = make_toolkit(tmp_path / "cuda-12.8", cudart=12080, header_under_targets=True)
    assert toolkits.read_toolkit_version(root) == ("12.8", None)


def test_not_a_toolkit(tmp_path):
    (tmp_path / "empty").mkdir()
    assert toolkits.read_toolkit_version(tmp_path / "empty") is None
    assert toolkits.read_toolkit_version(tmp_path / "missing") is None


# ---- nvcc -----------------------------------------------------------------------------------

def test_no_nvcc_on_path(tmp_path):
    (tmp_path / "bin").mkdir()
    assert toolkits.nvcc_version({"PATH": str(tmp_path / "bin")}) is None
    assert toolkits.nvcc_version({}) is None


@posix_only
def test_nvcc_inside_a_toolkit(tmp_path):
    root = make_toolkit(tmp_path / "cuda-12.4", version_json=VERSION_JSON_12_4, nvcc_output=NVCC_12_4)
    info = toolkits.nvcc_version(env_with([root / "bin"]))
    assert info == {"path": str((root / "bin" / "nvcc").resolve()), "version": "12.4",
                    "full_version": "12.4.131", "root": str(root.resolve()), "problem": None}


@posix_only
def test_nvcc_wrapper_outside_a_toolkit(tmp_path):
    nvcc = make_nvcc(tmp_path / "usr" / "bin")
    info = toolkits.nvcc_version(env_with([nvcc.parent]))
    assert info["version"] == "12.4" and info["full_version"] == "12.4.131"
    assert info["root"] is None and info["problem"] is None


@posix_only
def test_nvcc_release_without_build_number(tmp_path):
    nvcc = make_nvcc(tmp_path / "bin", "Cuda compilation tools, release 10.2\n")
    info = toolkits.nvcc_version(env_with([nvcc.parent]))
    assert (info["version"], info["full_version"], info["problem"]) == ("10.2", "10.2", None)


@posix_only
def test_nvcc_failing(tmp_path):
    nvcc = make_nvcc(tmp_path / "bin", body="echo 'nvcc fatal   : something broke' >&2\nexit 1\n")
    info = toolkits.nvcc_version(env_with([nvcc.parent]))
    assert info["version"] is None
    assert "exited with 1" in info["problem"] and "something broke" in info["problem"]


@posix_only
def test_nvcc_printing_nonsense(tmp_path):
    nvcc = make_nvcc(tmp_path / "bin", "hello\n")
    info = toolkits.nvcc_version(env_with([nvcc.parent]))
    assert info["version"] is None and "no 'release" in info["problem"]


@posix_only
def test_nvcc_hanging_is_cut_off(tmp_path):
    # not `exec sleep`: the shell's child keeps the pipe open, so the whole group must be killed
    nvcc = make_nvcc(tmp_path / "bin", body="sleep 30\necho never\n")
    t0 = time.monotonic()
    info = toolkits.nvcc_version(env_with([nvcc.parent]), timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert info["version"] is None and "did not finish in 0.5 s" in info["problem"]


@posix_only
def test_nvcc_not_executable(tmp_path):
    nvcc = make_nvcc(tmp_path / "bin")
    nvcc.chmod(0o644)
    # shutil.which skips non-executable files: as good as absent
    assert toolkits.nvcc_version(env_with([nvcc.parent])) is None


def test_default_timeout_is_five_seconds():
    assert toolkits.NVCC_TIMEOUT == 5.0


# ---- find_toolkits --------------------------------------------------------------------------

def test_nothing_found(tmp_path):
    assert toolkits.find_toolkits(env={"PATH": str(tmp_path)}, roots=[str(tmp_path / "cuda*")]) == []


@posix_only
def test_all_sources_deduplicated(tmp_path):
    pf = tmp_path / "Program Files" / "NVIDIA GPU Computing Toolkit" / "CUDA"
    v124 = make_toolkit(pf / "v12.4", version_json=VERSION_JSON_12_4, nvcc_output=NVCC_12_4)
    v118 = make_toolkit(pf / "v11.8", version_json={"cuda": {"version": "11.8.0"},
                                                    "cuda_cudart": {"version": "11.8.89"}})
    v126 = make_toolkit(pf / "v12.6", cudart=12060)
    env = env_with([v124 / "bin"], CUDA_PATH=v124, CUDA_PATH_V12_4=v124, CUDA_PATH_V11_8=v118,
                   ProgramFiles=tmp_path / "Program Files")
    roots = toolkits.usual_roots(env, windows=True)
    assert roots == [str(pf / "v*")]

    found = toolkits.find_toolkits(env=env, roots=roots)
    assert [(t["path"], t["version"], t["source"]) for t in found] == [
        (str(v124.resolve()), "12.4", "nvcc"),
        (str(v118.resolve()), "11.8", "CUDA_PATH_V11_8"),
        (str(v126.resolve()), "12.6", "usual location"),
    ]
    assert found[0]["sources"] == ["nvcc", "CUDA_PATH", "CUDA_PATH_V12_4", "usual location"]
    assert found[0]["full_version"] == "12.4.131"  # nvcc's own, as the user sees it
    assert found[1]["full_version"] == "11.8.89"
    assert found[1]["sources"] == ["CUDA_PATH_V11_8", "usual location"]
    assert all(t["problem"] is None for t in found)


def test_cuda_path_variables_newest_first(tmp_path):
    a = make_toolkit(tmp_path / "a", cudart=11080)
    b = make_toolkit(tmp_path / "b", cudart=12040)
    c = make_toolkit(tmp_path / "c", cudart=12100)
    env = {"PATH": "", "CUDA_PATH_V11_8": str(a), "CUDA_PATH_V12_10": str(c), "cuda_path_v12_4": str(b)}
    found = toolkits.find_toolkits(env=env, roots=[])
    assert [(t["source"], t["version"]) for t in found] == [
        ("CUDA_PATH_V12_10", "12.10"), ("CUDA_PATH_V12_4", "12.4"), ("CUDA_PATH_V11_8", "11.8")]


def test_stale_cuda_path_is_reported(tmp_path):
    (tmp_path / "not-a-toolkit").mkdir()
    (tmp_path / "a-file").write_text("x")
    env = {"PATH": "", "CUDA_PATH": str(tmp_path / "removed" / "v12.1"),
           "CUDA_PATH_V12_2": str(tmp_path / "not-a-toolkit"), "CUDA_PATH_V12_3": str(tmp_path / "a-file")}
    found = toolkits.find_toolkits(env=env, roots=[])
    by_source = {t["source"]: t for t in found}
    assert by_source["CUDA_PATH"]["version"] is None
    assert by_source["CUDA_PATH"]["problem"] == "CUDA_PATH points to a missing folder"
    assert "not a CUDA toolkit" in by_source["CUDA_PATH_V12_2"]["problem"]
    assert "a file, not a folder" in by_source["CUDA_PATH_V12_3"]["problem"]


@posix_only
def test_linux_symlinked_cuda_dedup(tmp_path):
    real = make_toolkit(tmp_path / "cuda-12.4", version_json=VERSION_JSON_12_4)
    (tmp_path / "cuda").symlink_to(real)
    make_toolkit(tmp_path / "cuda-11.8", cudart=11080, header_under_targets=True)
    (tmp_path / "cuda.sh").write_text("# not a folder\n")
    opt = make_toolkit(tmp_path / "opt" / "cuda", cudart=12080)
    found = toolkits.find_toolkits(env={"PATH": ""},
                                   roots=[str(tmp_path / "cuda*"), str(opt), str(tmp_path / "nope")])
    assert [(Path(t["path"]).name, t["version"]) for t in found] == [
        ("cuda-12.4", "12.4"), ("cuda-11.8", "11.8"), ("cuda", "12.8")]
    assert all(t["source"] == "usual location" and t["sources"] == ["usual location"] for t in found)
    assert found[0]["full_version"] == "12.4.127"


@posix_only
def test_failing_nvcc_in_a_toolkit_still_gets_folder_version(tmp_path):
    root = make_toolkit(tmp_path / "cuda-12.4", version_json=VERSION_JSON_12_4)
    make_nvcc(root / "bin", body="exit 3\n")
    found = toolkits.find_toolkits(env=env_with([root / "bin"]), roots=[])
    assert len(found) == 1
    assert found[0]["source"] == "nvcc" and found[0]["version"] == "12.4"
    assert "exited with 3" in found[0]["problem"]


@posix_only
def test_wrapper_nvcc_gets_its_own_entry(tmp_path):
    real = make_toolkit(tmp_path / "cuda-13.0", cudart=13000)
    wrapper = make_nvcc(tmp_path / "usr-local-bin", body=f"exec {real}/bin/nvcc \"$@\"\n")
    make_nvcc(real / "bin", NVCC_12_4.replace("12.4", "13.0").replace("V13.0.131", "V13.0.88"))
    found = toolkits.find_toolkits(env=env_with([wrapper.parent]), roots=[str(tmp_path / "cuda*")])
    assert [(t["path"], t["version"], t["source"]) for t in found] == [
        (str(wrapper.resolve()), "13.0", "nvcc"), (str(real.resolve()), "13.0", "usual location")]
    assert found[0]["full_version"] == "13.0.88"


def test_usual_roots_defaults():
    assert toolkits.usual_roots({}, windows=False) == ["/usr/local/cuda*", "/opt/cuda"]
    win = toolkits.usual_roots({}, windows=True)[0]
    assert win.startswith("C:\\Program Files") and win.endswith("v*")


def test_default_env_and_roots_do_not_raise():
    for t in toolkits.find_toolkits():
        assert set(t) == {"path", "version", "full_version", "source", "sources", "problem"}
