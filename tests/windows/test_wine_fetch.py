"""`bundle fetch --for` under Wine: torchkeeper and pip are the Windows ones (python.org's
CPython 3.11), the target a Windows venv whose torch the Windows pip installed; the nvidia-*
wheels come from a --find-links folder (a Z:\\ path) or from the PEP 503 index on 127.0.0.1
(tests/kit/pkgindex.py). Then the fetched bundle is used, applied, verified and reverted, checked
with tests/kit/wayback.py. Only win.run's clean environment reaches the Windows pip: no Linux PIP_*."""

from __future__ import annotations

from kit import pkgindex
from kit.wayback import NAME, Target, assert_patched, assert_stock, backup_files, ok, record_libs

CUDNN8 = dict(version="2.3.1+cu121", cuda="12.1", layout="windows", cudnn="8.8.1.3")
# (lib, version): cuDNN 9 is another major than torch's 8, so --for leaves it; no NVML under
# Wine, so no driver rule: the newest CUDA 12 release the index has (12.4) is taken
WHEELS = [("cudnn", "8.9.7.29"), ("cudnn", "9.5.1.17"), ("cublas", "12.4.5.8"), ("cuda_runtime", "12.4.127")]


def _pip_env(**more):
    return {"PIP_CONFIG_FILE": "nul", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_RETRIES": "0",
            "PIP_TIMEOUT": "10", "TORCHKEEPER_NO_PROGRESS": "1", **more}


def test_fetch_for_a_windows_venv_then_apply_verify_revert(win, build, tmp_path):
    links = tmp_path / "links"
    for lib, version in WHEELS:
        build.nvidia_wheel(links, lib=lib, cuda_major=12, version=version, platform="windows", tagged=True)
    build.nvidia_wheel(links, lib="cudnn", cuda_major=12, version="8.9.7.29", platform="linux", tagged=True)
    whl = build.torch_wheel(tmp_path / "wheels", **CUDNN8)
    venv = win.venv(tmp_path / "stable-diffusion-webui" / "venv")
    win.pip_install(venv, whl)
    sp = win.site_packages(venv)
    ok(win.tk("target", "add", venv, "--name", NAME))
    t = Target(venv, sp, win.home, [whl], record_libs(sp))

    # the Windows pip reaches the index on 127.0.0.1 through Wine: suggest lists its versions
    with pkgindex.PackageIndex(links) as idx:
        s = ok(win.tk("suggest", NAME, "--json", env=_pip_env(PIP_INDEX_URL=idx.url), timeout=240)).json()
        assert {f: c["version"] for f, c in s["chosen"].items()} == \
            {"cudnn": "8.9.7.29", "cublas": "12.4.5.8", "cudart": "12.4.127"}, s
        assert idx.downloads == {}    # suggesting downloads nothing

    r = ok(win.tk("bundle", "fetch", "--for", NAME, "--name", "fetched", "--json",
                  env=_pip_env(PIP_NO_INDEX="1", PIP_FIND_LINKS=links), timeout=300))
    out = r.json()
    assert {w["package"]: w["version"] for w in out["wheels"]} == {
        "nvidia-cudnn-cu12": "8.9.7.29", "nvidia-cublas-cu12": "12.4.5.8", "nvidia-cuda-runtime-cu12": "12.4.127"}
    assert all(w["file"].endswith("-py3-none-win_amd64.whl") and w["downloaded"] for w in out["wheels"]), out
    why = {(c["package"], c["version"]): c["why"] for c in out["suggestion"]["candidates"]}
    assert "same major" in why[("nvidia-cudnn-cu12", "9.5.1.17")], why
    m = out["bundle"]
    assert m["platform"] == "windows" and m["cudnn"] == "8.9.7.29" and m["cuda"] == "12.4"
    assert win.unix(out["wheels"][0]["file"]).is_relative_to(tmp_path / "tk-home" / "cache" / "wheels")
    tmp = win.home / "cache" / "tmp"
    assert not tmp.is_dir() or list(tmp.iterdir()) == []

    t.bundles["fetched"] = {"id": m["id"], "files": {f["name"]: f["sha256"] for f in m["files"]}}
    ok(win.tk("use", "fetched", "--target", NAME))
    ok(win.tk("apply"))
    assert_patched(t, win.tk, "fetched")
    assert win.tk("verify").rc == 0
    ok(win.tk("revert"))
    assert_stock(t, win.tk)       # every file is RECORD's bytes again
    assert backup_files(t) == []
