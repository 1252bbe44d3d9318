"""The agent's NVML polling end to end: `torchkeeper run` as a real process, the real pynvml,
and the stub libnvidia-ml.so.1 whose answers file the test rewrites between polls.

Also: the last-seen driver persisted across runs, one agent per user, and `run` without a
display falling back to headless.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.agentkit import events, spawn_agent, wait_for, write_config
from conftest import tk_env
from kit.nvmlstub import write_answers

RTX4070 = ("NVIDIA GeForce RTX 4070", "GPU-8d3f3c2a-6f1e-4b0e-9a59-1c2d3e4f5a6b")
CONFIG = """\
[agent]
driver_poll_seconds = 1

[notifications]
# toasts go to the log: this test reads the agent's event log, not a desktop
backend = "log"
"""


@pytest.fixture
def answers(tmp_path) -> Path:
    return tmp_path / "nvml-answers.txt"


@pytest.fixture
def agent_env(nvml_stub, answers) -> dict:
    ld = os.pathsep.join(filter(None, [str(nvml_stub), os.environ.get("LD_LIBRARY_PATH")]))
    # the stub's answers file stands for the installed driver: rewriting it is an update the OS
    # shows (engine/driversignal.py), so the agent asks NVML again
    return {"LD_LIBRARY_PATH": ld, "TK_NVML_STUB_FILE": str(answers), "TK_NVML_STUB_LOG": None,
            "TORCHKEEPER_TEST_DRIVER_SIGNAL": str(answers)}


@pytest.fixture
def procs():
    """Processes to kill, whatever happens to the test."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        try:
            p.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def agent_log(home: Path) -> str:
    try:
        return (home / "logs" / "agent.log").read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def agent_state(home: Path) -> dict:
    try:
        return json.loads((home / "data" / "agent.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def starts(home: Path) -> int:
    """How many times an agent said it started (an event, or a line in its log)."""
    return max(len(events(home, "started")), agent_log(home).count("agent started"))


def wait_started(home: Path, proc: subprocess.Popen, before: int = 0, timeout: float = 30.0) -> None:
    """Until the agent has started (its schedule runs) and has polled the driver once."""
    def started():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the agent exited with {proc.returncode}:\n{out}\n{err}\n"
                                 f"{agent_log(home)}")
        return starts(home) > before and "driver" in agent_state(home)
    wait_for(started, timeout, "the agent to start")


def toasts(home: Path) -> list[dict]:
    return events(home, "toast")


def wait_toast(home: Path, pred, what: str, timeout: float = 10.0) -> dict:
    def find():
        return next((t for t in toasts(home) if pred(t)), None)
    try:
        return wait_for(find, timeout, what)
    except AssertionError:
        raise AssertionError(f"no toast {what}; toasts: {toasts(home)}\n"
                             f"--- agent.log\n{agent_log(home)}") from None


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def spawn(home, env, procs) -> subprocess.Popen:
    p = spawn_agent(home, env)
    procs.append(p)
    return p


@pytest.mark.timeout(90)
def test_driver_changes_while_running(tk_home, agent_env, answers, procs):
    write_config(tk_home, CONFIG)
    write_answers(answers, driver="551.86", cuda=12040, gpus=[RTX4070])
    p = spawn(tk_home, agent_env, procs)
    wait_started(tk_home, p)
    assert agent_state(tk_home)["driver"] == {"state": "ok", "version": "551.86", "cuda": "12.4",
                                              "gpus": [RTX4070[0]]}
    assert events(tk_home, "driver changed") == []   # the first run has nothing to compare with
    assert toasts(tk_home) == []

    # a driver update, loaded
    write_answers(answers, driver="560.70", cuda=12060, gpus=[RTX4070])
    t = wait_toast(tk_home, lambda t: "560.70" in t.get("body", ""), "about 560.70")
    assert t["title"] == "torchkeeper: driver changed"
    assert t["body"] == "Driver 551.86 → 560.70, CUDA 12.4 → 12.6"
    changed = events(tk_home, "driver changed")
    assert len(changed) == 1
    assert changed[0]["before"]["version"] == "551.86"
    assert changed[0]["after"] == {"state": "ok", "version": "560.70", "cuda": "12.6",
                                   "gpus": [RTX4070[0]]}
    assert agent_state(tk_home)["driver"]["version"] == "560.70"

    # updated again but not reloaded: NVML_ERROR_LIB_RM_VERSION_MISMATCH
    write_answers(answers, init_rc=18, driver=None, cuda=None)
    t = wait_toast(tk_home, lambda t: "reboot" in t.get("title", ""), "saying reboot needed")
    assert t["title"] == "torchkeeper: driver reboot needed"
    assert "reboot" in t["body"]
    assert p.poll() is None

    # the kernel module not loaded: NVML_ERROR_DRIVER_NOT_LOADED
    write_answers(answers, init_rc=9, driver=None, cuda=None)
    t = wait_toast(tk_home, lambda t: "not loaded" in t.get("title", ""), "saying not loaded")
    assert t["title"] == "torchkeeper: driver not loaded"
    assert "not running" in t["body"]
    assert p.poll() is None
    assert agent_state(tk_home)["driver"]["state"] == "not_loaded"

    # back
    write_answers(answers, driver="560.70", cuda=12060, gpus=[RTX4070])
    t = wait_toast(tk_home, lambda t: "available" in t.get("title", ""), "saying driver available")
    assert t["title"] == "torchkeeper: driver available"
    assert t["body"] == f"driver 560.70, CUDA 12.6, 1 GPU ({RTX4070[0]})"
    assert [e["after"]["state"] for e in events(tk_home, "driver changed")] == \
        ["ok", "reboot_needed", "not_loaded", "ok"]
    # steady: no more changes while the answers stay
    n = len(toasts(tk_home))
    time.sleep(2.5)
    assert len(toasts(tk_home)) == n

    rc, out, err = stop(p)
    assert rc == 0, f"{out}\n{err}"
    assert "Traceback" not in agent_log(tk_home), agent_log(tk_home)
    assert "Traceback" not in err, err
    assert "agent stopped" in agent_log(tk_home)


@pytest.mark.timeout(90)
def test_driver_changed_while_not_running(tk_home, agent_env, answers, procs):
    write_config(tk_home, CONFIG)
    write_answers(answers, driver="551.86", cuda=12040, gpus=[RTX4070])
    p = spawn(tk_home, agent_env, procs)
    wait_started(tk_home, p)
    rc, out, err = stop(p)
    assert rc == 0, f"{out}\n{err}"
    assert agent_state(tk_home)["driver"]["version"] == "551.86"
    assert toasts(tk_home) == []

    # the driver was updated while the agent was not running (a reboot after the update)
    write_answers(answers, driver="560.70", cuda=12060, gpus=[RTX4070])
    p = spawn(tk_home, agent_env, procs)
    t = wait_toast(tk_home, lambda t: "560.70" in t.get("body", ""), "on start", timeout=30)
    assert t["body"] == "Driver 551.86 → 560.70, CUDA 12.4 → 12.6"
    wait_started(tk_home, p, before=1)
    assert agent_state(tk_home)["driver"]["version"] == "560.70"

    # unchanged across a third start: no toast
    rc, out, err = stop(p)
    assert rc == 0, f"{out}\n{err}"
    n = len(toasts(tk_home))
    p = spawn(tk_home, agent_env, procs)
    wait_started(tk_home, p, before=2)
    time.sleep(1.5)                    # a scheduled poll or two
    assert len(toasts(tk_home)) == n
    rc, out, err = stop(p)
    assert rc == 0, f"{out}\n{err}"
    assert "Traceback" not in agent_log(tk_home)


@pytest.mark.timeout(90)
def test_single_instance(tk_home, agent_env, answers, procs):
    write_config(tk_home, CONFIG)
    write_answers(answers, driver="551.86", cuda=12040, gpus=[RTX4070])
    first = spawn(tk_home, agent_env, procs)
    wait_started(tk_home, first)
    pid = (tk_home / "data" / "agent.pid").read_text().strip()
    assert pid == str(first.pid)

    second = spawn(tk_home, agent_env, procs)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, f"{out}\n{err}"
    assert "already running" in out
    assert str(first.pid) in out
    assert first.poll() is None
    assert starts(tk_home) == 1          # the second one started no agent

    rc, out, err = stop(first)
    assert rc == 0, f"{out}\n{err}"
    assert not (tk_home / "data" / "agent.pid").exists()
    # the lock is free again: a new agent starts
    third = spawn(tk_home, agent_env, procs)
    # (waiting for its start, not just its pid file: a SIGTERM before `run` has set its
    # signal handlers ends the process the default way, rc -15)
    wait_started(tk_home, third, before=1)
    assert (tk_home / "data" / "agent.pid").read_text().strip() == str(third.pid)
    rc, out, err = stop(third)
    assert rc == 0, f"{out}\n{err}"
    assert "already running" not in out
    assert "Traceback" not in agent_log(tk_home)


@pytest.mark.timeout(90)
def test_run_without_display_is_headless(tk_home, agent_env, answers, procs, tmp_path):
    write_config(tk_home, CONFIG)
    write_answers(answers, driver="551.86", cuda=12040, gpus=[RTX4070])
    env = tk_env(tk_home, dict(agent_env, DISPLAY=None, WAYLAND_DISPLAY=None, PYSTRAY_BACKEND=None))
    p = subprocess.Popen([sys.executable, "-m", "torchkeeper", "run"], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
    procs.append(p)
    wait_started(tk_home, p)
    rc, out, err = stop(p)
    assert rc == 0, f"{out}\n{err}"
    log = agent_log(tk_home)
    said = out + err
    assert said.count("no tray here") == 1, said
    assert "no display" in said and "running headless" in said
    assert log.count("no tray here") == 1, log
    assert "agent running (headless)" in out
    assert "Traceback" not in log and "Traceback" not in err


@pytest.mark.timeout(90)
def test_a_sleeping_gpu_is_left_asleep_nvml_only_at_start_and_on_a_change(
        tk_home, agent_env, answers, procs, tmp_path):
    """The stub counts nvmlInit calls. Ten poll periods with nothing changed: the one at start
    only. A driver update (the stub's answers and so the OS's signal changed): toasted within
    a poll, with one more NVML initialisation."""
    log = tmp_path / "nvml.log"
    write_config(tk_home, CONFIG)   # driver_poll_seconds = 1
    write_answers(answers, driver="551.86", cuda=12040, gpus=[RTX4070])
    p = spawn(tk_home, {**agent_env, "TK_NVML_STUB_LOG": str(log)}, procs)
    wait_started(tk_home, p)
    time.sleep(10.5)                 # ten poll periods
    inits = lambda: [ln for ln in log.read_text().splitlines() if ln.startswith("init")]  # noqa: E731
    assert len(inits()) == 1, log.read_text()
    write_answers(answers, driver="560.70", cuda=12060, gpus=[RTX4070])
    wait_toast(tk_home, lambda t: "560.70" in t.get("body", ""), "about 560.70", timeout=5)
    assert len(inits()) == 2, log.read_text()
    assert stop(p)[0] == 0
