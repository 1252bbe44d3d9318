"""`torchkeeper bench`: refusing cleanly without a CUDA device (a real CPU build of torch in a real
venv), the stock / bundle / put-back mechanics around the workload, and the timing code with an
injected clock."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit import builders
from kit import wayback
from torchkeeper.engine import bench
from torchkeeper.engine.core import Engine

REPO = Path(__file__).resolve().parent.parent
TORCH_CPU = "torch==2.13.0"


def _workload():
    spec = importlib.util.spec_from_file_location("bench_workload", bench.WORKLOAD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def cpu_torch_venv() -> Path:
    """A venv with the real CPU build of torch, made once and kept in .tk-test-cache/."""
    root = Path(os.environ.get("TK_TEST_CACHE") or REPO / ".tk-test-cache") / "torch-cpu-venv"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "torch-cpu-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # xdist workers: one builds, the others wait
        done = root / ".complete"
        if not done.is_file():
            import shutil

            shutil.rmtree(root, ignore_errors=True)
            builders.make_venv(root)
            # the machine's pip configuration finds the CPU build on disk (no download)
            subprocess.run([sys.executable, "-m", "pip", "--python", str(builders.venv_python(root)),
                            "install", "-q", "--disable-pip-version-check", TORCH_CPU],
                           check=True, timeout=900)
            done.write_text("ok\n")
    return root


def test_bench_refuses_a_cpu_torch_cleanly_and_touches_nothing(cpu_torch_venv, run_tk, tk_home):
    wayback.ok(run_tk("target", "add", cpu_torch_venv, "--name", "cpu"))
    lib = builders.site_packages(cpu_torch_venv) / "torch" / "lib"
    before = {p.name: builders.sha256_file(p) for p in lib.iterdir() if p.is_file()}
    state = (tk_home / "data" / "state.json").read_text()
    r = run_tk("bench", "cpu", timeout=300)
    assert r.rc == 2 and "Traceback" not in r.err, str(r)
    lines = r.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: target 'cpu': no CUDA device"), str(r)
    assert "CPU build" in lines[0] and str(cpu_torch_venv) in lines[0] and lines[1].startswith("hint: ")
    assert {p.name: builders.sha256_file(p) for p in lib.iterdir() if p.is_file()} == before
    assert (tk_home / "data" / "state.json").read_text() == state
    assert not [e for e in map(json.loads, (tk_home / "logs" / "events.jsonl").read_text().splitlines())
                if e["event"] in ("applied", "reverted", "bench")]


def test_measure_with_an_injected_clock():
    w = _workload()
    now = [0.0]
    durations = iter([0.1] * 3 + [0.2, 0.1, 0.4, 0.1, 0.1] * 10)  # warm-up, then 5 reps x 10 iters
    syncs = []

    def step():
        now[0] += next(durations)

    r = w.measure(step, lambda: syncs.append(now[0]), clock=lambda: now[0], warmup=3, reps=5, iters=10)
    # each repetition's 10 steps: 0.2+0.1+0.4+0.1+0.1 = 0.9 s twice = 1.8 s -> 10/1.8 it/s, all alike
    assert r["it_s"] == pytest.approx(10 / 1.8) and r["spread"] == pytest.approx(0)
    assert len(syncs) == 1 + 2 * 5        # after the warm-up, before and after every repetition

    now[0] = 0.0
    times = iter([0.5, 1.0, 2.0])         # three repetitions of one step
    r = w.measure(lambda: now.__setitem__(0, now[0] + next(times)), lambda: None,
                  clock=lambda: now[0], warmup=0, reps=3, iters=1)
    assert (r["min"], r["it_s"], r["max"]) == (0.5, 1.0, 2.0)
    assert r["spread"] == pytest.approx(1.5)


def _fake_gpu(t: wayback.Target, seen: list, fail_second: bool = False):
    """The workload's answers as if a GPU were there, recording which bundle each run saw."""
    def runner(python, args, timeout):
        if args == ["--probe"]:
            return {"cuda": True, "gpu": "NVIDIA GeForce RTX 4070", "torch": "2.3.1+cu121"}
        seen.append(wayback.classify(t, {"stock": None, **{b: b for b in t.bundles}}))
        if fail_second and len(seen) == 2:
            from torchkeeper.errors import OperationFailed
            raise OperationFailed("the workload crashed", "")
        rate = 10.0 if len(seen) == 1 else 13.0
        part = {"it_s": rate, "min": rate, "max": rate, "spread": 0.0, "reps": 7, "iters": 10}
        return {"cudnn": 8801 if len(seen) == 1 else 8907, "parts": {"conv fp16": part, "attention fp16": part}}
    return runner


def test_bench_measures_stock_then_the_bundle_and_puts_the_overlay_back(build, tmp_path, run_tk, tk_home):
    t = wayback.windows_target(build, tmp_path, run_tk, tk_home)
    wayback.add_bundle(t, run_tk, "b", *wayback.win_sources(build, tmp_path, "8.9.2.26"))
    wayback.ok(run_tk("use", "a"))
    wayback.ok(run_tk("apply"))
    seen = []
    r = bench.bench(Engine(), wayback.NAME, "b", runner=_fake_gpu(t, seen))
    assert seen == ["stock", "b"]
    assert r["ratio"] == pytest.approx(1.3) and r["cudnn"] == {"stock": 8801, "with_bundle": 8907}
    wayback.assert_patched(t, run_tk, "a")
    st = wayback.state(t)
    assert st["targets"][wayback.NAME]["bundle"] == t.bundles["a"]["id"]
    out = run_tk("status")
    assert "last bench: x1.30 with 'b'" in out.out, str(out)

    # the second run fails: the target is put back all the same
    seen.clear()
    from torchkeeper.errors import OperationFailed
    with pytest.raises(OperationFailed, match="crashed"):
        bench.bench(Engine(), wayback.NAME, "b", runner=_fake_gpu(t, seen, fail_second=True))
    assert seen == ["stock", "b"]
    wayback.assert_patched(t, run_tk, "a")
    wayback.ok(run_tk("revert"))
    wayback.assert_stock(t, run_tk)


# -- the running agent holds off while a bench swaps stock and bundle --------------------------


def _bench_with_agent(t, tk_home, tmp_path, monkeypatch, seen) -> float:
    """One bench in this process while `torchkeeper run` runs; each of its four transactions
    (revert, apply b, revert, apply a) stops 2 s in the middle of its swap, where the agent's
    watch sees a half-swapped target. Returns when the bench began (wall clock)."""
    from kit import agentkit

    k = len(t.bundles["a"]["files"])
    monkeypatch.setenv("TORCHKEEPER_TEST_PAUSE_AT", str(2 + 2 * k + k // 2))
    monkeypatch.setenv("TORCHKEEPER_TEST_PAUSE_FILE", str(tmp_path / "paused"))
    began = __import__("time").time()
    try:
        bench.bench(Engine(), wayback.NAME, "b", runner=_fake_gpu(t, seen))
    finally:
        monkeypatch.delenv("TORCHKEEPER_TEST_PAUSE_AT")
    assert " swapped " in (tmp_path / "paused").read_text()
    # the agent did see the bench's writes
    assert [e for e in agentkit.events(tk_home, "files changed") if e["ts"] >= began]
    return began


def _decisions(tk_home, since: float) -> list[dict]:
    from kit import agentkit

    return [e for e in agentkit.events(tk_home) if e["event"] in ("drift", "repaired", "reapplied")
            and e["ts"] >= since]


def test_a_bench_holds_the_running_agent_and_leaves_a_users_pause_alone(
        build, tmp_path, run_tk, tk_home, monkeypatch):
    import signal

    from kit import agentkit
    from torchkeeper.engine import hold

    t = wayback.windows_target(build, tmp_path, run_tk, tk_home)
    wayback.add_bundle(t, run_tk, "b", *wayback.win_sources(build, tmp_path, "8.9.2.26"))
    wayback.ok(run_tk("use", "a"))
    wayback.ok(run_tk("apply"))
    (tk_home / "config").mkdir(exist_ok=True)
    agentkit.write_config(tk_home, "[agent]\nquiet_seconds = 0.2\n")

    def agent_up():
        n = len(agentkit.events(tk_home, "started"))
        p = agentkit.spawn_agent(tk_home)
        agentkit.wait_for(lambda: len(agentkit.events(tk_home, "started")) > n, 20, "the agent's start")
        agentkit.wait_for(lambda: wayback.ok(run_tk("status", "--json")).json()["agent"]["running"], 20,
                          "the agent's pid file")
        __import__("time").sleep(1.0)  # its first check
        return p

    p = agent_up()
    try:
        seen = []
        began = _bench_with_agent(t, tk_home, tmp_path, monkeypatch, seen)
        assert seen == ["stock", "b"]
        assert _decisions(tk_home, began) == []
        agentkit.wait_for(lambda: [e["event"] for e in agentkit.events(tk_home, target=wayback.NAME)
                                   if e["ts"] >= began and e["event"] in ("held", "hold released")][:2]
                          == ["held", "hold released"], 10, "the agent to check again after the bench")
        assert hold.active(Engine().home) == []
        wayback.assert_patched(t, run_tk, "a")
        # a bench that fails lets go all the same
        from torchkeeper.errors import OperationFailed
        with pytest.raises(OperationFailed, match="crashed"):
            bench.bench(Engine(), wayback.NAME, "b", runner=_fake_gpu(t, [], fail_second=True))
        assert hold.active(Engine().home) == [] and list((tk_home / "data" / "holds").iterdir()) == []
        wayback.assert_patched(t, run_tk, "a")
        # and after it auto re-apply works again: a pip reinstall is repaired
        after = __import__("time").time()
        builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
        agentkit.wait_for(lambda: [e for e in agentkit.events(tk_home, "repaired") if e["ts"] >= after],
                          30, "the repair after the bench")
        agentkit.wait_for(lambda: run_tk("verify").rc == 0, 20, "a verified overlay")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)

    # the user had paused auto re-apply: the bench holds and lets go, the user's pause stays
    agent_json = tk_home / "data" / "agent.json"
    agent_json.write_text(json.dumps({**json.loads(agent_json.read_text()), "paused": True}))
    p = agent_up()
    try:
        seen = []
        began = _bench_with_agent(t, tk_home, tmp_path, monkeypatch, seen)
        assert _decisions(tk_home, began) == []
        assert wayback.ok(run_tk("status", "--json")).json()["agent"]["paused"] is True
        after = __import__("time").time()
        builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
        d = agentkit.wait_for(lambda: [e for e in agentkit.events(tk_home, "drift") if e["ts"] >= after],
                              30, "the drift after the bench")
        assert d[0]["decision"] == "asked the user" and "paused" in d[0]["why"], d
        assert not [e for e in agentkit.events(tk_home, "repaired") if e["ts"] >= after]
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    assert json.loads(agent_json.read_text())["paused"] is True


def test_a_hold_left_by_a_killed_bench_counts_for_nothing(tk_home):
    import subprocess

    from torchkeeper.engine import hold

    home = Engine().home
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # a process that has exited
    d = hold.holds_dir(home)
    d.mkdir(parents=True)
    (d / f"{pid}-1.json").write_text(json.dumps({"pid": pid, "target": "t", "why": "bench"}))
    with hold.hold(home, "t", "bench"):
        assert [h.pid for h in hold.active(home, "t")] == [os.getpid()]
        assert hold.active(home, "other") == []
    assert hold.active(home) == [] and list(d.iterdir()) == []
