"""Toasts: the agent's desktop notifications, with a chain of backends that falls back to the log.

Backends, tried in this order (``[notifications] backend = "auto"``):

1. ``desktop-notifier`` (only when the optional package is installed): the one with a working
   "Reapply" button. D-Bus on Linux, WinRT on Windows.
2. ``plyer``: title and body, no buttons. On Linux plyer ignores every failure of its own, so
   a notification server is looked for on the session bus first (jeepney).
3. ``tray``: the tray icon's own balloon, when there is a tray.
4. ``log``: always works; the log file is the last resort.

``backend = "<name>"`` forces one of them (still falling back to the log); ``enabled = false``
sends everything to the log only.

A backend that cannot deliver raises :class:`NotifyUnavailable`; the :class:`Notifier` then
skips it for ``RETRY_SECONDS`` (5 minutes) and logs why once, not per toast. ``Notifier.notify``
never raises: a missing notification service must never stop the agent.

De-duplication and rate limit, one rule (``D`` = ``[notifications] dedupe_seconds``): a toast's
*kind* is its key up to the first ":" (``"drift:a1111"`` -> ``"drift"``; a key without ":" is its
own kind). At most one toast of a kind is shown per ``D`` seconds, counted from the last one shown.
So the same key again within ``D`` is suppressed, and so are other keys of the same kind: five
drift toasts in a minute become one. Suppressed toasts are logged, never shown later (they may
be stale by then; the tray shows the current state). The number of *other* keys of that kind
suppressed since the last one shown is added to the next toast of that kind that is shown:
"... (+3 more)".
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import icons
from ..daemon import view
from typing import Any

if TYPE_CHECKING:
    import asyncio

APP_NAME = "torchkeeper"
BACKEND_CHOICES = ("auto", "desktop-notifier", "plyer", "tray", "log")
DEFAULT_DEDUPE_SECONDS = 60.0
RETRY_SECONDS = 300.0        # a backend that failed is skipped this long
SEND_TIMEOUT = 5.0           # the most one send may take (desktop-notifier, plyer)
BUS_CHECK_SECONDS = 30.0     # plyer: how long a look at the session bus stays valid

NOTIFICATIONS_NAME = "org.freedesktop.Notifications"
_LEVEL_ICON = {"info": view.OK, "warning": view.ATTENTION, "error": view.ERROR}
_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

OnAction = Callable[[str, "str | None"], None]


class NotifyUnavailable(Exception):
    """A backend cannot deliver a toast; str() is a one-line reason."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def icon_path(level: str = "info") -> str:
    """The icon file for a toast of this level, or "" when there is none."""
    d = icons.icons_dir()
    state = _LEVEL_ICON.get(level, view.ATTENTION)
    # plyer on Windows loads the icon with LoadImage: it must be an .ico
    names = ([f"{state}.ico", "torchkeeper.ico"] if sys.platform == "win32"
             else [f"{state}-64.png", f"{state}-48.png", f"{state}-32.png"])
    for name in names:
        if (d / name).is_file():
            return str(d / name)
    return ""


# --- the session bus (Linux) -------------------------------------------------------------------

def session_bus_address() -> str | None:
    """DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus when it exists (what GLib's
    notify-send falls back to as well)."""
    addr = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if addr:
        return addr
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return "unix:path=" + os.path.join(runtime, "bus")
    return None


def _probe_bus(addr: str, timeout: float) -> str | None:
    from jeepney import DBusErrorResponse, MessageType
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    try:
        conn = open_dbus_connection(bus=addr, auth_timeout=timeout)
    except RuntimeError:
        return None  # a transport jeepney cannot speak (tcp:): cannot look, let plyer try
    except (OSError, ValueError, KeyError) as e:  # refused, no socket, bad address
        return f"no D-Bus session bus ({_one_line(e)})"
    try:
        def call(msg):
            reply = conn.send_and_get_reply(msg, timeout=timeout)
            if reply.header.message_type == MessageType.error:
                raise DBusErrorResponse(reply)
            return reply.body[0]

        if call(message_bus.NameHasOwner(NOTIFICATIONS_NAME)):
            return None
        if NOTIFICATIONS_NAME in call(message_bus.ListActivatableNames()):
            return None  # started on demand by the bus
        return "no notification server on the session bus"
    except (OSError, TimeoutError, DBusErrorResponse) as e:
        return f"no D-Bus session bus ({_one_line(e)})"
    finally:
        conn.close()


def check_notification_server(timeout: float = 2.0) -> str | None:
    """None when org.freedesktop.Notifications is on the session bus (or can be activated),
    else why not. Never blocks for much longer than ``timeout``: jeepney's Hello has no
    timeout of its own, so a hung bus is waited for on a throwaway thread."""
    addr = session_bus_address()
    if not addr:
        return "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)"
    if importlib.util.find_spec("jeepney") is None:
        return None  # cannot look; let the backend try
    result: list = []

    def probe():
        try:
            result.append(_probe_bus(addr, timeout))
        except Exception as e:  # noqa: BLE001 - any failure to look is a reason not to send
            result.append(f"no D-Bus session bus ({_one_line(e)})")

    t = threading.Thread(target=probe, name="torchkeeper-bus-probe", daemon=True)
    t.start()
    t.join(timeout * 2 + 1)
    if not result:
        return f"no D-Bus session bus (no answer in {timeout * 2 + 1:.0f} s)"
    return result[0]


# --- backends ---------------------------------------------------------------------------------

class DesktopNotifierBackend:
    """desktop-notifier, with a "Reapply" button. desktop-notifier is asyncio-based: one event
    loop runs on a daemon thread owned by this backend; sends are submitted to it and button
    presses arrive on it, where ``on_action`` is called (it must return at once)."""

    name = "desktop-notifier"

    def __init__(self, on_action: OnAction, app_name: str = APP_NAME, timeout: float = SEND_TIMEOUT,
                 logger: logging.Logger | None = None):
        self._on_action = on_action
        self._app_name = app_name
        self._timeout = timeout
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._notifier = None  # a desktop_notifier.DesktopNotifier, made on the loop

    @staticmethod
    def installed() -> bool:
        return importlib.util.find_spec("desktop_notifier") is not None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio  # here, not at the top: the agent stays light until a toast is shown
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                                name="torchkeeper-notify")
                self._thread.start()
                self._loop = loop
            return self._loop

    def send(self, toast: view.Toast) -> None:
        import asyncio
        import concurrent.futures
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._send(toast), loop)
        try:
            future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            asyncio.run_coroutine_threadsafe(self._drop(), loop)  # reconnect next time
            raise NotifyUnavailable(
                f"the notification server did not answer in {self._timeout:g} s") from None
        except NotifyUnavailable:
            raise
        except Exception as e:  # noqa: BLE001
            raise NotifyUnavailable(_one_line(e)) from None

    async def _send(self, toast: view.Toast) -> None:
        try:
            from desktop_notifier import Button, DesktopNotifier, Icon, Urgency
        except ImportError as e:
            raise NotifyUnavailable(f"desktop-notifier cannot be imported ({_one_line(e)})") from None
        if self._notifier is None:
            self._notifier = DesktopNotifier(app_name=self._app_name, app_icon=None)
        backend = getattr(self._notifier, "_backend", None)
        if type(backend).__name__ == "DummyNotificationCenter":  # e.g. macOS outside an app bundle
            raise NotifyUnavailable("desktop-notifier has no notification service on this system")
        # send() only logs its failures; get_capabilities() connects (bus, then the server's
        # introspection) and raises, which is how a missing server is told apart.
        try:
            await self._notifier.get_capabilities()
        except Exception as e:  # noqa: BLE001
            await self._drop()
            raise NotifyUnavailable(_dbus_reason(e)) from None

        delivered = []
        buttons = []
        if view.REAPPLY in toast.actions:
            buttons.append(Button(title="Reapply",
                                  on_pressed=lambda target=toast.target: self._pressed(view.REAPPLY, target)))
        icon = icon_path(toast.level)
        await self._notifier.send(
            title=toast.title, message=toast.body, buttons=buttons,
            icon=Icon(path=Path(icon)) if icon else None,
            urgency=Urgency.Critical if toast.level == "error" else Urgency.Normal,
            on_dispatched=lambda: delivered.append(True))
        if not delivered:  # the server refused it or the connection broke: desktop-notifier logged it
            await self._drop()
            raise NotifyUnavailable("the notification server did not take the notification")

    def _pressed(self, action: str, target: str | None) -> None:
        try:
            self._on_action(action, target)
        except Exception:  # noqa: BLE001 - never let a callback kill the loop's reader
            self._log.exception("notification button %r for %s failed", action, target)

    async def _drop(self) -> None:
        """Forget the connection (it may be to a bus or server that is gone)."""
        notifier, self._notifier = self._notifier, None
        bus = getattr(getattr(notifier, "_backend", None), "bus", None)
        if bus is not None:
            try:
                bus.disconnect()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return
        import asyncio
        try:
            asyncio.run_coroutine_threadsafe(self._drop(), loop).result(2)
        except Exception:  # noqa: BLE001
            pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(2)
        if not loop.is_running():
            loop.close()


def _dbus_reason(exc: BaseException) -> str:
    """dbus-fast's errors as the same one-line reasons the plyer check gives."""
    name = type(exc).__name__
    if name == "InvalidAddressError" or (isinstance(exc, KeyError) and not session_bus_address()):
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)"
        return f"no D-Bus session bus ({_one_line(exc)})"
    if isinstance(exc, OSError):
        return f"no D-Bus session bus ({_one_line(exc)})"
    if getattr(exc, "type", None) in ("org.freedesktop.DBus.Error.ServiceUnknown",
                                       "org.freedesktop.DBus.Error.NameHasNoOwner"):
        return "no notification server on the session bus"
    return _one_line(exc)


class PlyerBackend:
    """plyer.notification: title and body. plyer is imported on first use (the agent stays light).

    On Linux plyer uses dbus-python when it imports, else runs ``notify-send``, and ignores every
    failure either way; so first the session bus is checked for a notification server, with
    the answer cached for ``BUS_CHECK_SECONDS`` (per bus address)."""

    name = "plyer"

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 check_server: Callable[[], str | None] = check_notification_server,
                 timeout: float = SEND_TIMEOUT):
        self._clock = clock
        self._check_server = check_server
        self._timeout = timeout
        self._checked: tuple[float, str | None, str | None] | None = None  # (when, address, reason)

    def _server_problem(self) -> str | None:
        now = self._clock()
        addr = session_bus_address()
        if self._checked is not None:
            when, checked_addr, reason = self._checked
            if checked_addr == addr and 0 <= now - when < BUS_CHECK_SECONDS:
                return reason
        reason = self._check_server()
        self._checked = (now, addr, reason)
        return reason

    def send(self, toast: view.Toast) -> None:
        if sys.platform.startswith("linux"):
            problem = self._server_problem()
            if problem:
                raise NotifyUnavailable(problem)
        # A hung notification server would keep notify-send (and so plyer) waiting for
        # GDBus's 25 s: plyer runs on a throwaway thread that is waited for this long at most.
        outcome: list = []

        def run():
            try:
                self._notify(toast)
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                outcome.append(e)

        t = threading.Thread(target=run, name="torchkeeper-plyer", daemon=True)
        t.start()
        t.join(self._timeout)
        if not outcome:
            raise NotifyUnavailable(f"the notification server did not answer in {self._timeout:g} s")
        if outcome[0] is not None:
            raise outcome[0]

    @staticmethod
    def _notify(toast: view.Toast) -> None:
        import warnings
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # plyer warns on first use that dbus-python is missing
                from plyer import notification
                notification.notify(title=toast.title, message=toast.body, app_name=APP_NAME,
                                     app_icon=icon_path(toast.level), timeout=10)
        except ImportError as e:
            raise NotifyUnavailable(f"plyer cannot be imported ({_one_line(e)})") from None
        except NotImplementedError:
            raise NotifyUnavailable("plyer has no notifications on this system") from None
        except Exception as e:  # noqa: BLE001
            raise NotifyUnavailable(f"plyer failed: {_one_line(e)}") from None


class TrayBackend:
    """The tray icon's own balloon: ``tray.notify(title, body)``."""

    name = "tray"

    def __init__(self, tray):
        self.tray = tray

    def send(self, toast: view.Toast) -> None:
        try:
            self.tray.notify(toast.title, toast.body)
        except Exception as e:  # noqa: BLE001
            raise NotifyUnavailable(f"the tray cannot show notifications ({_one_line(e)})") from None


class LogBackend:
    """The last resort: one log line per toast, at the toast's level."""

    name = "log"

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def send(self, toast: view.Toast) -> None:
        self.logger.log(_LOG_LEVEL.get(toast.level, logging.INFO), "toast: %s — %s", toast.title, toast.body)


# --- the chain --------------------------------------------------------------------------------

@dataclass
class _Kind:
    shown_at: float
    key: str                                        # the key of the toast shown
    suppressed: set = field(default_factory=set)   # other keys suppressed since shown_at


class Notifier:
    """Shows toasts through the first backend that can (see the module's docstring for the
    order, the de-duplication rule and the fallbacks). Safe to call from any thread.

    ``config`` is the ``[notifications]`` table: ``enabled``, ``dedupe_seconds`` and ``backend``.
    ``on_action(action, target)`` is called when a toast's button is pressed, from a
    notification thread; it must return at once. ``backends`` replaces the automatic chain
    (tests, embedding); the log backend is always added last.
    """

    def __init__(self, config: dict[str, Any], on_action: OnAction, tray=None, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic, backends: list | None = None):
        self._lock = threading.RLock()
        self._log = logger or logging.getLogger("torchkeeper.notify")
        self._clock = clock
        self._on_action = on_action
        self._tray = tray
        self._given = list(backends) if backends is not None else None
        self._made: dict[str, object] = {}          # backends made here, by name (made lazily)
        self._down_until: dict[str, float] = {}     # backend name -> clock time to retry at
        self._reported: dict[str, str] = {}         # backend name -> the failure last logged
        self._kinds: dict[str, _Kind] = {}
        self._warned_config: str | None = None
        self.enabled = True
        self.dedupe_seconds = DEFAULT_DEDUPE_SECONDS
        self.backend = "auto"
        self.update_config(config)

    # configuration

    def update_config(self, config: dict[str, Any] | None) -> None:
        """Apply a (re)loaded ``[notifications]`` table; bad values fall back to the defaults."""
        config = config or {}
        with self._lock:
            self.enabled = bool(config.get("enabled", True))
            dedupe = config.get("dedupe_seconds", DEFAULT_DEDUPE_SECONDS)
            if isinstance(dedupe, bool) or not isinstance(dedupe, (int, float)) or dedupe < 0:
                self._warn_config(f"[notifications] dedupe_seconds = {dedupe!r} is not a number of "
                                  f"seconds; using {DEFAULT_DEDUPE_SECONDS:g}")
                dedupe = DEFAULT_DEDUPE_SECONDS
            self.dedupe_seconds = float(dedupe)
            backend = config.get("backend", "auto")
            if backend not in BACKEND_CHOICES:
                self._warn_config(f"[notifications] backend = {backend!r} is not one of "
                                  f"{', '.join(BACKEND_CHOICES)}; using auto")
                backend = "auto"
            self.backend = backend

    def _warn_config(self, message: str) -> None:
        if message != self._warned_config:
            self._warned_config = message
            self._log.warning("%s", message)

    # backends

    def _backend(self, name: str):
        if name not in self._made:
            if name == "desktop-notifier":
                self._made[name] = (DesktopNotifierBackend(self._on_action, logger=self._log)
                                    if DesktopNotifierBackend.installed() else None)
            elif name == "plyer":
                self._made[name] = PlyerBackend(clock=self._clock)
            elif name == "tray":
                self._made[name] = TrayBackend(self._tray) if self._tray is not None else None
            elif name == "log":
                self._made[name] = LogBackend(self._log)
        return self._made[name]

    def _all_backends(self) -> list:
        if self._given is not None:
            return list(self._given)
        return [b for b in map(self._backend, ("desktop-notifier", "plyer", "tray")) if b is not None]

    def _chain(self) -> list:
        if not self.enabled:
            chain = []
        elif self.backend == "auto":
            chain = self._all_backends()
        else:
            chain = [b for b in self._all_backends() if b.name == self.backend]
            if not chain and self.backend != "log":
                self._warn_config(f"[notifications] backend = {self.backend!r} is not available "
                                  "here; toasts go to the log")
        if not any(b.name == "log" for b in chain):
            chain.append(self._backend("log"))
        return chain

    # showing

    def notify(self, toast: view.Toast) -> str:
        """Show a toast; returns the name of the backend that delivered it, or "suppressed".
        Never raises ("none" if even the log failed)."""
        try:
            with self._lock:
                shown = self._admit(toast)
                if shown is None:
                    self._log.info("toast suppressed (%s): %s — %s", toast.key, toast.title, toast.body)
                    return "suppressed"
                return self._deliver(shown)
        except Exception:  # noqa: BLE001
            try:
                self._log.exception("could not show a notification")
            except Exception:  # noqa: BLE001
                pass
            return "none"

    def _admit(self, toast: view.Toast) -> view.Toast | None:
        """The toast to show (with "(+N more)" when others of its kind were suppressed), or
        None to suppress it."""
        now = self._clock()
        kind = toast.key.split(":", 1)[0]
        state = self._kinds.get(kind)
        if state is not None and now - state.shown_at < self.dedupe_seconds:
            if toast.key != state.key:
                state.suppressed.add(toast.key)
            return None
        more = len((state.suppressed if state else set()) - {toast.key})
        self._kinds[kind] = _Kind(shown_at=now, key=toast.key)
        return replace(toast, body=f"{toast.body} (+{more} more)") if more else toast

    def _deliver(self, toast: view.Toast) -> str:
        now = self._clock()
        for backend in self._chain():
            name = backend.name
            if name != "log" and now < self._down_until.get(name, float("-inf")):
                continue
            try:
                backend.send(toast)
            except Exception as e:  # noqa: BLE001 - NotifyUnavailable, or a backend's bug
                reason = str(e) if isinstance(e, NotifyUnavailable) else _one_line(e)
                self._down_until[name] = now + RETRY_SECONDS
                if self._reported.get(name) != reason:  # once per reason, not per toast
                    self._reported[name] = reason
                    self._log.warning("notifications through %s do not work: %s; trying again "
                                      "in %d minutes", name, reason, RETRY_SECONDS // 60)
                continue
            self._down_until.pop(name, None)
            if self._reported.pop(name, None) is not None:
                self._log.info("notifications through %s work again", name)
            # with the skipped backends' warnings, the log tells which one a person saw
            self._log.info("toast %s shown through %s", toast.key, name)
            return name
        return "none"

    def close(self) -> None:
        """Stop the backends' threads (desktop-notifier's event loop)."""
        with self._lock:
            backends = list(self._made.values()) + list(self._given or [])
        for b in backends:
            close = getattr(b, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass
