"""The local dashboard's server: bottle (chosen by measurement: README, "The dashboard") on the
standard library's threaded WSGI server, bound to 127.0.0.1 on a free port, started by the
agent when asked (the tray's "Open torchkeeper", `torchkeeper dashboard`) and stopped after
``[dashboard] idle_minutes`` without a request. Imported only then.

Every request passes dashboard/security.py's checks first; every action goes through the
same Controller the tray uses (request, set_paused, set_autostart), so the page can do nothing
the tray cannot. Responses never carry a CORS header; every one says no-store, nosniff, DENY
to frames and a CSP without scripts (the pages have none). The request log names the method
and path only: never a query string (the login code) or a header (the token)."""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle

from ..daemon import view as V
from ..engine.records import JsonObject
from . import pages
from .security import COOKIE, CSRF_HEADER, STATUS, Keys, Verdict, check
from ..i18n import _

log = logging.getLogger("torchkeeper.agent")

HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: with it a browser sends "Origin: null" on the page's own form posts (Fetch spec)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
ACTIONS = {"reapply": V.REAPPLY, "revert": V.REVERT}
ROUTES = (   # method, path, Dashboard's handler
    ("GET", "/login", "_login"), ("GET", "/static/<name>", "_static_file"),
    ("GET", "/", "_page_targets"), ("GET", "/targets/<name>", "_page_target"), ("GET", "/bundles", "_page_bundles"),
    ("GET", "/found", "_page_found"), ("GET", "/settings", "_page_settings"),
    ("GET", "/api/status", "_api_status"), ("GET", "/api/events", "_api_events"),
    ("POST", "/api/targets/<name>/<action>", "_api_target"), ("POST", "/api/check", "_api_check_all"),
    ("POST", "/api/pause", "_api_pause"), ("POST", "/api/autostart", "_api_autostart"),
    ("POST", "/api/manage", "_api_manage"), ("POST", "/api/notifications", "_api_notifications"),
)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    idle_check: Callable[[], None] = staticmethod(lambda: None)

    def service_actions(self) -> None:   # each turn of serve_forever's loop (0.5 s)
        self.idle_check()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass

    def log_request(self, code="-", size="-"):
        path = self.path.split("?", 1)[0]   # never the login code
        log.debug("dashboard: %s %s %s", self.command, path[:200], code)


class Dashboard:
    """One server for the agent's lifetime at most; ``data`` reads what the pages show."""

    def __init__(self, controller, data: "Data", idle_minutes: float = 10.0, on_stop=None):
        self.controller, self.data = controller, data
        self.idle_s = max(3.0, idle_minutes * 60)
        self.keys = Keys()
        self.on_stop = on_stop
        self.port = 0
        self._srv: _Server | None = None
        self._last = time.monotonic()
        self._static = resources.files("torchkeeper.dashboard").joinpath("static")

    # -- life
    def start(self) -> int:
        app = self._app()
        self._srv = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
        self._srv.idle_check = self._idle_check
        self.port = self._srv.server_address[1]
        self._last = time.monotonic()
        threading.Thread(target=self._srv.serve_forever, name="tk-dashboard", daemon=True).start()
        log.info("dashboard serving on 127.0.0.1:%d", self.port)
        return self.port

    @property
    def running(self) -> bool:
        return self._srv is not None

    def login_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/login?code={self.keys.new_code()}"

    def stop(self) -> None:
        srv, self._srv = self._srv, None
        if srv is not None:
            def down():
                srv.shutdown()
                srv.server_close()
                from ..platform.memory import trim

                trim()   # the pages' garbage back to the OS: the agent runs all day
                if self.on_stop:
                    self.on_stop()
            threading.Thread(target=down, name="tk-dashboard-stop", daemon=True).start()
            log.info("dashboard stopped")

    def _idle_check(self) -> None:
        if time.monotonic() - self._last > self.idle_s:
            log.info("dashboard idle for %.0f min: stopping", self.idle_s / 60)
            self.stop()

    # -- the app
    def _app(self) -> bottle.Bottle:
        app = bottle.Bottle(catchall=True)
        app.add_hook("before_request", self._guard)
        app.add_hook("after_request", self._headers)
        for method, path, handler in ROUTES:
            app.route(path, method, getattr(self, handler))
        for code in (400, 401, 403, 404, 405, 500):
            app.error(code)(self._error)
        return app

    def _guard(self) -> None:
        r = bottle.request
        self._last = time.monotonic()
        if r.path in ("/login",) and r.method == "GET":
            # the code is the credential here; the Host check still applies
            verdict, _why = check(self.keys, self.port, r.method, r.get_header("Host"), None, None,
                               None, None, None)
            if verdict is not Verdict.BAD_HOST:
                return
        else:
            csrf = r.get_header(CSRF_HEADER) or (r.forms.get("csrf") if r.method == "POST" else None)
            verdict, session = check(self.keys, self.port, r.method, r.get_header("Host"), r.get_header("Origin"),
                                     r.get_header("Sec-Fetch-Site"), r.get_header("Authorization"),
                                     r.get_cookie(COOKIE), csrf)
            if verdict is Verdict.OK:
                r.environ["tk.csrf"] = session.csrf if session else ""
                return
        bottle.abort(STATUS[verdict], "")

    @staticmethod
    def _headers() -> None:
        for k, v in HEADERS.items():
            bottle.response.set_header(k, v)

    @staticmethod
    def _error(err) -> str:
        # nothing about why, nothing about what is here
        bottle.response.content_type = "text/plain; charset=utf-8"
        for k, v in HEADERS.items():
            bottle.response.set_header(k, v)
        return {401: "unauthorized", 403: "forbidden", 404: "not found", 405: "not allowed"}.get(
            err.status_code, "error") + "\n"

    def _login(self):
        got = self.keys.trade(bottle.request.query.get("code"))
        if got is None:
            bottle.abort(401, "")
        sid, _session = got
        bottle.response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/")
        bottle.redirect("/", 303)

    def _static_file(self, name: str):
        if name != "style.css":
            bottle.abort(404, "")
        bottle.response.content_type = "text/css; charset=utf-8"
        return self._static.joinpath("style.css").read_text(encoding="utf-8")

    # -- pages
    def _page(self, title: str, body: str) -> str:
        bottle.response.content_type = "text/html; charset=utf-8"
        return pages.layout(title, body, bottle.request.environ["tk.csrf"], self.data.paused())

    def _page_targets(self):
        return self._page(_("Targets"), pages.targets_page(self.data.status(), self.data.events(),
                                                        bottle.request.environ["tk.csrf"]))

    def _page_target(self, name: str):
        st = self.data.status()
        t = next((t for t in st["targets"] if t["name"] == name), None)
        if t is None:
            bottle.abort(404, "")
        plan, err = self.data.plan(name)
        return self._page(
            _("Target %(name)s") % {"name": name},
            pages.target_page(
                t, plan, err, self.data.events(), bottle.request.environ["tk.csrf"], self.data.way_back(name)
            ),
        )

    def _page_bundles(self):
        return self._page(_("Bundles"), pages.bundles_page(self.data.bundles(), self.data.status()))

    def _page_found(self):
        return self._page(
            _("Found installs"),
            pages.found_page(self.controller.view().found, bottle.request.environ["tk.csrf"]),
        )

    def _page_settings(self):
        return self._page(
            _("Settings"),
            pages.settings_page(
                self.controller.view(), bottle.request.environ["tk.csrf"], self.data.notifications()
            ),
        )

    # -- the API
    @staticmethod
    def _json(obj, status: int = 200):
        bottle.response.status = status
        bottle.response.content_type = "application/json"
        return json.dumps(obj, sort_keys=True, default=str)

    def _done(self, obj: JsonObject, back: str = "/"):
        """A form from the page goes back to it; a script gets JSON (202: queued)."""
        if "text/html" in (bottle.request.get_header("Accept") or "") and not bottle.request.get_header(
            "Authorization"
        ):
            bottle.redirect(back, 303)
        return self._json(obj, 202)

    def _api_status(self):
        return self._json(self.data.status())

    def _api_events(self):
        try:
            n = max(1, min(int(bottle.request.query.get("n") or 100), 10_000))
        except ValueError:
            bottle.abort(400, "")
        return self._json(self.data.events()[-n:])

    def _api_target(self, name: str, action: str):
        if name not in self.data.targets():
            bottle.abort(404, "")
        if action == "check":
            self.controller.request(V.CHECK_ALL)  # one check of every target: cheap, and what the tray offers
        elif action in ACTIONS:
            self.controller.request(ACTIONS[action], target=name)
        else:
            bottle.abort(404, "")
        return self._done(
            {"queued": action, "target": name}, back=bottle.request.get_header("Referer") or "/"
        )

    def _api_check_all(self):
        self.controller.request(V.CHECK_ALL)
        return self._done({"queued": "check"})

    def _flag(self, key: str) -> bool:
        r = bottle.request
        v = r.forms.get(key)
        if v is None and (r.content_type or "").startswith("application/json"):
            try:
                v = (r.json or {}).get(key)
            except ValueError:
                v = None
        if v in (True, "1", "true", 1):
            return True
        if v in (False, "0", "false", 0):
            return False
        bottle.abort(400, "")

    def _api_pause(self):
        paused = self._flag("paused")
        self.controller.set_paused(paused)
        return self._done({"paused": paused}, back="/settings")

    def _api_autostart(self):
        enabled = self._flag("enabled")
        self.controller.set_autostart(enabled)
        return self._done({"autostart": enabled}, back="/settings")

    def _api_notifications(self):
        """[notifications] enabled in config.toml (`torchkeeper config set`'s code): the agent
        reads the file again when it changes, as after a hand edit."""
        enabled = self._flag("enabled")
        self.data.set_notifications(enabled)
        return self._done({"notifications": enabled}, back="/settings")

    def _api_manage(self):
        path = bottle.request.forms.get("path") or ""
        if path not in {f.path for f in self.controller.view().found}:
            bottle.abort(404, "")
        fetch = bottle.request.forms.get("fetch") == "1"
        self.controller.request(V.MANAGE_FETCH_APPLY if fetch else V.MANAGE, target=path)
        return self._done({"queued": "manage", "path": path}, back="/found")


class Data:
    """What the pages read, from the agent's engine (the driver it already knows: no NVML
    call for a page) and its event log."""

    def __init__(self, engine, paused: Callable[[], bool]):
        self.engine, self.paused = engine, paused

    def targets(self) -> list[str]:
        return list(self.engine.targets())

    def status(self) -> JsonObject:
        """The same JSON as `status --json` (served by the running agent itself)."""
        import os

        from ..engine.records import STATUS_SCHEMA_VERSION

        st = {"schema_version": STATUS_SCHEMA_VERSION, **self.engine.status().to_dict()}
        st["agent"] = {"running": True, "pid": os.getpid(), "paused": bool(self.paused())}
        return st

    def events(self) -> list[JsonObject]:
        from ..engine.state import read_events

        return read_events(self.engine.home, 2000)

    def bundles(self) -> list[JsonObject]:
        from ..engine.bundle import public

        return [public(m) for m in self.engine.bundles.all()]

    def way_back(self, name: str) -> list[JsonObject]:
        """Each file the overlay replaced, and the backup that gives its earlier bytes back on
        revert (stored by hash in the data folder), and whether that backup is there."""
        from ..engine.txn import BackupStore

        store = BackupStore(self.engine.home)
        files = (self.engine.state.read()["overlays"].get(name) or {}).get("files") or {}
        out = []
        for rel, f in sorted(files.items()):
            digest = f.get("stock_backup") or f.get("foreign_backup")
            out.append(
                {
                    "rel": rel,
                    "prior": f.get("prior"),
                    "backup": str(store.path(digest)) if digest else None,
                    "present": bool(digest) and store.has(digest),
                    "same_as_stock": bool(f.get("same_as_stock")),
                }
            )
        return out

    def notifications(self) -> bool | None:
        try:
            return bool((self.engine.config or {})["notifications"]["enabled"])
        except (KeyError, TypeError):
            return None

    def set_notifications(self, enabled: bool) -> None:
        from ..engine.config import set_value

        set_value(self.engine.home.config_file, "notifications", "enabled", "true" if enabled else "false")

    def plan(self, name: str) -> tuple[JsonObject | None, str | None]:
        from ..errors import TKError

        try:
            p, _info, _m = self.engine.plan(name)
            return p.to_dict(), None
        except TKError as e:
            return None, e.message


def static_dir() -> Path:
    return Path(str(resources.files("torchkeeper.dashboard").joinpath("static")))
