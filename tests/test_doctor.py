"""doctor: the user's manual checks (nvidia-smi, nvcc -V, torch versions), statically and by
running the target's own Python; and discover through the CLI."""

from __future__ import annotations

from kit import builders
from kit.nvmlstub import write_answers

# torch.backends.cudnn.version() for the stand-in torch: asks the cuDNN library torch loads,
# as the real one does (the test libraries export cudnnGetVersion).
CUDNN_PROBE = '''
import ctypes, os
def version():
    here = os.path.dirname(os.path.abspath(__file__))
    sp = os.path.normpath(os.path.join(here, "..", "..", ".."))
    lib = ctypes.CDLL(os.path.join(sp, "nvidia", "cudnn", "lib", "libcudnn.so.9"))
    lib.cudnnGetVersion.restype = ctypes.c_size_t
    return int(lib.cudnnGetVersion())
'''


def linux_venv(tmp_path, build):
    w = build.torch_wheel(tmp_path / "w", version="2.4.1+cu124", cuda="12.4", layout="linux-nvidia",
                          cudnn="9.1.0.70")
    nv = build.nvidia_wheel(tmp_path / "w", lib="cudnn", cuda_major=12, version="9.1.0.70")
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, w, nv)
    sp = builders.site_packages(venv)
    (sp / "torch/backends/cudnn/__init__.py").write_text(CUDNN_PROBE)
    return venv


def test_doctor_probe_sees_the_overlay(tmp_path, build, run_tk, nvml_stub):
    answers = tmp_path / "nvml.txt"
    write_answers(answers, driver="551.86", cuda=12040, gpus=[("NVIDIA GeForce RTX 4070", "GPU-42")])
    env = {"LD_LIBRARY_PATH": nvml_stub, "TK_NVML_STUB_FILE": answers}
    venv = linux_venv(tmp_path, build)
    assert run_tk("target", "add", venv, "--name", "kohya").rc == 0

    r = run_tk("doctor", "--json", "--probe", extra_env=env)
    assert r.rc == 0, r
    d = r.json()
    assert d["driver"]["version"] == "551.86" and d["driver"]["cuda"] == "12.4"
    assert d["driver"]["gpus"][0]["name"] == "NVIDIA GeForce RTX 4070"
    assert isinstance(d["toolkits"], list)
    # which signal the agent watches for driver changes (none here: no NVIDIA kernel module)
    assert d["driver_signal"].startswith("none:") and "/sys/module/nvidia/version" in d["driver_signal"]
    sig = run_tk("doctor", "--json", extra_env={**env, "TORCHKEEPER_TEST_DRIVER_SIGNAL": answers}).json()
    assert sig["driver_signal"].startswith("the OS: ") and str(answers) in sig["driver_signal"]
    t = d["targets"][0]
    assert t["torch_version"] == "2.4.1+cu124" and t["torch_cuda"] == "12.4"
    assert t["cudnn_now"] == "9.1.0.70" and t["cudnn_now_int"] == 90100
    assert t["driver_supports_torch_cuda"] is True
    assert t["probe"]["ok"] and t["probe"]["torch_version"] == "2.4.1+cu124"
    assert t["probe"]["cudnn"] == 90100  # what `import torch` in that venv really reports

    newer = build.nvidia_wheel(tmp_path / "new", lib="cudnn", cuda_major=12, version="9.5.1.17")
    assert run_tk("use", run_tk("bundle", "create", newer, "--json").json()["name"]).rc == 0
    assert run_tk("apply", extra_env=env).rc == 0
    t = run_tk("doctor", "--json", "--probe", extra_env=env).json()["targets"][0]
    assert t["probe"]["cudnn"] == 90501
    assert t["cudnn_now"] == "9.5.1.17" and t["cudnn_stock"] == "9.1.0.70"

    text = run_tk("doctor", "--probe", extra_env=env).out
    assert "driver 551.86, supports CUDA up to 12.4" in text
    assert "cuDNN 90501" in text


def test_doctor_without_driver_and_with_a_windows_target(tmp_path, build, run_tk):
    w = build.torch_wheel(tmp_path / "w", version="2.3.1+cu121", cuda="12.1", layout="windows",
                          cudnn="8.8.1.3")
    app = tmp_path / "ComfyUI_windows_portable"
    emb = builders.portable_python(app)
    builders.pip_install_target(emb / "Lib" / "site-packages", w)
    assert run_tk("target", "add", app).rc == 0
    empty = tmp_path / "nolib"
    empty.mkdir()
    r = run_tk("doctor", "--json", "--probe", extra_env={"LD_LIBRARY_PATH": empty})
    assert r.rc == 0, r
    d = r.json()
    assert d["driver"]["state"] == "no_driver"
    t = d["targets"][0]
    assert t["cudnn_now"] == "8.8.1.3" and t["cudnn_now_int"] == 8801
    assert not t["probe"]["ok"] and "Windows interpreter" in t["probe"]["error"]
    text = run_tk("doctor", extra_env={"LD_LIBRARY_PATH": empty}).out
    assert "no NVIDIA driver found" in text


def test_discover_add_through_the_cli(tmp_path, build, run_tk):
    w = build.torch_wheel(tmp_path / "w", version="2.3.1+cu121", cuda="12.1", layout="linux-torchlib",
                          cudnn="8.8.1.3")
    home = tmp_path / "home"
    for app in ("stable-diffusion-webui", "kohya_ss"):
        builders.pip_install(builders.make_venv(home / app / "venv"), w)
    builders.make_venv(home / "no-torch" / "venv")
    r = run_tk("discover", home, "--add", "--json")
    assert r.rc == 0, r
    d = r.json()
    assert sorted(f["app"] for f in d["found"]) == ["AUTOMATIC1111", "kohya_ss"]
    assert sorted(d["added"]) == ["kohya_ss", "stable-diffusion-webui"]
    names = [t["name"] for t in run_tk("target", "list", "--json").json()]
    assert sorted(names) == ["kohya_ss", "stable-diffusion-webui"]
    # again: nothing new to add
    assert run_tk("discover", home, "--add", "--json").json()["added"] == []
