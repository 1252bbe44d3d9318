"""Targets: resolve a user's path to one site-packages and inspect its torch, statically.

Everything here is data that works on any OS: a Windows venv (``Lib/site-packages``,
``torch/lib/*.dll``) is inspected the same way on Linux.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from . import libs, versions
from ..errors import NotFound, UsageError
from .fsutil import atomic_write_json, load_json, parse_json, read_text, record_hash_to_hex, sha256_file
from .records import JsonObject
from ..i18n import _

# Where a file's stock hash came from (LibFile.stock_source, the plan, the overlay record).
FROM_RECORD = "RECORD"
FROM_CONDA = "conda-meta"
SEEN_BEFORE = "seen before the first overlay"  # no RECORD hash: the bytes the first overlay replaced

# Folders an app keeps its Python in, tried below a path that is not itself an env.
APP_ENV_DIRS = ("venv", ".venv", "python_embeded", "python_embedded", "system/python", "env",
                "installer_files/env", "python")


@dataclass
class LibFile:
    key: str             # name torch loads it by
    rel: str             # path relative to site-packages, '/' separators
    family: str
    member: str
    major: int
    stock_sha256: str | None  # from RECORD or conda-meta; None when neither has a hash
    stock_size: int | None
    owner: str | None    # dist-info that owns it ('torch', 'nvidia-cudnn-cu12')
    stock_source: str | None = None  # FROM_RECORD, FROM_CONDA (None: no stock hash)

    def to_dict(self) -> JsonObject:
        return dict(self.__dict__)


@dataclass
class TargetInfo:
    site_packages: Path
    platform: str                     # libs.WINDOWS or libs.LINUX: how its libraries are laid out
    torch_version: str | None
    torch_cuda: str | None            # torch.version.cuda
    cudnn_build: str | None           # the cuDNN torch ships / pins
    cudnn_build_source: str | None    # where that was read from
    libs: dict[str, LibFile] = field(default_factory=dict)
    lib_dirs: list[str] = field(default_factory=list)   # relative to site-packages
    notes: list[str] = field(default_factory=list)
    conda_prefix: str | None = None   # the conda env (its conda-meta/) holding this site-packages
    # library folders that are links to a folder outside the environment: {rel dir: real folder}
    outside: dict[str, str] = field(default_factory=dict)

    def family_keys(self, family: str, major: int | None = None) -> list[str]:
        return sorted(k for k, f in self.libs.items()
                      if f.family == family and (major is None or f.major == major))

    def dir_for_family(self, family: str, major: int) -> str | None:
        """Where torch loads this family from (for files a bundle adds beside it)."""
        for f in sorted(self.libs.values(), key=lambda f: f.member):
            if f.family == family and f.major == major:
                return f.rel.rpartition("/")[0]
        return None

    @classmethod
    def from_dict(cls, d: JsonObject) -> "TargetInfo":
        return cls(Path(d["site_packages"]), d["platform"], d["torch_version"], d["torch_cuda"],
                   d["cudnn_build"], d["cudnn_build_source"],
                   {k: LibFile(**v) for k, v in d["libs"].items()}, list(d["lib_dirs"]),
                   list(d["notes"]), d.get("conda_prefix"), dict(d.get("outside") or {}))

    def to_dict(self) -> JsonObject:
        return {
            "site_packages": str(self.site_packages),
            "platform": self.platform,
            "torch_version": self.torch_version,
            "torch_cuda": self.torch_cuda,
            "cudnn_build": self.cudnn_build,
            "cudnn_build_source": self.cudnn_build_source,
            "lib_dirs": self.lib_dirs,
            "libs": {k: v.to_dict() for k, v in sorted(self.libs.items())},
            "notes": self.notes,
            "conda_prefix": self.conda_prefix,
            "outside": self.outside,
        }


def _has_torch(sp: Path) -> bool:
    return (sp / "torch" / "version.py").is_file() or (sp / "torch" / "__init__.py").is_file()


def _posix_site_packages(root: Path) -> list[Path]:
    lib = root / "lib"
    if not lib.is_dir():
        return []
    return sorted(p / "site-packages" for p in lib.glob("python3*") if (p / "site-packages").is_dir())


def _candidates(root: Path) -> list[Path]:
    out = []
    if root.name == "torch" and (root / "version.py").is_file():
        out.append(root.parent)
    out.append(root)
    win = root / "Lib" / "site-packages"
    if win.is_dir():
        out.append(win)
    out.extend(_posix_site_packages(root))
    return out


def resolve(path: str | Path) -> Path:
    """The site-packages holding torch for a venv root, a portable python_embeded, a conda
    env, a site-packages folder, the torch folder itself, or an app folder that keeps its
    Python in one of the usual places (``venv``, ``python_embeded``, ...)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise NotFound(_("%(root)s does not exist") % {"root": root},
                       _("give the folder of a venv, a portable python_embeded, a conda env "
                         "or a site-packages folder"))
    if not root.is_dir():
        raise UsageError(_("%(root)s is a file, not a folder") % {"root": root},
                         _("give the folder of the Python environment, not a file inside it"))
    root = root.resolve()
    for base in [root] + [root / d for d in APP_ENV_DIRS]:
        if base != root and not base.is_dir():
            continue
        for sp in _candidates(base):
            if _has_torch(sp):
                return sp
    raise NotFound(_("no torch found in %(root)s") % {"root": root},
                   _("point at a Python environment with torch installed (its venv, "
                     "python_embeded or site-packages folder)"))


def _find_dist_info(sp: Path, name_rx: str) -> list[Path]:
    rx = re.compile(name_rx, re.I)
    return sorted(p for p in sp.iterdir() if p.is_dir() and p.name.endswith(".dist-info")
                  and rx.match(p.name))


def read_record(dist_info: Path, only: re.Pattern | None = None) -> dict[str, tuple[str | None, int | None]]:
    """RECORD as {relative posix path: (sha256 hex or None, size or None)}."""
    out = {}
    try:
        text = read_text(dist_info / "RECORD", 64 << 20, errors="replace")  # a FIFO: OSError, no hang
    except OSError:
        return out
    for line in text.splitlines():
        if only is not None and not only.search(line):
            continue
        # paths may be quoted CSV; the managed libraries never contain commas
        parts = line.rsplit(",", 2)
        if len(parts) != 3:
            continue
        rel, h, size = parts
        rel = rel.strip('"').replace("\\", "/")
        out[rel] = (record_hash_to_hex(h) if h else None, int(size) if size.isdigit() else None)
    return out


_LIB_LINE = re.compile(r"(?:\.dll|\.so(?:\.\d+)*),", re.I)  # DLL names in any case


def _usual_lib_dirs(sp: Path) -> list[str]:
    """torch/lib and the folders nvidia-* wheels have used so far (nvidia/<part>/lib, .../bin,
    CUDA 13's merged nvidia/cu13/bin/x86_64): relative to site-packages."""
    dirs = ["torch/lib"]
    nv = sp / "nvidia"
    if nv.is_dir():
        for pkg in sorted(nv.iterdir()):
            for sub in ("lib", "bin", "bin/x64", "bin/x86_64"):
                if (pkg / sub).is_dir():
                    dirs.append(f"nvidia/{pkg.name}/{sub}")
    return [d for d in dirs if (sp / d).is_dir()]


def _lib_dirs(sp: Path, record: dict[str, object]) -> list[Path]:
    """The folders torch loads CUDA libraries from: torch/lib (torch on Windows loads every
    DLL there, RECORD or not) and every folder where a RECORD of torch or of an nvidia-* dist
    lists a managed library (wherever a wheel puts them). Only where no nvidia-* RECORD lists
    one (installed without pip) are the usual nvidia/<part> folders searched: a folder that no
    installed dist lists is a leftover, not one torch loads from."""
    listed = {rel.rpartition("/")[0] for rel in record
              if "/" in rel and libs.parse(rel.rpartition("/")[2]) is not None}
    dirs = {"torch/lib"} | listed
    if not any(d.startswith("nvidia/") for d in listed):
        dirs.update(_usual_lib_dirs(sp))
    return [sp / d for d in sorted(dirs) if (sp / d).is_dir()]


def env_root(sp: Path) -> Path:
    """The environment a site-packages belongs to: <root>/Lib/site-packages (a Windows venv,
    python_embeded), <root>/lib/python3.X/site-packages; else the site-packages itself."""
    if sp.parent.name.lower() == "lib":
        return sp.parent.parent
    if sp.parent.name.startswith("python") and sp.parent.parent.name == "lib":
        return sp.parent.parent.parent
    return sp


def _outside(sp: Path, d: Path) -> str | None:
    """The real folder of library folder d when a link takes it outside the environment."""
    real = Path(os.path.realpath(d))
    root = Path(os.path.realpath(env_root(sp)))
    return None if real == root or root in real.parents else str(real)


def inspect(path: str | Path, cache_dir: Path | None = None) -> TargetInfo:
    """Inspect a target without importing torch.

    With cache_dir, the result is kept there with a stamp of the stat data it depends on
    (site-packages, the dist-infos' RECORD and METADATA, torch/version.py, the library
    folders and the main cuDNN file): a real torch RECORD is ~15,000 lines, and status
    with 20 targets must not parse 20 of them when nothing changed.
    """
    sp = resolve(path)
    if cache_dir is None:
        return _inspect(sp)
    cache = Path(cache_dir) / "inspect" / (sha256(str(sp).encode()).hexdigest()[:32] + ".json")
    known: list[str] = []
    try:
        data = load_json(cache)
        known = [str(d) for d in data["dirs"]]
        if data.get("stamp") == _stamp(sp, known):
            return TargetInfo.from_dict(data["info"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    # the library folders come from RECORD: stamp the usual ones and those found last time,
    # and once more with any new one the inspection finds
    dirs = sorted(set(_usual_lib_dirs(sp)) | set(known))
    for _round in range(2):
        before = _stamp(sp, dirs)
        info = _inspect(sp)
        if set(info.lib_dirs) <= set(dirs):
            break
        dirs = sorted(set(dirs) | set(info.lib_dirs))
    else:
        return info
    if _stamp(sp, dirs) == before:  # nothing changed while it was read: safe to keep
        try:
            atomic_write_json(cache, {"stamp": before, "dirs": dirs, "info": info.to_dict()},
                              durable=False)
        except OSError:
            pass
    return info


def _stamp(sp: Path, lib_dirs: list[str]) -> list:
    def st(p: Path):
        try:
            s = p.stat()
        except OSError:
            return None
        return [s.st_mtime_ns, s.st_size, s.st_ino]

    paths = [sp, sp / "torch" / "version.py", sp / "torch" / "lib", sp / "nvidia"]
    try:
        names = sorted(os.listdir(sp))
    except OSError:
        names = []
    for n in names:
        if n.endswith(".dist-info") and (n.startswith("torch-") or n.lower().startswith("nvidia")):
            paths += [sp / n / "RECORD", sp / n / "METADATA"]
    links = []
    for rel in lib_dirs:
        d = sp / rel
        paths.append(d)
        links.append(os.path.realpath(d))  # a folder swapped for a link keeps its inode
        try:
            paths += [d / n for n in os.listdir(d) if n.lower().startswith("cudnn64_")]
        except OSError:
            pass
    conda = []  # conda writes conda-meta/<pkg>.json for each package it installs
    prefix = conda_prefix(sp)
    if prefix is not None:
        meta = prefix / "conda-meta"
        conda = [meta] + [meta / n for n in sorted(os.listdir(meta)) if n.endswith(".json")]
    return ([[p.relative_to(sp).as_posix(), st(p)] for p in paths] + [[str(p), st(p)] for p in conda]
            + [links])


def _inspect(sp: Path) -> TargetInfo:
    notes: list[str] = []
    torch_meta, nvidia_meta, record, owners = _records(sp, notes)
    torch_version, torch_cuda = versions.torch_version_py(sp / "torch" / "version.py")
    torch_version = torch_version or torch_meta.get("version")
    found, lib_dirs, outside, platforms = _libraries(sp, record, owners, notes)
    prefix = conda_prefix(sp)
    if prefix is not None and any(f.stock_sha256 is None for f in found.values()):
        _conda_hashes(prefix, sp, found)
    if len(platforms) > 1:
        notes.append("both Windows and Linux libraries found; treating as " +
                     (libs.WINDOWS if (sp.parent.name == "Lib") else libs.LINUX))
    if not platforms:  # a CPU build: torch's own libraries still show the layout
        tl = sp / "torch" / "lib"
        names = [p.name.lower() for p in tl.iterdir()] if tl.is_dir() else []
        if any(n.endswith(".dll") for n in names):
            platforms = {libs.WINDOWS}
        elif any(".so" in n for n in names):
            platforms = {libs.LINUX}
    if platforms == {libs.WINDOWS} or (len(platforms) != 1 and sp.parent.name == "Lib"):
        platform = libs.WINDOWS
    else:
        platform = libs.LINUX
    cudnn_build, source = _cudnn_build(sp, platform, found, torch_meta, nvidia_meta)
    return TargetInfo(sp, platform, torch_version, torch_cuda, cudnn_build, source, found,
                      lib_dirs, notes, str(prefix) if prefix is not None else None, outside)


def _records(sp: Path, notes: list[str]) -> tuple[JsonObject, dict[str, JsonObject], dict[str, tuple], dict[str, str]]:
    """torch's METADATA, each nvidia-* wheel's METADATA (by name), and the library lines of
    their RECORDs: {rel: (sha256, size)} and {rel: the distribution that owns it}."""
    torch_meta: JsonObject = {"requires": []}
    record: dict[str, tuple] = {}
    owners: dict[str, str] = {}
    torch_dirs = _find_dist_info(sp, r"^torch-\d")
    if not torch_dirs:
        notes.append("torch has no dist-info (installed without pip?): stock hashes unknown")
    else:
        if len(torch_dirs) > 1:
            notes.append("several torch dist-info folders: " + ", ".join(d.name for d in torch_dirs))
        di = max(torch_dirs, key=lambda d: (d / "RECORD").stat().st_mtime if (d / "RECORD").exists() else 0)
        torch_meta = versions.read_metadata(di / "METADATA")
        for rel, v in read_record(di, _LIB_LINE).items():
            record[rel] = v
            owners[rel] = "torch"
    nvidia_meta = {}
    for di in _find_dist_info(sp, r"^nvidia[_-]"):
        meta = versions.read_metadata(di / "METADATA")
        name = meta.get("name") or di.name.split("-")[0]
        nvidia_meta[name.lower().replace("_", "-")] = meta
        for rel, v in read_record(di, _LIB_LINE).items():
            record[rel] = v
            owners[rel] = name
    return torch_meta, nvidia_meta, record, owners


def _libraries(sp: Path, record: dict[str, tuple], owners: dict[str, str], notes: list[str]
               ) -> tuple[dict[str, LibFile], list[str], dict[str, str], set[str]]:
    """The CUDA / cuDNN libraries torch loads, each with its RECORD hash: (by key, the folders
    that hold them, those of the folders that are links out of the environment, platforms)."""
    found: dict[str, LibFile] = {}
    lib_dirs = []
    outside = {}
    platforms = set()
    # Windows names are case-insensitive: RECORD may spell a DLL otherwise than the disk
    record_ci = {rel.lower(): rel for rel in record}
    for d in _lib_dirs(sp, record):
        rel_dir = d.relative_to(sp).as_posix()
        has = False
        for p in sorted(d.iterdir()):
            ln = libs.parse(p.name)
            if ln is None or not p.is_file():
                continue
            # libcudnn.so.9.1.0 next to libcudnn.so.9: torch loads the soname
            if ln.platform == libs.LINUX and p.name != ln.key and (d / ln.key).exists():
                continue
            rel = f"{rel_dir}/{p.name}"
            if rel not in record and ln.platform == libs.WINDOWS:
                rel_in_record = record_ci.get(rel.lower(), rel)
            else:
                rel_in_record = rel
            h, size = record.get(rel_in_record, (None, None))
            if ln.key in found:
                notes.append(f"{ln.key} found twice: {found[ln.key].rel} and {rel}; using the first")
                continue
            found[ln.key] = LibFile(ln.key, rel, ln.family, ln.member, ln.major, h, size,
                                    owners.get(rel_in_record), FROM_RECORD if h else None)
            platforms.add(ln.platform)
            has = True
        if has:
            lib_dirs.append(rel_dir)
            real = _outside(sp, d)
            if real is not None:
                outside[rel_dir] = real
    return found, lib_dirs, outside, platforms


def conda_prefix(sp: Path) -> Path | None:
    """The conda env holding site-packages sp (<env>/Lib/site-packages on Windows,
    <env>/lib/pythonX.Y/site-packages elsewhere), or None."""
    for prefix in (sp.parent.parent, sp.parent.parent.parent):
        if (prefix / "conda-meta").is_dir():
            return prefix
    return None


def _conda_hashes(prefix: Path, sp: Path, found: dict[str, LibFile]) -> None:
    """Stock hashes from conda-meta/<pkg>.json (``paths_data.paths[]``: ``_path``, ``sha256``,
    ``size_in_bytes``; paths relative to the env) for libraries no RECORD hashes. A package
    json of a real torch is a few MB: only those naming one of the files are parsed."""
    want = {}
    sp_rel = sp.relative_to(prefix).as_posix()
    for f in found.values():
        if f.stock_sha256 is None:
            want[f"{sp_rel}/{f.rel}"] = f
    names = [rel.rsplit("/", 1)[1] for rel in want]
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            text = read_text(meta, 64 << 20, errors="replace")   # a regular file, at most 64 MiB
            if not any(n in text for n in names):
                continue
            paths = parse_json(text).get("paths_data", {}).get("paths", [])
        except (OSError, ValueError, AttributeError):
            continue
        for entry in paths if isinstance(paths, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("_path"), str):
                continue
            f = want.get(entry["_path"].replace("\\", "/"))
            sha = entry.get("sha256")
            if f is None or not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                continue
            size = entry.get("size_in_bytes")
            f.stock_sha256, f.stock_source = sha, FROM_CONDA
            f.stock_size = size if isinstance(size, int) else None
            if f.owner is None:
                f.owner = meta.stem


def _cudnn_build(sp: Path, platform: str, found: dict[str, LibFile], torch_meta: JsonObject,
                 nvidia_meta: dict[str, JsonObject]) -> tuple[str | None, str | None]:
    pin = versions.pinned(torch_meta.get("requires", []), r"nvidia-cudnn(-cu\d+)?")
    if pin:
        return pin[1], f"torch METADATA pins {pin[0]}=={pin[1]}"
    for name, meta in sorted(nvidia_meta.items()):
        if re.fullmatch(r"nvidia-cudnn(-cu\d+)?", name) and meta.get("version"):
            return meta["version"], f"{name} {meta['version']} dist-info"
    cudnn = [f for f in found.values() if f.family == libs.CUDNN]
    main = [f for f in cudnn if f.member == ""]
    if platform == libs.WINDOWS and main:
        # The main cuDNN DLL (small) tells the version torch shipped, if it is still stock.
        f = main[0]
        p = sp / f.rel
        stock = f.stock_sha256 is None or (
            p.stat().st_size == f.stock_size and sha256_file(p) == f.stock_sha256)
        info = versions.pe_version(p) if stock else None
        v = versions.dotted((info or {}).get("FileVersion"))
        if v:
            return v, f"{f.key} version resource"
    if cudnn:
        return str(cudnn[0].major), f"{cudnn[0].key} file name (major only)"
    return None, None
