"""``torchkeeper discover``: find the torch installs of the usual Stable Diffusion apps.

A bounded breadth-first walk with ``os.scandir``: symlinked folders (and Windows
junctions) are never followed, depth is limited, folders that cannot hold an app's
Python but can be huge (``.git``, ``node_modules``, caches, model and output folders,
``site-packages``) are skipped, and once a folder is recognised as a Python env its
insides (``Lib``, ``lib/pythonX.Y``, ``Scripts``, ``pkgs``, ...) are not walked; only
folders that may hold further envs (a conda base's ``envs``) are.

An env is recognised by its markers (``pyvenv.cfg``, ``conda-meta/``, ``python.exe``,
``Lib/site-packages``, ``lib/python3*/site-packages``), whatever OS runs the walk, and
then resolved with :func:`torchkeeper.target.resolve`; an env without torch is skipped.
"""

from __future__ import annotations

import os
import string
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import target, versions
from ..errors import NotFound, TKError, UsageError

# Folder names (lower case) never walked into, wherever they are.
SKIP_NAMES = frozenset({
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".cache", ".npm", ".cargo",
    ".rustup", ".gradle", ".m2", ".nuget", ".yarn", ".pnpm-store", ".ipynb_checkpoints",
    "$recycle.bin", "system volume information", ".trash", ".trashes",
    "site-packages", "dist-packages",
    # an app's data, never its Python
    "models", "outputs", "output", "embeddings", "checkpoints", "loras", "datasets", "wandb",
})
# Folder paths (lower case, '/' separators) never walked into: checked by their last parts.
SKIP_SUFFIXES = ("/appdata/local/temp", "/appdata/local/packages", "/library/caches",
                 "/.local/share/trash", "/go/pkg")
_SUFFIX_LAST = frozenset(s.rpartition("/")[2] for s in SKIP_SUFFIXES)
# Folder names skipped only directly under a filesystem root ("C:\\Windows", "/proc").
SKIP_AT_TOP = frozenset({"windows", "proc", "sys", "dev", "run"})
# Inside a recognised env: its own Python, libraries and package cache.
ENV_INSIDES = frozenset({
    "lib", "lib64", "scripts", "bin", "include", "share", "pkgs", "conda-meta", "library",
    "dlls", "libs", "tcl", "tools", "etc", "man", "ssl", "doc", "docs", "sbin", "var",
    "condabin", "compiler_compat", "x86_64-conda-linux-gnu", "x86_64-conda_cos6-linux-gnu",
    "aarch64-conda-linux-gnu", "mkspecs", "plugins", "qml", "translations", "resources",
    "sip", "info", "shell", "licensing", "menu", "locks",
})
_MARKERS = ("pyvenv.cfg", "conda-meta", "python.exe", "lib")
_EMBEDDED = frozenset({"python_embeded", "python_embedded"})
_CONDA_HOMES = frozenset({"anaconda3", "anaconda", "miniconda3", "miniconda", "miniforge3",
                          "miniforge", "mambaforge", "micromamba", ".conda", ".mamba"})
_APP_PARENTS = 3  # how many folders above an env may name its app

APPS = ("AUTOMATIC1111", "Forge", "kohya_ss", "ComfyUI portable", "ComfyUI", "SD.Next",
        "InvokeAI", "Fooocus", "conda", "venv")


@dataclass
class Found:
    path: Path            # the env folder a user would name (venv root, python_embeded, conda env)
    site_packages: Path
    app: str              # one of APPS
    torch_version: str | None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "site_packages": str(self.site_packages),
                "app": self.app, "torch_version": self.torch_version}


class Discovery(list):
    """The list of :class:`Found`, plus how the walk went (``timed_out`` when it stopped
    at the deadline: what was found so far is returned)."""

    timed_out: bool = False
    dirs_scanned: int = 0
    elapsed_s: float = 0.0


def default_roots() -> list[Path]:
    """The user's home, and on Windows every existing drive root."""
    roots = [Path.home()]
    if os.name == "nt":
        roots += [Path(f"{c}:\\") for c in string.ascii_uppercase if os.path.exists(f"{c}:\\")]
    return roots


def _norm(p: str) -> str:
    return os.path.normcase(p).replace("\\", "/").rstrip("/")


def _is_walkable_dir(entry: os.DirEntry) -> bool:
    """A real folder: not a symlink, not a Windows junction."""
    try:
        if not entry.is_dir(follow_symlinks=False):
            return False
        if os.name == "nt":  # junctions count as dirs above; their reparse tag gives them away
            junction = getattr(entry, "is_junction", None)
            if junction is not None:
                return not junction()
            return getattr(entry.stat(follow_symlinks=False), "st_reparse_tag", 0) != 0xA0000003
        return True
    except OSError:
        return False


def _is_env(path: str, markers: dict[str, os.DirEntry]) -> bool:
    if "pyvenv.cfg" in markers or "conda-meta" in markers or "python.exe" in markers:
        return True
    lib = markers.get("lib")
    if lib is None:
        return False
    if os.path.isdir(os.path.join(lib.path, "site-packages")):   # Windows layout: Lib/site-packages
        return True
    try:
        with os.scandir(lib.path) as it:
            return any(e.name.startswith("python3") and os.path.isdir(os.path.join(e.path, "site-packages"))
                       for e in it)
    except OSError:
        return False


def _own_site_packages(env: str) -> Path | None:
    """The env's own site-packages with torch, or None: not one that resolve() finds in an
    app sub-folder (``venv``, ...) that the walk reaches by itself."""
    try:
        sp = target.resolve(env)
    except (TKError, OSError):
        return None
    try:
        rel = sp.relative_to(Path(env).resolve())
    except (ValueError, OSError):
        return None
    if rel.parts and rel.parts[0].lower() != "lib":
        return None
    return sp


def _app_key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def _app_from_name(name: str, embedded: bool) -> str | None:
    k = _app_key(name)
    if "forge" in k:
        return "Forge"
    if "kohya" in k:
        return "kohya_ss"
    if "comfy" in k:
        return "ComfyUI portable" if embedded else "ComfyUI"
    if "sdnext" in k or k == "automatic":
        return "SD.Next"
    if "invoke" in k:
        return "InvokeAI"
    if "fooocus" in k:
        return "Fooocus"
    if "stablediffusionwebui" in k or "sdwebui" in k or "automatic1111" in k or k == "a1111":
        return "AUTOMATIC1111"
    return None


def app_for(env: Path, conda: bool = False) -> str:
    """Name the app an env belongs to, from the folders above it."""
    if conda and (env.parent.name.lower() == "envs" or env.name.lower() in _CONDA_HOMES):
        return "conda"
    embedded = env.name.lower() in _EMBEDDED
    for parent in list(env.parents)[:_APP_PARENTS]:
        app = _app_from_name(parent.name, embedded)
        if app:
            return app
    return "conda" if conda else "venv"


def discover(roots: list[Path] | None = None, *, max_depth: int = 6,
             deadline_s: float = 10.0) -> list[Found]:
    """Torch installs under ``roots`` (default: :func:`default_roots`), sorted by path.

    Returns a :class:`Discovery` (a list); its ``timed_out`` is set when the walk stopped
    at ``deadline_s`` with what it had found so far. An explicit root that does not exist
    raises NotFound; an unreadable folder is skipped silently.
    """
    start = time.monotonic()
    end = start + deadline_s
    explicit = roots is not None
    queue: deque[tuple[str, int]] = deque()
    root_keys = set()
    for r in (roots if explicit else default_roots()):
        p = os.path.abspath(os.path.expanduser(str(r)))
        if not os.path.isdir(p):
            if not explicit:
                continue
            if os.path.exists(p):
                raise UsageError(f"{p} is a file, not a folder", "give folders to search")
            raise NotFound(f"{p} does not exist", "give folders to search, or none for the defaults")
        key = _norm(p)
        if key not in root_keys:
            root_keys.add(key)
            queue.append((p, 0))

    out = Discovery()
    seen_sp: set[Path] = set()
    while queue:
        if time.monotonic() > end:
            out.timed_out = True
            break
        path, depth = queue.popleft()
        markers: dict[str, os.DirEntry] = {}
        subdirs: list[os.DirEntry] = []
        try:
            with os.scandir(path) as it:
                for e in it:
                    low = e.name.lower()
                    if low in _MARKERS:
                        markers[low] = e
                    if depth < max_depth and _is_walkable_dir(e):
                        subdirs.append(e)
        except OSError:     # permission denied, vanished, not a folder any more
            continue
        out.dirs_scanned += 1

        env = bool(markers) and _is_env(path, markers)
        if env:
            sp = _own_site_packages(path)
            if sp is not None and sp not in seen_sp:
                seen_sp.add(sp)
                p = Path(path)
                v, _ = versions.torch_version_py(sp / "torch" / "version.py")
                out.append(Found(p, sp, app_for(p, conda="conda-meta" in markers), v))

        at_top = os.path.dirname(path) == path
        for e in subdirs:
            low = e.name.lower()
            if low in SKIP_NAMES or low.startswith("program files") or (env and low in ENV_INSIDES):
                continue
            if at_top and low in SKIP_AT_TOP:
                continue
            if low in _SUFFIX_LAST and _norm(e.path).lower().endswith(SKIP_SUFFIXES):
                continue
            if len(root_keys) > 1 and _norm(e.path) in root_keys:   # walked from that root
                continue
            queue.append((e.path, depth + 1))

    out.sort(key=lambda f: f.path)
    out.elapsed_s = time.monotonic() - start
    return out
