"""Benchmarks for the engine: prints figures, never passes or fails.

1. `apply` of a ~1 GB bundle, against `cp` of the same files plus one sha256 pass over
   them (hashlib), in the same run: ratio (goal <= 1.5).
2. `verify --full` on that target, against a plain hashlib pass over its files (goal
   <= 1.1) and against coreutils `sha256sum`.
3. `status --json` with 20 targets, process start included (goal < 300 ms).

Usage: python bench/bench_engine.py [--size-mb 1024] [--runs 3] [--targets 20]
Needs the mingw toolchain (tests/setup-system.sh) for the real PE DLLs it starts from.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "agent"), str(REPO / "tests")]

from kit import builders  # noqa: E402

# share of the bundle's bytes per cuDNN 8 file, roughly as in the real 8.9 release
SHARES = {"cudnn_cnn_infer64_8.dll": 0.55, "cudnn_adv_infer64_8.dll": 0.12,
          "cudnn_ops_infer64_8.dll": 0.09, "cudnn_cnn_train64_8.dll": 0.08,
          "cudnn_adv_train64_8.dll": 0.08, "cudnn_ops_train64_8.dll": 0.07, "cudnn64_8.dll": 0.01}


def pad_dll(dst: Path, size: int, seed: bytes) -> None:
    """Grow a real PE DLL to `size` with overlay bytes (still readable by pefile)."""
    block = hashlib.sha256(seed).digest() * (1 << 15)  # 1 MiB of seed-specific bytes
    with open(dst, "ab") as f:
        left = size - dst.stat().st_size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def tk(home: Path, *args, check=True) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, TORCHKEEPER_HOME=str(home), TORCHKEEPER_NO_PROGRESS="1",
               PYTHONPATH=str(REPO / "agent"))
    t0 = time.perf_counter()
    cp = subprocess.run([sys.executable, "-m", "torchkeeper", *map(str, args)], env=env,
                        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if check and cp.returncode != 0:
        raise SystemExit(f"torchkeeper {args} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return dt, cp


def drop_target_copy(d: Path) -> None:
    for p in d.iterdir():
        p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", type=int, default=20)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    cache = REPO / ".tk-test-cache" / "builders"
    try:
        print(f"# machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, work dir {work}")
        total = a.size_mb << 20
        # -- a big Windows-layout target and a big bundle of the same files -------------
        wheel = builders.torch_wheel(work / "w", version="2.3.1+cu121", cuda="12.1",
                                     layout="windows", cudnn="8.8.1.3", cache_dir=cache)
        venv = builders.make_venv(work / "venv")
        builders.pip_install(venv, wheel)
        sp = builders.site_packages(venv)
        lib = sp / "torch" / "lib"
        arch = builders.cudnn_archive(work / "src", version="8.9.7.29", cuda_major=12,
                                      platform="windows", cache_dir=cache)
        for name, share in SHARES.items():
            pad_dll(lib / name, int(total * share), b"stock" + name.encode())
            pad_dll(arch / "bin" / name, int(total * share), b"new" + name.encode())
        # make RECORD match the grown stock files, as a real wheel's would
        di = next(sp.glob("torch-*.dist-info"))
        rec = (di / "RECORD").read_text().splitlines()
        out = []
        for line in rec:
            path = line.rsplit(",", 2)[0]
            if path.startswith("torch/lib/") and path.split("/")[-1] in SHARES:
                p = sp / path
                import base64
                h = base64.urlsafe_b64encode(hashlib.sha256(p.read_bytes()).digest()).rstrip(b"=").decode()
                line = f"{path},sha256={h},{p.stat().st_size}"
            out.append(line)
        (di / "RECORD").write_text("\n".join(out) + "\n")
        home = work / "home"
        tk(home, "target", "add", venv, "--name", "big")
        tk(home, "bundle", "create", arch, "--name", "big")
        tk(home, "use", "big")
        files = [arch / "bin" / n for n in SHARES]
        size = sum(p.stat().st_size for p in files)
        print(f"# bundle: {len(files)} cuDNN files, {size / 1e6:,.0f} MB (page cache warm)")

        apply_t, base_t, sync_t = [], [], []
        for _ in range(a.runs):
            dst = work / "cp"
            dst.mkdir(exist_ok=True)
            subprocess.run(["sync"], check=True)
            t0 = time.perf_counter()
            subprocess.run(["cp", *map(str, files), str(dst)], check=True)
            for p in dst.iterdir():
                with open(p, "rb") as f:
                    hashlib.file_digest(f, "sha256")
            base_t.append(time.perf_counter() - t0)
            subprocess.run(["sync"], check=True)  # the copy made durable, as apply does
            sync_t.append(time.perf_counter() - t0)
            drop_target_copy(dst)
            subprocess.run(["sync"], check=True)
            dt, _ = tk(home, "apply")
            apply_t.append(dt)
            tk(home, "revert")
        b, s, ap_ = (statistics.median(x) for x in (base_t, sync_t, apply_t))
        print(f"apply            median {ap_:.3f} s   cp+sha256 {b:.3f} s   ratio {ap_ / b:.2f}  (goal <= 1.5)"
              f"   cp+sha256+sync {s:.3f} s   ratio {ap_ / s:.2f}")

        tk(home, "apply")
        targets = [sp / "torch/lib" / n for n in SHARES]
        ver_t, hl_t, ss_t = [], [], []
        for _ in range(a.runs):
            dt, _ = tk(home, "verify", "--full")
            ver_t.append(dt)
            t0 = time.perf_counter()
            for p in targets:
                with open(p, "rb") as f:
                    hashlib.file_digest(f, "sha256")
            hl_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(["sha256sum", *map(str, targets)], check=True, capture_output=True)
            ss_t.append(time.perf_counter() - t0)
        v, h, s = (statistics.median(x) for x in (ver_t, hl_t, ss_t))
        print(f"verify --full    median {v:.3f} s   hashlib {h:.3f} s   ratio {v / h:.2f}  (goal <= 1.1)"
              f"   sha256sum {s:.3f} s   ratio {v / s:.2f}")
        print(f"verify (quick)   {tk(home, 'verify')[0]:.3f} s")

        # -- status --json with N targets --------------------------------------------------
        home2 = work / "home2"
        small = builders.torch_wheel(work / "w2", version="2.3.1+cu121", cuda="12.1",
                                     layout="windows", cudnn="8.8.1.3", cache_dir=cache)
        arch2 = builders.cudnn_archive(work / "src2", version="8.9.7.29", cuda_major=12,
                                       platform="windows", cache_dir=cache)
        for i in range(a.targets):
            spi = work / "t" / f"app{i}" / "python_embeded" / "Lib" / "site-packages"
            builders.pip_install_target(spi, small)
            tk(home2, "target", "add", spi.parents[1], "--name", f"app{i}")
        tk(home2, "bundle", "create", arch2, "--name", "small")
        tk(home2, "use", "small")
        tk(home2, "apply")
        st = [tk(home2, "status", "--json")[0] for _ in range(10)]
        t0 = time.perf_counter()
        for _ in range(10):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        py = (time.perf_counter() - t0) / 10
        print(f"status --json    {a.targets} targets: median {statistics.median(st) * 1000:.0f} ms, "
              f"max {max(st) * 1000:.0f} ms (goal < 300 ms; bare python start {py * 1000:.0f} ms)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
