"""Which HTTP server library the dashboard uses, by measurement (issue 19): for each candidate,
a process that imports what the agent imports, then starts the candidate on 127.0.0.1 with one
route; measured: RSS before it, RSS after the first answered request, and the time from
"start serving" to that first answer. Run it with a Python that has the candidates installed:

    python -m venv /tmp/srv && /tmp/srv/bin/pip install bottle aiohttp starlette uvicorn psutil
    PYTHONPATH=agent:.venv/lib/python3.11/site-packages /tmp/srv/bin/python bench/bench_dashboard_servers.py
(the agent's own dependencies from the project's .venv, the candidates from /tmp/srv)

Prints figures, never passes or fails."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, socket, sys, threading, time, urllib.request
    import psutil
    import torchkeeper.daemon.worker, torchkeeper.run  # what the agent holds before any dashboard
    proc = psutil.Process()
    before = proc.memory_info().rss
    kind = sys.argv[1]
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    t0 = time.perf_counter()
    if kind == "stdlib":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
                self.wfile.write(b"ok")
            def log_message(self, *a): pass
        srv = ThreadingHTTPServer(("127.0.0.1", port), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    elif kind == "bottle":
        import bottle
        from wsgiref.simple_server import make_server, WSGIRequestHandler
        app = bottle.Bottle()
        app.route("/")(lambda: "ok")
        class Q(WSGIRequestHandler):
            def log_message(self, *a): pass
        srv = make_server("127.0.0.1", port, app, handler_class=Q)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    elif kind == "aiohttp":
        import asyncio
        from aiohttp import web
        async def ok(req): return web.Response(text="ok")
        def run():
            loop = asyncio.new_event_loop(); asyncio.set_event_loop(loop)
            app = web.Application(); app.router.add_get("/", ok)
            runner = web.AppRunner(app, access_log=None); loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start()); loop.run_forever()
        threading.Thread(target=run, daemon=True).start()
    elif kind == "starlette":
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                            access_log=False, lifespan="off"))
        threading.Thread(target=srv.run, daemon=True).start()
    while True:
        try:
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read() == b"ok"
            break
        except OSError:
            time.sleep(0.005)
    first = time.perf_counter() - t0
    print(json.dumps({"before": before, "after": proc.memory_info().rss, "first": first}))
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    print(f"# python {sys.version.split()[0]}, {a.runs} runs each, medians")
    for kind in ("stdlib", "bottle", "aiohttp", "starlette"):
        rows = [json.loads(subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True,
                                          check=True).stdout) for _ in range(a.runs)]
        add = statistics.median(r["after"] - r["before"] for r in rows) / 2**20
        first = statistics.median(r["first"] for r in rows) * 1000
        base = statistics.median(r["before"] for r in rows) / 2**20
        print(f"{kind:>10}: RSS +{add:5.1f} MiB over the agent's imports ({base:.1f} MiB); "
              f"start -> first answer {first:6.0f} ms")


if __name__ == "__main__":
    main()
