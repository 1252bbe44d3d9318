"""The tray icon and its menu (pystray), a front end on view.Controller.

pystray and Pillow are imported only when a Tray is made or available() is asked: the headless
agent never loads them.

Threads: Tray.run() blocks in the GUI loop and must be called on the main thread (Windows,
X11 and macOS require it). Everything else (refresh, notify, stop) may be called from any
thread; menu actions run on the GUI thread and only hand work to the controller.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..platform import opener
from . import icons
from ..daemon import view
from ..i18n import _

log = logging.getLogger("torchkeeper.agent")

BACKENDS = ("appindicator", "darwin", "dummy", "gtk", "win32", "xorg")
ICON_SIZE = 64          # pystray scales it to the tray's slot
TITLE_MAX = 127         # Windows: a tray tooltip holds 128 UTF-16 units
NOTIFY_TITLE_MAX = 63   # Windows balloon limits
NOTIFY_BODY_MAX = 255
ITEM_TEXT_MAX = 80      # a menu line, before it is cut with an ellipsis


class NotifyUnavailable(RuntimeError):
    """The tray cannot show a notification here; the caller falls back (toast, log)."""


def _import_pystray(backend: str | None = None):
    """(pystray, the Icon class of backend or of pystray's own choice).

    pystray picks a backend when first imported, from PYSTRAY_BACKEND; a named backend is set
    there for that import (so `import pystray` itself cannot fail on another backend, e.g. xorg
    with no display) and then imported directly, so two Trays may use different backends.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown tray backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend and "pystray" not in sys.modules:
        old = os.environ.get("PYSTRAY_BACKEND")
        os.environ["PYSTRAY_BACKEND"] = backend
        try:
            importlib.import_module("pystray")
        finally:
            if old is None:
                os.environ.pop("PYSTRAY_BACKEND", None)
            else:
                os.environ["PYSTRAY_BACKEND"] = old
    import pystray

    if backend:
        return pystray, importlib.import_module(f"pystray._{backend}").Icon
    return pystray, pystray.Icon


def _backend_name(icon_cls) -> str:
    name = icon_cls.__module__.rsplit(".", 1)[-1].lstrip("_")
    return "dummy" if name == "base" else name   # the dummy backend is the base class


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def available(backend: str | None = None) -> tuple[bool, str]:
    """(whether a tray icon can be shown here, why or why not): the agent runs headless when
    this is False and says the reason once in its log."""
    backend = backend or os.environ.get("PYSTRAY_BACKEND") or None
    unix_desktop = not (sys.platform.startswith("win") or sys.platform == "darwin")
    if unix_desktop and backend != "dummy" \
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    try:
        _, icon_cls = _import_pystray(backend)
    except Exception as e:  # ImportError, or Xlib failing to connect to DISPLAY
        return False, f"no tray backend works here ({_one_line(e)})"
    return True, f"tray backend: {_backend_name(icon_cls)}"


def host_present(backend: str | None = None) -> tuple[bool, str]:
    """(whether something on this desktop will show the icon, what is missing if not).
    pystray's X11 and GTK backends dock into an XEmbed system tray, the owner of the
    ``_NET_SYSTEM_TRAY_S<screen>`` selection (a panel's notification area, trayer, ...);
    its AppIndicator backend needs a StatusNotifierWatcher on the session bus. Windows and
    macOS always have one. Cheap enough to ask every few seconds."""
    backend = backend or _backend_name(_import_pystray()[1])
    if backend in ("xorg", "gtk"):
        for attempt in range(3):
            try:
                import Xlib.X
                import Xlib.display

                d = Xlib.display.Display()
                try:
                    atom = d.intern_atom(f"_NET_SYSTEM_TRAY_S{d.get_default_screen()}")
                    owned = d.get_selection_owner(atom) != Xlib.X.NONE
                finally:
                    d.close()
                break
            except Exception as e:  # no X server (Wayland only), a refused connection, or one
                # reset while the server regenerates after its last client left: try again
                if attempt == 2:
                    return False, f"no X display to dock into ({_one_line(e)})"
                time.sleep(0.2)
        return owned, "" if owned else "no system tray on this desktop (nothing owns _NET_SYSTEM_TRAY_S0)"
    if backend == "appindicator" and sys.platform.startswith("linux"):
        try:
            from jeepney import DBusAddress, new_method_call
            from jeepney.io.blocking import open_dbus_connection

            bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus",
                              interface="org.freedesktop.DBus")
            with open_dbus_connection(bus="SESSION") as conn:
                reply = conn.send_and_get_reply(new_method_call(
                    bus, "NameHasOwner", "s", ("org.kde.StatusNotifierWatcher",)), timeout=2)
            owned = bool(reply.body[0])
        except Exception as e:
            return False, f"no session bus to find a tray host on ({_one_line(e)})"
        return owned, "" if owned else "no tray host on this desktop (no StatusNotifierWatcher)"
    return True, ""


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())   # one line: a menu item or tooltip line has no room for more
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _clip_lines(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- pystray's X11 backend (0.19): workarounds, found with tests/test_tray.py's Xvfb test ----


def _patch_xorg(icon, image_for) -> None:
    """Makes pystray's X11 icon reliable and round; leaves other pystray versions alone.
    image_for(side) is the icon to show drawn for side x side pixels."""
    if hasattr(icon, "_assert_docked") and hasattr(icon, "_systray_manager"):
        _dock_once(icon)
    proto = getattr(getattr(icon, "_display", None), "display", None)
    if proto is not None and hasattr(proto, "request_queue") and hasattr(proto, "data_send"):
        _reliable_flush(proto)
    if hasattr(icon, "_assert_icon_data") and hasattr(icon, "_window"):
        _fit_on_tray(icon, image_for)
    if hasattr(icon, "_window") and hasattr(icon, "_on_button_press"):
        _clickable(icon)


def _clickable(icon) -> None:
    """pystray handles a left click (the menu's default item, "Reapply all") but creates its
    window without ButtonPressMask, so X never sends it the click: ask for it."""
    import Xlib.X

    icon._window.change_attributes(
        event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask | Xlib.X.ButtonPressMask)
    icon._display.flush()


def _dock_once(icon) -> None:
    """pystray asks the tray to dock the icon again on every image change (and twice when it
    is shown). Some trays (trayer, GTK 2 sockets) then embed it twice and can drop it: the
    icon ends up unmapped outside the tray. Dock only while not docked; pystray still forgets
    the tray, and docks anew, when the tray goes away."""
    original = icon._assert_docked

    def assert_docked():
        if icon._systray_manager is None:
            original()
    icon._assert_docked = assert_docked


def _reliable_flush(proto) -> None:
    """pystray runs X calls from other threads on its loop's thread: it sends itself a message,
    flushes, and waits. python-xlib's flush returns at once while another thread is sending,
    and that thread may already have taken its last batch: the message (or the loop's drawing,
    or its destroy request) then waits for the next event, which may never come: no icon, or a
    stop() that never returns. Flush until what was queued has gone out (1 s at most)."""
    flush = proto.flush

    def reliable():
        flush()
        deadline = time.monotonic() + 1.0
        while (proto.request_queue or proto.data_send) and time.monotonic() < deadline:
            time.sleep(0.001)
            flush()
    proto.flush = reliable


def _fit_on_tray(icon, image_for) -> None:
    """pystray stretches the image to the tray's slot (often taller than wide) and drops its
    alpha channel (transparent corners turn black, soft edges turn to stray light pixels).
    Instead: the icon drawn for the slot's size (the crisp small sizes), centred, blended with
    alpha over what the tray shows behind it (the window's background taken from its parent),
    or over black where that cannot be read."""
    import Xlib.X
    from PIL import Image

    window = icon._window

    def background(width: int, height: int):
        try:
            failed = []
            window.change_attributes(background_pixmap=Xlib.X.ParentRelative,
                                     onerror=lambda *a: failed.append(a))
            window.clear_area(0, 0, width, height)
            shot = window.get_image(0, 0, width, height, Xlib.X.ZPixmap, 0xFFFFFFFF)
            if failed or shot.depth != 24 or len(shot.data) != width * height * 4:
                return None
            return Image.frombytes("RGB", (width, height), shot.data, "raw", "BGRX")
        except Exception:   # a tray with another visual or depth: blend over black
            return None

    def assert_icon_data(width: int, height: int) -> None:
        if icon._icon_data and icon._icon_data.size == (width, height):
            return
        side = max(1, min(width, height))
        try:
            badge = image_for(side)
        except Exception:   # e.g. a missing file: what pystray was given, scaled
            badge = icon.icon.convert("RGBA").resize((side, side), Image.Resampling.LANCZOS)
        canvas = background(width, height) or Image.new("RGB", (width, height))
        canvas.paste(badge, ((width - side) // 2, (height - side) // 2), badge)
        canvas.tostring = canvas.tobytes    # as pystray does, for older python-xlib
        icon._icon_data = canvas
    icon._assert_icon_data = assert_icon_data


class Tray:
    """The tray icon for a view.Controller: its image and tooltip follow the view's overall
    state, and its menu is rebuilt from the latest view whenever it is shown."""

    NAME = "torchkeeper"

    def __init__(self, controller: view.Controller, backend: str | None = None,
                 opener=opener.open_path, icon_size: int = ICON_SIZE):
        self._controller = controller
        self._opener = opener
        self._icon_size = icon_size
        self._pystray, icon_cls = _import_pystray(backend)
        self.backend = _backend_name(icon_cls)
        # pystray's X11 backend has no menu: a click then opens the overview, which has the
        # actions as commands (see _show_overview)
        self.has_menu = bool(getattr(icon_cls, "HAS_MENU", True))
        self._view: view.AgentView = controller.view()
        self._shown_state = self._view.overall
        self._stopped = False
        self._loop_thread: threading.Thread | None = None   # the thread in run()
        # refresh() coalesces: the thread that holds _applying applies the newest pending view
        self._pending: view.AgentView | None = None
        self._pending_lock = threading.Lock()
        self._applying = threading.Lock()
        self.icon = icon_cls(
            self.NAME,
            icon=icons.load(self._view.overall, icon_size),
            title=_clip_lines(self._view.tooltip, TITLE_MAX),
            menu=self._pystray.Menu(self._items))
        if self.backend == "xorg":
            _patch_xorg(self.icon, lambda side: icons.load(self._shown_state, side))
        controller.subscribe(self.refresh)
        # a change between the first view() and subscribe() (a discover finishing on its own
        # thread) reached no listener: show the view as it is now
        self.refresh(controller.view())

    # -- the menu ---------------------------------------------------------------------------

    @property
    def view(self) -> view.AgentView:
        """The view the tray shows now."""
        return self._view

    def _items(self):
        """The menu's items for the current view (pystray calls this each time it needs the
        menu, and update_menu() makes backends with native menus rebuild them)."""
        Item, Menu = self._pystray.MenuItem, self._pystray.Menu
        v = self._view
        items = [self._target_item(t) for t in v.targets]
        if not items:
            items.append(Item(_("No targets yet"), None, enabled=False))
        if v.found:
            items += [Menu.SEPARATOR, Item(_("Found, not managed"), None, enabled=False)]
            items += [self._found_item(f) for f in v.found]
        items += [
            Menu.SEPARATOR,
            # the default item: a left click on the icon runs it where the backend allows; with
            # no menu to reach the rest, the click opens the overview instead
            Item(_("Reapply all"), self._action(self._controller.request, view.REAPPLY_ALL),
                 default=self.has_menu),
            Item(_("Check now"), self._action(self._controller.request, view.CHECK_ALL)),
            Item(_("Pause auto re-apply"), self._action(self._toggle_paused),
                 checked=lambda _: self._view.paused),
            Item(_("Open torchkeeper"), self._action(self._open_dashboard), default=not self.has_menu),
            Item(_("Show overview"), self._action(self._show_overview)),
            Menu.SEPARATOR,
            Item(_clip(v.driver, ITEM_TEXT_MAX), None, enabled=False),
            *([Item(_clip(_("Watching: degraded (%(why)s) - every target is checked every few seconds; "
                            "Quit and start torchkeeper again to fix it") % {"why": v.watching},
                          ITEM_TEXT_MAX), None, enabled=False)] if v.watching else []),
            Menu.SEPARATOR,
            Item(_("Open config"), self._action(self._open, self._controller.config_file)),
            Item(_("Open log"), self._action(self._open, self._controller.log_file)),
            Item(_("Start at login"), self._action(self._toggle_autostart),
                 checked=lambda _: bool(self._view.autostart),
                 enabled=lambda _: self._view.autostart is not None),
            Menu.SEPARATOR,
            Item(_("Quit"), self._action(self._controller.request, view.QUIT)),
        ]
        return items

    def _target_item(self, t: view.TargetView):
        Item, Menu = self._pystray.MenuItem, self._pystray.Menu
        text = f"{t.name} — {t.message}" if t.message else t.name
        first = []
        if t.suggestion:  # one click: fetch, create, use, apply, through the same gate
            first = [Item(_clip(t.suggestion, ITEM_TEXT_MAX),
                          self._action(self._controller.request, view.FETCH_APPLY, t.name)),
                     Menu.SEPARATOR]
        return Item(_clip(text, ITEM_TEXT_MAX), Menu(
            *first,
            Item(_("Reapply"), self._action(self._controller.request, view.REAPPLY, t.name)),
            Item(_("Revert to stock"), self._action(self._controller.request, view.REVERT, t.name)),
            Item(_("Open folder"), self._action(self._open, t.folder), enabled=t.folder is not None),
            Item(_("Show details"), self._action(self._show_details, t)),
        ))

    def _found_item(self, f: view.FoundView):
        Item, Menu = self._pystray.MenuItem, self._pystray.Menu
        more = []
        if f.suggestion:  # one click: add it, then fetch, create, use and apply as for a target
            more = [Item(_clip(f.suggestion, ITEM_TEXT_MAX),
                         self._action(self._controller.request, view.MANAGE_FETCH_APPLY, f.path))]
        return Item(_clip(f.label, ITEM_TEXT_MAX), Menu(
            Item(_("Manage"), self._action(self._controller.request, view.MANAGE, f.path)),
            *more,
            Item(_("Open folder"), self._action(self._open, f.path)),
        ))

    def _action(self, fn, *args):
        """A menu callback: runs fn(*args) and logs, never raises, a failure (an exception in
        a callback ends pystray's X11 loop)."""
        def run(icon, item):
            try:
                fn(*args)
            except Exception as e:
                log.error("tray: %s failed: %s", item, _one_line(e))
        return run

    def _toggle_paused(self) -> None:
        self._controller.set_paused(not self._view.paused)

    def _toggle_autostart(self) -> None:
        if self._view.autostart is not None:
            self._controller.set_autostart(not self._view.autostart)

    def _open(self, path) -> None:
        if path is None:
            return
        if not self._opener(path):
            log.warning("tray: could not open %s", path)

    def _open_dashboard(self) -> None:
        """The dashboard in the browser: where the tray has no menu (pystray's X11 backend),
        what a click opens (every action is there)."""
        url = self._controller.open_dashboard()
        if not self._opener(url):
            log.warning("tray: could not open the dashboard in a browser")   # never the URL: it signs in

    def _show_overview(self) -> None:
        """Every target and what can be done about it, as text opened in the user's editor:
        where the tray has no menu (pystray's X11 backend) this is what a click shows."""
        v = self._view
        lines = [v.tooltip, v.driver, ""]
        if v.watching:
            lines += [_("watching: degraded (%(why)s); every target is checked every few seconds. "
                        "Fix: `torchkeeper stop`, then `torchkeeper run`.") % {"why": v.watching}, ""]
        for t in v.targets:
            lines += [f"{t.name}: {view.state_word(t.state)} - {t.message}",
                      "    " + _("re-apply: torchkeeper apply %(name)s    back to stock: torchkeeper revert "
                               "%(name)s") % {"name": t.name}]
            if t.suggestion:
                lines.append(f"    {t.suggestion}: torchkeeper bundle fetch --for {t.name}")
        if not v.targets:
            lines.append(_("No targets yet: `torchkeeper discover --add` or `torchkeeper target add PATH`."))
        if v.found:
            lines += ["", _("Found, not managed (`torchkeeper target add PATH` keeps one):")]
            lines += [f"    {f.label}: {f.path}" for f in v.found]
        lines += [
            "",
            _("Everything at once: torchkeeper status | torchkeeper apply | torchkeeper verify"),
            (
                _("Auto re-apply is paused (config: %(path)s).")
                if v.paused
                else _("Auto re-apply is on (config: %(path)s).")
            )
            % {"path": self._controller.config_file},
            _(
                "This desktop's tray shows no menu: see torchkeeper's README, \"The tray\", for one that does."
            ),
        ]
        self._write_and_open("overview", "\n".join(lines) + "\n")

    def _write_and_open(self, stem: str, text: str) -> None:
        safe = re.sub(r"[^\w.-]+", "_", stem)[:60] or "details"
        for folder in (Path(self._controller.log_file).parent, Path(tempfile.gettempdir())):
            path = folder / f"{safe}.txt"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            except OSError:
                continue
            self._open(path)
            return
        log.warning("tray: could not write %s anywhere", safe)

    def _show_details(self, t: view.TargetView) -> None:
        """Writes the target's details to a text file next to the log and opens it: every
        backend can do that (X11 has no notifications, Windows balloons keep 255 characters),
        and the text can be read in full and copied into a bug report."""
        text = (
            f"{t.name}: {t.message}\n"
            + _("state: %(state)s") % {"state": view.state_word(t.state)}
            + "\n"
            + _("bundle: %(name)s") % {"name": t.bundle or _("(none)")}
            + "\n"
        )
        if t.folder:
            text += _("folder: %(path)s") % {"path": t.folder} + "\n"
        text += "\n" + (t.details or _("(no details)")) + "\n"
        self._write_and_open(f"details-{t.name}", text)

    # -- updates from the agent -------------------------------------------------------------

    def refresh(self, new_view: view.AgentView) -> None:
        """Shows new_view: icon and tooltip when they changed, and the menu. Safe from any
        thread and never raises; concurrent calls coalesce to the newest view."""
        with self._pending_lock:
            self._pending = new_view
        while self._applying.acquire(blocking=False):
            try:
                with self._pending_lock:
                    v, self._pending = self._pending, None
                if v is not None:
                    self._apply(v)
            finally:
                self._applying.release()
            with self._pending_lock:
                if self._pending is None:
                    return
        # another thread is applying: it picks up our view before it lets go

    def _apply(self, v: view.AgentView) -> None:
        self._view = v
        if self._stopped:
            return  # the GUI loop is gone: pystray would wait for it forever
        try:
            if v.overall != self._shown_state:
                image = icons.load(v.overall, self._icon_size)
                self._shown_state = v.overall  # first: the X11 backend draws it from this
                try:
                    self.icon.icon = image
                except Exception:
                    self._shown_state = None  # try again with the next view
                    raise
            title = _clip_lines(v.tooltip, TITLE_MAX)
            if title != self.icon.title:
                self.icon.title = title
            try:
                self.icon.update_menu()
            except NotImplementedError:
                pass  # the dummy backend: no native menu; _items() reads the view when asked
            self._flush_x()
        except Exception as e:
            log.error("tray: could not show the new state: %s", _one_line(e))

    def _flush_x(self) -> None:
        """X11: after a call pystray ran on its loop's thread, send what that thread queued
        (its drawing) in case its loop is waiting for events without sending (see
        _reliable_flush)."""
        if self.backend != "xorg":
            return
        if threading.current_thread() is getattr(self.icon, "_thread", None):
            return  # the loop's own thread: it sends on its next turn
        display = getattr(self.icon, "_display", None)
        if display is not None:
            display.flush()

    # -- notifications ----------------------------------------------------------------------

    def notify(self, title: str, body: str) -> None:
        """Shows a notification from the tray icon. Raises NotifyUnavailable where this backend
        has none (X11) or it fails; the caller falls back."""
        if not getattr(self.icon, "HAS_NOTIFICATION", False):
            raise NotifyUnavailable(f"the {self.backend} tray backend has no notifications")
        try:
            self.icon.notify(_clip_lines(body, NOTIFY_BODY_MAX), _clip_lines(title, NOTIFY_TITLE_MAX))
        except NotImplementedError:
            raise NotifyUnavailable(f"the {self.backend} tray backend has no notifications") from None
        except Exception as e:
            raise NotifyUnavailable(f"tray notification failed: {_one_line(e)}") from None

    def handle_session_end(self, session) -> bool:
        """Let a session.SessionEnd answer Windows' logoff messages to the icon's window
        (pystray's own window procedure would refuse the logoff). Only the win32 backend
        has such a window: False elsewhere."""
        handlers = getattr(self.icon, "_message_handlers", None)
        if self.backend != "win32" or not isinstance(handlers, dict):
            return False
        handlers.update(session.handlers())
        return True

    # -- the loop ---------------------------------------------------------------------------

    def run(self, setup=None) -> None:
        """Shows the icon and runs the GUI loop until stop(); blocks. Call it on the main
        thread. setup(tray), if given, runs on another thread once the icon is visible."""
        if self.backend == "dummy":
            raise RuntimeError("the dummy tray backend has no loop to run")
        if self._stopped:
            return  # stop() came first (the agent quit while starting)
        self._loop_thread = threading.current_thread()
        if self.backend == "xorg":
            # pystray's X11 loop records its thread only after it lets the setup thread go,
            # which then needs it: record it first so the icon cannot fail to appear
            self.icon._thread = threading.current_thread()

        def _setup(icon):
            try:
                icon.visible = True
                self._flush_x()
                if self._stopped:  # stop() came while the loop was starting: it
                    icon.stop()  # found nothing running, so end the loop now
                    self._flush_x()
                    return
                if setup is not None:
                    setup(self)
            except Exception as e:
                log.error("tray: starting: %s", _one_line(e))

        self.icon.run(_setup)

    def stop(self) -> None:
        """Ends run(); safe from any thread (a signal handler too), and more than once."""
        if self._stopped:
            return
        self._stopped = True
        if threading.current_thread() is self._loop_thread:
            # on the loop's own thread: a menu action, or a signal handler that interrupted
            # the loop inside python-xlib. Stop it from outside, as pystray expects
            threading.Thread(target=self._stop_icon, name="tk-tray-stop", daemon=True).start()
        else:
            self._stop_icon()

    def _stop_icon(self) -> None:
        # let a refresh in flight finish first: pystray's X11 backend would wait forever for a
        # loop that has ended (bounded: that refresh may itself wait for the loop)
        got = self._applying.acquire(timeout=2)
        try:
            self.icon.stop()
            self._flush_x()
        except Exception as e:
            log.warning("tray: stopping: %s", _one_line(e))
        finally:
            if got:
                self._applying.release()
