"""The tray (torchkeeper.desktop.tray) and platform.opener.open_path.

(a) The menu model and every action, through pystray's dummy backend (never run()).
(b) One system test: the real X11 backend in Xvfb, docked in trayer, screenshots before and
    after the view changes. Xvfb and trayer come from tests/setup-system.sh; without them
    that test fails, it does not skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from kit.pixels import pixels

from torchkeeper.platform import opener as platform_opener
from torchkeeper.desktop import icons, tray
from torchkeeper.daemon import view
from kit.agentkit import end_process
from tray_demo import FakeController, sample_view
from kit.xtray import AMBER_FILL, OK_FILL, find_colour, near, start_xvfb, tray_owner, wait

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


class Opener:
    """opener.open_path stand-in: records what the tray asked to open."""

    def __init__(self, result=True):
        self.opened: list[Path] = []
        self.result = result

    def __call__(self, path) -> bool:
        self.opened.append(Path(path))
        return self.result


@pytest.fixture
def ctl(tmp_path):
    return FakeController(root=tmp_path)


@pytest.fixture
def opener():
    return Opener()


@pytest.fixture
def t(ctl, opener):
    return tray.Tray(ctl, backend="dummy", opener=opener)


def items(menu) -> list:
    """The visible items of a menu, as a user would see them (separators included)."""
    return list(menu)


def item(menu, text: str):
    found = [i for i in menu if i.text == text]
    assert len(found) == 1, f"no single item {text!r} in {[i.text for i in menu]}"
    return found[0]


def click(t: tray.Tray, it) -> None:
    it(t.icon)


# -- (a) the menu model -------------------------------------------------------------------


def test_menu_shows_the_view(t):
    menu = t.icon.menu
    texts = [i.text for i in items(menu)]
    SEP = "- - - -"     # pystray's separator
    assert texts == [
        "a1111 — cuDNN 8.9.7 applied",
        "comfy — pip put the stock files back",
        SEP, "Reapply all", "Check now", "Pause auto re-apply", "Open torchkeeper", "Show overview",
        SEP, "driver 551.86 (CUDA 12.4)",
        SEP, "Open config", "Open log", "Start at login",
        SEP, "Quit",
    ]
    assert [i.text for i in items(item(menu, "a1111 — cuDNN 8.9.7 applied").submenu)] == \
        ["Reapply", "Revert to stock", "Open folder", "Show details"]
    # the left-click action is "Reapply all", and only that
    assert [i.text for i in menu if i.default] == ["Reapply all"]
    driver = item(menu, "driver 551.86 (CUDA 12.4)")
    assert not driver.enabled and driver.submenu is None
    assert item(menu, "Pause auto re-apply").checked is False
    assert item(menu, "Start at login").checked is False
    assert item(menu, "Start at login").enabled
    assert item(menu, "Reapply all").checked is None    # a plain item, not a checkbox
    # the icon and its tooltip
    assert t.icon.title == "torchkeeper: 2 targets ok"
    assert t.icon.icon.tobytes() == icons.load(view.OK, tray.ICON_SIZE).tobytes()
    assert t.backend == "dummy"


def test_tray_subscribes_itself(ctl, opener):
    tr = tray.Tray(ctl, backend="dummy", opener=opener)
    assert ctl.subscribers == [tr.refresh]


def test_refresh_changes_icon_title_texts_and_checks(ctl, t):
    first_image = t.icon.icon
    ctl.publish(sample_view(
        overall=view.ATTENTION, tooltip="torchkeeper: comfy drifted",
        targets=[view.TargetView("comfy", "applying", None, "re-applying…", None)],
        driver="driver: none answered", paused=True, autostart=True))
    menu = t.icon.menu
    assert t.icon.icon is not first_image
    assert t.icon.icon.tobytes() == icons.load(view.ATTENTION, tray.ICON_SIZE).tobytes()
    assert t.icon.title == "torchkeeper: comfy drifted"
    assert [i.text for i in items(menu)][:2] == ["comfy — re-applying…", "- - - -"]
    assert item(menu, "driver: none answered")
    assert item(menu, "Pause auto re-apply").checked is True
    assert item(menu, "Start at login").checked is True
    # the same state again: the image is not reloaded or reassigned
    image = t.icon.icon
    t.refresh(replace(t.view, tooltip="torchkeeper: still drifted"))
    assert t.icon.icon is image and t.icon.title == "torchkeeper: still drifted"


def test_no_targets_and_no_autostart(ctl, t):
    ctl.publish(sample_view(targets=[], autostart=None))
    menu = t.icon.menu
    first = items(menu)[0]
    assert first.text == "No targets yet" and not first.enabled
    login = item(menu, "Start at login")
    assert not login.enabled and login.checked is False
    click(t, login)                 # a disabled item does nothing even if invoked
    assert ctl.calls == []


def test_every_action_calls_the_controller(ctl, opener, t):
    menu = t.icon.menu
    click(t, item(menu, "Reapply all"))
    click(t, item(menu, "Check now"))
    click(t, item(menu, "Pause auto re-apply"))
    click(t, item(menu, "Start at login"))
    a1111 = item(menu, "a1111 — cuDNN 8.9.7 applied").submenu
    click(t, item(a1111, "Reapply"))
    click(t, item(a1111, "Revert to stock"))
    comfy = item(menu, "comfy — pip put the stock files back").submenu
    click(t, item(comfy, "Reapply"))
    click(t, item(menu, "Quit"))
    assert ctl.calls == [
        ("request", view.REAPPLY_ALL, None),
        ("request", view.CHECK_ALL, None),
        ("set_paused", True),
        ("set_autostart", True),
        ("request", view.REAPPLY, "a1111"),
        ("request", view.REVERT, "a1111"),
        ("request", view.REAPPLY, "comfy"),
        ("request", view.QUIT, None),
    ]
    # toggles flip what the view says now
    ctl.calls.clear()
    ctl.publish(sample_view(paused=True, autostart=True))
    click(t, item(t.icon.menu, "Pause auto re-apply"))
    click(t, item(t.icon.menu, "Start at login"))
    assert ctl.calls == [("set_paused", False), ("set_autostart", False)]


def test_default_action_is_reapply_all(ctl, t):
    t.icon.menu(t.icon)         # what a left click on the icon runs
    assert ctl.calls == [("request", view.REAPPLY_ALL, None)]


def test_without_a_menu_a_click_opens_the_dashboard(ctl, opener, monkeypatch):
    """pystray's X11 backend has no menu (HAS_MENU False): the click must lead somewhere that
    offers every action, not re-apply blindly with nothing else reachable: the dashboard."""
    _, dummy = tray._import_pystray("dummy")
    monkeypatch.setattr(dummy, "HAS_MENU", False)
    tr = tray.Tray(ctl, backend="dummy", opener=opener)
    assert not tr.has_menu
    assert [i.text for i in tr.icon.menu if i.default] == ["Open torchkeeper"]
    tr.icon.menu(tr.icon)       # the click
    assert ctl.calls == [("open_dashboard",)]   # nothing re-applied behind the user's back
    assert [str(p) for p in opener.opened] == [str(Path(ctl.dashboard_url))]


def test_show_overview_writes_every_action(ctl, opener, t):
    click(t, item(t.icon.menu, "Show overview"))
    [path] = opener.opened
    text = path.read_text(encoding="utf-8")
    assert path == ctl.log_file.parent / "overview.txt"
    assert "torchkeeper apply a1111" in text and "torchkeeper revert comfy" in text
    assert "comfy: drifted" in text


def test_degraded_watching_is_a_menu_line_and_in_the_overview(ctl, opener, t):
    ctl.publish(replace(ctl.view(), watching="the file watch failed (OSError: x)"))
    line = [i for i in items(t.icon.menu) if i.text.startswith("Watching: degraded")]
    assert len(line) == 1 and not line[0].enabled
    click(t, item(t.icon.menu, "Show overview"))
    assert "watching: degraded (the file watch failed (OSError: x))" in opener.opened[-1].read_text()


def test_open_actions(ctl, opener, t):
    menu = t.icon.menu
    click(t, item(menu, "Open config"))
    click(t, item(menu, "Open log"))
    click(t, item(item(menu, "a1111 — cuDNN 8.9.7 applied").submenu, "Open folder"))
    assert opener.opened == [ctl.config_file, ctl.log_file, Path("/venvs/a1111/torch/lib")]
    # a target without a library folder: Open folder is disabled
    no_folder = item(item(menu, "comfy — pip put the stock files back").submenu, "Open folder")
    assert not no_folder.enabled


def test_show_details_opens_a_text_file_next_to_the_log(ctl, opener, t):
    click(t, item(item(t.icon.menu, "a1111 — cuDNN 8.9.7 applied").submenu, "Show details"))
    [path] = opener.opened
    assert path == ctl.log_file.parent / "details-a1111.txt"
    text = path.read_text(encoding="utf-8")
    assert "a1111: cuDNN 8.9.7 applied" in text
    assert "state: patched" in text and "bundle: cu124-cudnn897" in text
    assert "cudnn64_8.dll: replaced" in text


def test_show_details_falls_back_to_the_temp_folder(tmp_path, opener, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    ctl = FakeController(root=tmp_path)
    ctl.log_file = blocker / "logs" / "agent.log"    # its folder cannot be made
    monkeypatch.setattr(tray.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    t = tray.Tray(ctl, backend="dummy", opener=opener)
    ctl.publish(sample_view(targets=[view.TargetView("a/b c", "stock", None, "", None)]))
    click(t, item(item(t.icon.menu, "a/b c").submenu, "Show details"))
    assert opener.opened == [tmp_path / "tmp" / "details-a_b_c.txt"]
    assert "(no details)" in opener.opened[0].read_text(encoding="utf-8")


def test_failing_action_is_logged_not_raised(ctl, t, caplog):
    def boom(*a):
        raise OSError("queue closed")
    ctl.request = boom
    click(t, item(t.icon.menu, "Check now"))
    assert "tray: Check now failed: OSError: queue closed" in caplog.text
    assert "Traceback" not in caplog.text


def test_long_texts_are_clipped(ctl, t):
    ctl.publish(sample_view(
        tooltip="x" * 300,
        targets=[view.TargetView("t", "drifted", None, "line one\nline two " + "y" * 200, None)]))
    first = items(t.icon.menu)[0].text
    assert len(first) == tray.ITEM_TEXT_MAX and first.endswith("…") and "\n" not in first
    assert first.startswith("t — line one line two")
    assert len(t.icon.title) == tray.TITLE_MAX


def test_refresh_from_many_threads_ends_on_the_last_view(ctl, t):
    views = [sample_view(overall=s, tooltip=f"v{i}")
             for i, s in enumerate(view.ICON_STATES * 20)]
    barrier = threading.Barrier(4)

    def push(chunk):
        barrier.wait()
        for v in chunk:
            t.refresh(v)

    threads = [threading.Thread(target=push, args=(views[i::4],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    last = sample_view(overall=view.PAUSED, tooltip="last")
    t.refresh(last)
    assert t.view is last and t.icon.title == "last"
    assert t.icon.icon.tobytes() == icons.load(view.PAUSED, tray.ICON_SIZE).tobytes()


def test_refresh_never_raises(ctl, t, caplog, monkeypatch):
    def missing(state, size=64):
        raise icons.NotFound("tray icon x is missing", "reinstall")
    monkeypatch.setattr(tray.icons, "load", missing)
    t.refresh(sample_view(overall=view.ERROR))
    assert "could not show the new state" in caplog.text and "missing" in caplog.text
    assert t.view.overall == view.ERROR     # the menu still follows the view


def test_notify_is_unavailable_on_the_dummy_backend(t):
    with pytest.raises(tray.NotifyUnavailable, match="dummy tray backend has no notifications"):
        t.notify("drift", "comfy: pip put the stock files back")


def test_notify_passes_clipped_text_where_supported(t, monkeypatch):
    sent = []
    monkeypatch.setattr(t.icon, "notify", lambda message, title=None: sent.append((title, message)))
    t.notify("T" * 100, "B" * 400)
    [(title, body)] = sent
    assert len(title) == tray.NOTIFY_TITLE_MAX and len(body) == tray.NOTIFY_BODY_MAX
    monkeypatch.setattr(type(t.icon), "HAS_NOTIFICATION", False)
    with pytest.raises(tray.NotifyUnavailable):
        t.notify("a", "b")


def test_run_refuses_the_dummy_backend(t):
    with pytest.raises(RuntimeError, match="dummy"):
        t.run()
    t.stop()
    t.stop()    # twice is fine


def test_refresh_after_stop_only_records_the_view(ctl, t):
    t.stop()
    image = t.icon.icon
    t.refresh(sample_view(overall=view.ERROR))
    assert t.view.overall == view.ERROR and t.icon.icon is image


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown tray backend 'qt'"):
        tray.Tray(FakeController(), backend="qt")


def _python(code: str, env_changes: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    env.update(env_changes)
    env["PYTHONPATH"] = str(REPO / "agent")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)


def test_available_says_why_not():
    code = ("from torchkeeper.desktop import tray; import sys\n"
            "print(tray.available()); print(tray.available('dummy'))\n"
            "print('pystray' in sys.modules)")
    r = _python(code, {})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    if sys.platform.startswith("linux"):
        assert lines[0] == "(False, 'no display (neither DISPLAY nor WAYLAND_DISPLAY is set)')"
        assert lines[2] == "True"   # the dummy check did import it, the display check did not
    assert lines[1] == "(True, 'tray backend: dummy')"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 display check")
def test_available_with_a_dead_display():
    r = _python("from torchkeeper.desktop import tray; print(tray.available('xorg'))",
                {"DISPLAY": ":987"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("(False, 'no tray backend works here (")
    assert ":987" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_headless_imports_load_no_gui_libraries():
    r = _python("import sys; import torchkeeper.desktop.tray, torchkeeper.desktop.icons, torchkeeper.platform.opener\n"
                "print(sorted(m for m in ('pystray', 'PIL', 'Xlib') if m in sys.modules))", {})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# -- opener.open_path ----------------------------------------------------------------------


def test_open_path_uses_the_platform_opener(tmp_path):
    for platform, argv0 in (("linux", "xdg-open"), ("darwin", "open"), ("freebsd13", "xdg-open")):
        ran = []
        assert platform_opener.open_path(tmp_path, platform=platform, run=ran.append) is True
        assert ran == [[argv0, str(tmp_path)]]


def test_open_path_on_windows_uses_startfile_in_the_background(tmp_path):
    started = threading.Event()
    seen = []

    def startfile(p):
        seen.append(p)
        started.set()

    assert platform_opener.open_path(tmp_path, platform="win32", startfile=startfile) is True
    assert started.wait(10) and seen == [str(tmp_path)]


def test_open_path_never_raises(tmp_path, caplog):
    assert platform_opener.open_path(tmp_path / "nope", platform="linux", run=lambda a: None) is False
    assert "does not exist" in caplog.text

    def broken(argv):
        raise OSError("exec format error")
    assert platform_opener.open_path(tmp_path, platform="linux", run=broken) is False
    assert "exec format error" in caplog.text

    def failing_startfile(p):
        raise OSError("no application is associated")
    assert platform_opener.open_path(tmp_path, platform="win32", startfile=failing_startfile) is True
    deadline = time.monotonic() + 10     # the failure is logged from the opener's thread
    while "no application is associated" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "no application is associated" in caplog.text
    assert "Traceback" not in caplog.text


def test_open_path_without_xdg_open(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert platform_opener.open_path(tmp_path, platform="linux") is False
    assert "xdg-open is not installed" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a fake xdg-open script")
def test_open_path_really_starts_the_opener(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    marker = tmp_path / "opened"
    script = bin_ / "xdg-open"
    script.write_text(f'#!/bin/sh\necho "$1" > "{marker}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ.get('PATH', '')}")
    assert platform_opener.open_path(tmp_path) is True
    deadline = time.monotonic() + 20
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text().strip() == str(tmp_path)


# -- (b) the real tray under Xvfb + trayer ----------------------------------------------------


@pytest.mark.timeout(120)
def test_tray_icon_shows_and_follows_the_view_in_a_real_x_tray(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the X11 system test runs on Linux")
    missing = [tool for tool in ("Xvfb", "trayer") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run tests/setup-system.sh "
                    "(as root it installs the Debian packages xvfb and trayer)")
    from PIL import ImageGrab

    work = tmp_path / "demo"
    work.mkdir()
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("xvfb", "trayer", "demo")}
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        display, xvfb = start_xvfb(logs["xvfb"])
        procs.append(("Xvfb", xvfb))
        env = {k: v for k, v in os.environ.items()
               if k not in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
        env["DISPLAY"] = display
        procs.append(("trayer", subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel",
             "--width", "200", "--heighttype", "pixel", "--height", "32",
             "--transparent", "false", "--tint", "0x000000", "--SetDockType", "true"],
            env=env, stdout=logs["trayer"], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)))
        wait(lambda: tray_owner(display), 20, "trayer to own the system tray", procs)

        env["PYTHONPATH"] = str(REPO / "agent")
        procs.append(("tray_demo.py", subprocess.Popen(
            [sys.executable, str(TESTS / "tray_demo.py"), str(work), "xorg"],
            env=env, stdout=logs["demo"], stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)))

        def grab():
            return ImageGrab.grab(xdisplay=display).convert("RGB")

        def green_icon():
            shot = grab()
            box, n = find_colour(shot, OK_FILL)
            return (shot, box, n) if n >= 20 else None   # a docked, drawn icon; not a stray pixel

        before, box, n_green = wait(green_icon, 30, "the green (ok) icon in the tray", procs)
        before_path = tmp_path / "tray-before.png"
        before.save(before_path)
        # the icon is in trayer's strip: top edge, right-aligned, 200x32
        assert box[1] < 32 and box[0] >= 640 - 200, f"green pixels at {box}, outside the tray"
        # round, not stretched to the slot; its transparent corners show the panel, not black
        assert abs((box[2] - box[0]) - (box[3] - box[1])) <= 2, f"badge face {box} not round"
        panel = before.getpixel((640 - 200 + 4, 16))
        corner = before.getpixel((box[0] - 2, box[1] - 2))
        assert near(corner, panel, 12), f"icon corner {corner}, panel {panel}"

        (work / "switch").touch()
        pad = (box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4)   # the icon's slot

        def amber_icon():
            if not (work / "switched").exists():
                return None
            shot = grab()
            slot = shot.crop(pad)
            _, n_amber = find_colour(slot, AMBER_FILL)
            _, n_left = find_colour(slot, OK_FILL)
            return (shot, n_amber) if n_amber >= n_green // 2 and n_left == 0 else None

        after, n_amber = wait(amber_icon, 30, "the icon to turn amber (attention)", procs)
        after_path = tmp_path / "tray-after.png"
        after.save(after_path)

        def dominant(shot):
            opaque = [px for px in pixels(shot.crop(box)) if sum(px) > 60]
            return Counter(opaque).most_common(1)[0]
        print(f"\ntray screenshots: {before_path} and {after_path}")
        print(f"icon bounding box (green pixels, x0 y0 x1 y1): {box}; panel colour {panel}")
        print(f"before: {n_green} px near {OK_FILL}; most common colour {dominant(before)}")
        print(f"after:  {n_amber} px near {AMBER_FILL}; most common colour {dominant(after)}")

        # SIGTERM, as the agent gets at logoff: its handler stops the tray from inside the loop
        demo = procs[-1][1]
        demo.terminate()
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("the tray did not stop on SIGTERM within 20 s")
        assert demo.returncode == 0, (tmp_path / "demo.log").read_text(errors="replace")
    finally:
        (work / "quit").touch()
        for _, p in reversed(procs):
            end_process(p)
        for f in logs.values():
            f.close()


def test_the_dashboard_url_opens_in_the_browser_and_its_code_is_never_logged(caplog):
    url = "http://127.0.0.1:8123/login?code=s3cret-code"
    ran = []
    assert platform_opener.open_path(url, platform="linux", run=ran.append) is True
    assert ran == [["xdg-open", url]]     # a URL is no file: no existence check

    def broken(argv):
        raise OSError("no browser")
    assert platform_opener.open_path(url, platform="linux", run=broken) is False
    assert "no browser" in caplog.text and "http://127.0.0.1:8123/login" in caplog.text
    assert "s3cret-code" not in caplog.text
