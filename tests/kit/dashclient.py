"""An HTTP client for the dashboard's tests that sends exactly the headers it is given (a forged
Host, no Host at all, an Origin), and signs in with a one-time URL as a browser would."""

from __future__ import annotations

import http.client
import re


class Client:
    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.host = f"127.0.0.1:{port}"

    def send(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
             host: str | None = "default"):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            c.putheader("Host", self.host if host == "default" else host)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        c.close()
        return out

    def login(self, url: str) -> tuple[str, str, str]:
        """(cookie header value, csrf token, the Set-Cookie line)"""
        path = url.split(str(self.port), 1)[1]
        status, h, _ = self.send("GET", path)
        assert status == 303, status
        set_cookie = h["set-cookie"]
        cookie = set_cookie.split(";", 1)[0]
        status, _, body = self.send("GET", "/", {"Cookie": cookie})
        assert status == 200
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', body.decode()).group(1)
        return cookie, csrf, set_cookie

    def reapply_as_the_page(self, url: str, target: str) -> int:
        """Sign in with the one-time URL, then post the page's Reapply form (cookie, CSRF token,
        same Origin) as the browser does; the status (303: done, back to the page)."""
        cookie, csrf, _ = self.login(url)
        status, _, _ = self.send("POST", f"/api/targets/{target}/reapply",
                                 {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded",
                                  "Origin": f"http://{self.host}", "Sec-Fetch-Site": "same-origin",
                                  "Accept": "text/html"}, f"csrf={csrf}".encode())
        return status
