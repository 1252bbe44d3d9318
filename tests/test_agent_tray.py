"""The real agent under a real tray: `torchkeeper run` (not headless) on Xvfb with trayer,
pystray's X11 backend. A pip reinstall turns the icon amber (auto re-apply is off, so it
asks); X11's icon has no menu, so a left click opens the dashboard (the agent serves it on
127.0.0.1), whose Reapply puts the overlay back; after it the icon turns green again. With no tray host the agent
says so once, runs headless, and docks when one starts later."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kit import builders
import pytest
from kit.agentkit import end_process, events, patched_target, write_config
from kit.dashclient import Client
from conftest import tk_env
from kit.xtray import AMBER_FILL, OK_FILL, find_colour, start_xvfb, tray_owner, wait


def _trayer(env: dict, log) -> subprocess.Popen:
    """trayer: a system tray host on the top edge of the Xvfb screen, 200 x 32 pixels."""
    return subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "200",
         "--heighttype", "pixel", "--height", "32", "--transparent", "false",
         "--tint", "0x000000", "--SetDockType", "true"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def fake_opener(tmp_path: Path) -> Path:
    """A folder with an `xdg-open` that records what it was asked to open."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "xdg-open"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{tmp_path / 'opened.txt'}'\n")
    script.chmod(0o755)
    return bin_dir


def _opened(tmp_path: Path) -> list[str]:
    try:
        return (tmp_path / "opened.txt").read_text().split()
    except FileNotFoundError:
        return []


def _click(display: str, x: int, y: int) -> None:
    """A real left click through the XTEST extension (what xdotool does)."""
    import Xlib.X
    import Xlib.display
    from Xlib.ext import xtest

    d = Xlib.display.Display(display)
    try:
        d.screen().root.warp_pointer(x, y)
        d.sync()
        xtest.fake_input(d, Xlib.X.ButtonPress, 1)
        xtest.fake_input(d, Xlib.X.ButtonRelease, 1)
        d.sync()
    finally:
        d.close()


@pytest.mark.timeout(180)
def test_agent_tray_shows_drift_and_a_click_reapplies(tmp_path, build, run_tk, tk_home):
    missing = [tool for tool in ("Xvfb", "trayer") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run tests/setup-system.sh")
    from PIL import ImageGrab

    venv, w, m = patched_target(tmp_path, build, run_tk)
    write_config(tk_home, "[agent]\nauto_reapply = false\n[notifications]\nbackend = \"tray\"\n")
    logs = {n: open(tmp_path / f"{n}.log", "wb") for n in ("xvfb", "trayer", "agent")}
    procs = []
    try:
        display, xvfb = start_xvfb(logs["xvfb"])
        procs.append(("Xvfb", xvfb))
        env = tk_env(tk_home, {"DISPLAY": display, "WAYLAND_DISPLAY": None, "PYSTRAY_BACKEND": None,
                               "DBUS_SESSION_BUS_ADDRESS": None,
                               "PATH": f"{fake_opener(tmp_path)}{os.pathsep}{os.environ['PATH']}"})
        procs.append(("trayer", _trayer(env, logs["trayer"])))
        wait(lambda: tray_owner(display), 20, "trayer to own the system tray", procs)
        agent = subprocess.Popen([sys.executable, "-m", "torchkeeper", "run"], env=env,
                                 stdout=logs["agent"], stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        procs.append(("torchkeeper run", agent))

        def shot():
            return ImageGrab.grab(xdisplay=display).convert("RGB")

        def icon(colour):
            def find():
                s = shot()
                box, n = find_colour(s, colour)
                return (s, box) if n >= 20 and box[1] < 32 else None
            return find

        before, box = wait(icon(OK_FILL), 60, "the green (ok) icon", procs)
        before.save(tmp_path / "agent-tray-ok.png")

        builders.pip_install(venv, w, force_reinstall=True)
        after, abox = wait(icon(AMBER_FILL), 60, "the amber (attention) icon after the reinstall",
                            procs)
        after.save(tmp_path / "agent-tray-attention.png")
        assert [e["decision"] for e in events(tk_home, "drift")] == ["asked the user"]
        assert not events(tk_home, "repaired")

        # left click: X11's icon has no menu, so its default item opens the dashboard (the
        # agent serves it on 127.0.0.1; the browser is the fake opener here)
        _click(display, (abox[0] + abox[2]) // 2, (abox[1] + abox[3]) // 2)
        opened = wait(lambda: _opened(tmp_path), 30, "the dashboard opened by the click", procs)
        url = opened[0]
        assert url.startswith("http://127.0.0.1:") and "/login?code=" in url, url
        assert not events(tk_home, "repaired")  # a click on X11 opens; it changes nothing
        port = int(url.split(":")[2].split("/")[0])
        assert Client(port, "").reapply_as_the_page(url, "a1111") == 303   # the page's Reapply
        again, _ = wait(icon(OK_FILL), 60, "the green icon again", procs)
        again.save(tmp_path / "agent-tray-ok-again.png")
        print(f"\nagent tray screenshots in {tmp_path}: icon at {box} (ok), {abox} (attention)")
        assert run_tk("verify", "--full").rc == 0

        agent.terminate()
        assert agent.wait(30) == 0
    finally:
        for _, p in reversed(procs):
            end_process(p)
        for f in logs.values():
            f.close()
    log = (tmp_path / "agent.log").read_text(errors="replace")
    assert "agent running (tray)" in log, log
    assert "Traceback" not in log and "Traceback" not in (tk_home / "logs" / "agent.log").read_text()


@pytest.mark.timeout(180)
def test_no_tray_host_is_said_once_and_the_icon_docks_when_one_starts(tmp_path, build, run_tk, tk_home):
    """Xvfb with no tray: `torchkeeper run` says so once and runs headless (it still repairs);
    trayer started a little later: the icon docks there, and the agent says so."""
    missing = [tool for tool in ("Xvfb", "trayer") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run tests/setup-system.sh")
    from PIL import ImageGrab

    venv, w, m = patched_target(tmp_path, build, run_tk)
    logs = {n: open(tmp_path / f"{n}.log", "wb") for n in ("xvfb", "trayer", "agent")}
    procs = []
    try:
        display, xvfb = start_xvfb(logs["xvfb"])
        procs.append(("Xvfb", xvfb))
        env = tk_env(tk_home, {"DISPLAY": display, "WAYLAND_DISPLAY": None, "PYSTRAY_BACKEND": None,
                               "DBUS_SESSION_BUS_ADDRESS": None})
        agent = subprocess.Popen([sys.executable, "-m", "torchkeeper", "run"], env=env,
                                 stdout=logs["agent"], stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        procs.append(("torchkeeper run", agent))
        out = lambda: (tmp_path / "agent.log").read_text(errors="replace")  # noqa: E731
        wait(lambda: "agent running (headless)" in out(), 60, "the headless start", procs)
        assert "no system tray on this desktop" in out()
        builders.pip_install(venv, w, force_reinstall=True)   # headless, it still repairs
        wait(lambda: events(tk_home, "repaired"), 60, "the repair, headless", procs)

        procs.append(("trayer", _trayer(env, logs["trayer"])))
        wait(lambda: "a system tray appeared" in out(), 30, "the agent to see the tray", procs)

        def green():
            shot = ImageGrab.grab(xdisplay=display).convert("RGB")
            box, n = find_colour(shot, OK_FILL)
            return (shot, box) if n >= 20 and box[1] < 32 else None
        shot, box = wait(green, 60, "the green icon docked in the late tray", procs)
        shot.save(tmp_path / "late-tray.png")
        time.sleep(1)
        agent.terminate()
        assert agent.wait(30) == 0
    finally:
        for _, p in reversed(procs):
            end_process(p)
        for f in logs.values():
            f.close()
    text = (tmp_path / "agent.log").read_text(errors="replace")
    assert text.count("no system tray on this desktop") == 1, text
    assert "Traceback" not in text
