"""Shared fixtures for torchkeeper's tests.

* ``builder_cache`` (session): the folder where builders.py caches compiled DLLs/.so files;
  shared by all xdist workers (``<repo>/.tk-test-cache/builders``, gitignored; override with
  TK_TEST_CACHE). Entries unused for 14 days, or built by an older version of builders.py's
  compiling code, are pruned when a session ends.
* ``build`` (session): a ``builders.Builders`` with the cache bound: ``build.torch_wheel(tmp_path)``.
* ``tk_home`` (function): a fresh temporary TORCHKEEPER_HOME, set in the environment.
* ``run_tk`` (function): runs ``python -m torchkeeper ARGS`` as a real subprocess.
* ``running_agent`` (function): ``running_agent(home, **kw)`` starts an Agent in this process
  (agentkit.start_agent); every one it started is stopped when the test ends, however it ends.
"""

from __future__ import annotations

import json as _json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "agent"
TESTS = Path(__file__).resolve().parent
for _p in (str(AGENT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from kit import builders  # noqa: E402

# The suite asserts English text; test_i18n sets the language it tests. And the catalogs'
# .mo files are build outputs: compiled here from the .po sources, as the wheel's hook does.
os.environ["TORCHKEEPER_LANG"] = "en"
sys.path.insert(0, str(REPO / "installer"))
import catalogs  # noqa: E402

sys.path.remove(str(REPO / "installer"))
catalogs.compile_all()
from kit.nvmlstub import nvml_stub  # noqa: E402,F401  (a fixture: the stub libnvidia-ml.so.1's folder)

CACHE_MAX_AGE_S = 14 * 24 * 3600


def _cache_dir() -> Path:
    return Path(os.environ.get("TK_TEST_CACHE") or REPO / ".tk-test-cache" / "builders")


@pytest.fixture(scope="session")
def builder_cache() -> Path:
    d = _cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def build(builder_cache) -> builders.Builders:
    return builders.Builders(builder_cache)


def pytest_sessionfinish(session, exitstatus):
    # Prune only in the controlling process (not in xdist workers), after all tests ran.
    if hasattr(session.config, "workerinput"):
        return
    d = _cache_dir()
    if not d.is_dir():
        return
    cutoff = time.time() - CACHE_MAX_AGE_S
    current = builders.recipe() + "-"
    for f in d.iterdir():
        try:
            if f.is_file() and (not f.name.startswith(current) or f.stat().st_mtime < cutoff):
                f.unlink()
            elif f.is_dir() and f.name.startswith(".build-") and f.stat().st_mtime < time.time() - 3600:
                shutil.rmtree(f, ignore_errors=True)  # left by a killed run
        except OSError:
            pass


@pytest.fixture
def tk_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "tk-home"
    home.mkdir()
    monkeypatch.setenv("TORCHKEEPER_HOME", str(home))
    return home


@dataclass
class TkResult:
    args: list
    rc: int
    out: str
    err: str

    def json(self):
        try:
            return _json.loads(self.out)
        except ValueError as e:
            raise AssertionError(f"torchkeeper {self.args} did not print JSON ({e}):\n"
                                 f"--- stdout\n{self.out}\n--- stderr\n{self.err}") from None

    def __str__(self) -> str:
        return f"torchkeeper {' '.join(map(str, self.args))} -> rc {self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def tk_env(home: Path, extra_env: dict | None = None) -> dict:
    env = dict(os.environ)
    env["TORCHKEEPER_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(AGENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUTF8", "1")
    for k, v in (extra_env or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


@pytest.fixture
def running_agent():
    from kit.agentkit import start_agent

    started = []

    def start(home: Path, **kw):
        agent = start_agent(home, **kw)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(timeout=30)   # at once where the test stopped it already


@pytest.fixture
def run_tk(tk_home, tmp_path):
    """run_tk(*args, extra_env=None, timeout=120, cwd=None) -> TkResult(rc, out, err, .json()).

    extra_env values of None remove that variable. The CLI runs in a new process, with
    TORCHKEEPER_HOME=tk_home, stdin from /dev/null, and agent/ on PYTHONPATH.
    """

    def run(*args, extra_env: dict | None = None, timeout: float = 120, cwd=None) -> TkResult:
        argv = [sys.executable, "-m", "torchkeeper", *map(str, args)]
        p = subprocess.run(argv, env=tk_env(tk_home, extra_env), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, cwd=cwd or tmp_path)
        return TkResult(list(args), p.returncode, p.stdout, p.stderr)

    return run
