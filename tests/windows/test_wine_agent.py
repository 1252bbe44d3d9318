"""The agent end to end as a Windows program under Wine: real Windows pip, real PE DLLs, a
DLL held by another Windows process, a logoff in the middle of a re-apply.

How a Windows agent is stopped: a logoff (its tray window's WM_QUERYENDSESSION /
WM_ENDSESSION, what ``wineboot --end-session`` sends) or the tray's Quit. Ctrl+Break
(signal.SIGBREAK) is not tested here: under Wine 8 GenerateConsoleCtrlEvent fails for a
process group started from a Windows parent (WinError 6 / 12), and a login start
(``pythonw.exe``) has no console anyway. Signals are covered by tests/test_agent.py on Linux."""

from __future__ import annotations

import os
import shutil
import time
import zipfile

import pytest
from kit.agentkit import events, wait_for, write_config
from winkit import WIN_PYTHONW, Desktop, kill_windows_processes, patched_target

pytestmark = pytest.mark.timeout(240)


def _stock_bytes(whl, names) -> dict[str, bytes]:
    with zipfile.ZipFile(whl) as z:
        return {n: z.read(f"torch/lib/{n}") for n in names}


def test_login_agent_repairs_a_pip_reinstall_and_a_logoff_waits_for_the_change(win, build, tmp_path):
    """``pythonw.exe -m torchkeeper run``, as HKCU's Run entry starts it at login (no console);
    the venv's own pip reinstalls torch; the re-apply is held at a checkpoint inside its swap
    while the session ends: the logoff is not refused, the change completes, then the agent stops."""
    venv, whl, m = patched_target(win, build, tmp_path)
    paused = tmp_path / "paused"
    desk = Desktop(win, f"tk-logoff-{os.getpid()}")
    env = {"TORCHKEEPER_HOME": win.home, "TORCHKEEPER_TEST_PAUSE_AT": "20", "TORCHKEEPER_TEST_PAUSE_FILE": paused}
    agent = desk.popen([WIN_PYTHONW, "-m", "torchkeeper", "run"], env=env)
    log = win.home / "logs" / "agent.log"
    try:
        wait_for(lambda: events(win.home, "started"), 60, "the agent's start")
        time.sleep(1.0)  # its first check
        win.pip(venv, "install", "-q", "--no-index", "--no-deps", "--force-reinstall", whl)
        wait_for(paused.exists, 60, "the re-apply to reach its checkpoint")
        assert " swapped " in paused.read_text(), paused.read_text()  # inside the swap
        assert not events(win.home, "repaired")
        r = desk.end_session()
        assert r.rc == 0, r  # (explorer's rc: wineboot's own, 1 for a refusal, does not come through)
        # a window that refuses (pystray's own answer, 0) gets no WM_ENDSESSION: the agent would run on
        wait_for(lambda: "agent stopped" in log.read_text(encoding="utf-8"), 60,
                 "the agent to stop at the logoff (a refused logoff leaves it running)")
        agent.wait(30)
    finally:
        kill_windows_processes(win.path(win.home))
    text = log.read_text(encoding="utf-8")
    assert "Traceback" not in text, text
    ending = text.index("the session is ending: stopping after the running job")
    # the change was finished, then the agent stopped
    assert ending < text.index("repaired target=a1111") < text.index("agent stopped"), text
    [rep] = events(win.home, "repaired")
    assert rep["reason"] == "file events"
    changed = events(win.home, "files changed")
    assert changed and changed[0]["stashes"] == ["~orch", "~orch-2.3.1+cu121.dist-info"]  # the Windows pip stashed torch\ and its dist-info
    assert not list((win.home / "data" / "journal").glob("*"))
    r = win.tk("verify", "--full")
    assert r.rc == 0, r
    # toasts: desktop-notifier (WinRT: class not registered under Wine) is skipped, named, and plyer shows it
    assert "notifications through desktop-notifier do not work" in text, text
    assert "toast reapplied:a1111 shown through plyer" in text, text  # its own balloon icon


HOLDER = """\
import ctypes, os, sys, time
ctypes.WinDLL(sys.argv[1])
print("held", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
"""


def test_a_dll_held_by_another_process_waits_and_reapplies_once_it_exits(win, build, tmp_path):
    """A running webui (another Windows process with cudnn64_8.dll loaded) while the stock
    files are back: the headless agent says "in use", retries after 2, 4 ... s, writes nothing,
    and re-applies once the holder has exited."""
    venv, whl, m = patched_target(win, build, tmp_path)
    lib = win.site_packages(venv) / "torch" / "lib"
    write_config(win.home, '[notifications]\nbackend = "log"\n')
    names = [f["name"] for f in m["files"]]
    stock = _stock_bytes(whl, names)
    for n, data in stock.items():  # what a pip reinstall does while the agent is not running
        (lib / n).write_bytes(data)
    release = tmp_path / "release"
    holder = win.popen(["python", "-c", HOLDER, lib / "cudnn64_8.dll", release])
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        win.popen(["python", "-m", "torchkeeper", "run", "--headless"], env={"TORCHKEEPER_HOME": win.home})
        tries = wait_for(lambda: len(events(win.home, "files in use")) >= 2 and events(win.home, "files in use"),
                         60, "two tries")
        assert [t["retry_in"] for t in tries[:2]] == [2.0, 4.0]  # the backoff
        assert "cudnn64_8.dll" in tries[0]["error"], tries[0]
        assert not events(win.home, "repaired")
        assert {n: (lib / n).read_bytes() == stock[n] for n in names} == {n: True for n in names}  # nothing written
        release.touch()
        assert holder.wait(30) == 0
        rep = wait_for(lambda: events(win.home, "repaired"), 60, "the re-apply once free")[0]
        r = win.tk("verify", "--full")
        assert r.rc == 0, r
    finally:
        release.touch()
        kill_windows_processes(win.path(win.home))
        holder.kill()
    assert rep["target"] == "a1111"
    toasts = [e for e in events(win.home, "toast") if e["key"] == "inuse:a1111"]
    assert len(toasts) == 1 and "will re-apply as soon as it is closed" in toasts[0]["body"], toasts
    text = (win.home / "logs" / "agent.log").read_text(encoding="utf-8")
    assert "toast inuse:a1111 shown through log" in text and "Traceback" not in text, text


def test_first_run_under_wine_writes_the_config_and_tells_what_it_found(win, build, tmp_path):
    """No config yet: the Windows agent writes the commented defaults, finds the A1111 venv in
    the user's profile (the first of the default roots) and says so in one toast; it adds and
    applies nothing."""
    profile = win.unix(win.py("-c", "import pathlib; print(pathlib.Path.home())").out.strip())
    apps = profile / f"tk-first-run-{os.getpid()}"
    config = win.home / "config" / "config.toml"
    try:
        whl = build.torch_wheel(tmp_path / "w", version="2.3.1+cu121", cuda="12.1", layout="windows",
                                cudnn="8.8.1.3")
        venv = win.venv(apps / "stable-diffusion-webui" / "venv")
        win.pip_install(venv, whl)
        default = config.read_text(encoding="utf-8")
        config.unlink()                                     # a first run
        win.popen(["python", "-m", "torchkeeper", "run", "--headless"], env={"TORCHKEEPER_HOME": win.home})
        log = win.home / "logs" / "agent.log"
        try:
            (ev,) = wait_for(lambda: events(win.home, "discovered"), 120, "the first run's discover")
            wait_for(lambda: "toast found shown through" in log.read_text(encoding="utf-8"), 60,
                     "the first-run toast")
        finally:
            kill_windows_processes(win.path(win.home))
        assert config.read_text(encoding="utf-8") == default
        ours = [f for f in ev["found"] if apps.name in f["path"]]
        assert [(f["app"], f["torch_version"], f["cudnn"]) for f in ours] == \
            [("AUTOMATIC1111", "2.3.1+cu121", "8.8.1.3")], ev["found"]
        text = log.read_text(encoding="utf-8")
        assert text.splitlines()[0].endswith("`torchkeeper target add PATH`") and "no targets yet" in text
        (toast,) = [ln for ln in text.splitlines() if "toast key=found " in ln]
        assert "title=torchkeeper: found " in toast and "AUTOMATIC1111 (2.3.1+cu121, cuDNN 8.8.1.3)" in toast
        st = win.tk("status", "--json")
        assert st.rc == 0 and st.json()["targets"] == [], st
    finally:
        shutil.rmtree(apps, ignore_errors=True)



def test_a_traditional_chinese_windows_gets_chinese_toasts(win):
    """A Windows whose display language is Traditional Chinese (Wine takes it from LANG, given
    the Linux locale exists: tests/setup-system.sh makes it): GetUserPreferredUILanguages says
    zh-TW, the first-run toast and the CLI are Chinese, and --json is the same as in English."""
    zh = {"LANG": "zh_TW.UTF-8"}
    r = win.py("-c", "from torchkeeper.platform.language import windows_languages as w; print(w())", env=zh)
    assert r.out.strip() == "['zh-TW']", r
    config = win.home / "config" / "config.toml"
    default = config.read_text(encoding="utf-8")
    config.unlink()                                     # a first run: it says what it found in a toast
    log = win.home / "logs" / "agent.log"
    start = log.stat().st_size if log.exists() else 0
    try:
        win.popen(["python", "-m", "torchkeeper", "run", "--headless"], env={"TORCHKEEPER_HOME": win.home, **zh})
        wait_for(lambda: log.exists() and "toast found shown through" in log.read_bytes()[start:].decode("utf-8"),
                 120, "the first-run toast")
    finally:
        kill_windows_processes(win.path(win.home))
        config.write_text(default, encoding="utf-8")
    (toast,) = [ln for ln in log.read_bytes()[start:].decode("utf-8").splitlines() if "toast key=found " in ln]
    assert "title=torchkeeper：找" in toast, toast     # 找到 N 個 torch 安裝 / 找不到 torch 安裝
    st = win.tk("status", env=zh)
    assert "代理程式：" in st.out, st
    assert win.tk("status", "--json", env=zh).out == win.tk("status", "--json").out
