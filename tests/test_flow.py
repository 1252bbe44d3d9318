"""The user's whole story, per layout, through the real CLI, real venvs and real pip:
apply -> verify 0 -> pip install --force-reinstall -> verify 1 (drifted) -> apply -> verify 0
-> revert -> every file equals RECORD's hash."""

from __future__ import annotations

import json
from pathlib import Path

from kit import builders
import pytest
from kit.flow import lib_hashes, record_libs


def venv_with_torch(tmp_path, build, **wheel):
    """A real venv with a torch-shaped wheel installed by real pip: (wheel, venv)."""
    w = build.torch_wheel(tmp_path / "w", **wheel)
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, w)
    return w, venv


def cycle(run_tk, venv: Path, wheels: list, sources: list, dists, bundle_files_expected: int):
    sp = builders.site_packages(venv)
    stock = record_libs(sp, dists)
    assert stock, "the fixture installed no managed libraries"
    assert lib_hashes(sp, stock) == stock

    r = run_tk("target", "add", venv, "--name", "webui", "--json")
    assert r.rc == 0, r
    info = r.json()["info"]
    assert set(f["rel"] for f in info["libs"].values()) == set(stock)

    r = run_tk("bundle", "create", *sources, "--json")
    assert r.rc == 0, r
    m = r.json()
    assert len(m["files"]) == bundle_files_expected
    r = run_tk("use", m["name"])
    assert r.rc == 0, r

    r = run_tk("apply", "--json")
    assert r.rc == 0, r
    assert r.json()[0]["action"] == "applied"
    want = {f["name"]: f["sha256"] for f in m["files"]}
    applied = {rel: h for rel, h in lib_hashes(sp, stock).items()}
    changed = {rel for rel in stock if applied[rel] != stock[rel]}
    assert changed and all(applied[rel] == want[rel.rsplit("/", 1)[-1]] for rel in changed)
    assert run_tk("verify").rc == 0
    assert run_tk("status", "--json").json()["targets"][0]["state"] == "patched"

    builders.pip_install(venv, *wheels, force_reinstall=True)
    assert lib_hashes(sp, stock) == stock  # pip really restored the stock files
    r = run_tk("verify", "--json")
    assert r.rc == 1, r
    assert r.json()[0]["state"] == "drifted"
    assert run_tk("status", "--json").json()["targets"][0]["state"] == "drifted"

    r = run_tk("apply")
    assert r.rc == 0, r
    assert run_tk("verify").rc == 0
    assert run_tk("verify", "--full").rc == 0

    r = run_tk("revert", "--json")
    assert r.rc == 0, r
    assert r.json()[0]["action"] == "reverted"
    assert lib_hashes(sp, stock) == stock
    assert run_tk("verify", "--full").rc == 0
    st = run_tk("status", "--json").json()["targets"][0]
    assert st["state"] == "stock"
    return m


def test_windows_layout_cudnn8_cuda12(tmp_path, build, run_tk):
    w, venv = venv_with_torch(tmp_path, build, version="2.3.1+cu121", cuda="12.1", layout="windows",
                              cudnn="8.8.1.3")
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    tk = build.cuda_toolkit(tmp_path / "src", version="12.4.127", platform="windows")
    m = cycle(run_tk, venv, [w], [arch, tk], ["torch"], 10)
    assert m["cudnn"].startswith("8.9.7") and m["cuda"] == "12.4"


def test_windows_layout_cudnn9_cuda11(tmp_path, build, run_tk):
    w, venv = venv_with_torch(tmp_path, build, version="2.4.1+cu118", cuda="11.8", layout="windows",
                              cudnn="9.1.0.70")
    arch = build.cudnn_archive(tmp_path / "src", version="9.5.1.17", cuda_major=11, platform="windows")
    cycle(run_tk, venv, [w], [arch], ["torch"], 8)


def test_windows_cudnn9_newer_minor_adds_siblings_and_revert_removes_them(tmp_path, build, run_tk):
    """cuDNN 9.10+ ships two more sub-libraries: they are added beside the family and
    removed again on revert (torch on Windows loads every DLL in torch\\lib)."""
    w, venv = venv_with_torch(tmp_path, build, version="2.5.1+cu124", cuda="12.4", layout="windows",
                              cudnn="9.1.0.70")
    sp = builders.site_packages(venv)
    arch = build.cudnn_archive(tmp_path / "src", version="9.10.2.21", cuda_major=12, platform="windows")
    assert run_tk("target", "add", venv, "--name", "forge").rc == 0
    m = run_tk("bundle", "create", arch, "--json").json()
    assert len(m["files"]) == 10
    plan = run_tk("plan", "forge", "--bundle", m["name"], "--json").json()
    actions = {f["key"]: f["action"] for f in plan["files"]}
    assert actions["cudnn_ext64_9.dll"] == "add" and actions["cudnn64_9.dll"] == "replace"
    assert run_tk("use", m["name"]).rc == 0
    r = run_tk("apply")
    assert r.rc == 0, r
    assert (sp / "torch/lib/cudnn_ext64_9.dll").is_file()
    assert run_tk("revert").rc == 0, r
    assert not (sp / "torch/lib/cudnn_ext64_9.dll").exists()
    assert not (sp / "torch/lib/cudnn_engines_tensor_ir64_9.dll").exists()
    stock = record_libs(sp)
    assert lib_hashes(sp, stock) == stock


def test_linux_nvidia_layout(tmp_path, build, run_tk):
    """Current Linux wheels: torch loads cuDNN/cuBLAS from site-packages/nvidia/<lib>/lib."""
    w = build.torch_wheel(tmp_path / "w", version="2.4.1+cu124", cuda="12.4", layout="linux-nvidia",
                          cudnn="9.1.0.70")
    nv = [build.nvidia_wheel(tmp_path / "w", lib="cudnn", cuda_major=12, version="9.1.0.70"),
          build.nvidia_wheel(tmp_path / "w", lib="cublas", cuda_major=12, version="12.4.2.65"),
          build.nvidia_wheel(tmp_path / "w", lib="cuda_runtime", cuda_major=12, version="12.4.99")]
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, w, *nv)
    newer = build.nvidia_wheel(tmp_path / "new", lib="cudnn", cuda_major=12, version="9.5.1.17")
    m = cycle(run_tk, venv, [w, *nv], [newer],
              ["torch", "nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"], 8)
    assert m["cudnn"] == "9.5.1.17" and m["cudnn_cuda_major"] == 12


def test_linux_torchlib_layout(tmp_path, build, run_tk):
    """Older '+cuXXX' Linux wheels bundled libcudnn.so.8 inside torch/lib."""
    w, venv = venv_with_torch(tmp_path, build, version="1.13.1+cu117", cuda="11.7", layout="linux-torchlib",
                              cudnn="8.5.0.96")
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=11, platform="linux")
    cycle(run_tk, venv, [w], [arch], ["torch"], 7)


def test_portable_python_embeded(tmp_path, build, run_tk):
    """ComfyUI portable: python_embeded/Lib/site-packages, added by its folder or the app's."""
    w = build.torch_wheel(tmp_path / "w", version="2.3.1+cu121", cuda="12.1", layout="windows",
                          cudnn="8.8.1.3")
    app = tmp_path / "ComfyUI_windows_portable"
    emb = builders.portable_python(app)
    sp = emb / "Lib" / "site-packages"
    builders.pip_install_target(sp, w)
    r = run_tk("target", "add", app, "--json")
    assert r.rc == 0, r
    assert r.json()["name"] == "ComfyUI_windows_portable"
    assert r.json()["site_packages"] == str(sp)
    assert r.json()["info"]["platform"] == "windows"
    # the same environment again, by another of its paths, is refused
    r = run_tk("target", "add", sp / "torch")
    assert r.rc == 2 and "already target" in r.err


@pytest.mark.parametrize("which", ["venv", "site-packages", "torch", "app"])
def test_target_add_resolves_every_kind_of_path(tmp_path, build, run_tk, which):
    w = build.torch_wheel(tmp_path / "w", version="2.3.1+cu121", cuda="12.1", layout="linux-torchlib",
                          cudnn="8.8.1.3")
    app = tmp_path / "stable-diffusion-webui"
    venv = builders.make_venv(app / "venv")
    builders.pip_install(venv, w)
    sp = builders.site_packages(venv)
    path = {"venv": venv, "site-packages": sp, "torch": sp / "torch", "app": app}[which]
    r = run_tk("target", "add", path, "--json")
    assert r.rc == 0, r
    d = r.json()
    assert d["site_packages"] == str(sp)
    assert d["name"] == "stable-diffusion-webui"
    assert d["info"]["torch_version"] == "2.3.1+cu121" and d["info"]["torch_cuda"] == "12.1"
    # torch/lib/libcudnn.so.8 says only its major; no METADATA pin in these old wheels
    assert d["info"]["cudnn_build"] == "8"


def test_status_reports_versions_and_bundle(tmp_path, build, run_tk):
    w, venv = venv_with_torch(tmp_path, build, version="2.3.1+cu121", cuda="12.1", layout="windows",
                              cudnn="8.8.1.3")
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    assert run_tk("target", "add", venv, "--name", "a1111").rc == 0
    name = run_tk("bundle", "create", arch, "--json").json()["name"]
    assert run_tk("use", name, "--target", "a1111").rc == 0
    assert run_tk("apply", "a1111").rc == 0
    st = run_tk("status", "--json").json()
    t = st["targets"][0]
    assert st["driver"]["state"] == "no_driver" and st["driver"]["message"]  # no NVIDIA driver here
    assert t["name"] == "a1111" and t["state"] == "patched"
    assert t["torch_version"] == "2.3.1+cu121" and t["torch_cuda"] == "12.1"
    assert t["cudnn_stock"] == "8.8.1.3"
    assert t["cudnn_now"].startswith("8.9.7")  # read from the DLL's version resource
    assert t["bundle"]["name"] == name
    assert t["path"] == str(venv.resolve())
    # apply twice is a no-op that says so
    r = run_tk("apply", "--json")
    assert r.rc == 0 and r.json()[0]["action"] == "already applied"
    # the event log has what happened
    kinds = [e["event"] for e in run_tk("log", "--json").json()]
    assert "applied" in kinds and "target added" in kinds


def test_quick_verify_sees_a_manual_copy(tmp_path, build, run_tk):
    """Another tool copies a file over the overlay: quick verify (stat data) notices."""
    w, venv = venv_with_torch(tmp_path, build, version="2.3.1+cu121", cuda="12.1", layout="windows",
                              cudnn="8.8.1.3")
    sp = builders.site_packages(venv)
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    assert run_tk("target", "add", venv, "--name", "k").rc == 0
    assert run_tk("use", run_tk("bundle", "create", arch, "--json").json()["name"]).rc == 0
    assert run_tk("apply").rc == 0
    p = sp / "torch/lib/cudnn_ops_infer64_8.dll"
    data = p.read_bytes()
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = run_tk("verify", "--json")
    assert r.rc == 1 and "cudnn_ops_infer64_8.dll" in json.dumps(r.json())
    # now it is foreign: apply refuses without --force, and keeps its bytes in the backup
    r = run_tk("apply")
    assert r.rc == 3 and "neither the stock file nor an overlay" in r.err and "--force" in r.err
    r = run_tk("apply", "--force")
    assert r.rc == 0, r
    assert run_tk("verify", "--full").rc == 0
