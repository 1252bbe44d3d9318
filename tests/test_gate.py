"""Each rule of the compatibility gate, through the real CLI: refused (exit 3) or warned
with its message, and nothing written on refusal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from kit import builders
import pytest
from kit.nvmlstub import write_answers


def snapshot(*roots: Path) -> dict:
    """Every file under the roots (logs excluded) with its bytes' hash and mtime."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath).name in ("logs", "locks", "inspect"):  # runtime files and caches
                dirnames[:] = []
                continue
            for f in filenames:
                p = Path(dirpath) / f
                if p.is_symlink():
                    continue
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


@pytest.fixture
def win_cu121(tmp_path, build):
    """A venv with torch 2.3.1+cu121 (Windows layout, cuDNN 8.8.1.3), added as target 't'."""
    w = build.torch_wheel(tmp_path / "w", version="2.3.1+cu121", cuda="12.1", layout="windows",
                          cudnn="8.8.1.3")
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, w)
    return venv


def bind_behind_the_gates_back(tk_home, target: str, bundle_id: str) -> None:
    """A binding `use` would refuse, as an older torchkeeper (or a torch upgraded after `use`)
    leaves it: apply must still refuse it."""
    f = tk_home / "data" / "state.json"
    st = json.loads(f.read_text())
    st["targets"][target]["bundle"] = bundle_id
    f.write_text(json.dumps(st))


def refused(run_tk, venv, tk_home, sources, rule, words, extra=(), env=None):
    """Create a bundle from sources; `use` refuses to choose it, and so do apply and plan."""
    r = run_tk("target", "add", venv, "--name", "t")
    assert r.rc == 0, r
    r = run_tk("bundle", "create", *sources, *extra, "--json")
    assert r.rc == 0, r
    name, bid = r.json()["name"], r.json()["id"]
    before = snapshot(builders.site_packages(venv))
    u = run_tk("use", name, "--json")           # every target: it fits none, so binds none
    assert u.rc == 3, u
    assert u.json()["targets"] == [] and list(u.json()["skipped"]) == ["t"], u
    u = run_tk("use", name, "--target", "t")    # one target: refused with the gate's words
    assert u.rc == 3 and "compatibility gate refuses" in u.err and "hint: " in u.err, u
    for w in words[:1]:
        assert w in u.err, u
    assert run_tk("status", "--json").json()["targets"][0]["bundle"] is None
    assert snapshot(builders.site_packages(venv)) == before
    bind_behind_the_gates_back(tk_home, "t", bid)
    r = run_tk("apply", "--force", extra_env=env)
    assert r.rc == 3, r
    for w in words:
        assert w in r.err, r
    assert "Traceback" not in r.err
    assert [ln for ln in r.err.splitlines() if ln.startswith("hint: ")], r
    assert snapshot(builders.site_packages(venv)) == before
    p = run_tk("plan", "t", "--json", extra_env=env)
    assert p.rc == 3, p
    plan = p.json()
    assert plan["verdict"] == "refused"
    assert rule in [x["rule"] for x in plan["reasons"] if x["level"] == "refuse"]
    return plan


def test_platform_rule(tmp_path, build, run_tk, tk_home, win_cu121):
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="linux")
    refused(run_tk, win_cu121, tk_home, [arch], "platform", ["linux libraries", "Windows DLL"])


def test_cuda_major_rule_cudnn_for_another_cuda(tmp_path, build, run_tk, tk_home, win_cu121):
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=11, platform="windows")
    plan = refused(run_tk, win_cu121, tk_home, [arch], "cuda-major",
                   ["built for CUDA 11", "CUDA 12.1", "for CUDA 12"])
    assert any("cuda12" in (x["hint"] or "") for x in plan["reasons"])


def test_cuda_major_rule_toolkit(tmp_path, build, run_tk, tk_home, win_cu121):
    tk = build.cuda_toolkit(tmp_path / "src", version="11.8.89", platform="windows")
    refused(run_tk, win_cu121, tk_home, [tk], "cuda-major", ["CUDA 11.8", "CUDA 12.1"])


def test_cpu_build_is_refused(tmp_path, build, run_tk, tk_home):
    w = build.torch_wheel(tmp_path / "w", version="2.3.1+cpu", cuda=None, layout="windows", cudnn=None)
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, w)
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    refused(run_tk, venv, tk_home, [arch], "cuda-major", ["CPU build"])


def test_cudnn_major_rule(tmp_path, build, run_tk, tk_home, win_cu121):
    """Copying cuDNN 9 next to cuDNN 8 did nothing for users: refused, with what to do."""
    arch = build.cudnn_archive(tmp_path / "src", version="9.5.1.17", cuda_major=12, platform="windows")
    plan = refused(run_tk, win_cu121, tk_home, [arch], "cudnn-version",
                   ["cuDNN 9.5.1", "same major", "cuDNN 8"])
    rules = [x["rule"] for x in plan["reasons"]]
    assert "counterpart" in rules  # cudnn64_9.dll has no counterpart in a cuDNN 8 torch
    hint = next(x["hint"] for x in plan["reasons"] if x["rule"] == "cudnn-version")
    assert "cuDNN 8.x for CUDA 12" in hint


def test_cudnn_minor_rule(tmp_path, build, run_tk, tk_home, win_cu121):
    """PyTorch refuses a runtime cuDNN older (minor) than the one it was built with."""
    arch = build.cudnn_archive(tmp_path / "src", version="8.7.0.84", cuda_major=12, platform="windows")
    refused(run_tk, win_cu121, tk_home, [arch], "cudnn-version",
            ["8.7.0", "older than the 8.8.1.3", "minor >= 8.8"])


def test_counterpart_rule(tmp_path, build, run_tk, tk_home):
    """A Linux torch that loads cuDNN from nvidia/cudnn but has no nvidia cuBLAS/cudart
    installed: a toolkit's cudart and cuBLAS would be libraries torch never loads."""
    w = build.torch_wheel(tmp_path / "w", version="2.4.1+cu124", cuda="12.4", layout="linux-nvidia",
                          cudnn="9.1.0.70")
    nv = build.nvidia_wheel(tmp_path / "w", lib="cudnn", cuda_major=12, version="9.1.0.70")
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, w, nv)
    tk = build.cuda_toolkit(tmp_path / "src", version="12.4.127", platform="linux")
    plan = refused(run_tk, venv, tk_home, [tk], "counterpart",
                   ["loads no file like libcublas.so.12", "libcudart.so.12"])
    assert {f["action"] for f in plan["files"]} == {"no counterpart"}


def test_mixed_family_rule(tmp_path, build, run_tk, tk_home, win_cu121):
    """Half of cuDNN (3 of 7 files) would leave torch with two cuDNN releases."""
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    part = tmp_path / "partial"
    (part / "bin").mkdir(parents=True)
    shutil.copytree(arch / "include", part / "include")
    for n in ("cudnn64_8.dll", "cudnn_ops_infer64_8.dll", "cudnn_cnn_infer64_8.dll"):
        shutil.copy(arch / "bin" / n, part / "bin" / n)
    refused(run_tk, win_cu121, tk_home, [part], "mixed-family",
            ["replaces 3 of the 7 cuDNN files", "cudnn_adv_infer64_8.dll", "mix two cuDNN releases"])


def test_driver_too_old_needs_force(tmp_path, build, run_tk, tk_home, win_cu121, nvml_stub):
    """A driver whose CUDA is older than the bundle's is a warning that --force overrides."""
    answers = tmp_path / "nvml.txt"
    write_answers(answers, driver="531.14", cuda=12010, gpus=[("NVIDIA GeForce RTX 4070", "GPU-1")])
    env = {"LD_LIBRARY_PATH": nvml_stub, "TK_NVML_STUB_FILE": answers}
    tk = build.cuda_toolkit(tmp_path / "src", version="12.4.127", platform="windows")
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    assert run_tk("target", "add", win_cu121, "--name", "t").rc == 0
    assert run_tk("use", run_tk("bundle", "create", tk, arch, "--json").json()["name"]).rc == 0
    before = snapshot(builders.site_packages(win_cu121))
    r = run_tk("apply", extra_env=env)
    assert r.rc == 3, r
    assert "driver 531.14 supports CUDA 12.1" in r.err and "--force" in r.err
    assert snapshot(builders.site_packages(win_cu121)) == before
    plan = run_tk("plan", "t", "--json", extra_env=env).json()
    assert plan["verdict"] == "needs-force"
    assert [x["level"] for x in plan["reasons"] if x["rule"] == "driver"] == ["force"]
    assert "verdict: needs-force" in run_tk("plan", "t", extra_env=env).out
    r = run_tk("apply", "--force", extra_env=env)
    assert r.rc == 0, r
    st = run_tk("status", "--json", extra_env=env).json()
    assert st["driver"]["version"] == "531.14" and st["driver"]["cuda"] == "12.1"
    assert st["driver"]["gpus"][0]["name"] == "NVIDIA GeForce RTX 4070"
    # a new enough driver: no driver warning at all
    write_answers(answers, driver="551.86", cuda=12040, gpus=[("NVIDIA GeForce RTX 4070", "GPU-1")])
    plan = run_tk("plan", "t", "--json", extra_env=env).json()
    assert "driver" not in [x["rule"] for x in plan["reasons"]]
    assert plan["verdict"] == "ok"


def test_no_driver_is_a_note_everywhere(tmp_path, build, run_tk, tk_home, win_cu121):
    """One word for it: JSON level "note", plan text "note [driver]", verdict ok, apply goes on."""
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    assert run_tk("target", "add", win_cu121, "--name", "t").rc == 0
    assert run_tk("use", run_tk("bundle", "create", arch, "--json").json()["name"]).rc == 0
    empty = tmp_path / "nolib"
    empty.mkdir()
    env = {"LD_LIBRARY_PATH": empty}
    plan = run_tk("plan", "t", "--json", extra_env=env).json()
    assert plan["verdict"] == "ok"
    assert [(x["rule"], x["level"]) for x in plan["reasons"]] == [("driver", "note")]
    text = run_tk("plan", "t", extra_env=env).out
    assert "note [driver]" in text and "verdict: ok (1 note)" in text and "warning" not in text
    assert run_tk("apply", extra_env=env).rc == 0


def test_dry_run_writes_nothing(tmp_path, build, run_tk, tk_home, win_cu121):
    arch = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    assert run_tk("target", "add", win_cu121, "--name", "t").rc == 0
    assert run_tk("use", run_tk("bundle", "create", arch, "--json").json()["name"]).rc == 0
    before = snapshot(builders.site_packages(win_cu121), tk_home)
    r = run_tk("apply", "--dry-run", "--json")
    assert r.rc == 0 and r.json()[0]["action"] == "dry run"
    assert len([f for f in r.json()[0]["plan"]["files"] if f["action"] == "replace"]) == 7
    assert snapshot(builders.site_packages(win_cu121), tk_home) == before
