"""NVIDIA's library wheels on PyPI, as data: the one place that knows their names and layouts.

CUDA 11 and 12 wheels carry the CUDA major in the name (``nvidia-cudnn-cu12``,
``nvidia-cublas-cu12``, ``nvidia-cuda-runtime-cu12``) and keep each library in its own folder
(``nvidia/cudnn/bin/*.dll``, ``nvidia/cublas/lib/*.so.12``). For CUDA 13 the toolkit parts
dropped the suffix (``nvidia-cublas``, ``nvidia-cuda-runtime``) and share one merged folder
(``nvidia/cu13/bin/x86_64/*.dll``, ``nvidia/cu13/lib/*.so.13``); their ``-cu13`` names are
empty 0.0.1 stubs whose summary says DEPRECATED. cuDNN keeps the suffix (``nvidia-cudnn-cu13``).
"""

from __future__ import annotations

from . import libs
from ..i18n import _

CUDA_MAJORS = (11, 12, 13)

# family -> CUDA major -> the PyPI name that holds real libraries
PACKAGES = {
    libs.CUDNN: {11: "nvidia-cudnn-cu11", 12: "nvidia-cudnn-cu12", 13: "nvidia-cudnn-cu13"},
    libs.CUBLAS: {11: "nvidia-cublas-cu11", 12: "nvidia-cublas-cu12", 13: "nvidia-cublas"},
    libs.CUDART: {11: "nvidia-cuda-runtime-cu11", 12: "nvidia-cuda-runtime-cu12",
                  13: "nvidia-cuda-runtime"},
}

# names that exist on the index but hold no library (never downloaded)
STUBS = {13: ("nvidia-cublas-cu13", "nvidia-cuda-runtime-cu13")}

# the wheel folders the libraries are in (relative to site-packages), per CUDA major
FOLDERS = {
    libs.WINDOWS: {11: "nvidia/{lib}/bin", 12: "nvidia/{lib}/bin", 13: "nvidia/cu13/bin/x86_64"},
    libs.LINUX: {11: "nvidia/{lib}/lib", 12: "nvidia/{lib}/lib", 13: "nvidia/cu13/lib"},
}

# pip --platform values for each platform (x86-64 only: NVIDIA's Windows wheels are win_amd64)
PIP_PLATFORMS = {
    libs.WINDOWS: ("win_amd64",),
    libs.LINUX: ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64", "linux_x86_64"),
}


def package(family: str, cuda_major: int) -> str:
    """The PyPI name of a library family for a CUDA major."""
    try:
        return PACKAGES[family][cuda_major]
    except KeyError:
        from ..errors import UsageError

        raise UsageError(
            _("no NVIDIA wheel of %(get)s is known for CUDA %(cuda_major)s")
            % {"get": libs.FAMILY_TITLES.get(family, family), "cuda_major": cuda_major},
            _("use --cuda %(join)s") % {"join": " or ".join(map(str, CUDA_MAJORS))},
        ) from None


def is_stub(name: str, version: str, cuda_major: int) -> bool:
    """A placeholder release: a deprecated -cu13 name, or a 0.0.x version of a toolkit part
    whose real releases are numbered after the CUDA major."""
    if name in STUBS.get(cuda_major, ()):
        return True
    return version.startswith("0.")
