"""A PEP 503 simple package index served from a folder of wheels, on 127.0.0.1 only, for tests
of `bundle fetch` against a real index over HTTP (pip's hash checking, broken downloads).

    with PackageIndex(folder) as idx:
        env = {"PIP_INDEX_URL": idx.url, ...}
        idx.truncate.add("nvidia_cudnn_cu12-9.5.1.17-py3-none-any.whl")  # the body stops halfway
        idx.stall.add(name)   # half the body, then nothing until the name leaves idx.stall
        idx.stall_pages.add("nvidia-cudnn-cu12")   # the project's page never answers

Links carry ``#sha256=`` like PyPI's (``idx.wrong_hash`` names files published with a wrong
one). ``idx.downloads`` counts the wheel downloads per file. The server thread stops with the
``with`` block.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class PackageIndex:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.truncate: set[str] = set()
        self.wrong_hash: set[str] = set()
        self.stall: set[str] = set()
        self.stall_pages: set[str] = set()   # projects (canonical names) whose page never comes
        self.stalled = threading.Event()   # a stalled download has begun
        self.downloads: Counter = Counter()
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                if len(parts) == 2 and parts[0] == "simple":
                    return self._page(parts[1])
                if len(parts) == 2 and parts[0] == "files":
                    return self._file(parts[1])
                self.send_error(404)

            def _page(self, project: str):
                while _canon(project) in index.stall_pages:
                    time.sleep(0.05)
                files = [p for p in sorted(index.folder.glob("*.whl"))
                         if _canon(p.name.split("-")[0]) == _canon(project)]
                if not files:
                    return self.send_error(404)
                links = []
                for p in files:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                    if p.name in index.wrong_hash:
                        digest = "0" * 64
                    links.append(f'<a href="/files/{html.escape(p.name)}#sha256={digest}">'
                                 f"{html.escape(p.name)}</a><br>")
                body = ("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self, name: str):
                p = index.folder / name
                if "/" in name or not p.is_file():
                    return self.send_error(404)
                data = p.read_bytes()
                index.downloads[name] += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if name in index.stall:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    index.stalled.set()
                    while name in index.stall:
                        time.sleep(0.05)
                    self.close_connection = True
                    return
                if name in index.truncate:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        self._thread = threading.Thread(target=self.server.serve_forever, name="pkgindex", daemon=True)

    def __enter__(self) -> "PackageIndex":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


# the wheels the fetch/suggest/tray tests find on their index: Windows and Linux, CUDA 12 and
# 13 names and folders, two or more versions each, platform-tagged like PyPI's, plus the
# empty -cu13 stubs
INDEX_WHEELS = [
    # (lib, cuda_major, version, platform)
    ("cudnn", 12, "8.9.2.26", "windows"), ("cudnn", 12, "8.9.7.29", "windows"),
    ("cudnn", 12, "9.5.1.17", "windows"),
    ("cublas", 12, "12.4.5.8", "windows"), ("cublas", 12, "12.8.4.1", "windows"),
    ("cuda_runtime", 12, "12.4.127", "windows"), ("cuda_runtime", 12, "12.8.90", "windows"),
    ("cudnn", 12, "9.5.1.17", "linux"), ("cudnn", 12, "9.10.2.21", "linux"),
    ("cudnn", 12, "9.11.0.98", "linux"),
    ("cublas", 12, "12.4.5.8", "linux"), ("cublas", 12, "12.8.4.1", "linux"),
    ("cuda_runtime", 12, "12.4.127", "linux"), ("cuda_runtime", 12, "12.8.90", "linux"),
    ("cublas", 13, "13.0.0.19", "linux"), ("cublas", 13, "13.1.0.3", "linux"),
    ("cuda_runtime", 13, "13.0.96", "linux"),
    ("cublas", 13, "13.0.0.19", "windows"), ("cuda_runtime", 13, "13.0.96", "windows"),
    ("cudnn", 13, "9.13.0.50", "linux"), ("cudnn", 13, "9.14.0.64", "linux"),
]
STUB_WHEELS = [("nvidia-cublas-cu13", "0.0.1"), ("nvidia-cuda-runtime-cu13", "0.0.1")]


def fill(build, folder: Path) -> Path:
    for lib, major, version, platform in INDEX_WHEELS:
        build.nvidia_wheel(folder, lib=lib, cuda_major=major, version=version, platform=platform,
                           tagged=True)
    for name, version in STUB_WHEELS:
        build.nvidia_stub_wheel(folder, name=name, version=version)
    return folder


def pip_env(**more) -> dict:
    """Variables that make pip see only the test's index (the machine's pip.conf is left out)."""
    import os

    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": None, "PIP_INDEX_URL": None,
           "PIP_EXTRA_INDEX_URL": None, "PIP_NO_INDEX": None, "PIP_RETRIES": "0", "PIP_TIMEOUT": "5",
           "TORCHKEEPER_NO_PROGRESS": "1"}
    env.update(more)
    return env
