"""What the operating system says about the installed NVIDIA driver, without asking the GPU.

NVML (``nvmlInit`` and a handle per GPU) wakes a sleeping discrete GPU on Optimus/hybrid
laptops: 20-25 W for nothing, every poll. The agent therefore polls only this -- the loaded
kernel module's version on Linux (``/sys/module/nvidia/version``, else
``/proc/driver/nvidia/version``), the size and time of ``nvml.dll`` and ``nvcuda.dll`` in
System32 on Windows (a driver update replaces them) -- and asks NVML only at start, when this
changed, or when a gate or ``doctor`` needs the GPU itself. None: nothing the OS shows (no
NVIDIA driver loaded); then the agent does not poll NVML either.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import testing

LINUX = ("/sys/module/nvidia/version", "/proc/driver/nvidia/version")


def _windows() -> tuple[str, ...]:
    root = Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32"
    return (str(root / "nvml.dll"), str(root / "nvcuda.dll"))


def sources() -> tuple[str, ...]:
    """The files this looks at, in order."""
    test = testing.driver_signal_file()
    if test:
        return (test,)
    return _windows() if os.name == "nt" else LINUX


def current() -> tuple | None:
    """An identity of the installed driver: it changes when the driver does. Cheap: a stat
    and, for the small kernel files, their text (sysfs and procfs report size 0)."""
    out = []
    for p in sources():
        try:
            st = os.stat(p)
        except OSError:
            continue
        text = b""
        if not p.lower().endswith(".dll"):
            try:
                with open(p, "rb") as f:   # sysfs/procfs or the test's file: a few hundred bytes
                    text = f.read(64 << 10)
            except OSError:
                continue
        out.append((p, st.st_size, st.st_mtime_ns, st.st_ino, hashlib.sha256(text).hexdigest()[:16]))
        if os.name != "nt":
            break   # on Linux the first file that answers is the signal
    return tuple(out) or None


def describe() -> str:
    """For doctor: which signal is used."""
    sig = current()
    if sig is None:
        return ("none: no NVIDIA driver the OS shows (" + ", ".join(sources()) + "); "
                "NVML is asked only at start")
    return ("the OS: " + ", ".join(s[0] for s in sig) +
            " (NVML only at start, when this changes, or when a check needs the GPU)")
