"""Installed CUDA toolkits, found the way a user would look for them (for ``doctor``).

A toolkit is not needed to run PyTorch (the wheels bring their own CUDA libraries), but users who
follow the manual recipe install one and copy files out of it, so ``doctor`` reports what is there:

1. ``nvcc -V`` with the ``nvcc`` on PATH ("Cuda compilation tools, release 12.4, V12.4.131");
2. ``CUDA_PATH`` and the ``CUDA_PATH_V12_4``-style variables the Windows installer sets;
3. the usual folders: Windows ``%ProgramFiles%/NVIDIA GPU Computing Toolkit/CUDA/v*``,
   Linux ``/usr/local/cuda*`` and ``/opt/cuda``.

A folder's version comes from its ``version.json`` (``cuda_cudart.version``, else ``cuda.version``)
or from ``include/cuda_runtime_api.h`` (``#define CUDART_VERSION 12040`` -> 12.4).
Nothing here raises for a missing tool or folder: it is reported in the entry's ``problem``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from .fsutil import load_json, read_text
from .records import JsonObject

NVCC_TIMEOUT = 5.0

_NVCC_RELEASE = re.compile(r"release\s+(\d+)\.(\d+)(?:\s*,\s*V(\d+(?:\.\d+)*))?")
_CUDART_DEFINE = re.compile(r"^\s*#\s*define\s+CUDART_VERSION\s+(\d+)", re.MULTILINE)
_CUDA_PATH_V = re.compile(r"^CUDA_PATH_V(\d+)_(\d+)$", re.IGNORECASE)


def _environ(env) -> dict[str, str]:
    return dict(os.environ if env is None else env)


def _major_minor(full: str) -> str | None:
    m = re.match(r"\s*(\d+)\.(\d+)", full)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def read_toolkit_version(root) -> tuple[str, str | None] | None:
    """(major.minor, full version or None) for a toolkit folder, or None when it has no version info.

    ``version.json``: ``cuda_cudart.version`` ('12.4.127'), else ``cuda.version`` ('12.4.1');
    otherwise ``include/cuda_runtime_api.h`` (also under ``targets/*/include``): only major.minor.
    Unreadable or malformed files are skipped, never raised.
    """
    root = Path(root)
    try:
        data = load_json(root / "version.json")
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        for key in ("cuda_cudart", "cuda"):
            entry = data.get(key)
            full = entry.get("version") if isinstance(entry, dict) else None
            if isinstance(full, str) and _major_minor(full):
                return _major_minor(full), full.strip()

    headers = [root / "include" / "cuda_runtime_api.h"]
    headers += [Path(p) for p in sorted(glob.glob(str(root / "targets" / "*" / "include" / "cuda_runtime_api.h")))]
    for header in headers:
        try:
            text = read_text(header, errors="replace")   # a regular file only (a FIFO: OSError)
        except OSError:
            continue
        m = _CUDART_DEFINE.search(text)
        if m:
            v = int(m.group(1))
            return f"{v // 1000}.{(v % 1000) // 10}", None
    return None


def _run_nvcc(nvcc: str, env: dict[str, str], timeout: float) -> tuple[int | None, str, str | None]:
    """(returncode, output, problem). Kills the whole process group on timeout (a wrapper script's
    children would otherwise keep the pipes open and the wait going)."""
    posix = os.name != "nt"
    try:
        proc = subprocess.Popen([nvcc, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace",
                                start_new_session=posix)
    except OSError as e:
        return None, "", f"cannot run {nvcc}: {e}"
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out or "", None
    except subprocess.TimeoutExpired:
        try:
            if posix:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except OSError:
            pass
        try:
            proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            for pipe in (proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()
            proc.wait(timeout=2)
        return None, "", f"`{nvcc} -V` did not finish in {timeout:g} s"


def nvcc_version(env=None, timeout: float = NVCC_TIMEOUT) -> JsonObject | None:
    """What ``nvcc -V`` says, for the ``nvcc`` on ``env``'s PATH (default: os.environ).

    Returns None when no nvcc is on PATH (a normal state: most users have no toolkit). Otherwise
    ``{"path", "version", "full_version", "root", "problem"}``: version '12.4' and full_version
    '12.4.131' from "release 12.4, V12.4.131"; root is the toolkit folder above ``bin/nvcc`` when it
    has version info (None for a wrapper script elsewhere); problem is None, or why the version is
    missing (nvcc failed, timed out after ``timeout`` seconds, or printed no release line).
    """
    env = _environ(env)
    nvcc = shutil.which("nvcc", path=env.get("PATH", ""))
    if nvcc is None:
        return None
    real = Path(nvcc).resolve()
    root = real.parent.parent if real.parent.name.lower() == "bin" else None
    if root is not None and read_toolkit_version(root) is None:
        root = None
    info = {"path": str(real), "version": None, "full_version": None,
            "root": str(root) if root else None, "problem": None}

    rc, out, problem = _run_nvcc(nvcc, env, timeout)
    if problem:
        info["problem"] = problem
        return info
    m = _NVCC_RELEASE.search(out)
    if m:
        info["version"] = f"{m.group(1)}.{m.group(2)}"
        info["full_version"] = m.group(3) or info["version"]
    if rc != 0:
        last = out.strip().splitlines()[-1] if out.strip() else ""
        info["problem"] = f"`nvcc -V` exited with {rc}" + (f": {last}" if last else "")
    elif not m:
        info["problem"] = "`nvcc -V` printed no 'release X.Y' line"
    return info


def usual_roots(env=None, windows: bool | None = None) -> list[str]:
    """Glob patterns of the usual install folders (Windows when ``windows``, default: this OS)."""
    env = _environ(env)
    if windows is None:
        windows = os.name == "nt"
    if windows:
        pf = next((v for k, v in env.items() if k.upper() == "PROGRAMFILES"), None) or r"C:\Program Files"
        return [os.path.join(pf, "NVIDIA GPU Computing Toolkit", "CUDA", "v*")]
    return ["/usr/local/cuda*", "/opt/cuda"]


def _key(path: Path) -> str:
    try:
        path = path.resolve()
    except OSError:
        pass
    return os.path.normcase(str(path))


def find_toolkits(env=None, roots=None) -> list[JsonObject]:
    """Every CUDA toolkit a user could find, one entry per folder.

    Order: nvcc's, CUDA_PATH's, the CUDA_PATH_V*_* ones (newest first), then the usual locations.

    ``env``: environment to read PATH/CUDA_PATH* from (default os.environ).
    ``roots``: folders or glob patterns for the usual locations (default :func:`usual_roots`).

    Each entry: ``path`` (resolved folder; for an nvcc outside any toolkit folder, the nvcc),
    ``version`` ('12.4' or None), ``full_version`` ('12.4.127' or None), ``source`` (the first of
    "nvcc", "CUDA_PATH", "CUDA_PATH_V12_4", "usual location" that found it), ``sources`` (all of them,
    in that order) and ``problem`` (None, or e.g. that CUDA_PATH names a missing folder). Entries
    are deduplicated by resolved path. An nvcc that is a wrapper script outside the toolkit (as
    ``/usr/local/bin/nvcc`` running ``exec /usr/local/cuda-13.0/bin/nvcc``) gets its own entry.
    """
    env = _environ(env)
    found: dict[str, JsonObject] = {}
    order: list[str] = []

    def add(path: Path, source: str, version=None, full=None, problem=None):
        key = _key(path)
        if key in found:
            if source not in found[key]["sources"]:
                found[key]["sources"].append(source)
            return
        if version is None:
            if not path.exists():
                problem = problem or f"{source} points to a missing folder"
            elif path.is_dir():
                got = read_toolkit_version(path)
                if got:
                    version, full = got
                else:
                    problem = problem or "no version.json or include/cuda_runtime_api.h: not a CUDA toolkit?"
            elif source != "nvcc":
                problem = problem or f"{source} points to a file, not a folder"
        try:
            shown = str(path.resolve()) if path.exists() else str(path)
        except OSError:
            shown = str(path)
        found[key] = {"path": shown, "version": version, "full_version": full,
                      "source": source, "sources": [source], "problem": problem}
        order.append(key)

    nvcc = nvcc_version(env)
    if nvcc is not None:
        add(Path(nvcc["root"] or nvcc["path"]), "nvcc", nvcc["version"], nvcc["full_version"],
            nvcc["problem"])

    for k, v in env.items():
        if k.upper() == "CUDA_PATH" and v:
            add(Path(v), "CUDA_PATH")

    versioned = []
    for k, v in env.items():
        m = _CUDA_PATH_V.match(k)
        if m and v:
            versioned.append(((int(m.group(1)), int(m.group(2))), v))
    for (major, minor), v in sorted(versioned, reverse=True):
        add(Path(v), f"CUDA_PATH_V{major}_{minor}")

    for pattern in usual_roots(env) if roots is None else roots:
        pattern = str(pattern)
        magic = any(c in pattern for c in "*?[")
        matches = sorted(glob.glob(pattern)) if magic else [pattern]
        for match in matches:
            p = Path(match)
            if p.is_dir():
                add(p, "usual location")

    return [found[k] for k in order]
