"""What a target is now: patched, drifted, stock, incompatible or missing, and why -- read
from its files (stat data against the overlay record; with ``full``, hashes) -- for `status`,
`verify` and every check the agent makes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import gate, hold, libs, mixed, standby, target as targetmod, versions
from ..errors import NotFound, TKError
from .fsutil import hash_many, sha256_file, stat_key
from .records import (DRIFTED, INCOMPATIBLE, MISSING, PATCHED, STOCK, AppliedRef, BundleRef, Status,
                      TargetStatus, last_gain)
from .state import log_event
from .txn import damaged, pending
from .records import JsonObject, OverlayFile, StatKey, StateData

if TYPE_CHECKING:
    from .core import Engine


def target_state(eng: Engine, name: str, full: bool = False, st: StateData | None = None,
                 with_versions: bool = False) -> TargetStatus:
    st = st or eng.state.read()
    rec = st["targets"][name]
    overlay = st["overlays"].get(name)
    out = TargetStatus(name, rec["path"], rec["site_packages"], last_bench=last_gain(rec))
    held = hold.active(eng.home, name)
    if held:
        out.held = {**held[0].to_dict(), "describe": held[0].describe()}
    try:
        info = eng.inspect(name, rec, overlay)
    except TKError as e:
        out.state, out.problems = MISSING, [e.message]
        return out
    out.torch_version, out.torch_cuda, out.platform = info.torch_version, info.torch_cuda, info.platform
    m = None
    try:
        m = eng.desired_bundle(name, st)
    except NotFound as e:
        out.problems.append(e.message)
    if m is not None:
        out.bundle = BundleRef(m["id"], m["name"], m.get("cuda"), m.get("cudnn"))
    drift = []
    if overlay:
        hashed = hash_many(info.site_packages / rel for rel in overlay["files"]) if full else {}
        for rel, f in sorted(overlay["files"].items()):
            p = info.site_packages / rel
            if not p.is_file():
                drift.append(f"{rel} is missing")
                continue
            if full:
                if hashed[p][0] != f["sha256"]:
                    drift.append(f"{rel} changed")
            elif not still_holds(p, f)[0]:
                drift.append(f"{rel} changed")
    refused = None
    if m is not None:
        refusals = [r for r in gate.check(info, m, None) if r.level == "refuse"]
        if refusals:
            refused = refusals[0]
    if damaged(eng.home, name) and not mixed.whole(eng, name, st):
        state = DRIFTED
        out.problems.append(mixed.mixed_message(name))
    elif overlay and not drift:
        state = PATCHED
    elif refused is not None and (overlay or m is not None):
        state = INCOMPATIBLE
        out.problems.append(refused.message)
    elif overlay:
        state = DRIFTED
        out.problems.extend(drift)
    else:
        state = STOCK
        for lf in info.libs.values():  # quick: sizes against RECORD; full: hashes
            p = info.site_packages / lf.rel
            if lf.stock_sha256 is None:
                continue
            size_differs = lf.stock_size is not None and p.stat().st_size != lf.stock_size
            if size_differs or (full and sha256_file(p) != lf.stock_sha256):
                drift.append(f"{lf.rel} differs from {lf.stock_source or targetmod.FROM_RECORD} "
                             "(not applied by torchkeeper)")
        if drift:
            state = DRIFTED
            out.problems.extend(drift)
    out.state = state
    out.cudnn_stock = (overlay or {}).get("cudnn_stock") if state == PATCHED else info.cudnn_build
    out.cudnn_now = _cudnn_now(eng, info, state, overlay, m)
    if out.cudnn_now is None or out.cudnn_stock is None:
        out.cudnn_unknown = _cudnn_unknown(info, out.cudnn_now is None)
    if overlay:
        try:
            out.standby = standby.describe(eng.home, name, info.site_packages, eng.agent_config())
        except OSError as e:
            out.standby = {"state": "unreadable", "why": str(e)}
    if overlay:
        out.applied = AppliedRef(overlay["bundle"], overlay.get("bundle_name"), overlay.get("applied"),
                                 len(overlay["files"]))
    if with_versions:
        out.info = info
    return out


def _cudnn_now(eng: Engine, info, state, overlay, m) -> str | None:
    if state == PATCHED and overlay:
        try:
            om = eng.bundles.get(overlay["bundle"])
            if om.get("cudnn"):
                return om["cudnn"]
        except NotFound:
            pass
    if info.platform == libs.WINDOWS:
        main = [f for f in info.libs.values() if f.family == libs.CUDNN and f.member == ""]
        if main:
            v = versions.pe_version(info.site_packages / main[0].rel)
            if v and v.get("FileVersion"):
                return versions.dotted(v["FileVersion"])
    if state == STOCK:
        return info.cudnn_build
    return None


def verify(eng: Engine, names: list[str] | None = None, full: bool = False) -> list[TargetStatus]:
    st = eng.state.read()
    names = names or sorted(st["targets"])
    for n in names:
        if n not in st["targets"]:
            eng.target(n)
    out = []
    for n in names:
        s = target_state(eng, n, full=full, st=st)
        s.in_desired_state = s.state in (PATCHED, STOCK)
        out.append(s)
    log_event(eng.home, "verified", full=full, results={s.name: s.state for s in out})
    return out


def status(eng: Engine) -> Status:
    st = eng.state.read()
    return Status([target_state(eng, n, st=st) for n in sorted(st["targets"])],
                  _driver_info(eng), [j.get("target") for j in pending(eng.home)])


def _driver_info(eng: Engine) -> JsonObject | None:
    """The driver as NVML reports it, its state included (no driver, not loaded, reboot
    needed, ok); None only when no query was possible at all."""
    d = eng.driver()
    return d.to_dict() if d is not None and hasattr(d, "to_dict") else None


def _cudnn_unknown(info, now_unknown: bool) -> str:
    """Why status cannot name a cuDNN version, in words a user can act on."""
    cudnn = [lf for lf in info.libs.values() if lf.family == libs.CUDNN]
    folders = sorted({str(Path(lf.rel).parent) for lf in info.libs.values()}) or ["torch/lib"]
    present = [lf for lf in cudnn if (info.site_packages / lf.rel).exists()]
    if not cudnn or not present:
        return (f"{', '.join(folders[:2])} has no cuDNN library right now "
                "(pip reinstalling? look again when it is done)")
    if now_unknown:
        return ("the cuDNN in place is neither stock nor the overlay's and names no version "
                "readable here (`torchkeeper verify --full` says which files differ)")
    return "torch names no cuDNN build (no nvidia-cudnn pin, no version resource)"


def still_holds(p: Path, f: OverlayFile) -> tuple[bool, StatKey]:
    """Whether p still holds the bytes an overlay record f describes, and p's stat data.
    The recorded stat data says yes, another size says no; anything else is hashed: a
    rolled-back transaction puts back copies (new inodes) of our own bytes."""
    cur = stat_key(p)
    if cur == {k: f.get(k) for k in cur}:
        return True, cur
    if cur["size"] != f.get("size"):
        return False, cur
    return sha256_file(p) == f["sha256"], cur
