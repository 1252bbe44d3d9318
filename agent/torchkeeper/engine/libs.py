"""The catalogue of libraries torchkeeper manages, as data that works on any OS.

A library file is identified by its *key*: the name torch loads it by. On Windows that
is the DLL name (``cudnn_ops64_9.dll``); on Linux the soname (``libcudnn_ops.so.9``),
so ``libcublasLt.so.12.4.5.8`` from a toolkit and ``libcublasLt.so.12`` in a wheel share
one key. Families group libraries that must come from one release: mixing half of one
cuDNN with half of another breaks ``import torch``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WINDOWS = "windows"
LINUX = "linux"
PLATFORMS = (WINDOWS, LINUX)

CUDART = "cudart"
CUBLAS = "cublas"  # cuBLAS and cuBLASLt ship and load as one release
CUDNN = "cudnn"
FAMILIES = (CUDART, CUBLAS, CUDNN)
FAMILY_TITLES = {CUDART: "CUDA runtime", CUBLAS: "cuBLAS", CUDNN: "cuDNN"}

# cuDNN sub-libraries per major. Newer 9.x releases add the optional ones.
CUDNN_MEMBERS = {
    8: ("", "_adv_infer", "_adv_train", "_cnn_infer", "_cnn_train", "_ops_infer", "_ops_train"),
    9: ("", "_graph", "_ops", "_cnn", "_adv", "_heuristic", "_engines_precompiled",
        "_engines_runtime_compiled"),
}
CUDNN_OPTIONAL_MEMBERS = {9: ("_engines_tensor_ir", "_ext")}

_WIN = [
    (CUDART, re.compile(r"^cudart64_(\d+)\.dll$", re.I)),
    (CUBLAS, re.compile(r"^cublas(Lt)?64_(\d+)\.dll$", re.I)),
    (CUDNN, re.compile(r"^cudnn(_[a-z_]+?)?64_(\d+)\.dll$", re.I)),
]
_LINUX = [
    (CUDART, re.compile(r"^libcudart\.so\.(\d+)((?:\.\d+)*)$")),
    (CUBLAS, re.compile(r"^libcublas(Lt)?\.so\.(\d+)((?:\.\d+)*)$")),
    (CUDNN, re.compile(r"^libcudnn(_[a-z_]+?)?\.so\.(\d+)((?:\.\d+)*)$")),
]


@dataclass(frozen=True)
class LibName:
    """What a library file name says about itself."""

    key: str          # the name torch loads: 'cudnn_ops64_9.dll', 'libcudnn_ops.so.9'
    family: str       # CUDART, CUBLAS or CUDNN
    member: str       # '' for the main library, 'Lt', '_ops', '_cnn_infer', ...
    major: int        # CUDA major for cudart/cublas, cuDNN major for cudnn
    platform: str     # WINDOWS or LINUX

    @property
    def cuda_major(self) -> int | None:
        return None if self.family == CUDNN else self.major

    @property
    def cudnn_major(self) -> int | None:
        return self.major if self.family == CUDNN else None


def _cuda_major_from_dll_suffix(text: str) -> int:
    # cudart64_110.dll is CUDA 11 (11.0 ABI), cudart64_12.dll CUDA 12.
    n = int(text)
    return n // 10 if n >= 100 else n


def windows_key(filename: str) -> str:
    """The one spelling of a DLL name: Windows names are case-insensitive, so
    ``CUDNN64_8.DLL`` and ``cudnn64_8.dll`` are the same file (and the same key)."""
    low = filename.lower()
    return "cublasLt" + low[len("cublaslt"):] if low.startswith("cublaslt") else low


def parse(filename: str) -> LibName | None:
    """Recognise a managed library by file name; None for anything else. A Windows key is
    spelt one way whatever the file's case (:func:`windows_key`); Linux names are case-sensitive."""
    for family, rx in _WIN:
        m = rx.match(filename)
        if m:
            key = windows_key(filename)
            if family == CUDART:
                return LibName(key, family, "", _cuda_major_from_dll_suffix(m.group(1)), WINDOWS)
            member = m.group(1) or ""
            major = int(m.group(2))
            if family == CUBLAS:
                major = _cuda_major_from_dll_suffix(m.group(2))
                member = "Lt" if member else ""
            else:
                member = member.lower()
                if not _known_cudnn_member(major, member):
                    return None
            return LibName(key, family, member, major, WINDOWS)
    for family, rx in _LINUX:
        m = rx.match(filename)
        if m:
            if family == CUDART:
                major = int(m.group(1))
                return LibName(f"libcudart.so.{major}", family, "", major, LINUX)
            member = m.group(1) or ""
            major = int(m.group(2))
            if family == CUDNN and not _known_cudnn_member(major, member):
                return None
            base = "libcublas" if family == CUBLAS else "libcudnn"
            return LibName(f"{base}{member}.so.{major}", family, member, major, LINUX)
    return None


def _known_cudnn_member(major: int, member: str) -> bool:
    known = CUDNN_MEMBERS.get(major)
    if known is None:  # a future major: accept its names, the gate judges versions
        return True
    return member in known or member in CUDNN_OPTIONAL_MEMBERS.get(major, ())


def key_for(family: str, member: str, major: int, platform: str) -> str:
    """The file name torch loads for a library (inverse of :func:`parse`)."""
    if platform == WINDOWS:
        if family == CUDART:
            return f"cudart64_{major * 10 if major == 11 else major}.dll"
        if family == CUBLAS:
            return f"cublas{member}64_{major}.dll"
        return f"cudnn{member}64_{major}.dll"
    base = {CUDART: "libcudart", CUBLAS: "libcublas", CUDNN: "libcudnn"}[family]
    return f"{base}{member}.so.{major}"


def cudnn_keys(major: int, platform: str, optional: bool = False) -> list[str]:
    members = list(CUDNN_MEMBERS.get(major, ("",)))
    if optional:
        members += CUDNN_OPTIONAL_MEMBERS.get(major, ())
    return [key_for(CUDNN, m, major, platform) for m in members]


def cuda_keys(major: int, platform: str) -> list[str]:
    return [key_for(CUDART, "", major, platform), key_for(CUBLAS, "", major, platform),
            key_for(CUBLAS, "Lt", major, platform)]


def is_library_file(filename: str) -> bool:
    """Any shared library, managed or not (used to list what a source leaves out)."""
    lower = filename.lower()
    return lower.endswith(".dll") or ".so" in lower and re.search(r"\.so(\.\d+)*$", lower) is not None


# Strings a cuDNN binary carries for the cuBLAS it loads at run time: they reveal the
# CUDA major a cuDNN build targets when neither the folder nor the wheel name says it.
CUBLAS_NAME_IN_BINARY = re.compile(rb"(?:cublasLt64_(\d+)\.dll|libcublasLt\.so\.(\d+))")


def cuda_major_from_binary(data: bytes) -> int | None:
    found = set()
    for m in CUBLAS_NAME_IN_BINARY.finditer(data):
        if m.group(1):
            found.add(_cuda_major_from_dll_suffix(m.group(1).decode()))
        else:
            found.add(int(m.group(2)))
    return found.pop() if len(found) == 1 else None
