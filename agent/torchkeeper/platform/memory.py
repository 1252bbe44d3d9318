"""Give freed heap memory back to the OS after a burst of work (the dashboard stopping): glibc
keeps freed arenas for reuse, so a long-running agent's RSS would otherwise stay at its high
mark. Linux with glibc only (malloc_trim); elsewhere it does nothing."""

from __future__ import annotations

import gc
import sys


def trim() -> None:
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # musl, or no libc.so.6: nothing to give back this way
        pass
