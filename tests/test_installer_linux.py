"""installer/install.sh and uninstall.sh for real, in a throwaway HOME: uv tool install from
this checkout (uv's cache shared under .tk-test-cache/uv, so a rerun is quick), the command
works, the agent runs, the autostart entry is there and Debian's dex starts it like a desktop
session would, `torchkeeper stop` stops it, and uninstall leaves only what it promises to keep.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from kit.agentkit import wait_for

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "installer" / "install.sh"
UNINSTALL = REPO / "installer" / "uninstall.sh"


def _env(home: Path) -> dict:
    # only what a login shell has: no TORCHKEEPER_HOME, no DISPLAY (the agent runs headless),
    # XDG folders at their defaults under HOME; uv from the test venv, never a download of Python
    env = {"HOME": str(home), "PATH": f"{home}/.local/bin:{Path(sys.executable).parent}:/usr/bin:/bin",
           "LANG": "C.UTF-8", "UV_CACHE_DIR": str(REPO / ".tk-test-cache" / "uv"),
           "UV_PYTHON": "/usr/bin/python3", "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1",
           "UV_NATIVE_TLS": "1"}  # the system's CA store: the same registry access pip has here
    # how this machine reaches the registry: proxies, CA bundles, pip's settings
    env.update({k: v for k, v in os.environ.items()
                if "proxy" in k.lower() or k.startswith(("PIP_", "SSL_CERT_")) or k.endswith("CA_BUNDLE")})
    return env


def _sh(args, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], env=_env(home), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    p.text = f"{args} -> rc {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    return p


def _tk(home: Path, *args) -> subprocess.CompletedProcess:
    return _sh([home / ".local" / "bin" / "torchkeeper", *args], home, timeout=60)


def _agent(home: Path) -> dict:
    r = _tk(home, "status", "--json")
    assert r.returncode == 0, r.text
    return json.loads(r.stdout)["agent"]


def _ours(home: Path) -> list[str]:
    """Every torchkeeper path left under HOME (uv's own tool folders aside)."""
    found = []
    for p in sorted(home.rglob("*")):
        rel = p.relative_to(home).as_posix()
        if "torchkeeper" in rel and not rel.startswith(".local/share/uv/"):
            found.append(rel)
    return found


def test_install_autostart_under_dex_stop_and_uninstall(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    r = _sh(["bash", INSTALL, "--method", "uv", REPO], home)
    assert r.returncode == 0, r.text
    assert "step 1/3" in r.stderr and "start at login" in r.stderr      # it says what it does

    v = _tk(home, "--version")
    assert v.returncode == 0 and v.stdout.startswith("torchkeeper "), v.text
    # the installer started the agent
    first = wait_for(lambda: (a := _agent(home))["running"] and a, 30, "the installed agent")

    menu = home / ".local/share/applications/torchkeeper.desktop"
    text = menu.read_text()
    exec_ = shlex.split(next(line[5:] for line in text.splitlines() if line.startswith("Exec=")))
    assert exec_[1:] == ["run"] and Path(exec_[0]).is_file()
    icon = next(line[5:] for line in text.splitlines() if line.startswith("Icon="))
    assert Path(icon).is_file(), icon

    entry = home / ".config/autostart/torchkeeper.desktop"
    st = json.loads(_tk(home, "autostart", "status", "--json").stdout)
    assert st["state"] == "enabled" and st["choice"]["by"] == "installer", st

    r = _tk(home, "stop")
    assert r.returncode == 0 and f"pid {first['pid']}" in r.stdout, r.text
    assert not _agent(home)["running"]

    # a desktop session's autostart runs the entry: the agent comes up again, headless
    with open(tmp_path / "dex.out", "w") as out:
        dex = subprocess.run(["dex", str(entry)], env=_env(home), stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, timeout=30)
    assert dex.returncode == 0, (tmp_path / "dex.out").read_text()
    again = wait_for(lambda: (a := _agent(home))["running"] and a, 30, "the agent dex started")
    assert again["pid"] != first["pid"]
    (home / ".cache/torchkeeper/bundles").mkdir(parents=True, exist_ok=True)  # a cache to keep

    r = _sh(["bash", UNINSTALL], home)
    assert r.returncode == 0, r.text
    assert not (home / ".local/bin/torchkeeper").exists()
    assert not entry.exists() and not menu.exists()
    assert not Path(f"/proc/{again['pid']}").exists() or \
        "torchkeeper" not in Path(f"/proc/{again['pid']}/cmdline").read_text(errors="replace")
    # left: the bundle cache, the settings, the data folder (the start-at-login choice; targets
    # and the backups revert needs, when there are any); no program, entries, logs or agent files
    left = _ours(home)
    assert ".cache/torchkeeper/bundles" in left and ".local/share/torchkeeper/autostart.json" in left
    kept = (".cache/torchkeeper", ".config/torchkeeper", ".local/share/torchkeeper")
    assert [p for p in left if not p.startswith(kept)] == [], left
    gone = {"agent.pid", "agent.lock", "agent.stop", "installed-by", "venv"}
    assert [p for p in left if Path(p).name in gone] == [], left
    assert json.loads((home / ".local/share/torchkeeper/autostart.json").read_text())["choice"] == "on"


def test_no_autostart_is_honoured_and_remove_cache_removes_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    r = _sh(["bash", INSTALL, "--method", "uv", "--no-autostart", "--no-start", REPO], home)
    assert r.returncode == 0, r.text
    assert "left off" in r.stderr
    assert not (home / ".config/autostart/torchkeeper.desktop").exists()
    assert not _agent(home)["running"]
    (home / ".cache/torchkeeper/bundles").mkdir(parents=True)

    r = _sh(["bash", UNINSTALL, "--remove-cache"], home)
    assert r.returncode == 0, r.text
    assert not (home / ".cache/torchkeeper").exists()
    assert not (home / ".local/share/uv/tools/torchkeeper").exists()


def test_venv_install_names_the_folder_it_linked_into_when_it_is_not_on_path(tmp_path):
    """--method venv links ~/.local/bin/torchkeeper to the venv's command: the last lines name
    that command and, with ~/.local/bin not on PATH, that folder (not the venv's bin)."""
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home)
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"     # no ~/.local/bin
    env["PIP_CACHE_DIR"] = str(REPO / ".tk-test-cache" / "pip")
    r = subprocess.run(["bash", str(INSTALL), "--method", "venv", "--no-start", "--no-autostart",
                        str(REPO)], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    linked = home / ".local" / "bin" / "torchkeeper"
    assert f"installed: {linked} " in r.stderr, r.stderr
    assert f"note: {linked.parent} is not on your PATH" in r.stderr, r.stderr
    assert "venv/bin is not on your PATH" not in r.stderr
    v = subprocess.run([str(linked), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and v.stdout.startswith("torchkeeper "), v.stderr
