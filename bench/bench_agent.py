"""Benchmarks for the agent (`torchkeeper run --headless` as a real process): prints
figures, never passes or fails.

1. latency  "pip's final write -> overlay verified" over N `pip install --force-reinstall`
            rounds, p50 / p95, for the small test bundle (builders' cuDNN 8.9.7 windows archive:
            7 DLLs, ~36 KB) and a ~1 GB one (its DLLs grown with bench_engine.pad_dll), with the
            breakdown of the "repaired" event's timestamps and, for 1 GB, a disk baseline
            (cp, cp + sync) measured in the same run.
1b. real    the real thing: the real nvidia-cudnn-cu13 9.24.0.43 wheel (fetched once through pip
            into ~/.cache/torchkeeper-bench, or $TK_BENCH_CACHE) reinstalled by pip over a real
            9.28.1.4 overlay (~0.9 GB of cuDNN each), in three conditions: quiet, a CPU hog on
            every core, and pip's writes throttled (a sitecustomize slowing shutil.copyfileobj,
            as a scanned disk would), for each standby mode (--standby copy,link: copies of
            their own, the default, then hard links, side by side in one run): from pip's
            exit and from its last write, p50/p95, and the toasts that were not "re-applied".
2. idle     RSS and CPU seconds of the agent watching 20 patched targets for 10 minutes,
            against a bare python process holding only the agent's imports.
3. burst    the agent's CPU seconds through a 20,000-file reinstall against pip's own, with
            how many file events, checks and re-applies it made of it.

"pip's final write" is site-packages' st_mtime right after pip exits: pip's last act is
deleting its ~orch stash there (the kernel stamps mtimes with a coarse clock, a few ms).
Latencies from pip's exit (the moment `pip install` returns) are printed beside them.

Usage:
    python bench/bench_agent.py [--part latency|real|idle|burst|all] [--rounds 20] [--size-mb 1024]
                                [--idle-seconds 600] [--targets 20] [--burst-files 20000]
Quick tries: --part latency --rounds 5 / --part idle --idle-seconds 60 / --part burst.
Needs the mingw toolchain (tests/setup-system.sh) for the real PE DLLs it starts from
(or a warm .tk-test-cache/builders).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "agent"), str(REPO / "tests"), str(REPO / "bench")]

import psutil  # noqa: E402

from kit import builders  # noqa: E402
from kit.agentkit import slow_pip  # noqa: E402
from bench_engine import SHARES, pad_dll  # noqa: E402

CACHE = REPO / ".tk-test-cache" / "builders"
WIN = dict(version="2.3.1+cu121", cuda="12.1", layout="windows", cudnn="8.8.1.3")
SUMMARY: list[str] = []


# ----------------------------------------------------------------------------- helpers

def machine_line() -> str:
    la = os.getloadavg()
    return (f"# machine: nproc {len(os.sched_getaffinity(0))}, load average {la[0]:.2f} {la[1]:.2f} "
            f"{la[2]:.2f}, python {platform.python_version()}, {platform.system()} {platform.release()}")


def header(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))
    print(machine_line(), flush=True)


def say(line: str = "", summary: bool = False) -> None:
    print(line, flush=True)
    if summary:
        SUMMARY.append(line)


def tk_env(home: Path) -> dict:
    env = dict(os.environ, TORCHKEEPER_HOME=str(home), TORCHKEEPER_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "agent")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUTF8", "1")
    return env


def tk(home: Path, *args) -> subprocess.CompletedProcess:
    cp = subprocess.run([sys.executable, "-m", "torchkeeper", *map(str, args)], env=tk_env(home),
                        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise SystemExit(f"torchkeeper {' '.join(map(str, args))} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return cp


def pct(xs: list[float], q: float) -> float:
    """Percentile, linear between closest ranks (statistics.quantiles 'inclusive')."""
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


def human(n: int) -> str:
    return f"{n / 1e3:,.1f} KB" if n < 10e6 else f"{n / 1e6:,.0f} MB ({n / 2**20:,.0f} MiB)"


class EventTail:
    """New agent events from <home>/logs/events.jsonl (complete lines only)."""

    def __init__(self, home: Path):
        self.file = home / "logs" / "events.jsonl"
        self.pos = 0
        self.buf = b""

    def skip_to_end(self) -> None:
        self.read()

    def read(self) -> list[dict]:
        try:
            with open(self.file, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            if line.strip():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("source") == "agent":
                    out.append(e)
        return out


class AgentProc:
    """`python -m torchkeeper run --headless` with the bench's TORCHKEEPER_HOME."""

    display: str | None = None  # --display: run with the tray on that X display instead

    def __init__(self, home: Path, work: Path, tag: str):
        self.out = open(work / f"agent-{tag}.out", "w")
        args, env = ["--headless"], tk_env(home)
        if self.display:
            args, env = [], dict(tk_env(home), DISPLAY=self.display)
            env.pop("WAYLAND_DISPLAY", None)
        self.p = subprocess.Popen([sys.executable, "-m", "torchkeeper", "run", *args],
                                  env=env, stdin=subprocess.DEVNULL, stdout=self.out,
                                  stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.p.pid)
        self.home = home

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def wait_started(self, tail: EventTail, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise SystemExit(f"the agent exited ({self.p.returncode}); see {self.out.name}")
            if any(e["event"] == "started" for e in tail.read()):
                return
            time.sleep(0.05)
        raise SystemExit("the agent did not log 'started'")

    def wait_quiet(self, window: float = 1.0, cpu_max: float = 0.02, timeout: float = 120) -> float:
        """Until one `window` passes in which the agent used < cpu_max CPU seconds (its
        queued checks done). Returns the seconds waited."""
        t0 = time.monotonic()
        c = self.cpu()
        while time.monotonic() - t0 < timeout:
            time.sleep(window)
            c2 = self.cpu()
            if c2 - c < cpu_max:
                return time.monotonic() - t0
            c = c2
        raise SystemExit(f"the agent never went quiet within {timeout} s")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()


def inotify_use(pid: int) -> tuple[int, int]:
    """(inotify instances, inotify watches) the process holds (Linux /proc)."""
    inst = watches = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return -1, -1
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            inst += 1
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                watches += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            pass
    return inst, watches


def inotify_limit() -> str:
    try:
        return Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
    except OSError:
        return "?"


def pip_reinstall(venv: Path, wheel: Path) -> dict:
    """One `pip install --force-reinstall --no-deps --no-index` with its timings."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    builders.pip_install(venv, wheel, force_reinstall=True)
    t1 = time.time()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    final = builders.site_packages(venv).stat().st_mtime_ns / 1e9
    return {"start": t0, "exit": t1, "final_write": final,
            "cpu_user": ru1.ru_utime - ru0.ru_utime, "cpu_sys": ru1.ru_stime - ru0.ru_stime}


def wait_repair(tail: EventTail, timeout: float) -> tuple[dict, list[dict]]:
    """The next 'repaired' event, and every agent event read so far (also those after it)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = tail.read()
        seen += batch
        for e in batch:
            if e["event"] == "repaired":
                return e, seen
            if e["event"] in ("reapply failed", "reapply unverified", "incompatible", "agent error") or (
                    e["event"] == "drift" and e.get("decision") != "re-apply"):
                raise SystemExit(f"the agent did not repair: {e}")
        time.sleep(0.01)
    raise SystemExit(f"no 'repaired' event within {timeout} s; saw {[e['event'] for e in seen]}")


def patched_venv(work: Path, home: Path, name: str, bundle_src: Path, wheel: Path,
                 venv: Path | None = None) -> Path:
    if venv is None:
        venv = builders.make_venv(work / f"venv-{name}")
        builders.pip_install(venv, wheel)
    tk(home, "target", "add", venv, "--name", name)
    tk(home, "bundle", "create", bundle_src, "--name", name)
    tk(home, "use", name)
    tk(home, "apply")
    return venv


# ----------------------------------------------------------------------------- 1. latency

def latency_case(work: Path, label: str, size_mb: int | None, rounds: int, settle: float) -> None:
    d = work / label
    wheel = builders.torch_wheel(d / "w", cache_dir=CACHE, **WIN)
    arch = builders.cudnn_archive(d / "src", version="8.9.7.29", cuda_major=12, platform="windows",
                                  cache_dir=CACHE)
    files = sorted((arch / "bin").glob("*.dll"))
    if size_mb:
        total = size_mb << 20
        for p in files:
            if p.name in SHARES:
                pad_dll(p, int(total * SHARES[p.name]), b"new" + p.name.encode())
    size = sum(p.stat().st_size for p in files)
    home = d / "home"
    venv = patched_venv(d, home, label, arch, wheel)
    say(f"\n-- {label}: bundle of {len(files)} cuDNN 8.9.7 DLLs, {human(size)}; {rounds} reinstalls "
        f"of a {wheel.stat().st_size / 1e3:,.0f} KB torch wheel (its stock cuDNN DLLs are small)")

    if size_mb:
        disk_baseline(d, files, label)

    for installer, mode in MODES:
        latency_mode(d, home, venv, wheel, label, installer, mode, rounds, settle)


def uv_reinstall(venv: Path, wheel: Path, cache: Path) -> dict:
    """`uv pip install --reinstall` of the wheel, offline, hard-linked from uv's cache."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, UV_LINK_MODE="hardlink", UV_CACHE_DIR=str(cache))
    t0 = time.time()
    subprocess.run([shutil.which("uv") or str(Path(sys.executable).parent / "uv"), "pip", "install",
                    "--python", str(builders.venv_python(venv)), "--offline", "--no-index",
                    "--find-links", str(wheel.parent), "--reinstall", "--no-deps", "-q", str(wheel)],
                   check=True, env=env, stdin=subprocess.DEVNULL)
    t1 = time.time()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    final = builders.site_packages(venv).stat().st_mtime_ns / 1e9
    return {"start": t0, "exit": t1, "final_write": final,
            "cpu_user": ru1.ru_utime - ru0.ru_utime, "cpu_sys": ru1.ru_stime - ru0.ru_stime}


def standby_ready(home: Path) -> bool:
    st = json.loads(tk(home, "status", "--json").stdout)
    return all((t.get("standby") or {}).get("state") == "ready" for t in st["targets"])


def latency_mode(d: Path, home: Path, venv: Path, wheel: Path, label: str, installer: str, mode: str,
                 rounds: int, settle: float) -> None:
    cfg = home / "config" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[agent]\nstandby = %s\n" % ("true" if mode == "standby" else "false"))
    tag = f"{label}-{installer}-{mode}"
    tail = EventTail(home)
    tail.skip_to_end()
    agent = AgentProc(home, d, tag)
    try:
        agent.wait_started(tail)
        cpu0 = agent.cpu()
        agent.wait_quiet()
        if mode == "standby":
            # the agent prepares it at its first check: what that costs it
            t0 = time.monotonic()
            while not standby_ready(home):
                if time.monotonic() - t0 > 120:
                    raise SystemExit("the standby was never ready")
                time.sleep(0.2)
            agent.wait_quiet()
            sb = json.loads(tk(home, "status", "--json").stdout)["targets"][0]["standby"]
            say(f"{tag:>18}  standby: {sb['files']} files, {human(sb['bytes'])} linked, "
                f"{human(sb['disk_bytes'])} of disk of its own while the overlay is in place; "
                f"agent CPU from start to ready {agent.cpu() - cpu0:.2f} s, RSS {human(agent.rss())}",
                summary=True)
        rows = []
        for i in range(rounds):
            before = tail.read()  # late events of the previous round, if any: counted here
            if installer == "uv":
                pip = uv_reinstall(venv, wheel, d / "uv-cache")
            else:
                pip = pip_reinstall(venv, wheel)
            ev, seen = wait_repair(tail, timeout=300)
            seen = before + seen
            time.sleep(settle)
            agent.wait_quiet()
            seen += tail.read()
            via = ev.get("via") or {}
            r = {
                "lat_final": ev["verified"] - pip["final_write"],
                "lat_exit": ev["verified"] - pip["exit"],
                "exit_after_final": pip["exit"] - pip["final_write"],
                "pip_wall": pip["exit"] - pip["start"],
                "det": ev["detected"] - pip["final_write"],
                "dec_final": ev["decided"] - pip["final_write"],
                "dec": ev["decided"] - ev["detected"],
                "app": ev["applied"] - ev["decided"],
                "ver": ev["verified"] - ev["applied"],
                "checks": sum(e["event"] == "files changed" for e in seen),
                "repairs": sum(e["event"] == "repaired" for e in seen),
                "events": sum(e.get("events", 0) for e in seen if e["event"] == "files changed"),
                "linked": via.get("standby", 0),
            }
            rows.append(r)
            print(f"  {tag} round {i + 1:2d}: final write -> verified {r['lat_final'] * 1000:7.0f} ms, "
                  f"exit -> verified {r['lat_exit'] * 1000:7.0f} ms  ({installer} {r['pip_wall']:.2f} s, "
                  f"{r['events']} file events, {r['checks']} check(s), {r['repairs']} repair(s), "
                  f"via {via})", flush=True)
            if r["checks"] != 1 or r["repairs"] != 1:
                print("      agent events (s from the final write): " + "; ".join(
                    f"{e['ts'] - pip['final_write']:+.2f} {e['event']}"
                    + (f" ({e.get('events')} events from {e['detected'] - pip['final_write']:+.2f})"
                       if e["event"] == "files changed" else "")
                    for e in seen if e["event"] != "toast"), flush=True)
    finally:
        agent.stop()

    def col(k):
        return [r[k] for r in rows]

    lf, le = col("lat_final"), col("lat_exit")
    say(f"{tag:>18}  final write -> verified   p50 {statistics.median(lf) * 1000:7.0f} ms   "
        f"p95 {pct(lf, 95) * 1000:7.0f} ms   (min {min(lf) * 1000:.0f}, max {max(lf) * 1000:.0f}; n={len(lf)}; "
        f"linked from the standby in {sum(1 for x in col('linked') if x)}/{len(rows)})", summary=True)
    say(f"{tag:>18}  exit        -> verified   p50 {statistics.median(le) * 1000:7.0f} ms   "
        f"p95 {pct(le, 95) * 1000:7.0f} ms   ({installer} exits {statistics.median(col('exit_after_final')) * 1000:.0f} ms "
        f"after its final write, median)", summary=True)
    say(f"{tag:>18}  breakdown (medians): detected-final write {statistics.median(col('det')) * 1000:+.0f} ms"
        f" | decided-detected {statistics.median(col('dec')) * 1000:.0f} ms"
        f" | applied-decided {statistics.median(col('app')) * 1000:.0f} ms"
        f" | verified-applied {statistics.median(col('ver')) * 1000:.0f} ms", summary=True)
    say(f"{tag:>18}  per reinstall: {installer} {statistics.median(col('pip_wall')):.2f} s (median), "
        f"checks {sum(col('checks'))}/{len(rows)}, re-applies {sum(col('repairs'))}/{len(rows)}", summary=True)


# (installer, repair path) side by side in one run, the same target and agent build
MODES = [("pip", "copy"), ("pip", "standby"), ("uv", "standby")]


def disk_baseline(d: Path, files: list[Path], label: str, runs: int = 3) -> None:
    """What the disk allows: cp of the bundle's files to a new folder on the same file
    system, with and without sync; plus one sha256 pass (hashlib) over them."""
    import hashlib

    cp_t, sync_t, hash_t = [], [], []
    for i in range(runs):
        dst = d / f"cp{i}"
        subprocess.run(["sync"], check=True)
        dst.mkdir()
        t0 = time.perf_counter()
        subprocess.run(["cp", *map(str, files), str(dst)], check=True)
        cp_t.append(time.perf_counter() - t0)
        subprocess.run(["sync"], check=True)
        shutil.rmtree(dst)
        subprocess.run(["sync"], check=True)
        dst.mkdir()
        t0 = time.perf_counter()
        subprocess.run(["cp", *map(str, files), str(dst)], check=True)
        subprocess.run(["sync"], check=True)
        sync_t.append(time.perf_counter() - t0)
        shutil.rmtree(dst)
        subprocess.run(["sync"], check=True)
        t0 = time.perf_counter()
        for p in files:
            with open(p, "rb") as f:
                hashlib.file_digest(f, "sha256")
        hash_t.append(time.perf_counter() - t0)
    size = sum(p.stat().st_size for p in files)
    say(f"{label:>6}  disk baseline ({human(size)}, page cache warm, median of {runs}): "
        f"cp {statistics.median(cp_t) * 1000:.0f} ms | cp + sync {statistics.median(sync_t) * 1000:.0f} ms"
        f" | sha256 (hashlib) {statistics.median(hash_t) * 1000:.0f} ms", summary=True)


def part_latency(work: Path, a) -> None:
    header(f"1. repair latency: pip's final write -> overlay verified ({a.rounds} reinstalls per size)")
    say("# agent: `python -m torchkeeper run --headless` as a process, default config "
        "(quiet_seconds 0.5, max_wait_seconds 10)")
    SUMMARY.append(f"[latency] {machine_line()[2:]}")
    latency_case(work, "small", None, a.rounds, a.settle)
    latency_case(work, "1GB", a.size_mb, a.rounds, a.settle)
    say(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", summary=True)


# ----------------------------------------------------------------------------- 1b. the real thing

REAL_CACHE = Path(os.environ.get("TK_BENCH_CACHE", "~/.cache/torchkeeper-bench")).expanduser() / "wheels"
REAL_STOCK, REAL_BUNDLE = "9.24.0.43", "9.28.1.4"   # nvidia-cudnn-cu13: stock and the overlay


def real_wheel(version: str) -> Path:
    """The real nvidia-cudnn-cu13 wheel, fetched once through pip into a cache outside the repo."""
    REAL_CACHE.mkdir(parents=True, exist_ok=True)
    hit = sorted(REAL_CACHE.glob(f"nvidia_cudnn_cu13-{version}-*.whl"))
    if not hit:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux_2_27_x86_64", "--python-version", "3.11",
                        "-d", str(REAL_CACHE), f"nvidia-cudnn-cu13=={version}"], check=True)
        hit = sorted(REAL_CACHE.glob(f"nvidia_cudnn_cu13-{version}-*.whl"))
    return hit[0]


class CpuHog:
    """One busy process per core while it lasts (other work on the machine)."""

    def __init__(self, on: bool):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(os.cpu_count() or 2)] if on else []

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def part_real(work: Path, a) -> None:
    header(f"1b. the real thing: nvidia-cudnn-cu13 {REAL_STOCK} reinstalled by pip over a "
           f"{REAL_BUNDLE} overlay ({a.rounds} reinstalls per condition)")
    d = work / "real"
    stock, bundle = real_wheel(REAL_STOCK), real_wheel(REAL_BUNDLE)
    torch_whl = builders.torch_wheel(d / "w", version="2.10.0+cu130", cuda="13.0", layout="linux-nvidia",
                                     cudnn=REAL_STOCK, cache_dir=CACHE)
    venv = builders.make_venv(d / "venv")
    builders.pip_install(venv, torch_whl, stock)
    home = d / "home"
    tk(home, "target", "add", venv, "--name", "real")
    tk(home, "bundle", "create", bundle, "--name", "cudnn-9.28")
    tk(home, "use", "cudnn-9.28")
    tk(home, "apply")
    lib = builders.site_packages(venv) / "nvidia" / "cudnn" / "lib"
    size = sum(p.stat().st_size for p in lib.glob("*.so*"))
    say(f"# stock wheel {stock.stat().st_size / 1e6:.0f} MB, bundle wheel {bundle.stat().st_size / 1e6:.0f} MB; "
        f"the overlay in place: {human(size)} of cuDNN; {machine_line()[2:]}", summary=True)
    slow = slow_pip(d / "slow", 0.004)   # ~4 ms a MiB: a disk an antivirus scans
    for mode in a.standby.split(","):
        # the standby as copies (the default) or as hard links to the placed files
        (home / "config").mkdir(parents=True, exist_ok=True)
        (home / "config" / "config.toml").write_text(
            f"[agent]\nstandby_copy = {'true' if mode == 'copy' else 'false'}\n", encoding="utf-8")
        tk(home, "standby")
        for cond in a.conditions.split(","):
            real_condition(d, home, venv, stock, cond, slow, a.rounds, a.settle, mode)


def real_condition(d: Path, home: Path, venv: Path, wheel: Path, cond: str, slow: Path, rounds: int,
                   settle: float, mode: str = "copy") -> None:
    tail = EventTail(home)
    tail.skip_to_end()
    agent = AgentProc(home, d, f"real-{mode}-{cond}")
    cond_label = f"{mode}/{cond}"
    rows, false_toasts = [], 0
    try:
        agent.wait_started(tail)
        agent.wait_quiet()
        t0 = time.monotonic()
        while not standby_ready(home) and time.monotonic() - t0 < 300:
            time.sleep(0.5)
        agent.wait_quiet()
        for i in range(rounds):
            tail.read()
            hog = CpuHog(cond == "cpu-hog")
            try:
                env = builders._pip_env()
                if cond == "throttled":
                    env["PYTHONPATH"] = str(slow)
                t_start = time.time()
                subprocess.run([sys.executable, "-m", "pip", "--python", str(builders.venv_python(venv)),
                                "install", "--no-index", "--no-deps", "-q", "--force-reinstall", str(wheel)],
                               check=True, env=env)
                t_exit = time.time()
                ev, seen = wait_repair(tail, timeout=300)
            finally:
                hog.stop()
            time.sleep(settle)
            agent.wait_quiet()
            seen += tail.read()
            toasts = [e for e in seen if e["event"] == "toast"]
            false_toasts += sum(1 for e in toasts if not str(e.get("key", "")).startswith("reapplied:"))
            r = {"exit": ev["verified"] - t_exit, "last": ev["verified"] - (ev.get("last_write") or t_exit),
                 "pip": t_exit - t_start, "via": ev.get("via") or {},
                 "repairs": sum(e["event"] == "repaired" for e in seen)}
            rows.append(r)
            print(f"  {cond_label} round {i + 1:2d}: pip {r['pip']:.1f} s; exit -> verified {r['exit'] * 1000:6.0f} ms, "
                  f"last write -> verified {r['last'] * 1000:6.0f} ms; {r['repairs']} repair(s), "
                  f"{len(toasts)} toast(s), via {r['via']}", flush=True)
    finally:
        agent.stop()
    ex, la = [r["exit"] for r in rows], [r["last"] for r in rows]
    say(f"{cond_label:>16}  pip exit -> verified p50 {statistics.median(ex) * 1000:6.0f} ms  p95 "
        f"{pct(ex, 95) * 1000:6.0f} ms | last write -> verified p50 {statistics.median(la) * 1000:6.0f} ms  "
        f"p95 {pct(la, 95) * 1000:6.0f} ms | pip {statistics.median([r['pip'] for r in rows]):.1f} s | "
        f"repairs {sum(r['repairs'] for r in rows)}/{len(rows)} | toasts not 're-applied': {false_toasts} "
        f"| via standby {sum(1 for r in rows if r['via'].get('standby'))}/{len(rows)} (n={len(rows)})",
        summary=True)


# ----------------------------------------------------------------------------- 2. idle

def part_idle(work: Path, a) -> None:
    header(f"2. idle cost: {a.targets} patched targets, {a.idle_seconds:.0f} s")
    if AgentProc.display:
        say(f"# the agent runs with its tray icon on DISPLAY {AgentProc.display} (pystray, Pillow, Xlib loaded)")
    else:
        say("# the agent runs headless here (no display: no tray icon, no GUI toolkit loaded)")
    SUMMARY.append(f"[idle] {machine_line()[2:]}")
    d = work / "idle"
    wheel = builders.torch_wheel(d / "w", cache_dir=CACHE, **WIN)
    arch = builders.cudnn_archive(d / "src", version="8.9.7.29", cuda_major=12, platform="windows",
                                  cache_dir=CACHE)
    base = builders.make_venv(d / "base")
    builders.pip_install(base, wheel)
    home = d / "home"
    for i in range(a.targets):
        v = d / f"venv{i:02d}"
        shutil.copytree(base, v, symlinks=True)
        tk(home, "target", "add", v, "--name", f"app{i:02d}")
    tk(home, "bundle", "create", arch, "--name", "small")
    tk(home, "use", "small")
    tk(home, "apply")
    tk(home, "verify")
    say(f"# {a.targets} venvs (copies of one), each patched with the small cuDNN 8.9.7 bundle")

    tail = EventTail(home)
    agent = AgentProc(home, d, "idle")
    try:
        t_spawn = time.monotonic()
        agent.wait_started(tail)
        agent.wait_quiet()
        inst, watches = inotify_use(agent.p.pid)
        say(f"# start to idle (first checks done): {time.monotonic() - t_spawn:.1f} s "
            f"(CPU {agent.cpu():.2f} s)")
        say(f"agent holds {agent.ps.num_threads()} threads, {inst} inotify instances with {watches} watches "
            f"(fs.inotify.max_user_instances = {inotify_limit()} per user)", summary=True)
        c0, r0 = agent.cpu(), agent.rss()
        t0 = time.monotonic()
        rss = [r0]
        for k in range(1, int(a.idle_seconds // a.sample_seconds) + 1):
            time.sleep(max(0.0, t0 + k * a.sample_seconds - time.monotonic()))
            rss.append(agent.rss())
        time.sleep(max(0.0, t0 + a.idle_seconds - time.monotonic()))
        c1, r1 = agent.cpu(), agent.rss()
        dt = time.monotonic() - t0
        rss.append(r1)
        full = agent.ps.memory_full_info()
        evs = [e["event"] for e in tail.read()]
    finally:
        agent.stop()
    bare = bare_imports_rss(d, a)
    say(f"agent, {a.targets} targets, {dt:.0f} s idle: RSS start {r0 / 2**20:.1f} MB, max {max(rss) / 2**20:.1f} MB, "
        f"end {r1 / 2**20:.1f} MB (USS end {full.uss / 2**20:.1f} MB; {len(rss)} samples every "
        f"{a.sample_seconds:.0f} s)", summary=True)
    per_min = rss[::max(1, round(60 / a.sample_seconds))]
    say(f"# RSS each minute (MB): {' '.join(f'{r / 2**20:.1f}' for r in per_min)}")
    say(f"agent CPU in the idle window: {c1 - c0:.3f} s user+system = {(c1 - c0) / dt * 100:.3f} % of one "
        f"core ({(c1 - c0) / dt * 3600:.1f} CPU s per hour); events logged in the window: "
        f"{', '.join(sorted(set(evs))) or 'none'}", summary=True)
    say(f"bare python holding only the imports (torchkeeper.daemon.worker, watchdog.observers, "
        f"apscheduler.schedulers.background, pynvml): RSS {bare[0] / 2**20:.1f} MB at start, "
        f"{max(bare) / 2**20:.1f} MB max over {len(bare)} samples -> the agent's own cost "
        f"{(r1 - bare[-1]) / 2**20:+.1f} MB", summary=True)
    say(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", summary=True)


def bare_imports_rss(d: Path, a, samples: int = 3) -> list[int]:
    code = ("import torchkeeper.daemon.worker, watchdog.observers, apscheduler.schedulers.background, pynvml, sys, time\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=tk_env(d / "home"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        ps = psutil.Process(p.pid)
        out = [ps.memory_info().rss]
        for _ in range(samples - 1):
            time.sleep(min(a.sample_seconds, 5))
            out.append(ps.memory_info().rss)
        return out
    finally:
        p.stdin.close()
        p.wait(timeout=30)


# ----------------------------------------------------------------------------- 3. burst

def part_burst(work: Path, a) -> None:
    from kit.agentkit import burst_wheel, write_config

    header(f"3. CPU during a {a.burst_files:,}-file reinstall burst")
    SUMMARY.append(f"[burst] {machine_line()[2:]}")
    d = work / "burst"
    wheel = builders.torch_wheel(d / "w", cache_dir=CACHE, **WIN)
    big = burst_wheel(wheel, d / "big", a.burst_files)
    arch = builders.cudnn_archive(d / "src", version="8.9.7.29", cuda_major=12, platform="windows",
                                  cache_dir=CACHE)
    venv = builders.make_venv(d / "venv")
    t0 = time.perf_counter()
    builders.pip_install(venv, big)
    first = time.perf_counter() - t0
    home = d / "home"
    write_config(home, f"[agent]\nmax_wait_seconds = {a.burst_max_wait:g}\n")
    say(f"# config: [agent] max_wait_seconds = {a.burst_max_wait:g} - pip needs longer than the default "
        f"10 s bound for this wheel on this machine (its first install here took {first:.1f} s); with "
        f"10 s the agent would check mid-install (torch half there) and look again later")
    patched_venv(d, home, "burst", arch, big, venv=venv)
    say(f"# wheel: {big.stat().st_size / 1e6:.1f} MB, {a.burst_files:,} extra files in torch/lib "
        f"(the folder the agent watches)")

    tail = EventTail(home)
    agent = AgentProc(home, d, "burst")
    try:
        agent.wait_started(tail)
        agent.wait_quiet()
        tail.read()
        c0 = agent.ps.cpu_times()
        pip = pip_reinstall(venv, big)
        c_mid = agent.ps.cpu_times()
        ev, seen = wait_repair(tail, timeout=180)
        time.sleep(a.settle)
        agent.wait_quiet()
        c1 = agent.ps.cpu_times()
        seen += tail.read()
        t_end = time.time()
    finally:
        agent.stop()
    agent_cpu = (c1.user - c0.user) + (c1.system - c0.system)
    during = (c_mid.user - c0.user) + (c_mid.system - c0.system)
    pip_cpu = pip["cpu_user"] + pip["cpu_sys"]
    changed = [e for e in seen if e["event"] == "files changed"]
    say(f"pip --force-reinstall: {pip['exit'] - pip['start']:.1f} s wall, CPU {pip_cpu:.2f} s "
        f"(user {pip['cpu_user']:.2f}, system {pip['cpu_sys']:.2f})", summary=True)
    say(f"agent, pip start -> repaired + idle ({t_end - pip['start']:.1f} s): CPU {agent_cpu:.2f} s "
        f"(user {c1.user - c0.user:.2f}, system {c1.system - c0.system:.2f}) = {agent_cpu / pip_cpu * 100:.1f} % "
        f"of pip's; {during:.2f} s of it while pip ran", summary=True)
    say(f"file events seen {', '.join(str(e.get('events')) for e in changed) or 'none'}; checks ('files changed') "
        f"{len(changed)}; re-applies ('repaired') {sum(e['event'] == 'repaired' for e in seen)}; "
        f"final write -> verified {(ev['verified'] - pip['final_write']) * 1000:.0f} ms "
        f"(decided-detected {(ev['decided'] - ev['detected']):.1f} s)", summary=True)
    for e in changed:
        if e["ts"] - e["detected"] >= a.burst_max_wait - 0.5:
            say(f"# the {a.burst_max_wait:g} s bound fired: a check {e['ts'] - e['detected']:.1f} s after the "
                f"first event, before pip had finished (its stash still there)", summary=True)
    say("# agent events from pip's start (s): " + "; ".join(
        f"{e['ts'] - pip['start']:+.1f} {e['event']}"
        + (f" ({e.get('events')} events, first at {e['detected'] - pip['start']:+.1f})"
           if e["event"] == "files changed" else "")
        for e in seen if e["event"] != "toast") + f"; pip exited at {pip['exit'] - pip['start']:+.1f}")
    say(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", summary=True)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("latency", "real", "idle", "burst", "all"), default="all")
    ap.add_argument("--rounds", type=int, default=20, help="reinstalls per bundle size (latency)")
    ap.add_argument("--size-mb", type=int, default=1024, help="the big bundle's size in MiB (latency)")
    ap.add_argument("--standby", default="copy,link",
                    help="standby modes to run side by side (real): copy, link or both")
    ap.add_argument("--conditions", default="quiet,cpu-hog,throttled", help="real: which conditions")
    ap.add_argument("--settle", type=float, default=1.5, help="seconds to wait after a repair before the next round")
    ap.add_argument("--idle-seconds", type=float, default=600)
    ap.add_argument("--sample-seconds", type=float, default=10)
    ap.add_argument("--targets", type=int, default=20, help="targets for the idle part")
    ap.add_argument("--burst-files", type=int, default=20_000)
    ap.add_argument("--burst-max-wait", type=float, default=60,
                    help="[agent] max_wait_seconds for the burst part (default 60)")
    ap.add_argument("--display", help="X display with a tray host (e.g. Xvfb + trayer): run the "
                    "agent with its tray there instead of headless")
    ap.add_argument("--dir", help="work folder (default: a new temporary folder, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()
    AgentProc.display = a.display
    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="tk-bench-agent-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# bench_agent.py --part {a.part}; work dir {work}")
    print(machine_line(), flush=True)
    try:
        if a.part in ("real", "all"):
            part_real(work, a)
        if a.part in ("latency", "all"):
            part_latency(work, a)
        if a.part in ("burst", "all"):
            part_burst(work, a)
        if a.part in ("idle", "all"):
            part_idle(work, a)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n== summary " + "=" * 60)
    for line in SUMMARY:
        print(line)


if __name__ == "__main__":
    main()
