"""A real X tray for tests: Xvfb on a free display, the tray's owner, finding the icon's colours.

Shared by several test modules (it was in test_tray.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from kit.pixels import pixels
from kit.agentkit import end_process


OK_FILL = (40, 160, 70)           # icons/make_icons.py STATES: the badges' face colours
AMBER_FILL = (245, 170, 20)


def wait(cond, timeout: float, what: str, procs=()):
    """Polls cond() until it returns something truthy; fails naming what it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        for name, p in procs:
            if p.poll() is not None:
                pytest.fail(f"{name} exited with {p.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def start_xvfb(log) -> tuple[str, subprocess.Popen]:
    """Xvfb on a free display number, chosen from our pid (xdist workers differ)."""
    base = 100 + os.getpid() % 800
    for n in range(base, base + 40):
        if Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists():
            continue
        p = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "640x200x24", "-nolisten", "tcp"],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and p.poll() is None:
            if x_connects(f":{n}"):
                return f":{n}", p
            time.sleep(0.1)
        if p.poll() is None:
            end_process(p)
            pytest.fail(f"Xvfb :{n} did not accept connections within 15 s")
        # it exited: another server took that number meanwhile; try the next one
    pytest.fail(f"no free X display number in :{base}..:{base + 39}")


def x_connects(display: str) -> bool:
    import Xlib.display
    import Xlib.error
    try:
        Xlib.display.Display(display).close()
        return True
    except (Xlib.error.DisplayError, OSError):
        return False


def tray_owner(display: str) -> bool:
    """Whether a system tray (the _NET_SYSTEM_TRAY_S0 selection owner) runs on display."""
    import Xlib.X
    import Xlib.display
    d = Xlib.display.Display(display)
    try:
        return d.get_selection_owner(d.intern_atom("_NET_SYSTEM_TRAY_S0")) != Xlib.X.NONE
    finally:
        d.close()


def near(px, colour, tol=30) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(px, colour))


def find_colour(shot, colour):
    """(bounding box, count) of the pixels near colour in a screenshot; (None, 0) if none."""
    w, h = shot.size
    data = pixels(shot)
    pts = [(i % w, i // w) for i, px in enumerate(data) if near(px, colour)]
    if not pts:
        return None, 0
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs), min(ys), max(xs) + 1, max(ys) + 1), len(pts)
