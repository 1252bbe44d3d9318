"""The effects side of a decision's input: a target read once, as a decide.Snapshot, with the
signs of an install still writing it (read from the file system, never from a guess)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..engine.records import TargetStatus
from .decide import InstallSigns, Snapshot, State
from .watch import LibStats, _lib_stats, is_stash_of, nested_stash, relevant_top

_STATES = {s.value: s for s in State}


def snapshot(s: TargetStatus, held_by: str | None, signs: InstallSigns) -> Snapshot:
    return Snapshot(_STATES.get(s.state or "missing", State.MISSING), applied=s.applied is not None,
                    bundle=s.bundle.name if s.bundle else None, problems=tuple(s.problems),
                    install=signs, held_by=held_by)


def install_signs(site_packages: Path, lib_dirs, libs: list[str],
                  before: LibStats | None) -> tuple[InstallSigns, LibStats]:
    """(the signs of an install in progress, the library folders' stat data now). ``libs``:
    the library files torch loads (relative); ``before``: stat data from an earlier look (the
    debouncer's last, or the previous check's), to tell files still being written."""
    sp = Path(site_packages)
    stash = no_record = None
    born: list[float] = []   # when each sign appeared (its mtime): how old the install is
    try:
        entries = os.listdir(sp)
    except OSError:
        entries = []
    for e in sorted(entries):
        if _is_torch_stash(e):
            stash = stash or e
            born.append(_mtime(sp / e))
        elif e.endswith(".dist-info") and relevant_top(e) and not os.path.isfile(sp / e / "RECORD"):
            no_record = no_record or e
            born.append(_mtime(sp / e))
    nested = nested_stash(sp, lib_dirs)   # nvidia/~udnn beside nvidia/cudnn
    if nested:
        stash = stash or nested
        born.append(_mtime(sp / nested))
    missing = None
    if no_record or stash or not any(e.startswith("torch-") and e.endswith(".dist-info") for e in entries):
        # a library torch loads, gone while its wheel is replaced (not a user's deletion)
        missing = next((r for r in libs if not os.path.lexists(sp / r)), None)
    now = _lib_stats(sp, lib_dirs)
    growing = None
    if before:
        changed = sorted(p for p, st in now.items() if p in before and before[p] != st)
        growing = os.path.relpath(changed[0], sp) if changed else None
    born = [t for t in born if t]
    age = max(0.0, time.time() - min(born)) if born else 0.0
    return InstallSigns(stash, no_record, missing, growing, age), now


def _is_torch_stash(entry: str) -> bool:
    """pip's stash of torch/, nvidia/ or their dist-infos (~orch, ~orch-2.5.1.dist-info,
    ~vidia_cudnn_cu12-9.1.0.70.dist-info): another package's stash is not this target's install."""
    if not entry.startswith("~"):
        return False
    base = entry.split("-", 1)[0] if entry.endswith(".dist-info") else entry
    return any(is_stash_of(base, name) for name in ("torch", "nvidia")) or \
        any(base.startswith("~" + name[1:]) for name in ("torch", "nvidia_"))


def _mtime(p: Path) -> float:
    try:
        return os.lstat(p).st_mtime
    except OSError:
        return 0.0
