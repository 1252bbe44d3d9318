"""Wall time of ``discover()`` on a generated home of 100k files.

Two homes, each of exactly ``--files`` files (counted on disk after generation):

* ``typical``: files where real homes keep them: inside envs' site-packages, node_modules,
  .git, model/output folders, the launchers' caches (Pinokio's pip cache, ComfyUI Desktop's
  uv-cache), plus ~25% in ordinary folders up to 6 levels deep (all within max_depth);
* ``worst``: every file in an ordinary, walkable folder (10 files a folder).

Each holds the same few envs with torch; the script checks they are all found.
The files were just written, so the OS cache is warm: cold-cache times (first run after a
reboot, a spinning disk, a network drive) are higher.

    python bench/bench_discover.py [--files 100000] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from torchkeeper.engine.discover import Launchers, discover  # noqa: E402

VERSION_PY = "__version__ = '2.3.1+cu121'\ncuda: Optional[str] = '12.1'\n"


class Maker:
    def __init__(self, budget: int):
        self.left = budget

    def files(self, d: Path, n: int, prefix: str = "f") -> None:
        n = min(n, self.left)
        if n <= 0:
            return
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            os.close(os.open(os.path.join(d, f"{prefix}{i}"), os.O_CREAT | os.O_WRONLY, 0o644))
        self.left -= n

    def text(self, p: Path, s: str = "") -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(s)
        self.left -= 1


def make_env(m: Maker, root: Path, layout: str, extra_files: int) -> None:
    """A fake env with torch; extra_files spread over site-packages like real packages."""
    if layout == "posix":
        m.text(root / "pyvenv.cfg", "home = /usr/bin\n")
        sp = root / "lib" / "python3.10" / "site-packages"
    elif layout == "embedded":
        m.text(root / "python.exe")
        sp = root / "Lib" / "site-packages"
    else:  # conda, Windows layout
        m.text(root / "conda-meta" / "history")
        sp = root / "Lib" / "site-packages"
    m.text(sp / "torch" / "__init__.py")
    m.text(sp / "torch" / "version.py", VERSION_PY)
    per_pkg = 50
    for k in range(extra_files // per_pkg):
        m.files(sp / f"pkg{k // 20}" / f"sub{k % 20}", per_pkg)


ENVS = [("stable-diffusion-webui/venv", "posix"),
        ("AI/ComfyUI_windows_portable/python_embeded", "embedded"),
        ("AI/kohya_ss/venv", "posix"),
        ("miniconda3/envs/sd", "conda"),
        ("StabilityMatrix/Data/Packages/ComfyUI/venv", "posix"),
        ("pinokio/api/comfy.git/app/env", "posix"),
        ("Documents/ComfyUI/.venv", "posix")]


def typical(home: Path, n: int) -> None:
    m = Maker(n)
    for rel, layout in ENVS:                              # ~35%: inside envs
        make_env(m, home / rel, layout, int(n * 0.05))
    m.text(home / "pinokio" / "ENVIRONMENT")
    for i in range(256):                                  # ~10%: the launchers' caches
        m.files(home / "pinokio" / "cache" / "PIP_CACHE_DIR" / "http-v2" / f"{i // 16:x}" / f"{i % 16:x}", n // 5120)
        m.files(home / "Documents" / "ComfyUI" / "uv-cache" / "archive-v0" / f"w{i}" / "torch", n // 5120)
    for i in range(300):                                  # ~15%: node_modules
        m.files(home / "code" / "webapp" / "node_modules" / f"m{i // 10}" / f"lib{i % 10}", n // 2000)
    for i in range(256):                                  # ~8%: git objects
        m.files(home / "code" / "repo" / ".git" / "objects" / f"{i:02x}", n // 3200)
    for i in range(20):                                   # ~10%: models / outputs
        m.files(home / "stable-diffusion-webui" / "models" / f"Lora{i}", n // 400)
        m.files(home / "AI" / "ComfyUI_windows_portable" / "ComfyUI" / "output" / f"d{i}", n // 800)
    i = 0
    while m.left > 0:                                     # the rest: ordinary folders, deep
        a, b, c, d = i % 7, (i // 7) % 9, (i // 63) % 11, i // 693
        m.files(home / "Documents" / f"p{a}" / f"s{b}" / f"t{c}" / f"u{d}" / "w", 10)
        i += 1


def worst(home: Path, n: int) -> None:
    m = Maker(n)
    for rel, layout in ENVS:
        make_env(m, home / rel, layout, 0)
    i = 0
    while m.left > 0:
        a, b, c = i % 10, (i // 10) % 10, (i // 100) % 10
        m.files(home / f"d{a}" / f"e{b}" / f"f{c}" / f"g{i // 1000}", 10)
        i += 1


def count_files(root: Path) -> tuple[int, int]:
    files = dirs = 0
    for _, ds, fs in os.walk(root):
        files += len(fs)
        dirs += len(ds)
    return files, dirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where to generate (default: a temp folder, removed after)")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="tk-bench-", dir=args.dir))
    ok = True
    try:
        for name, gen in (("typical", typical), ("worst", worst)):
            home = base / name
            t = time.perf_counter()
            gen(home, args.files)
            made = time.perf_counter() - t
            files, dirs = count_files(home)
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                found = discover([home], launchers=Launchers())
                times.append(time.perf_counter() - t)
            got = sorted(f.path.relative_to(home).as_posix() for f in found)
            want = sorted(rel for rel, _ in ENVS)
            ok &= got == want and not found.timed_out
            print(f"{name:8s} files={files} dirs={dirs} (generated in {made:.1f} s): "
                  f"discover() first {times[0]:.3f} s, best {min(times):.3f} s of {args.runs}; "
                  f"scanned {found.dirs_scanned} dirs; found {len(found)} envs"
                  f"{'' if got == want else ' MISMATCH: ' + str(got)}"
                  f"{' TIMED OUT' if found.timed_out else ''}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
