"""The agent's tray under Wine: pystray's win32 backend, in a private Wine desktop with a
taskbar (so its notification area holds only this test's icon and other tests' windows get
none of its clicks), on the session's Xvfb. Colours are not asserted: Wine draws PNG-in-ICO
icons with red and blue swapped."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile

import pytest
from kit.agentkit import events, wait_for, write_config
from PIL import ImageGrab
from winkit import Desktop, kill_windows_processes, mapped_windows, patched_target

pytestmark = pytest.mark.timeout(240)

SIZE = (640, 480)
AT = (640, 540)    # where the desktop's window is moved: clear of the default desktop's tray (top left)


def _xdotool(display: str, *args: str) -> None:
    subprocess.run(["xdotool", *args], env={"DISPLAY": display}, check=True, capture_output=True, timeout=20)


def _shot(display: str):
    x, y = AT
    return ImageGrab.grab(xdisplay=display).convert("RGB").crop((x, y, x + SIZE[0], y + SIZE[1]))


def _icon_box(img):
    """The bounding box of what is not the taskbar's background in the notification area (the
    last 60 px of the bottom 20 px row), or None."""
    w, h = img.size
    area = img.crop((w - 60, h - 20, w, h))
    bg = area.getpixel((0, area.size[1] // 2))
    pts = [(x, y) for x in range(area.size[0]) for y in range(area.size[1])
           if sum(abs(a - b) for a, b in zip(area.getpixel((x, y)), bg)) > 90]
    if len(pts) < 20:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (w - 60 + min(xs), h - 20 + min(ys), w - 60 + max(xs), h - 20 + max(ys))


def _text_rows(img, box):
    """Rows of text in box (x0, y0, x1, y1) of img: [(top, bottom)], top to bottom. Menu text is
    black on a light background; separators are light grey lines."""
    x0, y0, x1, y1 = box
    dark = [any(sum(img.getpixel((x, y))) < 200 for x in range(x0 + 4, x1 - 4)) for y in range(y0, y1)]
    rows, start = [], None
    for i, d in enumerate(dark + [False]):
        if d and start is None:
            start = i
        elif not d and start is not None:
            rows.append((y0 + start, y0 + i - 1))
            start = None
    return rows


def test_tray_icon_menu_reapply_and_balloon(win, win_display, build, tmp_path):
    venv, whl, m = patched_target(win, build, tmp_path)
    lib = win.site_packages(venv) / "torch" / "lib"
    # asks instead of re-applying, through the tray's balloon
    write_config(win.home, '[agent]\nauto_reapply = false\n[notifications]\nbackend = "tray"\n')
    desk = Desktop(win, f"tk-tray-{os.getpid()}", SIZE, shell=True)
    agent = desk.popen(["python", "-m", "torchkeeper", "run"], env={"TORCHKEEPER_HOME": win.home})
    log = win.home / "logs" / "agent.log"
    try:
        wait_for(lambda: events(win.home, "started"), 60, "the agent's start")
        wid = wait_for(desk.window, 20, "the desktop's X window")
        _xdotool(win_display, "windowmove", wid, str(AT[0]), str(AT[1]))
        wait_for(lambda: mapped_windows(win_display).get(int(wid), (0, 0))[:2] == AT, 20, "the desktop to move")

        # the icon is in the notification area
        ok = wait_for(lambda: (lambda s: (s, _icon_box(s)) if _icon_box(s) else None)(_shot(win_display)),
                      30, "the icon in the taskbar")
        shot, icon = ok
        shot.save(tmp_path / "tray-ok.png")
        ix, iy = AT[0] + (icon[0] + icon[2]) // 2, AT[1] + (icon[1] + icon[3]) // 2

        # stock bytes back by hand: the agent asks, in a balloon from the icon
        before = set(mapped_windows(win_display))
        with zipfile.ZipFile(whl) as z:
            (lib / "cudnn64_8.dll").write_bytes(z.read("torch/lib/cudnn64_8.dll"))
        drift = wait_for(lambda: events(win.home, "drift"), 30, "the drift")[0]
        assert drift["decision"] == "asked the user"
        wait_for(lambda: "toast drift:a1111 shown through tray" in log.read_text(encoding="utf-8"), 20,
                 "the toast through the tray")
        wait_for(lambda: [g for w, g in mapped_windows(win_display).items()
                                    if w not in before and g[3] > 30], 20, "the balloon's window")
        _shot(win_display).save(tmp_path / "tray-balloon.png")
        assert not events(win.home, "repaired")

        # a right click opens the menu; "Reapply all" (its first item after the targets) re-applies
        time.sleep(1)   # let the balloon settle
        before = set(mapped_windows(win_display))
        _xdotool(win_display, "mousemove", str(ix), str(iy), "click", "3")
        menu = wait_for(lambda: [g for w, g in mapped_windows(win_display).items()
                                 if w not in before and g[2] > 150 and g[3] > 150], 20, "the menu")[0]
        time.sleep(0.5)
        shot = ImageGrab.grab(xdisplay=win_display).convert("RGB")
        shot.crop((AT[0], AT[1], AT[0] + SIZE[0], AT[1] + SIZE[1])).save(tmp_path / "tray-menu.png")
        rows = _text_rows(shot, (menu[0], menu[1], menu[0] + menu[2], menu[1] + menu[3]))
        assert len(rows) >= 8, rows  # a1111, Reapply all, Check now, Pause, driver, config, log, login, Quit
        top, bottom = rows[1]
        _xdotool(win_display, "mousemove", str(menu[0] + 40), str((top + bottom) // 2), "click", "1")
        rep = wait_for(lambda: events(win.home, "repaired"), 30, "the re-apply from the menu")[0]
        assert rep["reason"] == "reapply all", rep
        r = win.tk("verify", "--full")
        assert r.rc == 0, r

        # logoff stops it
        r = desk.end_session()
        assert r.rc == 0, r
        agent.wait(30)
    finally:
        kill_windows_processes(win.path(win.home))
    text = log.read_text(encoding="utf-8")
    assert "the session is ending: stopping after the running job" in text and "agent stopped" in text
    assert "Traceback" not in text
