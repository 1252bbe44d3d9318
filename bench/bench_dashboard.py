"""The dashboard's cost and speed (issue 19), on a real agent (`torchkeeper run --headless`) with
one patched target (builders' torch-shaped venv): the time from `torchkeeper dashboard` to the
targets page rendered in Debian's chromium (headless, Selenium), the agent's RSS before, with the
dashboard open, and after it stopped for idleness, and the pages' weight. Prints figures, never
passes or fails.

    python bench/bench_dashboard.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "agent"), str(REPO / "tests"), str(REPO / "bench")]

import psutil  # noqa: E402

from bench_agent import CACHE, WIN, tk, tk_env  # noqa: E402
from kit import builders  # noqa: E402


def _conns(proc):
    return (getattr(proc, "net_connections", None) or proc.connections)("tcp")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,800"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-bench-dash-"))
    try:
        home = work / "home"
        w = builders.torch_wheel(work / "w", cache_dir=CACHE, **WIN)
        venv = builders.make_venv(work / "venv")
        builders.pip_install(venv, w)
        src = builders.cudnn_archive(work / "src", version="8.9.7.29", cuda_major=12, platform="windows",
                                     cache_dir=CACHE)
        tk(home, "target", "add", venv, "--name", "a1111")
        name = json.loads(tk(home, "bundle", "create", src, "--json").stdout)["name"]
        tk(home, "use", name)
        tk(home, "apply")
        (home / "config").mkdir(parents=True, exist_ok=True)
        (home / "config" / "config.toml").write_text('[notifications]\nbackend = "log"\n[dashboard]\nidle_minutes = 0.1\n')
        agent = subprocess.Popen([sys.executable, "-m", "torchkeeper", "run", "--headless"], env=tk_env(home),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(agent.pid)
        try:
            time.sleep(8)   # started, first check done, standby prepared
            drv = browser()
            rows = []
            try:
                for i in range(a.runs):
                    before = proc.memory_info().rss
                    t0 = time.perf_counter()
                    d = json.loads(tk(home, "dashboard", "--json", "--no-browser").stdout)
                    drv.get(d["url"])
                    drv.find_element("css selector", "tr.state-patched")
                    rendered = time.perf_counter() - t0
                    html = drv.page_source.encode()
                    req = urllib.request.Request(d["url"].split("/login")[0] + "/static/style.css",
                                                 headers={"Authorization": f"Bearer {d['token']}"})
                    css = urllib.request.urlopen(req).read()
                    open_rss = proc.memory_info().rss
                    port = int(d["url"].split(":")[2].split("/")[0])
                    while any(c.status == "LISTEN" and c.laddr.port == port for c in _conns(proc)):
                        time.sleep(0.5)
                    time.sleep(1)
                    after = proc.memory_info().rss
                    rows.append((rendered, before, open_rss, after, len(html), len(css)))
                    print(f"run {i + 1}: dashboard -> page rendered {rendered * 1000:.0f} ms; agent RSS "
                          f"{before / 2**20:.1f} -> {open_rss / 2**20:.1f} (open) -> {after / 2**20:.1f} MiB (stopped); "
                          f"page {len(html)} B + css {len(css)} B", flush=True)
            finally:
                drv.quit()
        finally:
            agent.terminate()
            agent.wait(30)
        med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
        first = rows[0]
        print(f"# dashboard -> targets page rendered: median {med(0) * 1000:.0f} ms of {len(rows)} (first "
              f"{first[0] * 1000:.0f} ms, the server imported and started); agent RSS before the first open "
              f"{first[1] / 2**20:.1f} MiB, open {first[2] / 2**20:.1f}, after its idle stop {first[3] / 2**20:.1f} "
              f"(+{(first[3] - first[1]) / 2**20:.1f}); later opens: {med(1) / 2**20:.1f} -> {med(3) / 2**20:.1f} MiB; "
              f"targets page {med(4):.0f} B + stylesheet {med(5):.0f} B (no script, no other asset)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
