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

The launchers most users install through (Stability Matrix, Pinokio, ComfyUI Desktop, Fooocus,
SwarmUI) are known by their layouts, and where a launcher records its folder in a config file
(:func:`launcher_folders`), that folder is searched too and its installs are named after it.
"""

from __future__ import annotations

import os
import string
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import target, versions
from ..errors import NotFound, TKError, UsageError
from .records import JsonObject
from ..i18n import _

# Folder names (lower case) never walked into, wherever they are.
SKIP_NAMES = frozenset({
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".cache", ".npm", ".cargo",
    ".rustup", ".gradle", ".m2", ".nuget", ".yarn", ".pnpm-store", ".ipynb_checkpoints",
    "$recycle.bin", "system volume information", ".trash", ".trashes",
    "site-packages", "dist-packages",
    "uv-cache",     # ComfyUI Desktop's uv cache beside its .venv: every wheel it ever unpacked
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
# A Pinokio home (pinokiod kernel/environment.js: its ENVIRONMENT file, api/ the apps) keeps
# pip, Hugging Face and temp caches in cache/ (deep hashed trees) and logs in logs/.
_PINOKIO_MARKERS = frozenset({"environment", "api"})
_PINOKIO_SKIP = frozenset({"cache", "logs"})

APPS = ("AUTOMATIC1111", "Forge", "kohya_ss", "ComfyUI portable", "ComfyUI", "SD.Next",
        "InvokeAI", "Fooocus", "SwarmUI", "ComfyUI Desktop", "conda", "venv")
# Installs made by Stability Matrix or Pinokio are named "<app> (Stability Matrix)" and
# "<app> (Pinokio)", <app> being one of APPS where it is known, else the package's folder.
SM, PINOKIO = "Stability Matrix", "Pinokio"


@dataclass
class Found:
    path: Path            # the env folder a user would name (venv root, python_embeded, conda env)
    site_packages: Path
    app: str              # one of APPS, or "<app> (Stability Matrix)" / "<app> (Pinokio)"
    torch_version: str | None

    def to_dict(self) -> JsonObject:
        return {"path": str(self.path), "site_packages": str(self.site_packages),
                "app": self.app, "torch_version": self.torch_version}


class Discovery(list):
    """The list of :class:`Found`, plus how the walk went (``timed_out`` when it stopped
    at the deadline: what was found so far is returned)."""

    timed_out: bool = False
    dirs_scanned: int = 0
    elapsed_s: float = 0.0
    notes: list[str]      # launcher config files that could not be used, one line each

    def __init__(self, *args):
        super().__init__(*args)
        self.notes = []


@dataclass
class Launchers:
    """Folders that launchers record in their config files (see :func:`launcher_folders`)."""

    sm_libraries: list[Path] = field(default_factory=list)     # Stability Matrix data folders
    comfy_desktop: list[Path] = field(default_factory=list)    # ComfyUI Desktop base paths
    pinokio_homes: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _sm_settings: JsonObject = field(default_factory=dict, repr=False)

    def roots(self) -> list[Path]:
        return [*self.sm_libraries, *self.comfy_desktop, *self.pinokio_homes]

    def has(self, kind: list[Path], path: Path) -> bool:
        key = _norm(str(path))
        return any(_norm(str(p)) == key for p in kind)


def default_roots() -> list[Path]:
    """The user's home, and on Windows every existing drive root."""
    roots = [Path.home()]
    if os.name == "nt":
        roots += [Path(f"{c}:\\") for c in string.ascii_uppercase if os.path.exists(f"{c}:\\")]
    return roots


def _norm(p: str) -> str:
    return os.path.normcase(p).replace("\\", "/").rstrip("/")


# --- launcher config files ----------------------------------------------------------------

def _config_dirs(home: Path, env) -> list[Path]:
    """Where Electron's ``app.getPath('appData')`` and .NET's ApplicationData point."""
    if os.name == "nt":
        dirs = [env.get("APPDATA"), home / "AppData" / "Roaming"]
    elif sys.platform == "darwin":   # unverified which one .NET uses on macOS: both are read
        dirs = [home / "Library" / "Application Support", env.get("XDG_CONFIG_HOME"), home / ".config"]
    else:
        dirs = [env.get("XDG_CONFIG_HOME"), home / ".config"]
    out: list[Path] = []
    for d in dirs:
        if d and not any(_norm(str(d)) == _norm(str(o)) for o in out):
            out.append(Path(d))
    return out


def _read_json(path: Path, notes: list[str]):
    """The JSON object in ``path``; None when it is missing, or unreadable or not a JSON
    object (then with a note: a broken launcher config must not stop discover)."""
    from .fsutil import parse_json, read_text

    try:
        text = read_text(path, encoding="utf-8-sig")   # a regular file of at most 4 MiB
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        notes.append(f"ignored {path}: cannot read it ({e.strerror if isinstance(e, OSError) else e})")
        return None
    try:
        obj = parse_json(text)                         # 100,000 nested brackets: a ValueError
    except ValueError as e:
        notes.append(f"ignored {path}: not valid JSON ({e})")
        return None
    if not isinstance(obj, dict):
        notes.append(f"ignored {path}: not a JSON object")
        return None
    return obj


def _folder_from(path: Path, obj, key: str, notes: list[str]) -> Path | None:
    """``obj[key]`` as an existing folder: a stale entry (the folder was deleted) is skipped
    quietly, a value that is not a path gets a note."""
    if obj is None or obj.get(key) in (None, ""):
        return None
    val = obj[key]
    if not isinstance(val, str):
        notes.append(f"ignored {path}: its \"{key}\" is not a folder path")
        return None
    p = Path(os.path.expanduser(val))
    return p if p.is_absolute() and p.is_dir() else None


def launcher_folders(home: Path | None = None, env=None) -> Launchers:
    """The folders Stability Matrix, ComfyUI Desktop and Pinokio record in their config files.

    Bad JSON, or a value that is not a path, is ignored with a note in ``notes``.
    """
    home = Path.home() if home is None else home
    env = os.environ if env is None else env
    out = Launchers()
    cfg_dirs = _config_dirs(home, env)

    # Stability Matrix (StabilityMatrix.Core/Helper/Compat.cs: AppDataHome is
    # $STABILITY_MATRIX_APPDATAHOME or <ApplicationData>/StabilityMatrix;
    # Services/SettingsManager.cs TryFindLibrary(): portable mode is <exe dir>/Data with a
    # Data/.sm-portable marker, else library.json's "LibraryPath"
    # (Models/Settings/LibrarySettings.cs); Avalonia SelectDataDirectoryViewModel: the
    # default data folder is AppDataHome itself on Windows, ~/StabilityMatrix on Linux).
    sm_homes = [Path(env["STABILITY_MATRIX_APPDATAHOME"])] if env.get("STABILITY_MATRIX_APPDATAHOME") \
        else [d / "StabilityMatrix" for d in cfg_dirs]
    for sm_home in sm_homes:
        lib_json = sm_home / "library.json"
        lib = _folder_from(lib_json, _read_json(lib_json, out.notes), "LibraryPath", out.notes)
        for cand in (lib, sm_home):
            if cand is not None and (cand / "Packages").is_dir() and not out.has(out.sm_libraries, cand):
                out.sm_libraries.append(cand)

    # ComfyUI Desktop (Comfy-Org/desktop src/store/desktopConfig.ts: an electron-store
    # config.json in app.getPath('userData'), i.e. <appData>/ComfyUI (package.json
    # productName); src/store/desktopSettings.ts: its "basePath" is the user's ComfyUI folder).
    for d in cfg_dirs:
        cfg = d / "ComfyUI" / "config.json"
        base = _folder_from(cfg, _read_json(cfg, out.notes), "basePath", out.notes)
        if base is not None and not out.has(out.comfy_desktop, base):
            out.comfy_desktop.append(base)

    # Pinokio (pinokiod kernel/store.js: ~/.pinokio/config.json; kernel/index.js init():
    # the home is its "home", else $PINOKIO_HOME).
    cfg = home / ".pinokio" / "config.json"
    pin = _folder_from(cfg, _read_json(cfg, out.notes), "home", out.notes)
    if pin is None and env.get("PINOKIO_HOME") and os.path.isdir(env["PINOKIO_HOME"]):
        pin = Path(env["PINOKIO_HOME"])
    if pin is not None:
        out.pinokio_homes.append(pin)
    return out


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
    if "swarm" in k:
        return "SwarmUI"
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


def _sm_package_names(lib: Path, launchers: Launchers) -> dict[str, str]:
    """Package folder (lower case) -> PackageName, from the library's settings.json
    (Models/Settings/Settings.cs InstalledPackages; Models/InstalledPackage.cs: LibraryPath is
    "Packages/<folder>" relative to the library, PackageName the package's own name)."""
    key = _norm(str(lib))
    if key not in launchers._sm_settings:
        names: dict[str, str] = {}
        obj = _read_json(lib / "settings.json", launchers.notes) or {}
        pkgs = obj.get("InstalledPackages")
        for p in pkgs if isinstance(pkgs, list) else ():
            if isinstance(p, dict) and isinstance(p.get("LibraryPath"), str) and isinstance(p.get("PackageName"), str):
                names[p["LibraryPath"].replace("\\", "/").rstrip("/").rpartition("/")[2].lower()] = p["PackageName"]
        launchers._sm_settings[key] = names
    return launchers._sm_settings[key]


def _stability_matrix_app(env: Path, launchers: Launchers) -> str | None:
    """<library>/Packages/<package>/venv (Models/Packages/BaseGitPackage.cs SetupVenv(): the
    venv is "venv" in the package folder), the library being a known Stability Matrix data
    folder: from its config, portable (Data/.sm-portable), with its settings.json, or named so."""
    pkg = env.parent
    lib = pkg.parent.parent
    if env.name.lower() != "venv" or pkg.parent.name.lower() != "packages":
        return None
    if not (launchers.has(launchers.sm_libraries, lib) or (lib / ".sm-portable").is_file()
            or (lib / "settings.json").is_file()
            or "stabilitymatrix" in _app_key(lib.name) or "stabilitymatrix" in _app_key(lib.parent.name)):
        return None
    package = _sm_package_names(lib, launchers).get(pkg.name.lower())
    app = _app_from_name(package or "", False) or _app_from_name(pkg.name, False) or package or pkg.name
    return f"{app} ({SM})"


def _pinokio_app(env: Path, launchers: Launchers) -> str | None:
    """An env under <home>/api/<app>/ (pinokiod kernel/shell.js activate(): a script's venv or
    conda env is path.resolve(<its cwd>, <venv>), the cwd being the app folder or a folder in
    it such as app/; kernel/environment.js: a Pinokio home holds an ENVIRONMENT file)."""
    ups = list(env.parents)[:5]
    for i, p in enumerate(ups[1:], start=1):
        if p.name.lower() != "api":
            continue
        home = p.parent
        if launchers.has(launchers.pinokio_homes, home) or "pinokio" in home.name.lower() \
                or (home / "ENVIRONMENT").is_file():
            folder = ups[i - 1].name
            name = folder[:-4] if folder.lower().endswith(".git") else folder
            return f"{_app_from_name(name, False) or name} ({PINOKIO})"
    return None


def _is_comfy_desktop(env: Path, launchers: Launchers) -> bool:
    """<basePath>/.venv (Comfy-Org/desktop src/virtualEnvironment.ts: venvPath is
    <basePath>/.venv, made by `uv venv`, and its uv cache is <basePath>/uv-cache); ComfyUI's
    code lives in the app, so a folder with main.py is a ComfyUI checkout, not Desktop's."""
    if env.name.lower() != ".venv":
        return False
    base = env.parent
    if launchers.has(launchers.comfy_desktop, base):
        return True
    return not (base / "main.py").exists() and (base / "uv-cache").is_dir()


def _launcher_app(env: Path, launchers: Launchers) -> str | None:
    app = _pinokio_app(env, launchers) or _stability_matrix_app(env, launchers)
    if app:
        return app
    # SwarmUI src/Utils/PythonLaunchHelper.cs LaunchGeneric(): its ComfyUI backend's Python is
    # dlbackend/comfy/python_embeded (Windows) or dlbackend/ComfyUI/venv
    # (launchtools/comfy-install-linux.sh), under the SwarmUI folder.
    if any(p.name.lower() == "dlbackend" for p in list(env.parents)[:2]):
        return "SwarmUI"
    if _is_comfy_desktop(env, launchers):
        return "ComfyUI Desktop"
    # Fooocus build_launcher.py: the Windows package is <root>/python_embeded beside the
    # <root>/Fooocus checkout (run.bat: .\python_embeded\python.exe -s Fooocus\entry_with_update.py).
    if env.name.lower() in _EMBEDDED and (env.parent / "Fooocus").is_dir():
        return "Fooocus"
    return None


def app_for(env: Path, conda: bool = False, launchers: Launchers | None = None) -> str:
    """Name the app an env belongs to: from its launcher's layout, else the folders above it."""
    app = _launcher_app(env, launchers or Launchers())
    if app:
        return app
    if conda and (env.parent.name.lower() == "envs" or env.name.lower() in _CONDA_HOMES):
        return "conda"
    embedded = env.name.lower() in _EMBEDDED
    for parent in list(env.parents)[:_APP_PARENTS]:
        app = _app_from_name(parent.name, embedded)
        if app:
            return app
    return "conda" if conda else "venv"


def _start_folders(roots, explicit: bool) -> list[str]:
    """The roots as absolute folders; a default one that is not there is dropped, an explicit
    one is an error."""
    out = []
    for r in roots:
        p = os.path.abspath(os.path.expanduser(str(r)))
        if not os.path.isdir(p):
            if not explicit:
                continue
            if os.path.exists(p):
                raise UsageError(_("%(p)s is a file, not a folder") % {"p": p}, _("give folders to search"))
            raise NotFound(_("%(p)s does not exist") % {"p": p}, _("give folders to search, or none for the defaults"))
        out.append(p)
    return out


def _worth_walking(e: os.DirEntry, in_env: bool, at_top: bool, pinokio: bool, root_keys: set) -> bool:
    """Whether the walk goes into the sub-folder ``e`` (caches, system folders, an env's own
    insides, Pinokio's bin, and another root's tree are left out)."""
    low = e.name.lower()
    if low in SKIP_NAMES or low.startswith("program files") or (in_env and low in ENV_INSIDES):
        return False
    if at_top and low in SKIP_AT_TOP:
        return False
    if pinokio and low in _PINOKIO_SKIP:
        return False
    if low in _SUFFIX_LAST and _norm(e.path).lower().endswith(SKIP_SUFFIXES):
        return False
    return not (len(root_keys) > 1 and _norm(e.path) in root_keys)  # walked from that root


def discover(
    roots: list[Path] | None = None,
    *,
    max_depth: int = 6,
    deadline_s: float = 10.0,
    launchers: Launchers | None = None,
) -> list[Found]:
    """Torch installs under ``roots`` (default: :func:`default_roots` and the folders the
    launchers' config files name), sorted by path.

    Returns a :class:`Discovery` (a list); its ``timed_out`` is set when the walk stopped
    at ``deadline_s`` with what it had found so far, its ``notes`` name launcher config files
    that were ignored. An explicit root that does not exist raises NotFound; an unreadable
    folder is skipped silently. ``launchers`` defaults to :func:`launcher_folders`.
    """
    start = time.monotonic()
    end = start + deadline_s
    explicit = roots is not None
    launchers = launcher_folders() if launchers is None else launchers
    queue: deque[tuple[str, int]] = deque()
    root_keys = set()
    for p in _start_folders(roots if explicit else [*default_roots(), *launchers.roots()], explicit):
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
        pinokio = 0
        try:
            with os.scandir(path) as it:
                for e in it:
                    low = e.name.lower()
                    if low in _MARKERS:
                        markers[low] = e
                    elif low in _PINOKIO_MARKERS:
                        pinokio += 1
                    if depth < max_depth and _is_walkable_dir(e):
                        subdirs.append(e)
        except OSError:  # permission denied, vanished, not a folder any more
            continue
        out.dirs_scanned += 1

        env = bool(markers) and _is_env(path, markers)
        if env:
            sp = _own_site_packages(path)
            if sp is not None and sp not in seen_sp:
                seen_sp.add(sp)
                p = Path(path)
                v, _src = versions.torch_version_py(sp / "torch" / "version.py")
                out.append(Found(p, sp, app_for(p, conda="conda-meta" in markers, launchers=launchers), v))

        at_top = os.path.dirname(path) == path
        queue.extend(
            (e.path, depth + 1)
            for e in subdirs
            if _worth_walking(e, env, at_top, pinokio == len(_PINOKIO_MARKERS), root_keys)
        )

    out.sort(key=lambda f: f.path)
    out.notes = list(dict.fromkeys(launchers.notes))
    out.elapsed_s = time.monotonic() - start
    return out
