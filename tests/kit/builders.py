"""Builders for the real files torchkeeper's tests work on.

Plain functions, no pytest: each one writes REAL artefacts to disk:

* PE DLLs compiled by mingw, with a real VERSIONINFO resource that ``pefile`` reads;
* ELF shared objects compiled by gcc, with a real ``DT_SONAME``;
* wheels that a real ``pip install`` accepts, with a RECORD carrying real hashes;
* folders laid out like NVIDIA's cuDNN archives and CUDA toolkit installs;
* venvs made by ``python -m venv`` and filled by the real pip.

Every compiled library embeds the strings it is given plus its own name (the DLL
file name, or the soname for ELF), so every library has unique bytes, and a library
built from the same inputs in two places (an archive and a wheel of one cuDNN release,
say) has the same bytes, as the real ones do.

Compiling is the slow part (~0.1 s a library), so each distinct library is compiled once
into ``cache_dir`` (keyed by a hash of every input) and copied from there. The cache is
safe for several processes at once (pytest-xdist workers): results are written to a
temporary name and ``os.replace``d into place. With ``cache_dir=None`` a per-process
temporary cache is used.

The toolchain (gcc, x86_64-w64-mingw32-gcc, x86_64-w64-mingw32-windres) is installed by
``tests/setup-system.sh``.
"""

from __future__ import annotations

import atexit
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, Union

_AGENT = Path(__file__).resolve().parents[2] / "agent"
if _AGENT.is_dir() and str(_AGENT) not in sys.path:
    sys.path.insert(0, str(_AGENT))

from torchkeeper.engine import libs  # noqa: E402

# Cache keys also hash the source of the compiling functions (recipe); bump this for any
# other change that must not reuse cached builds (a changed compiler flag is covered).
BUILDER_REV = 1

MINGW_GCC = "x86_64-w64-mingw32-gcc"
MINGW_WINDRES = "x86_64-w64-mingw32-windres"
GCC = "gcc"

CUDNN_PRODUCT = "NVIDIA CUDA Deep Neural Network library"

PathLike = Union[str, os.PathLike]
Strings = Iterable[Union[str, bytes]]
# A C export: an int N makes `unsigned long long NAME(void) { return N; }` (cudnnGetVersion
# style); ("out", N) makes `int NAME(int *v) { *v = N; return 0; }` (cudaRuntimeGetVersion style).
Exports = Mapping[str, Union[int, tuple]]


class ToolchainMissing(RuntimeError):
    pass


# --------------------------------------------------------------------------- releases

# CUDA releases: minor version -> (SDK version, cudart version, cuBLAS version). Plausible
# numbers for tests; unknown releases get computed ones (see cuda_release).
CUDA_RELEASES = {
    "11.7": ("11.7.1", "11.7.99", "11.10.3.66"),
    "11.8": ("11.8.0", "11.8.89", "11.11.3.6"),
    "12.1": ("12.1.1", "12.1.105", "12.1.3.1"),
    "12.4": ("12.4.1", "12.4.127", "12.4.5.8"),
    "12.6": ("12.6.3", "12.6.77", "12.6.4.1"),
    "12.8": ("12.8.1", "12.8.90", "12.8.4.1"),
    "13.0": ("13.0.2", "13.0.96", "13.1.0.3"),
}


def _nums(version: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", str(version))]


def cuda_release(cuda: str) -> dict:
    """Versions of one CUDA release, from "12.4", "12.4.127" (cudart) or "12.4.1" (SDK).

    Returns {"major", "minor", "sdk", "cudart", "cublas", "encoded"} where encoded is the
    CUDART_VERSION integer (12040).
    """
    n = _nums(cuda)
    major, minor = n[0], n[1] if len(n) > 1 else 0
    key = f"{major}.{minor}"
    if key in CUDA_RELEASES:
        sdk, cudart, cublas = CUDA_RELEASES[key]
    else:
        sdk, cudart, cublas = f"{key}.0", f"{key}.{n[2] if len(n) > 2 else 0}", f"{key}.1.0"
    if len(n) >= 3 and n[2] >= 20:  # a cudart version was given: trust it
        cudart = ".".join(map(str, n[:3]))
    return {"major": major, "minor": minor, "sdk": sdk, "cudart": cudart, "cublas": cublas,
            "encoded": major * 1000 + minor * 10}


def cuda_release_for_cublas(cublas_version: str) -> dict:
    """The CUDA release a cuBLAS version belongs to (table lookup, else its major.minor)."""
    for key, (_sdk, _cudart, cublas) in CUDA_RELEASES.items():
        if cublas == cublas_version:
            return cuda_release(key)
    rel = cuda_release(".".join(map(str, _nums(cublas_version)[:2])))
    rel["cublas"] = cublas_version
    return rel


def cudnn_parts(version: str) -> tuple[int, int, int]:
    n = _nums(version) + [0, 0, 0]
    return n[0], n[1], n[2]


def cudnn_encoded(version: str) -> int:
    """torch.backends.cudnn.version() style: 8.9.7 -> 8907, 9.1.0 -> 90100."""
    major, minor, patch = cudnn_parts(version)
    return major * 1000 + minor * 100 + patch if major < 9 else major * 10000 + minor * 100 + patch


def cudnn_has_optional(version: str) -> bool:
    major, minor, _ = cudnn_parts(version)
    return major == 9 and minor >= 10 or major > 9


def nvidia_dist_name(lib: str, cuda_major: int) -> str:
    """PyPI name of an NVIDIA library wheel: nvidia-cudnn-cu12, nvidia-cublas (cu13), ..."""
    base = {"cudnn": "nvidia-cudnn", "cublas": "nvidia-cublas", "cuda_runtime": "nvidia-cuda-runtime"}[lib]
    if cuda_major >= 13 and lib != "cudnn":
        return base
    return f"{base}-cu{cuda_major}"


# --------------------------------------------------------------------------- compiling

_TMP_CACHE: Path | None = None


def _default_cache() -> Path:
    global _TMP_CACHE
    if _TMP_CACHE is None:
        _TMP_CACHE = Path(tempfile.mkdtemp(prefix="tk-builders-"))
        atexit.register(shutil.rmtree, _TMP_CACHE, True)
    return _TMP_CACHE


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        raise ToolchainMissing(f"{tool} not found: run tests/setup-system.sh (as root) to install the toolchain")


def _run(cmd: Sequence[str], cwd: Path) -> None:
    p = subprocess.run(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}")


def _blob(strings: Strings, own_name: str) -> bytes:
    parts = []
    for s in list(strings) + [own_name]:
        parts.append(s if isinstance(s, bytes) else str(s).encode("utf-8"))
    return b"\0".join(parts) + b"\0"


def _c_source(blob: bytes, exports: Exports, windows: bool) -> str:
    export = "__declspec(dllexport) " if windows else "__attribute__((visibility(\"default\"))) "
    lines = []
    if windows:
        lines += [
            "__declspec(dllimport) unsigned long __stdcall GetCurrentProcessId(void);",
            "int __stdcall DllMainCRTStartup(void *h, unsigned long r, void *p)"
            " { (void)h; (void)r; (void)p; return 1; }",
        ]
    body = ",".join(f"0x{b:02x}" for b in blob)
    lines.append(f"static const unsigned char tk_strings[{len(blob)}] = {{{body}}};")
    pid = " + (int)(GetCurrentProcessId() & 0)" if windows else ""
    lines.append(f"{export}int tk_probe(int i) {{ return ((volatile const unsigned char *)tk_strings)[i]{pid}; }}")
    for name, value in sorted(exports.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad export name {name!r}")
        if isinstance(value, tuple):
            kind, n = value
            if kind != "out":
                raise ValueError(f"bad export kind {kind!r}")
            lines.append(f"{export}int {name}(int *v) {{ *v = {int(n)}; return 0; }}")
        else:
            lines.append(f"{export}unsigned long long {name}(void) {{ return {int(value)}ULL; }}")
    return "\n".join(lines) + "\n"


def _rc_string(s: str) -> str:
    if not s.isascii():
        raise ValueError(f"version resource strings must be ASCII: {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '""') + '"'


def _rc_source(name: str, file_version: str, product_name: str | None, description: str | None) -> str:
    nums = (_nums(file_version) + [0, 0, 0, 0])[:4]
    if any(n > 0xFFFF for n in nums):
        raise ValueError(f"FILEVERSION parts must be <= 65535: {file_version!r}")
    fv = ",".join(map(str, nums))
    product = product_name or CUDNN_PRODUCT
    values = [
        ("CompanyName", "NVIDIA Corporation"),
        ("FileDescription", description or product),
        ("FileVersion", file_version),
        ("InternalName", name.rsplit(".", 1)[0]),
        ("LegalCopyright", "Copyright (C) NVIDIA Corporation (test build)"),
        ("OriginalFilename", name),
        ("ProductName", product),
        ("ProductVersion", file_version),
    ]
    is_exe = name.lower().endswith(".exe")
    out = [
        "1 VERSIONINFO",
        f"FILEVERSION {fv}",
        f"PRODUCTVERSION {fv}",
        "FILEFLAGSMASK 0x3fL",
        "FILEFLAGS 0x0L",
        "FILEOS 0x40004L",
        f"FILETYPE {'0x1L' if is_exe else '0x2L'}",
        "FILESUBTYPE 0x0L",
        "BEGIN",
        '  BLOCK "StringFileInfo"',
        "  BEGIN",
        '    BLOCK "040904b0"',
        "    BEGIN",
    ]
    out += [f"      VALUE {_rc_string(k)}, {_rc_string(v)}" for k, v in values]
    out += [
        "    END",
        "  END",
        '  BLOCK "VarFileInfo"',
        "  BEGIN",
        "    VALUE \"Translation\", 0x409, 1200",
        "  END",
        "END",
    ]
    return "\n".join(out) + "\n"


def _compile_dll(work: Path, spec: dict) -> Path:
    _need(MINGW_GCC)
    (work / "lib.c").write_text(_c_source(bytes.fromhex(spec["blob"]), spec["exports"], True))
    objs = []
    if spec["file_version"] is not None:
        _need(MINGW_WINDRES)
        (work / "ver.rc").write_text(
            _rc_source(spec["name"], spec["file_version"], spec["product_name"], spec["description"]))
        # relative paths + cwd: windres hands the file to the preprocessor through a shell
        _run([MINGW_WINDRES, "ver.rc", "-O", "coff", "-o", "ver.o"], work)
        objs.append("ver.o")
    # -nostdlib + our own DllMainCRTStartup: a ~5 KB DLL importing only KERNEL32 (as cuDNN does)
    _run([MINGW_GCC, "-shared", "-s", "-O1", "-nostdlib", "-Wl,--no-insert-timestamp",
          "-o", "out.bin", "lib.c", *objs, "-lkernel32"], work)
    return work / "out.bin"


def _compile_so(work: Path, spec: dict) -> Path:
    _need(GCC)
    (work / "lib.c").write_text(_c_source(bytes.fromhex(spec["blob"]), spec["exports"], False))
    _run([GCC, "-shared", "-fPIC", "-s", "-O1", f"-Wl,-soname,{spec['soname']}",
          "-o", "out.bin", "lib.c"], work)
    return work / "out.bin"


_RECIPE: str | None = None


def recipe() -> str:
    """A hash of the code that turns a spec into bytes: editing it invalidates cached builds."""
    global _RECIPE
    if _RECIPE is None:
        import inspect

        src = "".join(inspect.getsource(f) for f in (_blob, _c_source, _rc_string, _rc_source,
                                                      _compile_dll, _compile_so))
        _RECIPE = hashlib.sha256(f"{BUILDER_REV}\n{src}".encode()).hexdigest()[:16]
    return _RECIPE


def _compiled(spec: dict, cache_dir: PathLike | None) -> Path:
    """Path of the compiled artefact for spec, compiling into the cache when needed."""
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]
    final = cache / f"{recipe()}-{key}.{spec['kind']}"  # conftest prunes other recipes
    if final.exists():
        try:
            os.utime(final)  # recently used: kept by the conftest's pruning
        except OSError:
            pass
        return final
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        out = (_compile_dll if spec["kind"] == "dll" else _compile_so)(work, spec)
        os.replace(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _put(src: Path, path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    shutil.copyfile(src, path)
    os.chmod(path, mode)
    return path


def _dll_spec(name: str, file_version, product_name, description, strings, exports) -> dict:
    return {"kind": "dll", "rev": BUILDER_REV, "name": name,
            "file_version": None if file_version is None else str(file_version),
            "product_name": product_name, "description": description,
            "blob": _blob(strings, name).hex(), "exports": dict(exports or {})}


def _so_spec(soname: str, strings, exports) -> dict:
    return {"kind": "so", "rev": BUILDER_REV, "soname": soname,
            "blob": _blob(strings, soname).hex(), "exports": dict(exports or {})}


def build_dll(path: PathLike, *, file_version: str | None = None, product_name: str | None = None,
              strings: Strings = (), cache_dir: PathLike | None = None,
              description: str | None = None, exports: Exports | None = None) -> Path:
    """A real x86-64 PE DLL at path (about 5 KB; imports only KERNEL32).

    Embeds each of strings and the file's own name in .rdata. With file_version, a
    VERSIONINFO resource: FILEVERSION from the numbers of file_version ("9.5.1.17" or
    "6,14,11,12040"), string values FileVersion=file_version (verbatim), ProductName=
    product_name or "NVIDIA CUDA Deep Neural Network library", FileDescription=description
    or the product name, CompanyName, OriginalFilename, ... Without it, no resource at all.
    """
    path = Path(path)
    spec = _dll_spec(path.name, file_version, product_name, description, strings, exports)
    return _put(_compiled(spec, cache_dir), path)


def build_so(path: PathLike, *, soname: str, strings: Strings = (), cache_dir: PathLike | None = None,
             exports: Exports | None = None) -> Path:
    """A real x86-64 ELF shared object at path with DT_SONAME soname.

    Embeds each of strings and the soname (not the file name: libcudnn.so.9.5.1 from an
    archive and libcudnn.so.9 from a wheel of the same release get the same bytes).
    """
    spec = _so_spec(soname, strings, exports)
    return _put(_compiled(spec, cache_dir), Path(path))


def _lib_bytes(spec: dict, cache_dir) -> bytes:
    return _compiled(spec, cache_dir).read_bytes()


# --------------------------------------------------------------------------- library specs


def _exports_for(key: str, *, cudnn: str | None = None, rel: dict | None = None) -> dict:
    info = libs.parse(key)
    if info is None:
        return {}
    if info.family == libs.CUDNN and info.member == "" and cudnn:
        return {"cudnnGetVersion": cudnn_encoded(cudnn)}
    if info.family == libs.CUDART and rel:
        return {"cudaRuntimeGetVersion": ("out", rel["encoded"])}
    if info.family == libs.CUBLAS and info.member == "Lt" and rel:
        ma, mi, pa = (_nums(rel["cublas"]) + [0, 0, 0])[:3]
        return {"cublasLtGetVersion": ma * 10000 + mi * 100 + pa}
    return {}


def _cudnn_lib(key: str, platform: str, cudnn: str, cuda_major: int, extra: Sequence[str] = ()) -> dict:
    """Spec of one cuDNN library (key = DLL name or soname)."""
    cublaslt = f"cublasLt64_{cuda_major}.dll" if platform == libs.WINDOWS else f"libcublasLt.so.{cuda_major}"
    strings = [f"cuDNN {cudnn}", cublaslt, *extra]
    exports = _exports_for(key, cudnn=cudnn)
    if platform == libs.WINDOWS:
        version = None if key.lower().startswith("cudnn_graph64_") else cudnn  # as real: no resource
        return _dll_spec(key, version, CUDNN_PRODUCT, None, strings, exports)
    return _so_spec(key, strings, exports)


def _cuda_lib(key: str, platform: str, rel: dict, extra: Sequence[str] = (), comma_version: bool = True) -> dict:
    """Spec of one CUDA runtime / cuBLAS library of release rel."""
    info = libs.parse(key)
    sep = "," if comma_version else "."
    file_version = sep.join(["6", "14", "11", str(rel["encoded"])])
    if info.family == libs.CUDART:
        product = f"NVIDIA CUDA {rel['cudart']} Runtime"
        desc = f"NVIDIA CUDA Runtime, Version {rel['cudart']}"
        strings = [f"CUDA runtime {rel['cudart']}"]
    else:
        lt = info.member
        product = f"NVIDIA CUDA {rel['cudart']} BLAS{lt} Library"
        desc = f"NVIDIA cuBLAS{lt} Library, Version {rel['cublas']}"
        strings = [f"cuBLAS{lt} {rel['cublas']}"]
        if not lt:  # cuBLAS loads cuBLASLt
            strings.append(libs.key_for(libs.CUBLAS, "Lt", rel["major"], platform))
    strings += list(extra)
    exports = _exports_for(key, rel=rel)
    if platform == libs.WINDOWS:
        return _dll_spec(key, file_version, product, desc, strings, exports)
    return _so_spec(key, strings, exports)


def _plain_lib(name: str, platform: str, strings: Sequence[str]) -> dict:
    """An unmanaged library (torch_cpu.dll, libc10.so, cufft64_11.dll, ...)."""
    if platform == libs.WINDOWS:
        return _dll_spec(name, None, None, None, strings, None)
    return _so_spec(name, strings, None)


def _linux_real_name(key: str, version: str) -> str:
    """libcudnn_ops.so.9 + 9.5.1.17 -> libcudnn_ops.so.9.5.1 (cuDNN archives use 3 parts)."""
    return f"{key.rsplit('.so.', 1)[0]}.so.{version}"


# --------------------------------------------------------------------------- wheels


def _b64_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _dist_escape(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name)


def _is_lib_path(p: str) -> bool:
    return libs.is_library_file(p.rsplit("/", 1)[-1]) or p.endswith((".pyd", ".exe"))


def write_wheel(out_dir: PathLike, name: str, version: str, files: Mapping[str, bytes],
                metadata_extra: Sequence[str] = (), root_is_purelib: bool = True,
                tag: str = "py3-none-any") -> Path:
    """A wheel (py3-none-any unless tag says otherwise) holding files (archive path -> bytes),
    plus dist-info."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    esc = _dist_escape(name)
    distinfo = f"{esc}-{version}.dist-info"
    metadata = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                          "Summary: test stand-in built by torchkeeper's tests", *metadata_extra]) + "\n"
    wheel_meta = ("Wheel-Version: 1.0\nGenerator: torchkeeper-tests\n"
                  f"Root-Is-Purelib: {'true' if root_is_purelib else 'false'}\nTag: {tag}\n")
    entries = dict(files)
    entries[f"{distinfo}/METADATA"] = metadata.encode()
    entries[f"{distinfo}/WHEEL"] = wheel_meta.encode()
    entries[f"{distinfo}/top_level.txt"] = ("\n".join(sorted({p.split("/")[0] for p in files
                                                              if "/" in p})) + "\n").encode()
    record = io.StringIO()
    w = csv.writer(record, lineterminator="\n")
    for p, data in entries.items():
        w.writerow([p, f"sha256={_b64_sha256(data)}", len(data)])
    w.writerow([f"{distinfo}/RECORD", "", ""])
    entries[f"{distinfo}/RECORD"] = record.getvalue().encode()
    whl = out_dir / f"{esc}-{version}-{tag}.whl"
    tmp = whl.with_name(whl.name + f".{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p, data in entries.items():
            zi = zipfile.ZipInfo(p, date_time=(2024, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = ((0o100755 if _is_lib_path(p) else 0o100644) << 16)
            z.writestr(zi, data)
    os.replace(tmp, whl)
    return whl


def _cudnn_version_h(version: str) -> bytes:
    major, minor, patch = cudnn_parts(version)
    mult = "10000" if major >= 9 else "1000"
    return (
        "/* cudnn_version.h (test stand-in) */\n"
        "#ifndef CUDNN_VERSION_H_\n#define CUDNN_VERSION_H_\n\n"
        f"#define CUDNN_MAJOR {major}\n#define CUDNN_MINOR {minor}\n#define CUDNN_PATCHLEVEL {patch}\n\n"
        f"#define CUDNN_VERSION (CUDNN_MAJOR * {mult} + CUDNN_MINOR * 100 + CUDNN_PATCHLEVEL)\n\n"
        "#endif /* CUDNN_VERSION_H */\n"
    ).encode()


def _cuda_runtime_api_h(rel: dict) -> bytes:
    return ("/* cuda_runtime_api.h (test stand-in) */\n"
            f"#define CUDART_VERSION {rel['encoded']}\n").encode()


def _cublas_api_h(rel: dict) -> bytes:
    ma, mi, pa, *rest = _nums(rel["cublas"]) + [0, 0, 0, 0]
    return ("/* cublas_api.h (test stand-in) */\n"
            f"#define CUBLAS_VER_MAJOR {ma}\n#define CUBLAS_VER_MINOR {mi}\n#define CUBLAS_VER_PATCH {pa}\n"
            f"#define CUBLAS_VER_BUILD {rest[0]}\n"
            "#define CUBLAS_VERSION (CUBLAS_VER_MAJOR * 10000 + CUBLAS_VER_MINOR * 100 + CUBLAS_VER_PATCH)\n"
            ).encode()


TORCH_LAYOUTS = ("windows", "linux-torchlib", "linux-nvidia")
# Windows wheels that take their CUDA libraries from nvidia-* wheels (PyTorch's open change)
NVIDIA_LAYOUTS = ("linux-nvidia", "windows-nvidia")
ALL_TORCH_LAYOUTS = TORCH_LAYOUTS + ("windows-nvidia",)
# spell: how a builder names the managed library files it writes (str.upper, say): the bytes
# stay those of the canonical name, as a real DLL's do whatever case its file has
Spell = Callable[[str], str]


def _spelt(spell: Spell | None, name: str) -> str:
    return spell(name) if spell else name


def torch_wheel(out_dir: PathLike, *, version: str = "2.3.1+cu121", cuda: str | None = "12.1",
                layout: str = "windows", cudnn: str | None = "8.8.1.3", cache_dir: PathLike | None = None,
                extra_libs: Sequence[str] = (), python_tag: str = "cp311", spell: Spell | None = None) -> Path:
    """A torch wheel (torch-<version>-py3-none-any.whl) laid out like a real one.

    layout "windows": torch/lib/ holds cudart/cublas/cublasLt DLLs of the CUDA major and the
    cuDNN DLLs of the cuDNN major (FileVersion = cudnn; cudnn_graph64_9.dll has none).
    "linux-torchlib": the same libraries as ELF under their sonames in torch/lib.
    "linux-nvidia": torch/lib has only torch's own libraries; METADATA has Requires-Dist pins
    for the nvidia-* wheels (build those with nvidia_wheel). "windows-nvidia": the same for
    Windows (DLLs; pins for platform_system == "Windows"; cu13 names for CUDA 13).
    spell: the file names of the managed libraries in torch/lib (str.upper: CUDNN64_8.DLL).
    cuda=None makes a CPU build (version.py cuda = None, no CUDA libraries).
    extra_libs: more file names for torch/lib, built as real libraries of the layout's
    platform (managed cuDNN/CUDA names get the matching version data).
    """
    if layout not in ALL_TORCH_LAYOUTS:
        raise ValueError(f"layout must be one of {ALL_TORCH_LAYOUTS}")
    platform = libs.WINDOWS if layout.startswith("windows") else libs.LINUX
    via_nvidia = layout in NVIDIA_LAYOUTS
    rel = cuda_release(cuda) if cuda else None
    tag = [f"torch {version}", f"layout {layout}", f"cuda {cuda}", f"cudnn {cudnn}"]
    files: dict[str, bytes] = {}
    files["torch/__init__.py"] = (
        '"""Stand-in torch package built by torchkeeper\'s tests (imports nothing heavy)."""\n'
        "from torch.version import __version__ as __version__\n"
    ).encode()
    cuda_line = f"cuda: Optional[str] = {cuda!r}" if cuda else "cuda: Optional[str] = None"
    files["torch/version.py"] = (
        "from typing import Optional\n\n"
        "__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip']\n"
        f"__version__ = {version!r}\n"
        "debug = False\n"
        f"{cuda_line}\n"
        f"git_version = '{hashlib.sha1(version.encode()).hexdigest()}'\n"
        "hip: Optional[str] = None\n"
    ).encode()
    files["torch/_C/__init__.pyi"] = b"# stub of torch._C type hints (test stand-in)\ndef _cuda_getDeviceCount() -> int: ...\n"
    files["torch/backends/__init__.py"] = b""
    files["torch/backends/cudnn/__init__.py"] = b"# test stand-in: version() is not implemented\n"

    lib_dir = "torch/lib"
    if platform == libs.WINDOWS:
        plain = ["c10.dll", "torch_cpu.dll", "torch.dll"] + (["torch_cuda.dll", "c10_cuda.dll"] if cuda else [])
        ext = f"torch/_C.{python_tag}-win_amd64.pyd"
    else:
        plain = ["libc10.so", "libtorch_cpu.so", "libtorch.so"] + (["libtorch_cuda.so", "libc10_cuda.so"] if cuda else [])
        ext = f"torch/_C.cpython-{python_tag[2:]}-x86_64-linux-gnu.so"
    for name in plain:
        files[f"{lib_dir}/{name}"] = _lib_bytes(_plain_lib(name, platform, tag), cache_dir)
    files[ext] = _lib_bytes(_plain_lib(ext.rsplit("/", 1)[1], platform, tag), cache_dir)

    if cuda and not via_nvidia:
        for key in libs.cuda_keys(rel["major"], platform):
            files[f"{lib_dir}/{_spelt(spell, key)}"] = _lib_bytes(
                _cuda_lib(key, platform, rel, tag, comma_version=False), cache_dir)
        if cudnn:
            major = cudnn_parts(cudnn)[0]
            for key in libs.cudnn_keys(major, platform, optional=cudnn_has_optional(cudnn)):
                files[f"{lib_dir}/{_spelt(spell, key)}"] = _lib_bytes(
                    _cudnn_lib(key, platform, cudnn, rel["major"], tag), cache_dir)
    for name in extra_libs:
        info = libs.parse(name)
        if info and info.family == libs.CUDNN and cudnn:
            spec = _cudnn_lib(name, platform, cudnn, rel["major"] if rel else 12, tag)
        elif info and rel and info.family != libs.CUDNN:
            spec = _cuda_lib(name, platform, rel, tag, comma_version=False)
        else:
            spec = _plain_lib(name, platform, tag)
        files[f"{lib_dir}/{name}"] = _lib_bytes(spec, cache_dir)

    requires = []
    if via_nvidia and cuda:
        cm = rel["major"]
        system = "Windows" if platform == libs.WINDOWS else "Linux"
        if cudnn:
            requires.append(f'Requires-Dist: {nvidia_dist_name("cudnn", cm)}=={cudnn}; platform_system == "{system}"')
        requires.append(f'Requires-Dist: {nvidia_dist_name("cublas", cm)}=={rel["cublas"]}; platform_system == "{system}"')
        requires.append(f'Requires-Dist: {nvidia_dist_name("cuda_runtime", cm)}=={rel["cudart"]}; platform_system == "{system}"')
    requires += ["Requires-Dist: filelock", "Requires-Dist: typing-extensions>=4.8.0"]
    return write_wheel(out_dir, "torch", version, files, requires, root_is_purelib=False)


NVIDIA_LIBS = ("cudnn", "cublas", "cuda_runtime")


PLATFORM_TAGS = {"windows": "py3-none-win_amd64", "linux": "py3-none-manylinux_2_27_x86_64"}


def nvidia_wheel(out_dir: PathLike, *, lib: str = "cudnn", cuda_major: int = 12, version: str = "9.1.0.70",
                 platform: str = "linux", cache_dir: PathLike | None = None, spell: Spell | None = None,
                 tagged: bool = False) -> Path:
    """An NVIDIA library wheel (nvidia_cudnn_cu12-9.1.0.70-py3-none-any.whl) like PyPI's.

    version is the library's own version: cuDNN "9.1.0.70", cuBLAS "12.4.5.8", CUDA runtime
    "12.4.127". Linux: nvidia/<lib>/lib/*.so.<major> (ELF); Windows: nvidia/<lib>/bin/*.dll
    (PE with versions). No nvidia/__init__.py (a namespace directory). CUDA 13 toolkit parts
    (cublas, cuda_runtime) share PyPI's merged folder: nvidia/cu13/bin/x86_64/*.dll,
    nvidia/cu13/lib/*.so.13 (cuDNN keeps nvidia/cudnn/...). spell: the library files' names.
    tagged: the platform tag PyPI's wheels have (win_amd64, manylinux_2_27_x86_64) instead of
    "any", for tests of pip's platform choice.
    """
    if lib not in NVIDIA_LIBS:
        raise ValueError(f"lib must be one of {NVIDIA_LIBS}")
    if platform not in libs.PLATFORMS:
        raise ValueError(f"platform must be one of {libs.PLATFORMS}")
    sub = "bin" if platform == libs.WINDOWS else "lib"
    base = f"nvidia/{lib}"
    if cuda_major >= 13 and lib != "cudnn":
        base = f"nvidia/cu{cuda_major}"
        sub = "bin/x86_64" if platform == libs.WINDOWS else "lib"
    files: dict[str, bytes] = {f"{base}/__init__.py": b"", f"{base}/include/__init__.py": b""}
    if platform == libs.LINUX:
        files[f"{base}/lib/__init__.py"] = b""
    if lib == "cudnn":
        major = cudnn_parts(version)[0]
        for key in libs.cudnn_keys(major, platform, optional=cudnn_has_optional(version)):
            files[f"{base}/{sub}/{_spelt(spell, key)}"] = _lib_bytes(_cudnn_lib(key, platform, version, cuda_major), cache_dir)
        files[f"{base}/include/cudnn_version.h"] = _cudnn_version_h(version)
        files[f"{base}/include/cudnn.h"] = b'#include "cudnn_version.h"\n'
    elif lib == "cublas":
        rel = cuda_release_for_cublas(version)
        if rel["major"] != cuda_major:
            rel = {**cuda_release(f"{cuda_major}.0"), "cublas": version}
        for key in libs.cuda_keys(cuda_major, platform)[1:]:
            files[f"{base}/{sub}/{_spelt(spell, key)}"] = _lib_bytes(_cuda_lib(key, platform, rel), cache_dir)
        nvblas = "nvblas64_%d.dll" % cuda_major if platform == libs.WINDOWS else f"libnvblas.so.{cuda_major}"
        files[f"{base}/{sub}/{nvblas}"] = _lib_bytes(_plain_lib(nvblas, platform, [f"nvblas {version}"]), cache_dir)
        files[f"{base}/include/cublas_api.h"] = _cublas_api_h(rel)
    else:
        rel = cuda_release(version)
        key = libs.cuda_keys(cuda_major, platform)[0]
        files[f"{base}/{sub}/{_spelt(spell, key)}"] = _lib_bytes(_cuda_lib(key, platform, rel), cache_dir)
        files[f"{base}/include/cuda_runtime_api.h"] = _cuda_runtime_api_h(rel)
    meta = ["License: Other/Proprietary License", "Requires-Python: >=3"]
    return write_wheel(out_dir, nvidia_dist_name(lib, cuda_major), version, files, meta,
                       tag=PLATFORM_TAGS[platform] if tagged else "py3-none-any")


def nvidia_stub_wheel(out_dir: PathLike, name: str = "nvidia-cublas-cu13", version: str = "0.0.1") -> Path:
    """The empty placeholder PyPI holds under the -cu13 names of CUDA 13 toolkit parts: no
    library, a summary that says DEPRECATED (py3-none-any, like the real one)."""
    return write_wheel(out_dir, name, version, {},
                       ["Summary: DEPRECATED: use the package without -cu13", "Requires-Python: >=3"])


# --------------------------------------------------------------------------- folders


def _fresh_dir(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.mkdir(parents=True)
    return path


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _symlink(link: Path, target: str) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def cudnn_archive(out_dir: PathLike, *, version: str = "9.5.1.17", cuda_major: int = 12,
                  platform: str = "windows", cache_dir: PathLike | None = None, spell: Spell | None = None) -> Path:
    """A folder like NVIDIA's cuDNN archive, e.g. cudnn-windows-x86_64-9.5.1.17_cuda12-archive.

    Windows: bin/<cuDNN DLLs>, lib/x64/cudnn.lib (a stray to leave out), include/, LICENSE.
    Linux: lib/libcudnn*.so.<M>.<m>.<p> real files, libcudnn*.so.<M> and libcudnn*.so symlinks,
    lib/libcudnn_adv_static.a (stray), include/, LICENSE.
    """
    if platform not in libs.PLATFORMS:
        raise ValueError(f"platform must be one of {libs.PLATFORMS}")
    major, minor, patch = cudnn_parts(version)
    root = _fresh_dir(Path(out_dir) / f"cudnn-{platform}-x86_64-{version}_cuda{cuda_major}-archive")
    keys = libs.cudnn_keys(major, platform, optional=cudnn_has_optional(version))
    if platform == libs.WINDOWS:
        for key in keys:
            _put(_compiled(_cudnn_lib(key, platform, version, cuda_major), cache_dir), root / "bin" / _spelt(spell, key))
        _write(root / "lib" / "x64" / "cudnn.lib", b"!<arch>\n")
    else:
        for key in keys:
            real = _linux_real_name(key, f"{major}.{minor}.{patch}")
            _put(_compiled(_cudnn_lib(key, platform, version, cuda_major), cache_dir), root / "lib" / real)
            _symlink(root / "lib" / key, real)
            _symlink(root / "lib" / key.rsplit(".", 1)[0], key)  # libcudnn.so -> libcudnn.so.9
        _write(root / "lib" / "libcudnn_adv_static.a", b"!<arch>\n")
    _write(root / "include" / "cudnn_version.h", _cudnn_version_h(version))
    _write(root / "include" / "cudnn.h", b'#include "cudnn_version.h"\n')
    _write(root / "LICENSE", b"NVIDIA Software License Agreement (test stand-in)\n")
    return root


def cuda_toolkit(out_dir: PathLike, *, version: str = "12.4.127", platform: str = "windows",
                 cache_dir: PathLike | None = None, cublas_version: str | None = None,
                 spell: Spell | None = None) -> Path:
    """A folder like a CUDA toolkit install: <out_dir>/CUDA/v12.4.

    version is the cudart version (12.4.127) or just "12.4". version.json names the SDK,
    cudart and cuBLAS versions; include/cuda_runtime_api.h has CUDART_VERSION. Windows:
    bin/ (bin/x64 for CUDA >= 13) holds cudart64_*, cublas64_*, cublasLt64_* and the strays
    cufft64_11.dll and nvcc.exe. Linux: lib64/ holds libcudart.so.<full> + symlinks,
    libcublas(Lt).so.<cublas version> + symlinks and the stray libcufft.so.11; bin/nvcc.
    """
    if platform not in libs.PLATFORMS:
        raise ValueError(f"platform must be one of {libs.PLATFORMS}")
    rel = cuda_release(version)
    if cublas_version:
        rel["cublas"] = cublas_version
    major, minor = rel["major"], rel["minor"]
    root = _fresh_dir(Path(out_dir) / "CUDA" / f"v{major}.{minor}")
    vj = {
        "cuda": {"name": "CUDA SDK", "version": rel["sdk"]},
        "cuda_cudart": {"name": "CUDA Runtime (cudart)", "version": rel["cudart"]},
        "cuda_nvcc": {"name": "CUDA NVCC", "version": rel["cudart"]},
        "libcublas": {"name": "CUDA cuBLAS", "version": rel["cublas"]},
        "libcufft": {"name": "CUDA cuFFT", "version": "11.2.1.3"},
    }
    _write(root / "version.json", (json.dumps(vj, indent=3) + "\n").encode())
    _write(root / "include" / "cuda_runtime_api.h", _cuda_runtime_api_h(rel))
    _write(root / "include" / "cublas_api.h", _cublas_api_h(rel))
    keys = libs.cuda_keys(major, platform)
    if platform == libs.WINDOWS:
        bindir = root / "bin" / ("x64" if major >= 13 else "")
        for key in keys:
            _put(_compiled(_cuda_lib(key, platform, rel), cache_dir), bindir / _spelt(spell, key))
        _put(_compiled(_plain_lib("cufft64_11.dll", platform, ["cuFFT 11.2.1.3"]), cache_dir), bindir / "cufft64_11.dll")
        _put(_compiled(_dll_spec("nvcc.exe", f"{rel['cudart']}.0", f"NVIDIA CUDA {rel['cudart']} nvcc",
                                 None, ["nvcc"], None), cache_dir), root / "bin" / "nvcc.exe")
    else:
        lib64 = root / "lib64"
        for key in keys:
            full = rel["cudart"] if key.startswith("libcudart") else rel["cublas"]
            real = _linux_real_name(key, full)
            _put(_compiled(_cuda_lib(key, platform, rel), cache_dir), lib64 / real)
            _symlink(lib64 / key, real)
            _symlink(lib64 / key.rsplit(".", 1)[0], key)
        _put(_compiled(_plain_lib("libcufft.so.11", platform, ["cuFFT 11.2.1.3"]), cache_dir), lib64 / "libcufft.so.11")
        _write(lib64 / "libcudart_static.a", b"!<arch>\n")
        _write(root / "bin" / "nvcc", (
            "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
            f"echo 'Cuda compilation tools, release {major}.{minor}, V{rel['cudart']}'\n").encode(), 0o755)
    return root


# --------------------------------------------------------------------------- venvs and pip


def _pip_env() -> dict:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("PIP_"):
            del env[k]
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def make_venv(path: PathLike) -> Path:
    """A real venv (python -m venv --without-pip) made with the test interpreter."""
    path = Path(path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return path


def venv_python(venv: PathLike) -> Path:
    venv = Path(venv)
    for p in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
        if p.exists():
            return p
    raise FileNotFoundError(f"no python in {venv}")


def site_packages(venv: PathLike) -> Path:
    """site-packages of a venv made by make_venv, or of a portable python_embeded folder."""
    venv = Path(venv)
    for cand in (venv / "Lib" / "site-packages",):
        if cand.is_dir():
            return cand
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if found:
        return found[0]
    raise FileNotFoundError(f"no site-packages under {venv}")


def _pip(args: Sequence[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    p = subprocess.run(cmd, env=_pip_env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"pip failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return p


def pip_install(venv: PathLike, *wheels: PathLike, force_reinstall: bool = False,
                upgrade: bool = False, extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Install wheels into venv with the real pip of the test interpreter (pip --python)."""
    args = ["--python", str(venv_python(venv)), "install", "--no-index", "--no-deps",
            "--disable-pip-version-check", "-q"]
    if force_reinstall:
        args.append("--force-reinstall")
    if upgrade:
        args.append("--upgrade")
    return _pip([*args, *extra_args, *map(str, wheels)])


def pip_uninstall(venv: PathLike, *names: str) -> subprocess.CompletedProcess:
    return _pip(["--python", str(venv_python(venv)), "uninstall", "-y", "-q", *names])


def portable_python(path: PathLike, *, python_tag: str = "311") -> Path:
    """A ComfyUI-portable-like tree; returns <path>/python_embeded.

    python_embeded/ holds python.exe and python311.dll (empty files), python311._pth and
    Lib/site-packages/; <path>/ComfyUI/main.py and run_nvidia_gpu.bat sit beside it.
    """
    path = Path(path)
    pe = path / "python_embeded"
    (pe / "Lib" / "site-packages").mkdir(parents=True, exist_ok=True)
    (pe / "python.exe").write_bytes(b"")
    (pe / f"python{python_tag}.dll").write_bytes(b"")
    (pe / f"python{python_tag}._pth").write_text(
        f"python{python_tag}.zip\n.\nLib/site-packages\n../ComfyUI\n\n"
        "# Uncomment to run site.main() automatically\nimport site\n")
    (path / "ComfyUI").mkdir(exist_ok=True)
    (path / "ComfyUI" / "main.py").write_text("# ComfyUI stand-in\n")
    (path / "run_nvidia_gpu.bat").write_text(
        ".\\python_embeded\\python.exe -s ComfyUI\\main.py --windows-standalone-build\npause\n")
    return pe


def pip_install_target(site_packages_dir: PathLike, *wheels: PathLike, upgrade: bool = False,
                       extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """pip install --target <site_packages_dir> (how portable installs get packages here).

    Without upgrade=True pip keeps existing top-level folders (it only warns).
    """
    args = ["install", "--no-index", "--no-deps", "--disable-pip-version-check", "-q",
            "--target", str(site_packages_dir)]
    if upgrade:
        args.append("--upgrade")
    return _pip([*args, *extra_args, *map(str, wheels)])


def conda_env(path: PathLike, *wheels: PathLike, sha256: bool = True, windows: bool = True) -> Path:
    """A conda env as `conda install pytorch` leaves one; returns its root (the prefix).

    site-packages (``Lib/site-packages`` with windows=True, else ``lib/python3.11/site-packages``)
    is filled from the wheels; each dist gets ``conda-meta/<name>-<version>-<build>.json`` with
    ``files`` (every path relative to the prefix, '/' separators) and, with sha256=True, the
    ``paths_data.paths[]`` entries (``_path``, ``path_type``, ``sha256``, ``size_in_bytes``) that
    newer conda writes. Its dist-info is what conda-build packages carry: INSTALLER ``conda``
    and a RECORD without hashes.
    """
    prefix = Path(path)
    sp_rel = "Lib/site-packages" if windows else "lib/python3.11/site-packages"
    sp = prefix / sp_rel
    sp.mkdir(parents=True, exist_ok=True)
    pip_install_target(sp, *wheels)
    meta = prefix / "conda-meta"
    meta.mkdir(exist_ok=True)
    (meta / "history").write_text("==> 2024-01-01 00:00:00 <==\n# cmd: conda install pytorch\n")
    for di in sorted(sp.glob("*.dist-info")):
        name, _, version = di.name[: -len(".dist-info")].rpartition("-")
        with open(di / "RECORD", newline="") as f:
            rels = [row[0] for row in csv.reader(f) if row]
        (di / "INSTALLER").write_text("conda\n")
        rels.append(f"{di.name}/INSTALLER")
        with open(di / "RECORD", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            for rel in rels:
                w.writerow([rel, "", ""])
        files = sorted(set(f"{sp_rel}/{rel}" for rel in rels))
        conda_name = "pytorch" if _canon(name) == "torch" else _canon(name)
        build = "py3.11_cuda_0"
        rec = {"name": conda_name, "version": version.split("+")[0], "build": build,
               "build_number": 0, "channel": "https://conda.anaconda.org/pytorch/win-64",
               "files": files}
        if sha256:
            rec["paths_data"] = {"paths_version": 1, "paths": [
                {"_path": p, "path_type": "hardlink", "sha256": sha256_file(prefix / p),
                 "size_in_bytes": (prefix / p).stat().st_size} for p in files]}
        (meta / f"{conda_name}-{rec['version']}-{build}.json").write_text(json.dumps(rec, indent=1))
    return prefix


# --------------------------------------------------------------------------- inspecting


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_info(site_packages_dir: PathLike, dist_name: str, version: str | None = None) -> Path:
    """The installed <name>-<version>.dist-info folder of dist_name.

    Raises FileNotFoundError unless exactly one matches: note that ``pip install --target
    --upgrade`` with another version leaves the old dist-info beside the new one (pass version).
    """
    want = _canon(dist_name)
    found = []
    for d in Path(site_packages_dir).glob("*.dist-info"):
        name, _, ver = d.name[: -len(".dist-info")].rpartition("-")
        if _canon(name) == want and (version is None or ver == version):
            found.append(d)
    if len(found) != 1:
        raise FileNotFoundError(f"{len(found)} dist-info folders for {dist_name} in {site_packages_dir}")
    return found[0]


def record_hashes(site_packages_dir: PathLike, dist_name: str,
                  version: str | None = None) -> dict[str, tuple[str, int]]:
    """{RECORD path: (sha256 hex, size)} from the installed RECORD (entries with a hash)."""
    out = {}
    with open(dist_info(site_packages_dir, dist_name, version) / "RECORD", newline="") as f:
        for row in csv.reader(f):
            if len(row) < 3 or not row[1]:
                continue
            algo, _, b64 = row[1].partition("=")
            if algo != "sha256":
                continue
            digest = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
            out[row[0]] = (digest, int(row[2]))
    return out


def pe_version_info(path: PathLike) -> dict[str, str]:
    """The StringFileInfo values of a PE file ({} when it has no version resource)."""
    import pefile

    pe = pefile.PE(str(path), fast_load=True)
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]])
    out: dict[str, str] = {}
    for fi in getattr(pe, "FileInfo", None) or []:
        for entry in fi:
            if getattr(entry, "Key", None) == b"StringFileInfo":
                for table in entry.StringTable:
                    out.update({k.decode(): v.decode() for k, v in table.entries.items()})
    pe.close()
    return out


def elf_soname(path: PathLike) -> str | None:
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    if tag.entry.d_tag == "DT_SONAME":
                        return tag.soname
    return None


class Builders:
    """The builders with cache_dir bound (what the conftest's ``build`` fixture hands out)."""

    def __init__(self, cache_dir: PathLike | None):
        self.cache_dir = cache_dir

    def dll(self, path, **kw):
        return build_dll(path, cache_dir=self.cache_dir, **kw)

    def so(self, path, **kw):
        return build_so(path, cache_dir=self.cache_dir, **kw)

    def torch_wheel(self, out_dir, **kw):
        return torch_wheel(out_dir, cache_dir=self.cache_dir, **kw)

    def nvidia_wheel(self, out_dir, **kw):
        return nvidia_wheel(out_dir, cache_dir=self.cache_dir, **kw)

    def nvidia_stub_wheel(self, out_dir, **kw):
        return nvidia_stub_wheel(out_dir, **kw)

    def cudnn_archive(self, out_dir, **kw):
        return cudnn_archive(out_dir, cache_dir=self.cache_dir, **kw)

    def cuda_toolkit(self, out_dir, **kw):
        return cuda_toolkit(out_dir, cache_dir=self.cache_dir, **kw)


__all__ = [
    "BUILDER_REV", "Builders", "CUDA_RELEASES", "TORCH_LAYOUTS", "ToolchainMissing",
    "build_dll", "build_so", "cuda_release", "cuda_toolkit", "cudnn_archive", "cudnn_encoded",
    "dist_info", "elf_soname", "make_venv", "nvidia_dist_name", "nvidia_stub_wheel", "nvidia_wheel", "pe_version_info",
    "pip_install", "pip_install_target", "pip_uninstall", "portable_python", "recipe", "record_hashes",
    "sha256_file", "site_packages", "torch_wheel", "venv_python", "write_wheel",
]
