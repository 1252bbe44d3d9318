"""Recovery at start: transactions a crash interrupted are rolled back or forward from their
journals (engine/txn.py); a journal too damaged to read is set aside and its target marked
mixed until a revert; an interrupted standby preparation is thrown away."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from . import mixed, standby, writes
from ..errors import TKError
from .state import TARGET_NAME_RX, log_event, target_lock
from .txn import STAGED, Change, damaged, pending, recover
from .records import JsonObject

if TYPE_CHECKING:
    from .core import Engine


def recover_all(eng: Engine) -> list[str]:
    """Finish transactions a crash interrupted. Returns one line per recovery."""
    out = []
    for j in pending(eng.home):
        name = j.get("target", "?")
        # an unreadable journal may carry a name that is no target's: set aside unlocked
        lock = target_lock(eng.home, name) if TARGET_NAME_RX.match(name) else contextlib.nullcontext()
        with lock:
            for jj in pending(eng.home):  # re-read under the lock
                if jj.get("target") != name:
                    continue
                how = recover(eng.home, jj, functools.partial(_commit_from_journal, eng))
                op = jj.get("op", "?")
                if how == "rolled back":
                    msg = (f"recovered target '{name}': an interrupted {op} was rolled back; "
                           "the target is exactly as it was before")
                elif how == "rolled forward":
                    msg = (f"recovered target '{name}': an interrupted {op} had put every file "
                           "in place; it was completed")
                else:
                    msg = (f"recovered target '{name}': its journal was unreadable "
                           f"({jj['corrupt']}); it was set aside as {jj['_set_aside']}")
                    _discard_staged(eng, name)
                    if not mixed.whole(eng, name):
                        msg += f"\n{mixed.mixed_message(name)}"
                log_event(eng.home, "recovered", target=name, op=op, how=how)
                if how == "rolled back":
                    writes.refresh_stats(eng, name)
                out.append(msg)
    if out or damaged(eng.home):
        writes.gc_backups(eng)
    st = eng.state.read() if standby.interrupted(eng.home) else None
    for name in standby.recover(eng.home, lambda t: (st["targets"].get(t) or {}).get("site_packages")):
        out.append(f"target '{name}': an interrupted standby preparation was thrown away "
                   "(the target's files were not touched)")
    return out


def _discard_staged(eng: Engine, name: str) -> None:
    """Remove the staged copies an unreadable journal's transaction left beside the
    target's libraries (only our own temporary names)."""
    st = eng.state.read()
    if name not in st["targets"]:
        return
    try:
        info = eng.inspect(name, st["targets"][name], st["overlays"].get(name))
    except TKError:
        return
    for d in {(info.site_packages / lf.rel).parent for lf in info.libs.values()}:
        for p in d.glob(f"*{STAGED}"):
            with contextlib.suppress(OSError):
                p.unlink()


def _commit_from_journal(eng: Engine, j: JsonObject, changes: list[Change]) -> None:
    writes.commit(eng, j["target"], j["op"], Path(j["root"]), j["meta"], changes)
