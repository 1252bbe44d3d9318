"""Whether a target is whole: after an unreadable journal (a crash with the journal torn),
nothing says which files a transaction had written, so every library is judged from its bytes
alone -- the overlay's where one is recorded, else RECORD's -- and any file nobody lists that
holds a bundle's bytes is a sibling an interrupted apply added."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TKError
from .fsutil import hash_many, sha256_file
from .records import StateData
from ..i18n import _

if TYPE_CHECKING:
    from .core import Engine


def mixed_message(name: str) -> str:
    return _("target '%(name)s' is mixed (an interrupted transaction's journal was unreadable): "
             "run `torchkeeper revert` (stock copies are kept)") % {"name": name}


def whole(eng: Engine, name: str, st: StateData | None = None) -> bool:
    """Whether every library of a target is what the state says, judged from the files
    alone: each one the overlay's bytes where one is recorded, else RECORD's, and no
    file nobody lists holding a bundle's bytes (a sibling an interrupted apply added)."""
    st = st or eng.state.read()
    if name not in st["targets"]:
        return False
    overlay = st["overlays"].get(name)
    try:
        info = eng.inspect(name, st["targets"][name], overlay)
    except TKError:
        return False
    want = {lf.rel: lf.stock_sha256 for lf in info.libs.values() if lf.stock_sha256}
    want.update({rel: f.get("sha256") for rel, f in (overlay or {}).get("files", {}).items()})
    now = hash_many(info.site_packages / rel for rel in {*want, *(lf.rel for lf in info.libs.values())})
    if any(now.get(info.site_packages / rel, (None,))[0] != sha for rel, sha in want.items()):
        return False
    return not ours_unlisted(eng, info, want, now)


def ours_unlisted(eng: Engine, info, listed, hashed=None) -> list[str]:
    """Libraries no RECORD and no overlay lists whose bytes are a cached bundle's."""
    ours = {f.get("sha256") for m in eng.bundles.all() for f in m["files"] if isinstance(f, dict)}
    out = []
    for lf in info.libs.values():
        p = info.site_packages / lf.rel
        if lf.rel in listed or not p.is_file():
            continue
        sha = (hashed or {}).get(p, (None,))[0] or sha256_file(p)
        if sha in ours:
            out.append(lf.rel)
    return out
