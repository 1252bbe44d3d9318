"""Targets: adding one (a name a user recognises, one per environment), removing one (never
with an overlay in place unless forced), and choosing a bundle for one or all (`use`: the gate's
file-level rules run first, without hashing; a bundle it refuses is never bound)."""

from __future__ import annotations

import re
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from . import gate, standby, target as targetmod, writes
from ..errors import NotFound, Refused, TKError, UsageError
from .records import UseResult
from .state import TARGET_NAME_RX, log_event, target_lock
from .txn import damaged
from .records import Manifest, StateData, TargetRecord
from ..i18n import _

if TYPE_CHECKING:
    from .core import Engine


def add_target(eng: Engine, path: str, name: str | None = None,
               exist_ok: bool = False) -> tuple[str, TargetRecord, targetmod.TargetInfo]:
    """``exist_ok``: the same environment already added under this very name is no error
    (what a configuration tool's second run asks); under another name it still is."""
    info = targetmod.inspect(path)
    sp = str(info.site_packages)
    if name is None:
        name = _default_target_name(Path(path).expanduser().resolve(), info.site_packages)
    name = unicodedata.normalize("NFC", name)
    if not TARGET_NAME_RX.match(name):
        raise UsageError(_("target name %(name)r is not allowed") % {"name": name[:80]},
                         _("use letters (any script), digits, '.', '_' or '-', starting with "
                           "a letter or digit, at most 64, no '..' and no Windows device "
                           "name (CON, NUL, COM1, ...), e.g. --name a1111"))
    with eng.state.edit() as st:
        for other, t in st["targets"].items():
            if t["site_packages"] == sp:
                if exist_ok and other == name:
                    return other, t, info
                raise UsageError(_("%(sp)s is already target '%(other)s'") % {"sp": sp, "other": other},
                                 _("each environment is added once; see `torchkeeper target list`"))
        name = _numbered(name, st["targets"])
        st["targets"][name] = {"path": str(Path(path).expanduser().resolve()),
                               "site_packages": sp, "bundle": _default_for(eng, name, info, st),
                               "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        rec = st["targets"][name]
    log_event(eng.home, "target added", target=name, path=sp)
    return name, rec, info


def remove_target(eng: Engine, name: str, force: bool = False) -> None:
    eng.target(name)
    with target_lock(eng.home, name), eng.state.edit() as st:
        if name not in st["targets"]:
            eng.target(name)
        if (name in st["overlays"] or damaged(eng.home, name)) and not force:
            what = ("has an overlay applied" if name in st["overlays"] else
                    "is mixed (an interrupted transaction's journal was unreadable)")
            raise UsageError(_("target '%(name)s' %(what)s") % {"name": name, "what": what},
                             _("revert it first (torchkeeper revert %(name)s), or pass "
                               "--force to forget it and keep its files as they are") % {"name": name})
        sp = st["targets"].pop(name)["site_packages"]
        st["overlays"].pop(name, None)
        standby.drop(eng.home, name, sp)
    writes.gc_backups(eng)
    log_event(eng.home, "target removed", target=name)


def use(eng: Engine, ref: str, target: str | None = None) -> UseResult:
    """Choose bundle ``ref`` for one target, or for every target it fits (and, as the
    default, for targets added later). The gate's file-level rules run without hashing:
    a bundle it refuses is never bound."""
    m = eng.bundles.get(ref)
    with eng.state.edit() as st:
        if target is not None and target not in st["targets"]:
            eng.target(target)
        names = [target] if target is not None else sorted(st["targets"])
        res = UseResult(m)
        for n in names:
            why = _refusal(eng, n, m, st)
            if why is None:
                res.bound.append(n)
                if st["targets"][n].get("bundle") != m["id"]:
                    res.changed.append(n)
            else:
                res.skipped[n] = why
        if target is not None and res.skipped:
            raise Refused(
                _("target '%(target)s': the compatibility gate refuses bundle '%(name)s': %(skipped)s")
                % {"target": target, "name": m["name"], "skipped": res.skipped[target]},
                _(
                    "choose a bundle that fits (`torchkeeper suggest` or "
                    "`torchkeeper plan %(target)s --bundle B` explains), or create "
                    "one for it"
                )
                % {"target": target},
            )
        if target is None:
            res.default_changed = st.get("default_bundle") != m["id"]
            st["default_bundle"] = m["id"]
        for n in res.bound:
            st["targets"][n]["bundle"] = m["id"]
    log_event(eng.home, "use", bundle=m["id"], targets=res.bound, skipped=res.skipped or None)
    return res


def _default_for(eng: Engine, name: str, info, st: StateData) -> str | None:
    """The bundle `use` chose for every target, if it fits this new one."""
    bid = st.get("default_bundle")
    try:
        m = eng.bundles.get(bid) if bid else None
    except NotFound:
        return None
    if m is None or gate.plan(name, info, m, None, None, hash_current=False).refusals:
        return None
    return bid


def _refusal(eng: Engine, name: str, m: Manifest, st: StateData) -> str | None:
    """Why the gate refuses bundle m for this target (None: it fits), without hashing."""
    try:
        info = eng.inspect(name, st["targets"][name], st["overlays"].get(name))
    except TKError as e:
        return e.message
    p = gate.plan(name, info, m, st["overlays"].get(name), None, hash_current=False)
    return p.refusals[0].message if p.refusals else None


def _default_target_name(path: Path, sp: Path) -> str:
    """A name a user recognises: the app folder ('stable-diffusion-webui', 'ComfyUI-便携'), not
    'venv'. Always one TARGET_NAME_RX accepts, whatever the folder is called."""
    p = path
    generic = {
        "venv",
        ".venv",
        "python_embeded",
        "python_embedded",
        "site-packages",
        "lib",
        "env",
        "python",
        "system",
        "torch",
        "installer_files",
    }
    while p.name.lower() in generic or p.name.lower().startswith("python3") and p.parent != p:
        p = p.parent
    return _valid_name(p.name)


def _valid_name(text: str) -> str:
    """text made into a valid target name: NFC (a macOS folder name is decomposed), '-' for
    anything else, no '..', no leading/trailing punctuation, at most 64 characters."""
    text = unicodedata.normalize("NFC", text)
    name = "".join(ch if (ch.isalnum() or ch in "._-") and ord(ch) < 0x10000 else "-" for ch in text)
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name))
    for cand in (name, "target-" + name):
        cand = re.sub(r"^[\W_]+", "", cand)[:64].rstrip("-._")
        if TARGET_NAME_RX.match(cand):
            return cand
    return "target"


def _numbered(base: str, taken) -> str:
    """base, or base-2, base-3 ... (shortened to stay a valid name) when base is taken."""
    name, i = base, 2
    while name in taken:
        suffix = f"-{i}"
        name = base[: 64 - len(suffix)].rstrip("-._") + suffix
        i += 1
    return name
