"""Smoke tests of the Windows tier: a real Windows CPython under Wine runs torchkeeper."""

from __future__ import annotations

import subprocess
import time

from kit import builders


def test_python_is_windows(win):
    r = win.py("-c", "import sys, os, platform; print(sys.platform, os.name, sys.version_info[:2], platform.system())")
    assert r.rc == 0, r
    assert r.out.split() == ["win32", "nt", "(3,", "11)", "Windows"]


def test_torchkeeper_version(win):
    r = win.tk("--version")
    assert r.rc == 0, r
    assert r.out.startswith("torchkeeper "), r
    # the installed one comes from this checkout's wheel, into the base python
    r = win.py("-c", "import torchkeeper, sys; print(torchkeeper.__file__)")
    assert r.rc == 0 and r.out.strip().lower().startswith(r"c:\python311\lib\site-packages\torchkeeper"), r


def test_status_json_with_a_fresh_home(win):
    r = win.tk("status", "--json")
    assert r.rc == 0, r
    d = r.json()
    assert d["targets"] == [] and d["driver"]["state"] == "no_driver" and d["agent"]["running"] is False


def test_winreg_under_hkcu(win):
    key = r"Software\torchkeeper-tests\smoke"
    code = (
        "import winreg, sys\n"
        f"k = winreg.CreateKey(winreg.HKEY_CURRENT_USER, {key!r})\n"
        "winreg.SetValueEx(k, 'answer', 0, winreg.REG_SZ, sys.argv[1])\n"
        "print(winreg.QueryValueEx(k, 'answer')[0])\n"
    )
    r = win.py("-c", code, "forty-two")
    assert r.rc == 0 and r.out.strip() == "forty-two", r
    # another Windows program (reg.exe) sees it
    r = win.run(["reg", "query", "HKCU\\" + key, "/v", "answer"])
    assert r.rc == 0 and "forty-two" in r.out, r
    code = (
        "import winreg\n"
        f"winreg.DeleteKey(winreg.HKEY_CURRENT_USER, {key!r})\n"
        "try:\n"
        f"    winreg.OpenKey(winreg.HKEY_CURRENT_USER, {key!r})\n"
        "except FileNotFoundError:\n"
        "    print('gone')\n"
    )
    r = win.py("-c", code)
    assert r.rc == 0 and r.out.strip() == "gone", r


def test_venv_pip_installs_a_local_wheel_offline(win, tmp_path):
    whl = builders.write_wheel(tmp_path / "w", "tk-smoke-pkg", "1.0",
                               {"tk_smoke_pkg/__init__.py": b"ANSWER = 42\n"})
    venv = win.venv(tmp_path / "venv")
    assert (venv / "pyvenv.cfg").is_file() and win.venv_python(venv).is_file()
    win.pip_install(venv, whl)
    assert (win.site_packages(venv) / "tk_smoke_pkg" / "__init__.py").is_file()
    r = win.run([win.venv_python(venv), "-c",
                 "import sys, tk_smoke_pkg; print(tk_smoke_pkg.ANSWER, sys.prefix != sys.base_prefix)"])
    assert r.rc == 0 and r.out.split() == ["42", "True"], r


def test_target_add_on_a_torch_wheel_installed_by_the_windows_pip(win, build, tmp_path):
    """A torch-shaped win_amd64 layout (real PE DLLs from mingw) installed by the venv's own pip;
    torchkeeper, running as a Windows program, inspects it."""
    whl = build.torch_wheel(tmp_path / "w", version="2.3.1+cu121", cuda="12.1", layout="windows",
                            cudnn="8.8.1.3")
    venv = win.venv(tmp_path / "stable-diffusion-webui" / "venv")
    win.pip_install(venv, whl)
    sp = win.site_packages(venv)
    assert (sp / "torch" / "lib" / "cudnn64_8.dll").is_file()
    r = win.tk("target", "add", venv, "--name", "a1111", "--json")
    assert r.rc == 0, r
    d = r.json()
    assert d["name"] == "a1111"
    assert d["site_packages"].lower() == win.path(sp).lower()
    assert d["info"]["platform"] == "windows"
    assert d["info"]["torch_version"] == "2.3.1+cu121" and d["info"]["torch_cuda"] == "12.1"
    assert d["info"]["cudnn_build"] == "8.8.1.3"  # the DLL's version resource
    st = win.tk("status", "--json")
    assert st.rc == 0, st
    t = st.json()["targets"][0]
    assert t["name"] == "a1111" and t["cudnn_stock"] == "8.8.1.3"


def test_a_window_shows_on_the_xvfb_display(win, win_display):
    """Windows programs get the session's Xvfb: a pystray icon (win32 backend) starts, and a
    plain window is an X window that xdotool finds."""
    code = (
        "import ctypes, sys, time\n"
        "import pystray\n"
        "from PIL import Image\n"
        "icon = pystray.Icon('tk-smoke', Image.new('RGB', (32, 32), 'green'), 'tk-smoke')\n"
        "icon.run_detached()\n"
        "u = ctypes.WinDLL('user32')\n"
        "u.CreateWindowExW.restype = ctypes.c_void_p\n"
        "h = u.CreateWindowExW(0, 'STATIC', 'tk-smoke-window', 0x10CF0000, 10, 10, 200, 100, None, None, None, None)\n"
        "print('ready', bool(h), flush=True)\n"
        "time.sleep(30)\n"
    )
    p = win.popen(["python", "-c", code])
    try:
        assert p.stdout.readline().split() == ["ready", "True"], p.stderr.read()
        deadline = time.monotonic() + 20
        found = ""
        while time.monotonic() < deadline and not found:
            found = subprocess.run(["xdotool", "search", "--name", "tk-smoke-window"], env={"DISPLAY": win_display},
                                   capture_output=True, text=True).stdout.strip()
            time.sleep(0.2)
        assert found, "no X window named tk-smoke-window"
    finally:
        p.kill()
        p.wait(10)
