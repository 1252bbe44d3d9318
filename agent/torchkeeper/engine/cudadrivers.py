"""The minimum NVIDIA driver each CUDA release needs, as data.

Source: NVIDIA, CUDA Toolkit Release Notes, "CUDA Driver" section, Table 2 ("CUDA Toolkit and
Minimum Required Driver Version for CUDA Minor Version Compatibility") and Table 3 ("CUDA Toolkit
and Corresponding Driver Versions"):
https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html#id5

Two rules there. Minor-version compatibility: every CUDA 11.x runtime runs on a driver
>= 450.80.02 (Linux) / 452.39 (Windows), every 12.x on >= 525.60.13 / 528.33, every 13.x on
>= 580 (most features; PTX JIT and a few APIs need the release's own driver). The driver that
shipped with each release (its "toolkit driver") is what NVML reports as a CUDA version >= it.
"""

from __future__ import annotations

from . import libs
from .records import JsonObject

# CUDA major -> (Linux, Windows) minimum driver for minor-version compatibility (Table 2)
MINOR_COMPAT = {
    11: ("450.80.02", "452.39"),
    12: ("525.60.13", "528.33"),
    13: ("580", "580"),
}

# CUDA major.minor -> (Linux, Windows) driver shipped with the release, GA (Table 3)
TOOLKIT_DRIVER = {
    "11.8": ("520.61.05", "520.06"),
    "12.0": ("525.60.13", "527.41"),
    "12.1": ("530.30.02", "531.14"),
    "12.2": ("535.54.03", "536.25"),
    "12.3": ("545.23.06", "545.84"),
    "12.4": ("550.54.14", "551.61"),
    "12.5": ("555.42.02", "555.85"),
    "12.6": ("560.28.03", "560.76"),
    "12.8": ("570.26", "570.65"),
    "12.9": ("575.51.03", "576.02"),
    "13.0": ("580.65.06", "580.88"),
}


def _nums(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def _pick(pair: tuple[str, str], platform: str) -> str:
    return pair[1] if platform == libs.WINDOWS else pair[0]


def minimum(cuda: str, platform: str) -> JsonObject:
    """What a CUDA major.minor needs: {"compat": driver for minor-version compatibility,
    "toolkit": the release's own driver or None when the table lacks it}."""
    mm = ".".join(cuda.split(".")[:2])
    major = int(mm.split(".")[0])
    compat = MINOR_COMPAT.get(major)
    toolkit = TOOLKIT_DRIVER.get(mm)
    return {"compat": _pick(compat, platform) if compat else None,
            "toolkit": _pick(toolkit, platform) if toolkit else None}


def driver_at_least(driver: str | None, need: str | None) -> bool | None:
    """Whether driver version ``driver`` ('551.86') is >= ``need``; None when either is unknown."""
    if not driver or not need:
        return None
    return _nums(driver) >= _nums(need)
