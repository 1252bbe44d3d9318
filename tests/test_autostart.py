"""Start at login: the XDG entry for real (written by the CLI, run by Debian's dex the way a
desktop session runs it), the Windows Run key and the macOS LaunchAgent behind the same
interface (the Run key for real through winreg in tests/windows/), and the consent rules:
only a person turns it on, a remembered "off" and the OS's own switch are respected.
"""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kit.agentkit import wait_for
from torchkeeper.engine.autostart import Autostart
from torchkeeper.home import Home, app_icon
from torchkeeper.platform import autostart as osauto
from torchkeeper.platform.macos import LaunchAgent
from torchkeeper.platform.posix import XdgAutostart, exec_line
from torchkeeper.platform.windows import APPROVED_KEY, REG_BINARY, RUN_KEY, RunKeyAutostart


def _xdg(tmp_path) -> dict:
    return {"XDG_CONFIG_HOME": tmp_path / "xdg"}


def _entry(tmp_path) -> Path:
    return tmp_path / "xdg" / "autostart" / "torchkeeper.desktop"


def _home(tmp_path) -> Home:
    r = tmp_path / "home"
    return Home(r / "config", r / "data", r / "cache", r / "logs")


# -- Linux, for real ------------------------------------------------------------------------


def test_enable_writes_an_xdg_entry_that_dex_starts_headless_with_the_right_home(tmp_path, run_tk, tk_home):
    r = run_tk("autostart", "enable", extra_env=_xdg(tmp_path))
    assert r.rc == 0, str(r)
    text = _entry(tmp_path).read_text()
    assert "Type=Application" in text and "X-GNOME-Autostart-enabled=true" in text
    exec_ = next(line[5:] for line in text.splitlines() if line.startswith("Exec="))
    argv = shlex.split(exec_)
    assert Path(argv[0]).is_absolute() and Path(argv[0]).is_file(), argv
    assert argv[1:] == ["run", "--home", str(tk_home)]
    icon = next(line[5:] for line in text.splitlines() if line.startswith("Icon="))
    assert Path(icon).is_file() and Path(icon) == app_icon()

    st = run_tk("autostart", "status", "--json", extra_env=_xdg(tmp_path)).json()
    assert st["state"] == "enabled" and st["choice"]["choice"] == "on" and st["choice"]["by"] == "user"

    # a desktop session's autostart, minus the desktop: no DISPLAY, so the agent is headless
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "TORCHKEEPER_HOME")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "agent")
    # the agent dex starts inherits dex's stdout: a file, not a pipe we would wait on for EOF
    with open(tmp_path / "dex.out", "w") as out:
        dex = subprocess.run(["dex", str(_entry(tmp_path))], env=env, stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, timeout=30)
    assert dex.returncode == 0, (tmp_path / "dex.out").read_text()
    pid_file = tk_home / "data" / "agent.pid"
    try:
        wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip(), 30, "the agent's pid file")
        status = wait_for(lambda: (s := run_tk("status", "--json").json())["agent"]["running"] and s,
                          30, "status to see the agent")
        assert status["agent"]["pid"] == int(pid_file.read_text().split()[0])
        log = (tk_home / "logs" / "agent.log").read_text()
        assert "headless" in log
    finally:
        pid = int(pid_file.read_text().split()[0]) if pid_file.is_file() else None
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not run_tk("status", "--json").json()["agent"]["running"], 20, "the agent to stop")

    r = run_tk("autostart", "disable", extra_env=_xdg(tmp_path))
    assert r.rc == 0 and not _entry(tmp_path).exists(), str(r)


def test_an_installer_never_turns_back_on_what_the_user_turned_off(tmp_path, run_tk):
    env = _xdg(tmp_path)
    # first install: the box was ticked, no earlier choice -> on
    r = run_tk("autostart", "enable", "--if-not-declined", "--by", "installer", extra_env=env)
    assert r.rc == 0 and _entry(tmp_path).is_file(), str(r)
    assert run_tk("autostart", "status", "--json", extra_env=env).json()["choice"]["by"] == "installer"
    # the user turns it off; an upgrade runs the installer again
    assert run_tk("autostart", "disable", extra_env=env).rc == 0
    r = run_tk("autostart", "enable", "--if-not-declined", "--by", "installer", extra_env=env)
    assert r.rc == 0, str(r)
    assert "left off" in r.out and not _entry(tmp_path).exists()
    # the user's own enable still works
    assert run_tk("autostart", "enable", extra_env=env).rc == 0 and _entry(tmp_path).is_file()


def test_turned_off_in_the_desktop_settings_is_not_overridden(tmp_path, run_tk):
    env = _xdg(tmp_path)
    assert run_tk("autostart", "enable", extra_env=env).rc == 0
    e = _entry(tmp_path)
    e.write_text(e.read_text().replace("X-GNOME-Autostart-enabled=true", "X-GNOME-Autostart-enabled=false"))
    before = e.read_bytes()
    st = run_tk("autostart", "status", "--json", extra_env=env).json()
    assert st["state"] == "turned off" and not st["enabled"]
    r = run_tk("autostart", "enable", extra_env=env)
    assert r.rc == 2 and "error: start at login is turned off in the system's settings" in r.err, str(r)
    assert "hint: turn torchkeeper on again in your desktop's startup settings" in r.err
    assert "Traceback" not in r.err
    r = run_tk("autostart", "enable", "--if-not-declined", extra_env=env)
    assert r.rc == 0 and "left off" in r.out, str(r)
    assert e.read_bytes() == before


def test_exec_line_quotes_what_the_spec_asks():
    argv = ["/home/Jürgen Müller/ComfyUI 便携/venv/bin/torchkeeper", "run", "--home", '/x/"q"$HOME%']
    line = exec_line(argv)
    assert line.startswith('"/home/Jürgen Müller/ComfyUI 便携/venv/bin/torchkeeper" run --home ')
    assert '%%' in line and '\\"q\\"' in line and "\\$HOME" in line
    # a shell-style reading gives argv back (shlex keeps a backslash before $, the spec does not)
    plain = argv[:3] + ['/x/"q"%']
    assert shlex.split(exec_line(plain).replace("%%", "%")) == plain


def test_the_agent_never_enables_it_and_the_tray_choice_does(tmp_path, monkeypatch):
    from torchkeeper.daemon.worker import Agent

    home = _home(tmp_path)
    autostart = Autostart(home, XdgAutostart(tmp_path / "xdg"), argv=["/opt/tk/torchkeeper", "run"])
    agent = Agent(home, watch=False, schedule=False, autostart=autostart, driver_query=lambda: None)
    assert agent.view().autostart is False          # known, and off: the menu item is active, unticked
    assert not _entry(tmp_path).exists()
    agent.set_autostart(True)                      # the tray's "Start at login" click
    assert agent.view().autostart is True and _entry(tmp_path).is_file()
    assert autostart.choice()["choice"] == "on"
    agent.set_autostart(False)
    assert agent.view().autostart is False and not _entry(tmp_path).exists()
    assert autostart.choice()["choice"] == "off"


def test_a_backend_that_cannot_read_greys_the_menu_item(tmp_path):
    from torchkeeper.daemon.worker import Agent

    class Broken(XdgAutostart):
        def status(self):
            raise PermissionError(13, "Permission denied", str(self.path))

    home = _home(tmp_path)
    agent = Agent(home, watch=False, schedule=False, driver_query=lambda: None,
                  autostart=Autostart(home, Broken(tmp_path / "xdg"), argv=["x"]))
    assert agent.view().autostart is None


# -- the agent's command line -----------------------------------------------------------------


def test_agent_command_per_platform(tmp_path):
    (tmp_path / "bin").mkdir()
    py = tmp_path / "bin" / "python"
    py.write_text("")
    assert osauto.agent_command(executable=str(py), frozen=False, platform="linux") == \
        [str(py), "-m", "torchkeeper", "run"]
    (tmp_path / "bin" / "torchkeeper").write_text("")
    assert osauto.agent_command(home="/h", executable=str(py), frozen=False, platform="linux") == \
        [str(tmp_path / "bin" / "torchkeeper"), "run", "--home", "/h"]
    win = tmp_path / "Python311"
    win.mkdir()
    (win / "python.exe").write_text("")
    assert osauto.agent_command(executable=str(win / "python.exe"), frozen=False, platform="win32")[0] \
        == str(win / "python.exe")
    (win / "pythonw.exe").write_text("")             # no console window at login
    assert osauto.agent_command(executable=str(win / "python.exe"), frozen=False, platform="win32") == \
        [str(win / "pythonw.exe"), "-m", "torchkeeper", "run"]
    assert osauto.agent_command(executable=r"C:\Apps\torchkeeper\torchkeeper.exe", frozen=True,
                                platform="win32") == [r"C:\Apps\torchkeeper\torchkeeper.exe", "run"]


def test_frozen_cli_enables_the_windowed_app(tmp_path):
    """The installer runs torchkeeper-cli.exe (console) to enable start at login: the entry must
    start the windowed torchkeeper.exe beside it, or every login opens a console window."""
    app = tmp_path / "torchkeeper"
    app.mkdir()
    (app / "torchkeeper-cli.exe").write_text("")
    (app / "torchkeeper.exe").write_text("")
    assert osauto.agent_command(executable=str(app / "torchkeeper-cli.exe"), frozen=True,
                                platform="win32") == [str(app / "torchkeeper.exe"), "run"]


# -- Windows' Run key, behind the registry interface (real winreg: tests/windows/) ------------


class DictRegistry:
    def __init__(self):
        self.values: dict[tuple[str, str], tuple[object, int]] = {}

    def get(self, key, name):
        return self.values.get((key, name))

    def set(self, key, name, value, kind):
        self.values[(key, name)] = (value, kind)

    def delete(self, key, name):
        self.values.pop((key, name), None)


def test_run_key_quotes_paths_and_reads_task_managers_switch():
    reg = DictRegistry()
    run = RunKeyAutostart(reg)
    assert run.status().state == osauto.DISABLED
    exe = r"C:\Users\Jürgen Müller\AppData\Local\Programs\torchkeeper\torchkeeper.exe"
    st = run.enable([exe, "run"])
    assert st.state == osauto.ENABLED
    assert reg.get(RUN_KEY, "torchkeeper")[0] == f'"{exe}" run'
    run.enable([r"C:\Python311\pythonw.exe", "-m", "torchkeeper", "run", "--home", r"D:\tk home"])
    assert reg.get(RUN_KEY, "torchkeeper")[0] == r'"C:\Python311\pythonw.exe" -m torchkeeper run --home "D:\tk home"'
    run.enable([exe, "run"])
    # Task Manager > Startup apps > Disable: 03 + a FILETIME; Enable: 02 + zeros
    reg.set(APPROVED_KEY, "torchkeeper", bytes([3, 0, 0, 0]) + os.urandom(8), REG_BINARY)
    st = run.status()
    assert st.state == osauto.TURNED_OFF and "Task Manager" in st.how_to_turn_on
    reg.set(APPROVED_KEY, "torchkeeper", bytes([2]) + bytes(11), REG_BINARY)
    assert run.status().state == osauto.ENABLED
    run.disable()
    assert reg.get(RUN_KEY, "torchkeeper") is None and run.status().state == osauto.DISABLED
    assert reg.get(APPROVED_KEY, "torchkeeper") is not None   # Task Manager's own value: not ours


def test_autostart_refuses_to_override_task_manager(tmp_path):
    reg = DictRegistry()
    autostart = Autostart(_home(tmp_path), RunKeyAutostart(reg), argv=[r"C:\tk\torchkeeper.exe", "run"])
    autostart.enable()
    reg.set(APPROVED_KEY, "torchkeeper", bytes([3]) + bytes(11), REG_BINARY)
    from torchkeeper.errors import UsageError

    with pytest.raises(UsageError) as e:
        autostart.enable()
    assert "Task Manager" in e.value.hint
    st, said = autostart.enable(by="installer", if_not_declined=True)
    assert st["state"] == "turned off" and said.startswith("left off")
    assert reg.get(APPROVED_KEY, "torchkeeper")[0][0] == 3


# -- macOS ------------------------------------------------------------------------------------


def test_launch_agent_plist(tmp_path):
    la = LaunchAgent(tmp_path)
    assert la.status().state == osauto.DISABLED
    st = la.enable(["/Applications/torchkeeper.app/Contents/MacOS/torchkeeper", "run"])
    assert st.state == osauto.ENABLED
    with open(la.path, "rb") as f:
        d = plistlib.load(f)
    assert d["RunAtLoad"] is True and d["ProgramArguments"][-1] == "run" and d["Label"]
    d["Disabled"] = True
    with open(la.path, "wb") as f:
        plistlib.dump(d, f)
    assert la.status().state == osauto.TURNED_OFF
    la.disable()
    assert not la.path.exists()


def test_status_json_is_one_shape_everywhere(tmp_path, run_tk):
    st = run_tk("autostart", "status", "--json", extra_env=_xdg(tmp_path))
    assert st.rc == 0, str(st)
    d = st.json()
    assert set(d) == {"state", "enabled", "where", "command", "how_to_turn_on", "choice"}
    assert json.dumps(d) and d["state"] == "disabled" and d["choice"] is None
    assert sys.platform.startswith("linux") and d["where"].endswith("torchkeeper.desktop")
