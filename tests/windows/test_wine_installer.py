"""The Windows app and its installer, built and exercised under Wine.

The PyInstaller app (installer/windows/torchkeeper.spec, built by the tier's Windows CPython in
a build venv) and torchkeeper-setup.exe (installer/windows/torchkeeper.nsi, Debian's makensis)
are built once per content of agent/ config/ icons/ installer/ pyproject.toml and cached in
.tk-test-cache/windows/installer/. Then: the frozen CLI runs, `setup.exe /S` installs per user,
the files, the Start-menu shortcut and the registry (`wine reg query`) are checked, the agent it
started runs, the silent uninstall stops it and leaves only the user's data and the cache.
Figures (installer size, install time, the frozen app's start time and RSS) go to
.tk-test-cache/windows/installer/figures.json and the test's output.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import winkit
from kit.agentkit import wait_for

REPO = winkit.REPO
SPEC = REPO / "installer" / "windows" / "torchkeeper.spec"
NSI = REPO / "installer" / "windows" / "torchkeeper.nsi"
LOCK = REPO / "installer" / "windows" / "requirements.lock"   # pinned, hashed: what the app ships
CACHE = winkit.CACHE / "installer"
UNINST_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Uninstall\torchkeeper"
AUMID_KEY = r"HKCU\Software\Classes\AppUserModelId\torchkeeper"
RUN_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"
# a clean checkout builds the app and the installer in the first test (its own steps are bounded:
# the locked pip install 900 s, PyInstaller 600 s, NSIS 300 s), past the suite's 600 s per test
pytestmark = pytest.mark.timeout(2100)


@contextmanager
def _lock(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tree_hash(*roots: Path) -> str:
    h = hashlib.sha256()
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts
                                                     and p.suffix != ".md")
        for p in files:
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _build(win: winkit.Win) -> dict:
    """The app and the installer for this checkout, built once (cached by content)."""
    key = _tree_hash(REPO / "agent", REPO / "config", REPO / "icons", REPO / "installer",
                     REPO / "pyproject.toml")
    out = CACHE / key
    done = out / "built.json"
    with _lock("build"):
        if done.is_file():
            return json.loads(done.read_text())
        venv = CACHE / f"venv-{_tree_hash(LOCK)}"
        if not (venv / ".ready").is_file():
            win.venv(venv)
            # PyInstaller and every dependency at the lock's versions and hashes, online
            win.pip(venv, "install", "-q", "--require-hashes", "-r", LOCK, timeout=900)
            (venv / ".ready").write_text("")
        wheel = win.path(win.tk_wheel)
        win.pip(venv, "install", "-q", "--no-index", "--no-deps", "--force-reinstall", wheel)
        for old in CACHE.iterdir():  # earlier checkouts' builds
            if old.is_dir() and not old.name.startswith("venv-") and old != out:
                subprocess.run(["rm", "-rf", str(old)])
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        r = win.run([win.venv_python(venv), "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                     "--distpath", out / "dist", "--workpath", out / "build", SPEC], timeout=600, cwd=out)
        assert r.rc == 0, r
        pyinstaller_s = time.monotonic() - t0
        dist = out / "dist" / "torchkeeper"
        setup = out / "torchkeeper-setup.exe"
        t0 = time.monotonic()
        m = subprocess.run(["makensis", "-V2", "-INPUTCHARSET", "UTF8", f"-DSRC={dist}", f"-DVERSION={_version()}",
                            f"-DOUTFILE={setup}", str(NSI)], capture_output=True, text=True, timeout=300)
        assert m.returncode == 0 and setup.is_file(), m.stdout + m.stderr
        info = {"dist": str(dist), "setup": str(setup), "pyinstaller_s": round(pyinstaller_s, 1),
                "makensis_s": round(time.monotonic() - t0, 1)}
        done.write_text(json.dumps(info))
        return info


@pytest.fixture(scope="module")
def built(wine_session, tmp_path_factory) -> dict:
    return _build(winkit.Win(wine_session, tmp_path_factory.mktemp("build")))


def _reg(key: str, value: str | None = None) -> dict | None:
    """`wine reg query`: {name: data} of KEY (or of VALUE), None when it is not there."""
    args = ["wine", "reg", "query", key] + (["/v", value] if value else [])
    p = subprocess.run(args, env=winkit.base_env(), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, errors="replace", timeout=60)
    if p.returncode != 0:
        return None
    found = {}
    for line in p.stdout.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) >= 2 and parts[1].startswith("REG_"):
            found[parts[0]] = parts[2] if len(parts) > 2 else ""
    return found


def _win_env(win, name: str) -> Path:
    r = win.py("-c", f"import os; print(os.environ[{name!r}])")
    assert r.rc == 0, r
    return win.unix(r.out.strip())


def _wine_rss_kb(exe_name: str) -> int | None:
    """VmRSS of the Wine process (wine64-preloader & co.) running EXE_NAME, from /proc."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not any(c.lower().endswith(exe_name.encode()) for c in cmd):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            continue
    return None


def _run_and_wait(win, args, log: Path, env=None, timeout: float = 300) -> tuple[int, float]:
    """A Windows program that starts others (setup.exe starts the agent): wait for its own exit,
    not for the end of its output, which the agent it started may hold. Pipes, not a file: under
    Wine a CPython given file handles hangs at start (tests/windows facts), Windows would not."""
    t0 = time.monotonic()
    p = subprocess.Popen(["wine", *(win._arg(a) for a in args)], env=win.env(env), cwd=str(win.tmp),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks: list[bytes] = []
    threading.Thread(target=lambda: chunks.extend(iter(lambda: p.stdout.read(4096), b"")),
                     daemon=True).start()
    try:
        rc = p.wait(timeout)
    finally:
        took = time.monotonic() - t0
        log.write_bytes(b"".join(chunks))
    return rc, took


def test_frozen_cli_runs(win, built):
    cli = Path(built["dist"]) / "torchkeeper-cli.exe"
    assert (Path(built["dist"]) / "torchkeeper.exe").is_file()
    v = win.run([cli, "--version"], env={"TORCHKEEPER_HOME": win.home})
    assert v.rc == 0 and v.out.strip() == f"torchkeeper {_version()}", v
    st = win.run([cli, "status", "--json"], env={"TORCHKEEPER_HOME": win.home})
    assert st.rc == 0, st
    assert st.json()["agent"]["running"] is False and st.json()["targets"] == []
    # the data the package looks for, where it looks for it
    data = Path(built["dist"]) / "_internal" / "torchkeeper" / "_data"
    assert (data / "config.toml").is_file() and (data / "icons" / "torchkeeper.ico").is_file()
    assert list((Path(built["dist"]) / "_internal" / "winrt").glob("_winrt*.pyd"))  # toasts' WinRT
    # the catalogs travel with the app: a Traditional Chinese Windows reads Chinese
    zh = win.run([cli, "status"], env={"TORCHKEEPER_HOME": win.home, "LANG": "zh_TW.UTF-8"}, encoding="cp950")
    assert "代理程式：未執行" in zh.out, zh


def test_silent_install_start_and_uninstall(win, built):
    setup = Path(built["setup"])
    # a Traditional Chinese Windows (Wine takes the display language from LANG): the installer
    # speaks it and records it as the entry's Language (0x404)
    env = {"TORCHKEEPER_HOME": win.home, "LANG": "zh_TW.UTF-8"}
    local = _win_env(win, "LOCALAPPDATA")
    app = local / "Programs" / "torchkeeper"
    lnk = _win_env(win, "APPDATA") / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "torchkeeper.lnk"
    figures = {"installer_bytes": setup.stat().st_size, "pyinstaller_build_s": built["pyinstaller_s"],
               "makensis_s": built["makensis_s"]}
    # HKCU is the prefix's, shared by every test: one installer test at a time
    with _lock("hkcu-torchkeeper"):
        rc, figures["install_s"] = _run_and_wait(win, [setup, "/S"], win.tmp / "setup.log", env=env)
        assert rc == 0, (win.tmp / "setup.log").read_text()
        cli = app / "torchkeeper-cli.exe"
        try:
            assert (app / "torchkeeper.exe").is_file() and cli.is_file() and (app / "uninstall.exe").is_file()
            assert lnk.is_file()
            u = _reg(UNINST_KEY)
            assert u is not None, "no Apps & features entry"
            assert u["DisplayName"] == "torchkeeper" and u["DisplayVersion"] == _version()
            assert win.unix(u["InstallLocation"]) == app and "uninstall.exe" in u["UninstallString"]
            assert u["NoModify"] == "0x1" and int(u["EstimatedSize"], 16) > 10_000  # KB
            assert u["Language"] == "0x404", u
            assert win.unix(u["DisplayIcon"]).is_file()
            a = _reg(AUMID_KEY)
            assert a and a["DisplayName"] == "torchkeeper" and win.unix(a["IconUri"]).is_file()
            run = _reg(RUN_KEY, "torchkeeper")
            assert run and "torchkeeper.exe" in run["torchkeeper"].lower() \
                and "torchkeeper-cli" not in run["torchkeeper"].lower(), run
            st = win.run([cli, "autostart", "status", "--json"], env=env).json()
            assert st["state"] == "enabled" and st["choice"]["by"] == "installer", st

            # the installer started the agent (the windowed exe: no stdout; the CLI sees it)
            agent = wait_for(lambda: (a := win.run([cli, "status", "--json"], env=env).json()["agent"])["running"]
                          and a, 60, "the installed agent to run")
            figures["agent_rss_mb"] = round((_wine_rss_kb("torchkeeper.exe") or 0) / 1024, 1)
            t0 = time.monotonic()
            v = win.run([cli, "--version"], env=env)
            figures["cli_version_s"] = round(time.monotonic() - t0, 2)
            assert v.rc == 0, v

            # the uninstaller Windows runs: it copies itself to %TEMP% and returns at once
            (win.home / "cache" / "bundles").mkdir(parents=True, exist_ok=True)
            rc, _ = _run_and_wait(win, [app / "uninstall.exe", "/S"], win.tmp / "uninstall.log", env=env)
            assert rc == 0, (win.tmp / "uninstall.log").read_text()
            wait_for(lambda: not app.exists(), 90, f"the uninstaller to remove {app}")
        finally:
            if app.exists():  # a failed check: do not leave an installed app in the shared prefix
                if (app / "torchkeeper-cli.exe").exists():
                    win.run([app / "torchkeeper-cli.exe", "uninstall"], env=env)
                subprocess.run(["rm", "-rf", str(app), str(lnk)])
                for key in (UNINST_KEY, AUMID_KEY):
                    subprocess.run(["wine", "reg", "delete", key, "/f"], env=winkit.base_env(),
                                   stdin=subprocess.DEVNULL, capture_output=True)
        assert not lnk.exists()
        assert _reg(UNINST_KEY) is None and _reg(AUMID_KEY) is None and _reg(RUN_KEY, "torchkeeper") is None
    assert not Path(f"/proc/{agent['pid']}").exists() or _wine_rss_kb("torchkeeper.exe") is None
    left = sorted(p.relative_to(win.home).as_posix() for p in win.home.rglob("*"))
    # kept: the cache, and the data folder with the start-at-login choice (targets, backups)
    assert "cache/bundles" in left and "data/autostart.json" in left, left
    assert not [p for p in left if p.startswith("logs") or Path(p).name.startswith("agent.")
                and Path(p).suffix in (".pid", ".lock", ".stop")], left
    assert json.loads((win.home / "data" / "autostart.json").read_text())["choice"] == "on"

    # start time of the frozen agent, alone: exe start to `status` seeing it
    figures["frozen_start_to_running_s"] = _frozen_start(win, Path(built["dist"]))
    (CACHE / "figures.json").write_text(json.dumps(figures, indent=1))
    print("\nfigures:", json.dumps(figures))


def _frozen_start(win, dist: Path) -> float:
    home = win.tmp / "frozen-home"
    env = {"TORCHKEEPER_HOME": home}
    cli = dist / "torchkeeper-cli.exe"
    t0 = time.monotonic()
    p = win.popen([dist / "torchkeeper.exe", "run", "--headless"], env=env,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: win.run([cli, "status", "--json"], env=env).json()["agent"]["running"], 60,
              "the frozen agent to run")
        took = round(time.monotonic() - t0, 2)
        r = win.run([cli, "stop"], env=env)
        assert r.rc == 0 and "stopped the agent" in r.out, r
        p.wait(30)
        return took
    finally:
        if p.poll() is None:
            p.kill()
