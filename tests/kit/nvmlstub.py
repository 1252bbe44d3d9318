"""A fake NVIDIA driver for tests: builds tests/nvml_stub/nvml_stub.c into libnvidia-ml.so.1.

Real pynvml loads it with ``CDLL("libnvidia-ml.so.1")``, so the process under test must start with
``LD_LIBRARY_PATH=<stub dir>`` (setting it from inside Python is too late for the loader) and
``TK_NVML_STUB_FILE=<answers file>``; the stub re-reads the file at every nvmlInit.
See the C file's header for the file format; :func:`write_answers` writes one.

Use the session fixture by importing it into a test module: ``from nvmlstub import nvml_stub``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).parents[1] / "nvml_stub" / "nvml_stub.c"
LIB_NAME = "libnvidia-ml.so.1"


def build_stub(out_dir) -> Path:
    """Compile the stub into ``out_dir/libnvidia-ml.so.1`` and return its path.

    Reuses an existing build newer than the source. Raises RuntimeError when gcc is missing or
    fails (with gcc's output). Written under a temporary name and renamed, so parallel builders
    (pytest-xdist workers sharing a folder) never see half a library.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIB_NAME
    if lib.exists() and lib.stat().st_mtime >= SOURCE.stat().st_mtime:
        return lib
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: it is needed to build the NVML stub")
    tmp = out_dir / f".{LIB_NAME}.{os.getpid()}.tmp"
    cmd = [gcc, "-shared", "-fPIC", "-Wall", "-Wl,-soname," + LIB_NAME, "-o", str(tmp), str(SOURCE)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"building the NVML stub failed ({' '.join(cmd)}):\n{r.stdout}{r.stderr}")
    os.replace(tmp, lib)
    return lib


def write_answers(path, *, init_rc: int = 0, driver: str | None = "551.86", cuda: int | None = 12040,
                  gpus=(), **extra) -> Path:
    """Write a stub answers file atomically (a long-running reader never sees half of it).

    ``gpus``: (name, uuid) pairs, or (name, uuid, {"name_rc": 15}) triples ({"cc": "8.9"}: the
    compute capability the GPU answers).
    ``extra``: more ``key=value`` lines (driver_rc, cuda_rc, count_rc, shutdown_rc).
    """
    lines = [f"init_rc={init_rc}"]
    if driver is not None:
        lines.append(f"driver={driver}")
    if cuda is not None:
        lines.append(f"cuda={cuda}")
    lines += [f"{k}={v}" for k, v in extra.items()]
    for g in gpus:
        name, uuid, *rest = g
        rcs = rest[0] if rest else {}
        lines.append("gpu=" + "|".join([name, uuid] + [f"{k}={v}" for k, v in rcs.items()]))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


@pytest.fixture(scope="session")
def nvml_stub(tmp_path_factory) -> Path:
    """The folder holding the built ``libnvidia-ml.so.1`` (put it on LD_LIBRARY_PATH)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the NVML stub is a Linux shared library")
    if shutil.which("gcc") is None:  # part of the test setup: fail, never skip
        pytest.fail("gcc not found: cannot build the NVML stub (tests/setup-system.sh installs it)")
    return build_stub(tmp_path_factory.mktemp("nvml_stub")).parent
