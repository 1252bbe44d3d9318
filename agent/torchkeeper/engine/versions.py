"""Reading versions from what files really contain: PE resources, ELF sonames, headers,
version.json, dist-info METADATA and torch/version.py. Nothing here imports torch."""

from __future__ import annotations

import re
import os
import stat
from pathlib import Path

from .fsutil import load_json, read_file, read_head, read_text
from .records import JsonObject


# -- versions read from file contents, once per file: cached by the file's stat identity -------
# (device, inode, size, mtime, ctime): a changed file is read again; in memory for the agent, and
# in a small file in the cache folder for the CLI (status at 200 targets read 200 cuDNN DLLs'
# version resources on every call). A damaged or stale cache file is only a cache: ignored.
_CACHE_MAX = 20_000
_cache: dict[str, tuple[list, JsonObject | None]] = {}
_cache_file: Path | None = None
_dirty = False


def use_cache_file(path: Path) -> None:
    """Load the on-disk cache once per process (later calls only change where it is saved)."""
    global _cache_file
    if _cache_file is not None:
        return
    _cache_file = Path(path)
    try:
        data = load_json(_cache_file, 16 << 20, follow=False)
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    for k, v in list(data.items())[:_CACHE_MAX]:
        if isinstance(k, str) and isinstance(v, list) and len(v) == 2 and isinstance(v[0], list) \
                and all(type(x) is int for x in v[0]) and (v[1] is None or (
                    isinstance(v[1], dict) and all(isinstance(x, str) for x in v[1].values()))):
            _cache.setdefault(k, (v[0], v[1]))


def save_cache() -> None:
    """Write the cache back if anything was read anew (atomic; failures are only a slower next run)."""
    global _dirty
    if not _dirty or _cache_file is None:
        return
    from .fsutil import atomic_write_json

    items = list(_cache.items())[-_CACHE_MAX:]
    try:
        atomic_write_json(_cache_file, {k: [i, v] for k, (i, v) in items}, durable=False)
        _dirty = False
    except OSError:
        pass


def _identity(path: Path) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def pe_version(path: Path) -> JsonObject | None:
    """FileVersion / ProductName from a DLL's version resource; None when it has none.
    Read once per file (its stat identity), not once per call."""
    global _dirty
    ident = _identity(path)
    key = str(path)
    hit = _cache.get(key)
    if ident is not None and hit is not None and hit[0] == ident:
        return dict(hit[1]) if hit[1] is not None else None
    out = _pe_version(path)
    if ident is not None and _identity(path) == ident:   # unchanged while it was read
        _cache[key] = (ident, out)
        _dirty = True
    return out


class _PE:
    """pefile.PE without its gc.collect() per file (its _close_data runs a full collection:
    0.99 s of 2 s of `status` at 200 targets); made lazily (pefile is imported only here)."""
    cls = None

    @classmethod
    def get(cls):
        if cls.cls is None:
            import mmap

            import pefile

            class PE(pefile.PE):
                def _close_data(self):
                    data = self.__dict__.pop("__data__", None)
                    if isinstance(data, mmap.mmap):
                        data.close()
            cls.cls = PE
        return cls.cls


def _pe_version(path: Path) -> JsonObject | None:
    import pefile

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None   # a FIFO there would block pefile's read forever
        pe = _PE.get()(str(path), fast_load=True)   # headers only; then the resources alone
        pe.parse_data_directories(
            directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]])
    except (pefile.PEFormatError, OSError):  # gone mid-reinstall, unreadable: no version
        return None
    try:
        out = {}
        for fileinfo in getattr(pe, "FileInfo", None) or []:
            for entry in fileinfo:
                for table in getattr(entry, "StringTable", []) or []:
                    for k, v in table.entries.items():
                        out[k.decode(errors="replace")] = v.decode(errors="replace")
        fixed = getattr(pe, "VS_FIXEDFILEINFO", None)
        if fixed:
            f = fixed[0]
            out.setdefault("FileVersion", "%d.%d.%d.%d" % (
                f.FileVersionMS >> 16, f.FileVersionMS & 0xFFFF,
                f.FileVersionLS >> 16, f.FileVersionLS & 0xFFFF))
        return out or None
    finally:
        pe.close()


def dotted(version: str | None) -> str | None:
    """'6,14,11,12040' or '9.1.0.70' -> dotted string."""
    if not version:
        return None
    v = re.sub(r"\s*,\s*", ".", version.strip())
    m = re.match(r"^\d+(\.\d+)*", v)
    return m.group(0) if m else None


def cuda_version_from_product(product: str | None) -> str | None:
    """'NVIDIA CUDA 12.4.127 Runtime' -> '12.4.127'."""
    if not product:
        return None
    m = re.search(r"CUDA\s+(\d+\.\d+(?:\.\d+)?)", product)
    return m.group(1) if m else None


def elf_soname(path: Path) -> str | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag == "DT_SONAME":
                            return tag.soname
    except (ELFError, OSError, ValueError):
        return None
    return None


PE_MACHINES = {0x8664: "x64", 0xAA64: "ARM64"}    # what a 64-bit Windows torch loads
ELF_MACHINES = {62: "x86-64", 183: "AArch64"}       # e_machine of a 64-bit Linux torch's libraries


def _head(path: Path, n: int) -> bytes:
    """The first n bytes of a regular file (a FIFO, a device, a missing file: b"")."""
    try:
        return read_head(path, n)
    except OSError:
        return b""


def is_elf(path: Path) -> bool:
    """A 64-bit ELF shared object for x86-64 or AArch64 (magic, class, type and machine)."""
    h = _head(path, 20)
    return (len(h) == 20 and h[:4] == b"\x7fELF" and h[4] == 2 and h[5] == 1
            and int.from_bytes(h[16:18], "little") == 3
            and int.from_bytes(h[18:20], "little") in ELF_MACHINES)


def is_pe(path: Path) -> bool:
    """A PE image for x64 or ARM64: the DOS stub's pointer leads to "PE\\0\\0" and a machine
    type a 64-bit Windows torch can load (two bytes "MZ" are not a DLL)."""
    h = _head(path, 4096)
    if len(h) < 64 or h[:2] != b"MZ":
        return False
    off = int.from_bytes(h[0x3C:0x40], "little")
    if off + 6 > len(h):
        return False
    return h[off:off + 4] == b"PE\0\0" and int.from_bytes(h[off + 4:off + 6], "little") in PE_MACHINES


def _defines(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^\s*#\s*define\s+(\w+)\s+(\d+)\b", text, re.M)}


def cudnn_version_from_header(path: Path) -> str | None:
    try:
        d = _defines(read_text(path, errors="replace"))
    except OSError:
        return None
    if "CUDNN_MAJOR" not in d:
        return None
    return f"{d['CUDNN_MAJOR']}.{d.get('CUDNN_MINOR', 0)}.{d.get('CUDNN_PATCHLEVEL', 0)}"


def cuda_version_from_header(path: Path) -> str | None:
    try:
        d = _defines(read_text(path, errors="replace"))
    except OSError:
        return None
    v = d.get("CUDART_VERSION")
    if v is None:
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"


def cuda_version_from_json(path: Path) -> JsonObject:
    """version.json of a CUDA toolkit -> {'cuda': '12.4.1', 'cudart': '12.4.127', 'cublas': ...}."""
    try:
        data = load_json(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out = {}
    for key, name in (("cuda", "cuda"), ("cuda_cudart", "cudart"), ("libcublas", "cublas")):
        v = data.get(key, {}).get("version") if isinstance(data.get(key), dict) else None
        if v:
            out[name] = str(v)
    return out


def read_metadata(path: Path) -> JsonObject:
    """Name, Version and Requires-Dist lines of a METADATA file."""
    try:
        return read_metadata_bytes(read_file(path))
    except OSError:
        return {"requires": []}


def read_metadata_bytes(data: bytes) -> JsonObject:
    out: JsonObject = {"requires": []}
    text = data.decode("utf-8", errors="replace")
    for line in text.splitlines():
        if not line.strip():
            break  # the body (description) starts after the first blank line
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "Name":
            out["name"] = v
        elif k == "Version":
            out["version"] = v
        elif k == "Requires-Dist":
            out["requires"].append(v)
    return out


def pinned(requires: list[str], pattern: str) -> tuple[str, str] | None:
    """('nvidia-cudnn-cu12', '9.1.0.70') for the first Requires-Dist 'name==ver' matching pattern."""
    rx = re.compile(pattern)
    for r in requires:
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*==\s*([0-9][^\s;,]*)", r)
        if m and rx.fullmatch(m.group(1).lower().replace("_", "-")):
            return m.group(1), m.group(2)
    return None


def torch_version_py(path: Path) -> tuple[str | None, str | None]:
    """(__version__, cuda) from torch/version.py, read as text."""
    try:
        text = read_text(path, errors="replace")
    except OSError:  # missing, or a FIFO / folder / huge file where torch/version.py belongs
        return None, None
    v = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    c = re.search(r"^cuda\s*(?::[^=]+)?=\s*(?:['\"]([^'\"]*)['\"]|None)", text, re.M)
    return (v.group(1) if v else None), (c.group(1) if c and c.group(1) else None)


def major_minor(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    m = re.match(r"^(\d+)(?:\.(\d+))?", version)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def cudnn_int(version: str | None) -> int | None:
    """torch.backends.cudnn.version() style integer: 8.9.7 -> 8907, 9.1.0 -> 90100."""
    if not version:
        return None
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    major, minor, patch = parts[:3]
    if major >= 9:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def short(version: str | None, n: int = 3) -> str | None:
    if not version:
        return None
    return ".".join(version.split(".")[:n])


# -- wheel versions (PEP 440) ------------------------------------------------------------------
def version_key(v: str):
    """PEP 440 order (9.6.0.0rc1 before 9.6.0.0, after 9.5.1.17); a version pip would not
    accept either sorts first."""
    from packaging.version import InvalidVersion, Version

    try:
        return (1, Version(v))
    except InvalidVersion:
        return (0, Version("0"))


def is_final(v: str) -> bool:
    """A release: not a pre-release (rc, a, b), not a dev build, not a local version (+x)."""
    from packaging.version import InvalidVersion, Version

    try:
        pv = Version(v)
    except InvalidVersion:
        return False
    return not (pv.is_prerelease or pv.is_devrelease or pv.local)


def matches(version: str, spec: str | None) -> bool:
    """'9.5' matches 9.5.x.y; '9.5.1.17' only itself; None or '' everything."""
    if not spec:
        return True
    return version == spec or version.startswith(spec + ".")
