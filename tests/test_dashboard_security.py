"""The dashboard is closed to everyone but the user (issue 19): the rules as a table
(dashboard/security.py), then each attacked on the real server a real agent serves (`torchkeeper
run --headless`, `torchkeeper dashboard --json --no-browser`): bound to 127.0.0.1 only; nothing
without the token or a session, not even a target's name; a foreign Host (DNS rebinding); a POST
from a foreign or null Origin or a cross-site Sec-Fetch-Site; a cookie-only POST without its
CSRF token; no CORS header ever; frames, sniffing and caching refused; the login code works
once; neither the token nor the code is ever logged. And it stops when idle."""

from __future__ import annotations

import json
import re
import time

import psutil
import pytest

from kit.agentkit import end_process, patched_target, spawn_agent, wait_for, write_config
from kit.dashclient import Client
from torchkeeper.dashboard.security import Keys, Verdict, check

PORT = 8123


@pytest.mark.parametrize("method, host, origin, site, auth, cookie, csrf, want", [
    ("GET", "127.0.0.1:8123", None, None, "Bearer T", None, None, Verdict.OK),
    ("GET", "localhost:8123", None, None, "bearer T", None, None, Verdict.OK),
    ("GET", "evil.example:8123", None, None, "Bearer T", None, None, Verdict.BAD_HOST),    # rebinding
    ("GET", "127.0.0.1:9999", None, None, "Bearer T", None, None, Verdict.BAD_HOST),
    ("GET", None, None, None, "Bearer T", None, None, Verdict.BAD_HOST),
    ("GET", "127.0.0.1:8123", None, None, "Bearer X", None, None, Verdict.UNAUTHENTICATED),
    ("GET", "127.0.0.1:8123", None, None, "Basic T", None, None, Verdict.UNAUTHENTICATED),
    ("GET", "127.0.0.1:8123", None, None, None, None, None, Verdict.UNAUTHENTICATED),
    ("GET", "127.0.0.1:8123", None, None, None, "S", None, Verdict.OK),
    ("GET", "127.0.0.1:8123", None, None, None, "nope", None, Verdict.UNAUTHENTICATED),
    ("POST", "127.0.0.1:8123", "http://127.0.0.1:8123", "same-origin", None, "S", "C", Verdict.OK),
    ("POST", "127.0.0.1:8123", "http://127.0.0.1:8123", "same-origin", None, "S", None, Verdict.NO_CSRF),
    ("POST", "127.0.0.1:8123", "http://127.0.0.1:8123", "same-origin", None, "S", "bad", Verdict.NO_CSRF),
    ("POST", "127.0.0.1:8123", "http://evil.example", None, None, "S", "C", Verdict.FOREIGN_ORIGIN),
    ("POST", "127.0.0.1:8123", "null", None, None, "S", "C", Verdict.FOREIGN_ORIGIN),
    ("POST", "127.0.0.1:8123", None, "cross-site", None, "S", "C", Verdict.FOREIGN_ORIGIN),
    ("POST", "127.0.0.1:8123", None, "same-site", None, "S", "C", Verdict.FOREIGN_ORIGIN),
    ("POST", "127.0.0.1:8123", "http://evil.example", None, "Bearer T", None, None, Verdict.FOREIGN_ORIGIN),
    ("POST", "127.0.0.1:8123", None, None, "Bearer T", None, None, Verdict.OK),        # a script
])
def test_the_rules_as_a_table(method, host, origin, site, auth, cookie, csrf, want):
    keys = Keys(token="T")
    sid, s = keys.trade(keys.new_code())
    s.csrf = "C"
    cookie = sid if cookie == "S" else cookie
    assert check(keys, PORT, method, host, origin, site, auth, cookie, csrf)[0] is want


def test_a_login_code_works_once():
    keys = Keys()
    code = keys.new_code()
    assert keys.trade(code) is not None
    assert keys.trade(code) is None and keys.trade("") is None and keys.trade(None) is None


@pytest.fixture
def served(request, tmp_path, build, run_tk, tk_home):
    idle = getattr(request, "param", 10)
    patched_target(tmp_path, build, run_tk)
    write_config(tk_home, f'[notifications]\nbackend = "log"\n[dashboard]\nidle_minutes = {idle}\n')
    p = spawn_agent(tk_home)
    try:
        wait_for(lambda: "running" in run_tk("status").out, 30, "the agent")
        r = run_tk("dashboard", "--json", "--no-browser")
        assert r.rc == 0, r
        d = r.json()
        port = int(re.search(r":(\d+)/", d["url"]).group(1))
        yield p, Client(port, d["token"]), d
    finally:
        end_process(p)


def _conns(proc):
    """psutil 6 renamed Process.connections to net_connections (5.9 is the lowest allowed)."""
    return (getattr(proc, "net_connections", None) or proc.connections)("tcp")


def _state(run_tk) -> str:
    return run_tk("status", "--json").json()["targets"][0]["state"]


def test_the_dashboard_is_closed_to_everyone_else(served, run_tk, tk_home):
    agent, c, d = served
    # bound to 127.0.0.1, never to every address
    listening = [s.laddr for s in _conns(psutil.Process(agent.pid)) if s.status == "LISTEN"]
    assert (("127.0.0.1", c.port)) in [(a.ip, a.port) for a in listening]
    assert all(a.ip == "127.0.0.1" for a in listening), listening

    cookie, csrf, set_cookie = c.login(d["url"])
    assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower(), set_cookie
    # the code in the URL worked once
    assert c.send("GET", d["url"].split(str(c.port), 1)[1])[0] == 401

    # nothing without the token or a session, and nothing leaks: not even the target's name
    for method, path in (("GET", "/"), ("GET", "/api/status"), ("GET", "/targets/a1111"), ("GET", "/bundles"),
                         ("POST", "/api/targets/a1111/revert"), ("GET", "/api/events")):
        status, h, body = c.send(method, path, {"Cookie": "tk_session=forged"} if method == "GET" else None)
        assert status == 401 and b"a1111" not in body and b"patched" not in body, (path, status, body)
    assert _state(run_tk) == "patched"

    auth = {"Authorization": f"Bearer {c.token}"}
    status, h, body = c.send("GET", "/api/status", auth)
    assert status == 200 and json.loads(body)["targets"][0]["name"] == "a1111"
    assert json.loads(body)["schema_version"] == 1
    assert h["cache-control"] == "no-store" and h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in h["content-security-policy"]

    # DNS rebinding: the right token, a name that is not ours
    for host in ("evil.example:%d" % c.port, "127.0.0.1:1", "localhost", None):
        status, _, body = c.send("GET", "/api/status", auth, host=host)
        assert status == 403 and b"a1111" not in body, host

    # a page of another site posting with the user's cookie (and even the CSRF token)
    form = f"csrf={csrf}".encode()
    base = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    for bad in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:%d" % c.port}):
        status, _, _ = c.send("POST", "/api/targets/a1111/revert", {**base, **bad}, form)
        assert status == 403, bad
    # the cookie alone, without the CSRF token, or with a wrong one
    status, _, _ = c.send("POST", "/api/targets/a1111/revert", base, b"")
    assert status == 403
    status, _, _ = c.send("POST", "/api/targets/a1111/revert", base, b"csrf=wrong")
    assert status == 403
    time.sleep(1.0)
    assert _state(run_tk) == "patched", "a refused request changed something"

    # no CORS, ever: not on a preflight, not on an answer
    status, h, _ = c.send("OPTIONS", "/api/status", {"Origin": "http://evil.example",
                                                     "Access-Control-Request-Method": "GET"})
    assert not [k for k in h if k.startswith("access-control-")], h
    status, h, _ = c.send("GET", "/api/status", {**auth, "Origin": "http://evil.example"})
    assert not [k for k in h if k.startswith("access-control-")], h

    # the page's own form post: accepted, the revert done through the agent
    ok = {**base, "Origin": "http://127.0.0.1:%d" % c.port, "Sec-Fetch-Site": "same-origin", "Accept": "text/html"}
    status, h, _ = c.send("POST", "/api/targets/a1111/revert", ok, form)
    assert status == 303, status
    wait_for(lambda: _state(run_tk) == "stock", 30, "the revert")
    # a script with the token: JSON back, no CSRF needed (no ambient credential)
    status, _, body = c.send("POST", "/api/targets/a1111/reapply", auth)
    assert status == 202 and json.loads(body) == {"queued": "reapply", "target": "a1111"}
    wait_for(lambda: _state(run_tk) == "patched", 30, "the reapply")
    status, _, _ = c.send("POST", "/api/targets/nope/reapply", auth)
    assert status == 404

    # never logged: the token, the login code
    code = d["url"].split("code=", 1)[1]
    for f in (tk_home / "logs").iterdir():
        text = f.read_text(errors="replace")
        assert c.token not in text and code not in text, f


@pytest.mark.parametrize("served", [0.1], indirect=True)   # 6 s
def test_it_stops_when_idle_and_a_new_ask_starts_it_again(served, run_tk):
    agent, c, d = served
    auth = {"Authorization": f"Bearer {c.token}"}
    assert c.send("GET", "/api/status", auth)[0] == 200

    def listening() -> bool:   # looked at from outside: a request would keep it awake
        return any(s.status == "LISTEN" and s.laddr.port == c.port
                   for s in _conns(psutil.Process(agent.pid)))

    wait_for(lambda: not listening(), 30, "the idle stop (6 s)", interval=0.5)
    try:
        c.send("GET", "/api/status", auth)
        raise AssertionError("still answering after the idle stop")
    except OSError:
        pass
    r = run_tk("dashboard", "--json", "--no-browser")
    assert r.rc == 0, r
    port = int(re.search(r":(\d+)/", r.json()["url"]).group(1))
    assert Client(port, r.json()["token"]).send("GET", "/api/status",
                                                {"Authorization": f"Bearer {r.json()['token']}"})[0] == 200


def test_without_an_agent_it_says_so(run_tk):
    r = run_tk("dashboard", "--no-browser")
    assert r.rc == 2 and r.err.startswith("error: the agent is not running") and "\nhint: " in r.err, r


def test_an_ask_written_while_the_agent_starts_is_answered_and_a_stale_one_is_dropped(tk_home):
    """`status` says "running" from the agent's lock, before its watch on the ask exists (CI
    saw the CLI time out so): an ask already there at start is answered; one a killed CLI left
    long ago is removed unanswered (it would open the dashboard at every login)."""
    import os

    from kit.agentkit import start_agent
    from torchkeeper.daemon.view import ASK_FRESH_S, DASHBOARD_ANSWER, DASHBOARD_ASK
    from torchkeeper.home import get_home

    os.environ["TORCHKEEPER_HOME"] = str(tk_home)
    data = get_home().data_dir
    data.mkdir(parents=True, exist_ok=True)
    ask, answer = data / DASHBOARD_ASK, data / DASHBOARD_ANSWER
    ask.write_text(json.dumps({"nonce": "old"}))
    old = time.time() - ASK_FRESH_S - 5
    os.utime(ask, (old, old))
    agent = start_agent(tk_home)          # this in-process agent serves no dashboard: it answers why
    try:
        assert not ask.exists() and not answer.exists()
    finally:
        agent.stop(10)
    ask.write_text(json.dumps({"nonce": "fresh"}))
    agent = start_agent(tk_home)
    try:
        got = json.loads(answer.read_text())
        assert got["nonce"] == "fresh" and "no dashboard" in got["error"] and not ask.exists()
        ask.write_text(json.dumps({"nonce": "fresh"}))   # the CLI asks again before it sees the answer
        answer.unlink()
        wait_for(lambda: not ask.exists(), 10, "the ask taken")
        time.sleep(0.3)
        assert not answer.exists()        # a nonce is answered once
    finally:
        agent.stop(10)
