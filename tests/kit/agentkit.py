"""Helpers for the agent's tests: a patched target made through the real CLI, an agent
running in-process (or as `torchkeeper run --headless`), and waiting on its event log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kit import builders

WIN = dict(version="2.3.1+cu121", cuda="12.1", layout="windows", cudnn="8.8.1.3")


def patched_target(tmp_path: Path, build, run_tk, name: str = "a1111", wheel: dict | None = None,
                   bundle_src: Path | None = None, venv: Path | None = None, apply: bool = True):
    """A real venv with a torch-shaped wheel, a bundle chosen and applied: (venv, wheel, bundle)."""
    wheel = wheel or WIN
    w = build.torch_wheel(tmp_path / "w", **wheel)
    venv = venv or builders.make_venv(tmp_path / f"venv-{name}")
    builders.pip_install(venv, w)
    r = run_tk("target", "add", venv, "--name", name)
    assert r.rc == 0, r
    if bundle_src is None:
        bundle_src = build.cudnn_archive(tmp_path / "src", version="8.9.7.29", cuda_major=12,
                                         platform="windows")
    r = run_tk("bundle", "create", bundle_src, "--json")
    assert r.rc == 0, r
    m = r.json()
    assert run_tk("use", m["name"], "--target", name).rc == 0
    if apply:
        r = run_tk("apply", name)
        assert r.rc == 0, r
    return venv, w, m


def events(home: Path, kind: str | None = None, target: str | None = None) -> list[dict]:
    f = home / "logs" / "events.jsonl"
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # the agent is writing that line now
    out = [json.loads(line) for line in lines if line.strip()]
    return [e for e in out if (kind is None or e["event"] == kind)
            and (target is None or e.get("target") == target)]


def wait_for(pred, timeout: float = 20.0, what: str = "condition", interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_idle(agent, settle: float = 1.0, timeout: float = 30.0) -> None:
    """Until the agent has been idle with no pending file events for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        busy = not agent.idle() or (agent.watcher is not None and agent.watcher.debouncer.pending())
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return
        time.sleep(0.02)
    raise AssertionError("the agent never became idle")


class Toasts:
    """A Notifier stand-in that records toasts (the real chain is tested in test_notify)."""

    def __init__(self):
        self.toasts = []

    def notify(self, toast):
        self.toasts.append(toast)
        return "test"

    def close(self):
        pass

    def update_config(self, cfg):
        self.cfg = cfg

    def bodies(self):
        return [t.body for t in self.toasts]


def start_agent(home: Path, **kw):
    """An Agent in this process, started, with a recording notifier."""
    from torchkeeper.daemon.worker import Agent
    from torchkeeper.home import get_home

    os.environ["TORCHKEEPER_HOME"] = str(home)
    agent = Agent(get_home(), notifier=Toasts(), **kw)
    agent.start()
    return agent


def spawn_agent(home: Path, extra_env: dict | None = None, *args) -> subprocess.Popen:
    """`python -m torchkeeper run --headless` as a real process."""
    from conftest import tk_env

    return subprocess.Popen([sys.executable, "-m", "torchkeeper", "run", "--headless", *args],
                            env=tk_env(home, extra_env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def end_process(p: subprocess.Popen) -> None:
    """Terminate p if it still runs; kill it if it will not go within 5 s."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def write_config(home: Path, text: str) -> Path:
    p = home / "config" / "config.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


def burst_wheel(torch_whl: Path, out_dir: Path, n: int = 20_000, folder: str = "torch/lib") -> Path:
    """The same torch wheel with ``n`` more small files in ``folder``: a reinstall of it is
    a burst of n file events where the agent watches (worse than real torch, whose
    ~20,000 files are mostly headers and .py files in folders the agent does not watch)."""
    import zipfile

    with zipfile.ZipFile(torch_whl) as z:
        files = {i.filename: z.read(i) for i in z.infolist() if ".dist-info/" not in i.filename}
        meta = next(i.filename for i in z.infolist() if i.filename.endswith(".dist-info/METADATA"))
        version = meta.split("/")[0][len("torch-"):-len(".dist-info")]
        extra = [line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist")]
    for i in range(n):
        files[f"{folder}/_filler_{i:05d}.txt"] = f"filler {i}\n".encode()
    return builders.write_wheel(out_dir, "torch", version, files, extra, root_is_purelib=False)


def padded_wheel(whl: Path, out_dir: Path, member: str, size: int) -> Path:
    """The same wheel with the file whose name is ``member`` padded with zeros to ``size``
    bytes (a 400 MB cuDNN engine library): deflate makes the wheel small, but pip must
    write every byte, which takes it seconds for that one file. RECORD is made anew."""
    import zipfile

    with zipfile.ZipFile(whl) as z:
        names = [i.filename for i in z.infolist()]
        files = {n: z.read(n) for n in names if ".dist-info/" not in n}
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        dist, version = meta.split("/")[0][:-len(".dist-info")].rsplit("-", 1)
        text = z.read(meta).decode()
        pure = "Root-Is-Purelib: true" in z.read(meta.replace("METADATA", "WHEEL")).decode()
    name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Name:"))
    extra = [line for line in text.splitlines() if line.startswith("Requires-Dist")]
    (big,) = [n for n in files if n.rsplit("/", 1)[-1] == member]
    files[big] = files[big] + bytes(size - len(files[big]))
    return builders.write_wheel(out_dir, name, version, files, extra, root_is_purelib=pure)


def slow_pip(folder: Path, seconds_per_mib: float) -> Path:
    """A folder with a sitecustomize.py that slows shutil.copyfileobj (what pip writes a wheel's
    files with) by seconds_per_mib, as a busy disk or an antivirus scanning every file would:
    put it on PYTHONPATH for pip."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import shutil, time\n"
        "def copyfileobj(fsrc, fdst, length=0):\n"
        "    while True:\n"
        "        buf = fsrc.read(1 << 20)\n"
        "        if not buf:\n"
        "            return\n"
        "        fdst.write(buf)\n"
        f"        time.sleep({seconds_per_mib!r})\n"
        "shutil.copyfileobj = copyfileobj\n")
    return folder
