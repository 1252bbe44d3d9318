"""Prometheus metrics (issue 20): the families as a table from facts; `torchkeeper metrics`
and its textfile checked by the real `promtool check metrics` (Debian's prometheus package,
installed by tests/setup-system.sh); the textfile replaced in one rename, a killed writer
leaving the previous file whole; the agent writing it by itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kit.agentkit import end_process, patched_target, spawn_agent, wait_for, write_config
from torchkeeper.engine import metrics

ID = "a" * 64


def _t(name, state, applied=True):
    return {"name": name, "state": state,
            "bundle": {"id": ID, "name": "cudnn-9.8", "cuda": "12.8", "cudnn": "9.8.0.87"},
            "applied": {"bundle": ID, "bundle_name": "cudnn-9.8", "at": "x", "files": 3} if applied else None}


def _samples(f: metrics.Facts) -> dict:
    out = {}
    for fam in metrics.families(f):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_families_as_a_table():
    ev = [{"event": "drift", "target": "a"}, {"event": "repaired", "target": "a", "latency": 0.2},
          {"event": "drift", "target": "a"}, {"event": "repaired", "target": "a", "latency": 3.0},
          {"event": "repaired", "target": "gone", "latency": 0.1},      # a removed target: no series
          {"event": "drift", "target": "b"}]
    f = metrics.Facts([_t("a", "patched"), _t("b", "drifted", applied=False)],
                      {"state": "ok", "version": "570.86", "cuda": "12.8"}, ev, now=1000.0, version="0.1.0")
    s = _samples(f)
    assert s[("torchkeeper_target_state", (("state", "patched"), ("target", "a")))] == 1
    assert s[("torchkeeper_target_state", (("state", "drifted"), ("target", "a")))] == 0
    assert s[("torchkeeper_target_state", (("state", "drifted"), ("target", "b")))] == 1
    assert sum(v for (n, lab), v in s.items() if n == "torchkeeper_target_state") == 2  # one state each
    assert s[("torchkeeper_target_bundle_info", (("bundle", "cudnn-9.8"), ("cuda", "12.8"), ("cudnn", "9.8.0.87"),
                                                 ("target", "a")))] == 1
    assert not [k for k in s if k[0] == "torchkeeper_target_bundle_info" and ("target", "b") in k[1]]
    assert s[("torchkeeper_drifts_total", (("target", "a"),))] == 2
    assert s[("torchkeeper_drifts_total", (("target", "b"),))] == 1
    assert s[("torchkeeper_repairs_total", (("target", "a"),))] == 2
    assert s[("torchkeeper_repairs_total", (("target", "b"),))] == 0
    assert s[("torchkeeper_repair_duration_seconds_bucket", (("le", "0.25"),))] == 1
    assert s[("torchkeeper_repair_duration_seconds_bucket", (("le", "5.0"),))] == 2
    assert s[("torchkeeper_repair_duration_seconds_count", ())] == 2
    assert s[("torchkeeper_repair_duration_seconds_sum", ())] == pytest.approx(3.2)
    assert s[("torchkeeper_target_last_check_timestamp_seconds", (("target", "a"),))] == 1000.0
    assert s[("torchkeeper_driver_info", (("cuda", "12.8"), ("version", "570.86")))] == 1
    assert s[("torchkeeper_build_info", (("python", "%d.%d.%d" % sys.version_info[:3]), ("version", "0.1.0")))] == 1
    # no driver known: no driver series, never a made-up version
    s = _samples(metrics.Facts([], {"state": "no_driver"}, [], 1.0, "0.1.0"))
    assert not [k for k in s if k[0].startswith("torchkeeper_driver")]


def _promtool(tmp_path, data: bytes):
    exe = shutil.which("promtool")
    assert exe, "promtool missing: tests/setup-system.sh installs Debian's prometheus package"
    r = subprocess.run([exe, "check", "metrics"], input=data, capture_output=True)
    assert r.returncode == 0, (r.stdout + r.stderr).decode() + data.decode()


def test_metrics_and_the_textfile_pass_promtool(tmp_path, build, run_tk, tk_home):
    patched_target(tmp_path, build, run_tk)
    r = run_tk("metrics")
    assert r.rc == 0, r
    assert 'torchkeeper_target_state{state="patched",target="a1111"} 1.0' in r.out, r.out
    assert r.out.endswith("\n")
    _promtool(tmp_path, r.out.encode())
    folder = tmp_path / "textfile"
    folder.mkdir()
    r = run_tk("metrics", "--textfile", folder, "--json")
    assert r.rc == 0, r
    prom = folder / "torchkeeper.prom"
    assert r.json()["file"] == str(prom)
    data = prom.read_bytes()
    assert data.endswith(b"\n") and b"torchkeeper_build_info" in data
    _promtool(tmp_path, data)
    assert sorted(p.name for p in folder.iterdir()) == ["torchkeeper.prom"]
    # a folder that is not there: one error line, one hint, nothing made
    r = run_tk("metrics", "--textfile", tmp_path / "nope")
    assert r.rc == 2 and r.err.startswith("error: ") and "\nhint: " in r.err and "Traceback" not in r.err, r
    assert not (tmp_path / "nope").exists()


def test_a_killed_writer_leaves_the_previous_file_whole(tmp_path):
    folder = tmp_path / "textfile"
    folder.mkdir()
    old = metrics.render(metrics.Facts([], None, [], 1.0, "old"))
    metrics.write_textfile(folder, old)
    # a writer killed after writing its temp file, before the rename
    code = textwrap.dedent(f"""
        import os, sys, time
        from torchkeeper.engine import metrics
        os.replace = lambda *a: (print("ready", flush=True), time.sleep(60))
        metrics.write_textfile({str(folder)!r}, b"torchkeeper_half" * 100000)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (folder / "torchkeeper.prom").read_bytes() == old
    left = [q for q in folder.iterdir() if q.name != "torchkeeper.prom"]
    assert len(left) == 1 and left[0].name.startswith(".torchkeeper.prom.") and left[0].name.endswith(".tmp")
    # the collector reads *.prom only; the next write removes the stale temp file
    past = time.time() - 2 * metrics.STALE_TMP_S
    os.utime(left[0], (past, past))
    new = metrics.render(metrics.Facts([], None, [], 2.0, "new"))
    metrics.write_textfile(folder, new)
    assert sorted(q.name for q in folder.iterdir()) == ["torchkeeper.prom"]
    assert (folder / "torchkeeper.prom").read_bytes() == new


def test_the_agent_keeps_the_textfile(tmp_path, build, run_tk, tk_home):
    """[metrics] textfile_dir set: the agent writes it at start and after a change (a revert
    here, then its repair), with no NVML call of its own for it."""
    patched_target(tmp_path, build, run_tk)
    folder = tmp_path / "textfile"
    folder.mkdir()
    write_config(tk_home, f'[metrics]\ntextfile_dir = "{folder}"\n[notifications]\nbackend = "log"\n')
    prom = folder / "torchkeeper.prom"
    p = spawn_agent(tk_home)
    try:
        wait_for(lambda: prom.exists() and b'state="patched",target="a1111"} 1.0' in prom.read_bytes(), 30,
                 "the textfile")
        r = run_tk("revert", "a1111")
        assert r.rc == 0, r
        wait_for(lambda: b'state="stock",target="a1111"} 1.0' in prom.read_bytes(), 30, "the revert in it")
    finally:
        end_process(p)
    _promtool(tmp_path, prom.read_bytes())
