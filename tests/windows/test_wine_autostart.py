"""Start at login on Windows for real: ``torchkeeper autostart`` through winreg under Wine,
checked from outside with Wine's reg.exe, Task Manager's StartupApproved switch written the way
Task Manager writes it, and a simulated login (``wine wineboot`` runs HKCU's Run entries).

HKCU's Run value is one per prefix, shared by every test process: one test does it all, and
puts the registry back."""

from __future__ import annotations

import subprocess
import time

RUN = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"
APPROVED = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\Run"
TASK_MANAGER_OFF = "030000000000000000000000"  # 03 00 00 00 + an 8-byte FILETIME (zeros)
TASK_MANAGER_ON = "020000000000000000000000"


def reg_value(win, key: str, name: str = "torchkeeper") -> tuple[str, str] | None:
    """(type, data) of a value as another Windows program (reg.exe) sees it; None when absent."""
    r = win.run(["reg", "query", key, "/v", name])
    for line in r.out.splitlines():  # "    name    TYPE    data" with CRLF
        parts = line.strip().split(None, 2)
        if r.rc == 0 and parts[:1] == [name] and len(parts) >= 2:
            return parts[1], parts[2] if len(parts) > 2 else ""
    assert r.rc != 0, r
    return None


def reg(win, *args: str) -> None:
    r = win.run(["reg", *args, "/f"])
    assert r.rc == 0, r


def tk(win, *args, home, rc=0):
    r = win.tk(*args, env={"TORCHKEEPER_HOME": home})
    assert r.rc == rc and "Traceback" not in r.err, r
    return r


def test_autostart_through_the_registry(win, tmp_path):
    home = tmp_path / "tk home"  # a space: the Run value must quote it
    home.mkdir()
    pid = None
    try:
        d = tk(win, "autostart", "status", "--json", home=home).json()
        assert d["state"] == "disabled" and reg_value(win, RUN) is None, d

        tk(win, "autostart", "enable", home=home)
        want = rf'"C:\Python311\pythonw.exe" -m torchkeeper run --home "{win.path(home)}"'
        assert reg_value(win, RUN) == ("REG_SZ", want)
        d = tk(win, "autostart", "status", "--json", home=home).json()
        assert d["state"] == "enabled" and d["command"] == want, d
        assert d["where"] == RUN + r"\torchkeeper", d

        # Task Manager > Startup apps > Disable
        reg(win, "add", APPROVED, "/v", "torchkeeper", "/t", "REG_BINARY", "/d", TASK_MANAGER_OFF)
        d = tk(win, "autostart", "status", "--json", home=home).json()
        assert d["state"] == "turned off", d
        r = tk(win, "autostart", "enable", home=home, rc=2)
        assert r.err.startswith("error: ") and "turned off" in r.err, r
        assert "hint: " in r.err and "Task Manager" in r.err, r
        assert reg_value(win, APPROVED) == ("REG_BINARY", TASK_MANAGER_OFF.upper())  # never ours to change
        r = tk(win, "autostart", "enable", "--if-not-declined", home=home)
        assert "left off" in r.out, r
        assert reg_value(win, APPROVED) == ("REG_BINARY", TASK_MANAGER_OFF.upper())
        assert reg_value(win, RUN) == ("REG_SZ", want)

        tk(win, "autostart", "disable", home=home)
        assert reg_value(win, RUN) is None
        assert tk(win, "autostart", "status", "--json", home=home).json()["state"] == "disabled"

        # a login: `wine wineboot` runs HKCU's Run entries; the agent comes up from the value
        # `autostart enable` wrote (Task Manager's switch back on), with the home it carries
        reg(win, "add", APPROVED, "/v", "torchkeeper", "/t", "REG_BINARY", "/d", TASK_MANAGER_ON)
        tk(win, "autostart", "enable", home=home)
        subprocess.run(["wine", "wineboot"], env=win.env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        deadline = time.monotonic() + 60
        agent = {}
        while time.monotonic() < deadline and not agent.get("running"):
            agent = tk(win, "status", "--json", home=home).json()["agent"]
            time.sleep(0.5)
        assert agent.get("running"), agent
        pid = agent["pid"]
    finally:
        win.run(["reg", "delete", RUN, "/v", "torchkeeper", "/f"])
        win.run(["reg", "delete", APPROVED, "/v", "torchkeeper", "/f"])
        if pid:  # stop the agent the login started (TerminateProcess)
            r = win.py("-c", "import os, sys; os.kill(int(sys.argv[1]), 15)", pid)
            assert r.rc == 0, r
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and tk(win, "status", "--json", home=home).json()["agent"]["running"]:
        time.sleep(0.5)
    assert not tk(win, "status", "--json", home=home).json()["agent"]["running"]
