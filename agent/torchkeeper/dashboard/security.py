"""Who may talk to the dashboard: pure checks, one per rule, tested as a table
(tests/test_dashboard_security.py). The server (dashboard/server.py) runs them on every
request, in this order, and answers a refusal with no details at all.

The model (Syncthing's GUI, and the lessons of ComfyUI's published holes): the server listens
on 127.0.0.1 only; a request must name that address, or localhost, with the server's port in
its Host header (a DNS-rebinding page names its own host); state-changing requests whose
Origin is another site or ``null``, or whose Sec-Fetch-Site is ``cross-site``/``same-site``,
are refused (CORS protects nothing here: no CORS header is ever sent); every request carries
either the API token (``Authorization: Bearer``, for scripts) or the session cookie the
browser got by trading the one-time login code in the URL, and a cookie-carried request that
changes anything also carries that session's CSRF token. Tokens are compared in constant time
and never logged.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

COOKIE = "tk_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD")


class Verdict(Enum):
    OK = "ok"
    BAD_HOST = "bad host"            # 403: DNS rebinding, a name that is not ours
    FOREIGN_ORIGIN = "foreign origin"  # 403: a page of another site posting to us
    UNAUTHENTICATED = "unauthenticated"  # 401: no token, no session
    NO_CSRF = "no csrf"              # 403: a cookie-only state change without its token


STATUS = {Verdict.OK: 200, Verdict.BAD_HOST: 403, Verdict.FOREIGN_ORIGIN: 403,
          Verdict.UNAUTHENTICATED: 401, Verdict.NO_CSRF: 403}


def host_ok(host: str | None, port: int) -> bool:
    """Only the names this server answers to, with its port."""
    return (host or "").strip().lower() in (f"127.0.0.1:{port}", f"localhost:{port}")


def origin_ok(method: str, origin: str | None, fetch_site: str | None, port: int) -> bool:
    """A state change from a page of another site (or an opaque ``null`` origin: a sandboxed
    frame, a file:// page, a redirect) is refused; reads are left to authentication."""
    if method in SAFE_METHODS:
        return True
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return False
    if origin is None:
        return True   # scripts (curl, requests) send none; a browser's POST always does
    return origin.strip().lower() in (f"http://127.0.0.1:{port}", f"http://localhost:{port}")


def same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8"))


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@dataclass
class Session:
    csrf: str
    created: float


@dataclass
class Keys:
    """This server's secrets: the API token, the one-time login codes, the sessions."""
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _codes: set[str] = field(default_factory=set)
    _sessions: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_code(self) -> str:
        """A login code for one browser URL; it works once."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes.add(code)
        return code

    def trade(self, code: str | None) -> tuple[str, Session] | None:
        """The code for a new session (its id goes into the cookie), once."""
        if not code:
            return None
        with self._lock:
            hit = next((c for c in self._codes if same(code, c)), None)
            if hit is None:
                return None
            self._codes.discard(hit)
            sid = secrets.token_urlsafe(32)
            self._sessions[sid] = s = Session(secrets.token_urlsafe(24), time.time())
            return sid, s

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            for k, s in self._sessions.items():
                if same(sid, k):
                    return s
        return None


def check(keys: Keys, port: int, method: str, host: str | None, origin: str | None,
          fetch_site: str | None, authorization: str | None, cookie_sid: str | None,
          csrf: str | None) -> tuple[Verdict, Session | None]:
    """Every rule, in order: the first that fails is the verdict."""
    if not host_ok(host, port):
        return Verdict.BAD_HOST, None
    if not origin_ok(method, origin, fetch_site, port):
        return Verdict.FOREIGN_ORIGIN, None
    if same(bearer(authorization), keys.token):
        return Verdict.OK, None
    s = keys.session(cookie_sid)
    if s is None:
        return Verdict.UNAUTHENTICATED, None
    if method not in SAFE_METHODS and not same(csrf, s.csrf):
        return Verdict.NO_CSRF, s
    return Verdict.OK, s
