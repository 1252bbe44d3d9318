"""Toasts (torchkeeper.desktop.notify) against a real notification server on a private D-Bus session bus.

Each test that needs a bus starts its own ``dbus-daemon`` (a minimal config, so no service of
this machine can be activated on it) and tests/dbus_notify_server.py on it, and points
DBUS_SESSION_BUS_ADDRESS at it. What reached the server is read from the server's record.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from torchkeeper.desktop import notify
from torchkeeper.daemon import view
from torchkeeper.desktop.notify import Notifier, NotifyUnavailable
from kit.bus import PrivateBus, need


pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def needs_notify_send():
    need("notify-send", "libnotify-bin")


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No way to this machine's own session bus: no address, no $XDG_RUNTIME_DIR/bus, no X11."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


def _private_bus(tmp_path, monkeypatch, mode):
    need("dbus-daemon", "dbus-daemon")
    bus = PrivateBus(tmp_path, mode)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
    return bus


@pytest.fixture
def notify_bus(tmp_path, monkeypatch, clean_env):
    bus = _private_bus(tmp_path, monkeypatch, "serve")
    yield bus.bus
    bus.stop()


@pytest.fixture
def empty_bus(tmp_path, monkeypatch, clean_env):
    """A session bus with no notification server on it."""
    bus = _private_bus(tmp_path, monkeypatch, "bus-only")
    yield bus.bus
    bus.stop()


@pytest.fixture
def hung_bus(tmp_path, monkeypatch, clean_env):
    """A session bus whose notification server owns its name and never answers."""
    bus = _private_bus(tmp_path, monkeypatch, "hang")
    yield bus.bus
    bus.stop()


@pytest.fixture
def dead_socket(monkeypatch, clean_env):
    """DBUS_SESSION_BUS_ADDRESS pointing at a socket file nobody listens on."""
    d = tempfile.mkdtemp(prefix="tk-dead-", dir="/tmp")  # short: AF_UNIX paths are limited
    path = os.path.join(d, "bus")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={path}")
    yield path
    shutil.rmtree(d, ignore_errors=True)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def log(request):
    logger = logging.getLogger(f"torchkeeper.test_notify.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Records()
    logger.addHandler(handler)
    logger.records = handler
    yield logger
    logger.removeHandler(handler)


class FakeTray:
    """Our own tray interface (not D-Bus): records what it was asked to show."""

    def __init__(self):
        self.calls = []

    def notify(self, title, body):
        self.calls.append((title, body))


@pytest.fixture
def notifiers():
    made = []

    def make(config=None, on_action=lambda action, target: None, **kw):
        n = Notifier(config or {}, on_action, **kw)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


def drift(name: str, actions=(view.REAPPLY,)) -> view.Toast:
    return view.Toast(key=f"drift:{name}", title=f"{name}: stock files are back",
                      body=f"a pip install reverted the overlay on {name}", target=name,
                      actions=tuple(actions), level="warning")


# --- plyer ----------------------------------------------------------------------------------------

@pytest.mark.usefixtures("needs_notify_send")
def test_plyer_delivers_title_and_body(notify_bus, notifiers, log):
    n = notifiers({"backend": "plyer"}, logger=log, clock=Clock())
    assert n.notify(drift("a1111")) == "plyer"
    [got] = notify_bus.notifications()
    assert got["summary"] == "a1111: stock files are back"
    assert got["body"] == "a pip install reverted the overlay on a1111"
    assert got["app_name"] == "torchkeeper"
    assert got["actions"] == []  # plyer has no buttons
    assert not log.records.messages(logging.WARNING)


@pytest.mark.usefixtures("needs_notify_send")
def test_forced_plyer_without_server_goes_to_the_log_not_the_tray(empty_bus, notifiers, log):
    tray = FakeTray()
    n = notifiers({"backend": "plyer"}, tray=tray, logger=log, clock=Clock())
    assert n.notify(drift("a1111")) == "log"
    assert tray.calls == []
    assert "toast: a1111: stock files are back — a pip install reverted the overlay on a1111" \
        in log.records.messages()
    assert any("plyer" in m and "no notification server on the session bus" in m
               for m in log.records.messages(logging.WARNING))


# --- desktop-notifier -----------------------------------------------------------------------------

def test_desktop_notifier_reapply_button_calls_on_action(notify_bus, notifiers, log):
    import desktop_notifier  # noqa: F401  (the test extra installs it)
    pressed = []
    done = threading.Event()

    def on_action(action, target):
        pressed.append((action, target, threading.current_thread().name))
        done.set()

    n = notifiers({}, on_action=on_action, logger=log, clock=Clock())
    assert n.notify(drift("forge")) == "desktop-notifier"
    [got] = notify_bus.notifications()
    assert (got["summary"], got["app_name"]) == ("forge: stock files are back", "torchkeeper")
    icon = notify.icon_path("warning")  # icons/attention-64.png, once the icons are drawn
    assert got["app_icon"] == (Path(icon).as_uri() if icon else "")
    actions = got["actions"]  # [key, label, key, label, ...]
    labels = dict(zip(actions[::2], actions[1::2]))
    [reapply_key] = [k for k, label in labels.items() if label == "Reapply"]

    notify_bus.invoke_action(got["id"], reapply_key)
    assert done.wait(10), "on_action was not called after ActionInvoked"
    assert [(a, t) for a, t, _ in pressed] == [(view.REAPPLY, "forge")]
    assert pressed[0][2] == "torchkeeper-notify"  # on the backend's loop thread, not the caller's

    # a toast without REAPPLY has no button
    assert n.notify(view.Toast(key="reapplied:forge", title="forge", body="cuDNN 9.5.1 applied")) \
        == "desktop-notifier"
    last = notify_bus.notifications()[-1]
    assert "Reapply" not in last["actions"]
    assert not log.records.messages(logging.WARNING)


# --- no notification service: the fallbacks -------------------------------------------------------

def _assert_falls_back(notifiers, log, expected_reason):
    tray = FakeTray()
    n = notifiers({}, tray=tray, logger=log, clock=Clock())
    assert n.notify(drift("a1111")) == "tray"
    assert n.notify(view.Toast(key="driver", title="driver 560.35", body="the NVIDIA driver changed")) == "tray"
    assert tray.calls == [("a1111: stock files are back", "a pip install reverted the overlay on a1111"),
                          ("driver 560.35", "the NVIDIA driver changed")]
    warnings = [m for m in log.records.messages(logging.WARNING) if m.startswith("notifications through")]
    # each failing backend's reason once, not once per toast
    expected = ["plyer"] + (["desktop-notifier"] if notify.DesktopNotifierBackend.installed() else [])
    assert sorted(m.split()[2] for m in warnings) == sorted(expected), warnings
    assert all(expected_reason in m for m in warnings), warnings
    # and the one that showed it
    assert "toast drift:a1111 shown through tray" in log.records.messages()

    # no tray either: the log
    log.records.records.clear()
    n2 = notifiers({}, logger=log, clock=Clock())
    assert n2.notify(drift("comfyui")) == "log"
    assert "toast: comfyui: stock files are back — a pip install reverted the overlay on comfyui" \
        in log.records.messages()


def test_bus_without_notification_server_falls_back_to_tray_then_log(empty_bus, notifiers, log):
    _assert_falls_back(notifiers, log, "no notification server on the session bus")


@pytest.mark.usefixtures("needs_notify_send")
def test_hung_notification_server_does_not_hang_the_agent(hung_bus, notifiers, log):
    backends = [notify.PlyerBackend(timeout=1)]
    if notify.DesktopNotifierBackend.installed():
        backends.insert(0, notify.DesktopNotifierBackend(lambda a, t: None, timeout=1))
    n = notifiers({}, logger=log, clock=Clock(), backends=backends)
    started = time.monotonic()
    assert n.notify(drift("a1111")) == "log"
    assert time.monotonic() - started < 2 * len(backends) + 1
    warnings = [m for m in log.records.messages(logging.WARNING) if m.startswith("notifications through")]
    assert len(warnings) == len(backends)
    assert all("did not answer in 1 s" in m for m in warnings), warnings


def test_no_session_bus_falls_back(clean_env, notifiers, log):
    _assert_falls_back(notifiers, log, "no D-Bus session bus")


def test_dead_bus_socket_falls_back(dead_socket, notifiers, log):
    _assert_falls_back(notifiers, log, "no D-Bus session bus")


# --- de-duplication and rate limit ----------------------------------------------------------------

def test_same_key_within_window_is_shown_once(notify_bus, notifiers, log):
    clock = Clock()
    n = notifiers({"dedupe_seconds": 60}, logger=log, clock=clock)
    shown = n.notify(drift("a1111"))
    assert shown in ("desktop-notifier", "plyer")
    clock.advance(30)
    assert n.notify(drift("a1111")) == "suppressed"
    assert len(notify_bus.notifications()) == 1
    clock.advance(31)  # 61 s after the first
    assert n.notify(drift("a1111")) == shown
    got = notify_bus.notifications()
    assert len(got) == 2
    assert got[1]["body"] == "a pip install reverted the overlay on a1111"  # repeats are not "more"


def test_five_drift_toasts_in_a_minute_become_one(notify_bus, notifiers, log):
    clock = Clock()
    n = notifiers({"dedupe_seconds": 60}, logger=log, clock=clock)
    results = []
    for name in ("a1111", "forge", "kohya", "comfyui", "fooocus"):
        results.append(n.notify(drift(name)))
        clock.advance(10)
    assert results[0] != "suppressed"
    assert results[1:] == ["suppressed"] * 4
    assert [g["summary"] for g in notify_bus.notifications()] == ["a1111: stock files are back"]
    assert sum("toast suppressed (drift:" in m for m in log.records.messages()) == 4

    # another kind is not held back by drift toasts
    assert n.notify(view.Toast(key="driver", title="driver 560.35", body="changed")) != "suppressed"

    # after the window, the next drift toast says how many others were held back
    clock.advance(15)  # 65 s after the first drift toast
    assert n.notify(drift("sdnext")) != "suppressed"
    got = notify_bus.notifications()
    assert got[-1]["summary"] == "sdnext: stock files are back"
    assert got[-1]["body"] == "a pip install reverted the overlay on sdnext (+4 more)"
    assert len(got) == 3


# --- configuration --------------------------------------------------------------------------------

def test_disabled_goes_to_the_log_only_and_reload_turns_it_on(notify_bus, notifiers, log):
    tray = FakeTray()
    n = notifiers({"enabled": False}, tray=tray, logger=log, clock=Clock())
    assert n.notify(drift("a1111")) == "log"
    assert notify_bus.notifications() == [] and tray.calls == []
    assert "toast: a1111: stock files are back — a pip install reverted the overlay on a1111" \
        in log.records.messages()

    n.update_config({"enabled": True, "dedupe_seconds": 60})
    assert n.notify(view.Toast(key="driver", title="driver 560.35", body="changed")) \
        in ("desktop-notifier", "plyer")
    assert [g["summary"] for g in notify_bus.notifications()] == ["driver 560.35"]


def test_bad_backend_value_warns_once_and_uses_auto(notifiers, log):
    n = notifiers({"backend": "growl"}, logger=log, backends=[], clock=Clock())
    n.update_config({"backend": "growl"})
    assert n.backend == "auto"
    assert len([m for m in log.records.messages(logging.WARNING) if "growl" in m]) == 1


class Flaky:
    """Our own backend interface (not D-Bus): fails until told otherwise."""

    name = "flaky"

    def __init__(self):
        self.calls = 0
        self.working = False

    def send(self, toast):
        self.calls += 1
        if not self.working:
            raise NotifyUnavailable("the flaky service is down")


def test_failed_backend_is_skipped_for_a_while_and_reported_once(notifiers, log):
    clock = Clock()
    flaky = Flaky()
    n = notifiers({"dedupe_seconds": 0}, logger=log, clock=clock, backends=[flaky])
    assert n.notify(drift("a")) == "log"
    clock.advance(60)
    assert n.notify(drift("b")) == "log"
    assert flaky.calls == 1  # skipped while marked down
    clock.advance(notify.RETRY_SECONDS)
    assert n.notify(drift("c")) == "log"
    assert flaky.calls == 2  # retried, failed the same way: not reported again
    assert [m for m in log.records.messages() if m.startswith("notifications through")] == [
        "notifications through flaky do not work: the flaky service is down; trying again in 5 minutes"]
    flaky.working = True
    clock.advance(notify.RETRY_SECONDS)
    assert n.notify(drift("d")) == "flaky"
    assert "notifications through flaky work again" in log.records.messages()


def test_notify_never_raises(notifiers, log):
    class Broken:
        name = "broken"

        def send(self, toast):
            raise RuntimeError("a bug in a backend")

    n = notifiers({}, logger=log, clock=Clock(), backends=[Broken()])
    assert n.notify(drift("a")) == "log"
    assert any("RuntimeError: a bug in a backend" in m for m in log.records.messages(logging.WARNING))


def test_notify_from_several_threads(notifiers, log):
    shown = []

    class Counting:
        name = "counting"

        def send(self, toast):
            shown.append(toast.key)

    n = notifiers({"dedupe_seconds": 60}, logger=log, backends=[Counting()])
    threads = [threading.Thread(target=lambda i=i: [n.notify(drift(f"t{i}-{j}")) for j in range(50)])
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(shown) == 1  # one drift toast in the window, however many threads raced
