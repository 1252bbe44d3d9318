"""Apply and revert: a plan (engine/gate.py) carried out as one transaction (engine/txn.py),
recorded in the state as the overlay (which bundle, each file's stock and foreign backups), so
that revert can always put the stock bytes back. Also the agent's re-apply, which yields to
whatever a person did since it decided."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import gate, hold, mixed, standby, target as targetmod
from .bundle import describe
from ..errors import OperationFailed, Refused, TKError
from .fsutil import sha256_file, stat_key
from .records import Result, TargetStatus
from .state import log_event, target_lock, warn
from .status import still_holds
from .txn import BackupStore, Change, Transaction, damaged, pending, resolve_damaged
from .records import JsonObject, Manifest, Overlay, OverlayFile, StateData
from ..i18n import _

if TYPE_CHECKING:
    from .core import Engine


def apply(eng: Engine, name: str, force: bool = False, dry_run: bool = False, progress=None) -> Result:
    eng.target(name)
    with target_lock(eng.home, name):
        if damaged(eng.home, name) and not mixed.whole(eng, name):
            # an overlay over it would record its bundle's bytes as stock: revert first
            raise OperationFailed(
                _("%(problem)s; nothing was changed") % {"problem": mixed.mixed_message(name)},
                _("run `torchkeeper revert %(name)s` first (stock copies are kept)") % {"name": name},
            )
        p, info, m = eng.plan(name)
        if p.refusals:
            raise Refused(
                _("target '%(name)s': the compatibility gate refuses bundle '%(bundle)s': %(why)s")
                % {"name": name, "bundle": p.bundle_name, "why": p.refusals[0].message},
                p.refusals[0].hint,
                list(p.reasons),
            )
        if p.needs_force and not force:
            raise Refused(
                _("target '%(name)s': %(why)s") % {"name": name, "why": p.needs_force[0].message},
                p.needs_force[0].hint,
                list(p.reasons),
            )
        if dry_run:
            return Result(
                name, True, "dry run", f"would change {len(p.changes)} file(s) of '{name}'", p.to_dict()
            )
        if progress is not None and hasattr(progress, "set_total"):
            progress.set_total(sum(s.new_size for s in p.changes))
        overlay = eng.state.read()["overlays"].get(name)
        if not p.changes and overlay and overlay.get("bundle") == m["id"]:
            return Result(
                name,
                True,
                "already applied",
                f"'{name}' already has {describe(m)} ({m['name']})",
                p.to_dict(),
            )
        changes, meta = _apply_changes(eng, p, info, m, overlay)
        via = _run_apply(eng, name, info, m, overlay, changes, meta, progress)
        how = (
            f"{via['standby']} linked from the standby, {via['copy']} copied"
            if via["standby"]
            else f"{len(changes)} file(s) replaced"
        )
        return Result(
            name,
            True,
            "applied",
            f"applied {describe(m)} ({m['name']}) to '{name}': {how}, backed up and verified",
            p.to_dict(),
            via=via,
            touched=[str(info.site_packages / c.rel) for c in changes],
        )


def _apply_changes(
    eng: Engine, p: gate.Plan, info, m: Manifest, overlay: Overlay | None
) -> tuple[list[Change], JsonObject]:
    """The plan as the transaction's changes, and the overlay record's meta (each file's
    stock and foreign backups carried over from the overlay before)."""
    prev_files = (overlay or {}).get("files", {})
    changes, meta_files = [], {}
    for s in p.steps:
        prev = prev_files.get(s.rel, {})
        meta_files[s.rel] = {
            "key": s.key,
            "action": s.action if s.action != gate.IN_PLACE else (prev.get("action") or gate.REPLACE),
            "prior": s.prior,
            "stock_sha256": s.stock_sha256 or prev.get("stock_sha256"),
            "stock_size": s.stock_size or prev.get("stock_size"),
            "stock_source": s.stock_source or prev.get("stock_source"),
            "stock_backup": prev.get("stock_backup"),
            # stock in place now (a reinstall undid the overlay): a foreign file
            # replaced before is gone, and revert goes back to stock
            "foreign_backup": None if s.prior == "stock" else prev.get("foreign_backup"),
            "sha256": s.new_sha256,
        }
        if s.action in (gate.REPLACE, gate.ADD, gate.FOREIGN):
            changes.append(
                Change(
                    s.rel,
                    str(eng.bundles.file_path(m, s.key)),
                    s.new_sha256,
                    s.new_size,
                    s.current_sha256,
                    s.current_stat,
                )
            )
        elif s.action == gate.IN_PLACE and s.prior == "stock" and s.stock_sha256:
            # stock bytes that equal the bundle's: nothing to restore on revert
            meta_files[s.rel]["stock_backup"] = None
            meta_files[s.rel]["same_as_stock"] = True
    # files of an earlier overlay this bundle no longer has go back to stock
    for rel, prev in prev_files.items():
        if rel not in meta_files:
            c = _restore_change(eng, info, rel, prev)
            if _needed(c):
                changes.append(c)
    meta = {
        "bundle": m["id"],
        "bundle_name": m["name"],
        "files": meta_files,
        "torch_version": info.torch_version,
        "torch_cuda": info.torch_cuda,
        "cudnn_stock": (overlay or {}).get("cudnn_stock") or info.cudnn_build,
    }
    return changes, meta


def _run_apply(
    eng: Engine,
    name: str,
    info,
    m: Manifest,
    overlay: Overlay | None,
    changes: list[Change],
    meta: JsonObject,
    progress,
) -> JsonObject:
    """Run the apply transaction (linking from the standby where it can); returns how the
    files got there: {"standby": linked, "copy": copied, "why_copy": ...}."""
    why_copy = _offer_standby(eng, name, info, overlay, m, changes)
    t0 = time.time()
    tx = Transaction(eng.home, name, info.site_packages, "apply", changes, meta, progress=progress)
    try:
        tx.run(lambda t: commit(eng, name, "apply", t.root, t.meta, t.changes))
    except TKError as e:
        log_event(eng.home, "apply failed", target=name, bundle=m["id"], error=e.message)
        refresh_stats(eng, name)
        gc_backups(eng)
        raise
    linked = {c.new_sha256 for c in changes if c.link is not None}
    copied = [c for c in changes if c.src is not None and c.link is None]
    if linked:
        standby.after_commit(eng.home, name, {sha: True for sha in linked})
    if copied and why_copy is None:
        why_copy = "standby file changed"  # seen at the last moment, in the transaction
    via = {
        "standby": sum(c.link is not None for c in changes),
        "copy": len(copied),
        "why_copy": why_copy if copied else None,
    }
    gc_backups(eng)
    log_event(
        eng.home,
        "applied",
        target=name,
        bundle=m["id"],
        bundle_name=m["name"],
        files=len(changes),
        seconds=round(time.time() - t0, 3),
        via=via,
    )
    return via


def _offer_standby(eng: Engine, name, info, overlay, m, changes) -> str | None:
    """Let the transaction link standby files in where a repair puts back the overlay
    the standby was prepared for. Returns why (some) files will be copied instead."""
    if not any(c.src is not None for c in changes):
        return None
    if not overlay or overlay.get("bundle") != m["id"]:
        # another overlay's standby: its links would only make backups copies
        standby.drop(eng.home, name, info.site_packages)
        return "first apply" if not overlay else "another bundle"
    ready, why = standby.usable(eng.home, name, info.site_packages, m["id"], eng.agent_config())
    if why == "disk space below the standby floor":
        standby.drop(eng.home, name, info.site_packages)  # give the space back first
    for c in changes:
        f = ready.get(c.new_sha256) if c.src is not None else None
        if f is not None:
            c.link = {**f["identity"], "path": f["path"]}
    missing = [c for c in changes if c.src is not None and c.link is None]
    return (why or "no standby file for " + missing[0].rel) if missing else None


def _restore_change(eng: Engine, info, rel: str, prev: OverlayFile) -> Change:
    """What puts rel back as it was before the first overlay: the stock bytes, or the
    foreign bytes `apply --force` replaced (unless a reinstall has put stock back since)."""
    path = info.site_packages / rel
    st = stat_key(path) if path.is_file() else None
    cur = sha256_file(path) if st else None
    if prev.get("action") == gate.ADD:
        return Change(rel, None, None, None, cur, st)
    lf = next((f for f in info.libs.values() if f.rel == rel), None)
    stock = (
        (lf.stock_sha256 if lf else None)
        or prev.get("stock_sha256")
        or (prev.get("stock_backup") if prev.get("prior") == "stock" else None)
    )
    backups = BackupStore(eng.home)
    foreign = prev.get("foreign_backup")
    want = foreign if foreign and cur != stock else stock  # unless a reinstall put stock back
    if want and backups.has(want):
        return Change(rel, str(backups.path(want)), want, backups.path(want).stat().st_size, cur, st)
    if cur is not None and cur == want:
        return Change(rel, str(path), cur, path.stat().st_size, cur, st)
    if info.conda_prefix:
        hint = (
            "reinstall torch with conda: conda install --force-reinstall pytorch "
            f"(in the env {info.conda_prefix})"
        )
    else:
        hint = f"reinstall torch: pip install --force-reinstall --no-deps torch=={info.torch_version}"
    raise OperationFailed(
        _("no stock copy of %(path)s to restore (it was %(get)s before the overlay)")
        % {"path": path, "get": prev.get("prior", "unknown")},
        hint,
    )


def commit(eng: Engine, name: str, op: str, root: Path, meta: JsonObject, changes: list[Change]) -> None:
    """Record a finished transaction in the state (also used to roll forward)."""
    by_rel = {c.rel: c for c in changes}
    with eng.state.edit() as st:
        if op == "revert":
            st["overlays"].pop(name, None)
        else:
            st["overlays"][name] = _overlay_record(root, meta, by_rel)
            if name in st["targets"] and not st["targets"][name].get("bundle"):
                st["targets"][name]["bundle"] = meta["bundle"]


def _overlay_record(root: Path, meta: JsonObject, by_rel: dict[str, Change]) -> Overlay:
    files = {}
    for rel, fm in meta["files"].items():
        c = by_rel.get(rel)
        rec = dict(fm)
        if c is not None and c.backup:
            if fm.get("prior") == "stock":
                rec["stock_backup"] = c.backup
            elif fm.get("prior") == "foreign":
                rec["foreign_backup"] = c.backup
        p = root / rel
        rec["sha256"] = (c.new_sha256 if c else fm.get("sha256")) or sha256_file(p)
        rec.update(stat_key(p))
        files[rel] = rec
    return {
        "bundle": meta["bundle"],
        "bundle_name": meta.get("bundle_name"),
        "site_packages": str(root),
        "applied": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_version": meta.get("torch_version"),
        "torch_cuda": meta.get("torch_cuda"),
        "cudnn_stock": meta.get("cudnn_stock"),
        "files": files,
    }


def refresh_stats(eng: Engine, name: str) -> None:
    """After a rollback: files put back as copies of our own bytes get new stat data
    in the overlay record, so quick verification need not hash them again."""
    with eng.state.edit() as st:
        ov = st["overlays"].get(name)
        root = Path(ov["site_packages"]) if ov else None
        for rel, f in (ov or {}).get("files", {}).items():
            p = root / rel
            if not p.is_file():
                continue
            same, cur = still_holds(p, f)
            if same:
                f.update(cur)


def gc_backups(eng: Engine) -> None:
    """Remove backups nothing may need: not the state, not a journal, and nothing at all
    while a set-aside journal's target is not whole again (nobody can tell what it
    referenced). Never fails the command: what is left is collected next time."""
    try:
        st = eng.state.read()
        for p in damaged(eng.home):
            name = p.name.rpartition("@")[0]
            if name not in st["targets"] or mixed.whole(eng, name, st):  # forgotten, or whole again
                resolve_damaged(p)
        if damaged(eng.home):
            return
        keep = set()
        for ov in st["overlays"].values():
            for f in ov.get("files", {}).values():
                keep.update(x for x in (f.get("stock_backup"), f.get("foreign_backup")) if x)
        for j in pending(eng.home):
            for c in j.get("changes", []):
                keep.update(x for x in (c.get("backup"), c.get("old_sha256")) if x)
            if j.get("corrupt"):
                return
        BackupStore(eng.home).remove_unreferenced(keep)
    except (OSError, TKError) as e:
        warn(f"old backups were not cleaned up ({getattr(e, 'message', e)}); the next command retries")


def revert(eng: Engine, name: str, progress=None) -> Result:
    eng.target(name)
    with target_lock(eng.home, name):
        st = eng.state.read()
        if name not in st["targets"]:
            eng.target(name)
        overlay = st["overlays"].get(name)
        mixed = bool(damaged(eng.home, name))
        # its links to our files would also make the backups below copies
        standby.drop(eng.home, name, st["targets"][name]["site_packages"])
        if not overlay and not mixed:
            return Result(name, True, "nothing to revert", f"'{name}' has no overlay applied")
        info = eng.inspect(name, st["targets"][name], overlay)
        changes, foreign = [], []
        for rel, prev in sorted((overlay or {}).get("files", {}).items()):
            if prev.get("same_as_stock"):
                continue
            c = _restore_change(eng, info, rel, prev)
            if prev.get("foreign_backup") and c.new_sha256 == prev["foreign_backup"]:
                foreign.append(rel)
            if _needed(c):  # else already stock: a pip reinstall restored it
                changes.append(c)
        if mixed:
            changes += _unrecorded_restores(
                eng, info, {c.rel for c in changes} | set((overlay or {}).get("files", {}))
            )
        tx = Transaction(
            eng.home,
            name,
            info.site_packages,
            "revert",
            changes,
            {"bundle": (overlay or {}).get("bundle")},
            progress=progress,
        )
        try:
            tx.run(lambda t: commit(eng, name, "revert", t.root, t.meta, t.changes))
        except TKError as e:
            log_event(eng.home, "revert failed", target=name, error=e.message)
            refresh_stats(eng, name)
            gc_backups(eng)
            raise
        gc_backups(eng)
        log_event(eng.home, "reverted", target=name, files=len(changes), foreign=foreign)
        sources = sorted(
            {
                f.get("stock_source") or targetmod.FROM_RECORD
                for rel, f in (overlay or {}).get("files", {}).items()
                if rel not in foreign and f.get("action") != gate.ADD
            }
        )
        msg = (
            f"reverted '{name}' to the files it had before the overlay ({len(changes)} "
            f"restored, each checked against its stock hash: {', '.join(sources) or '-'})"
        )
        if foreign:
            msg += (
                f"; {len(foreign)} of them {'was' if len(foreign) == 1 else 'were'} foreign "
                f"(neither stock nor ours) and {'is' if len(foreign) == 1 else 'are'} back "
                f"as before: {', '.join(foreign)}"
            )
        return Result(
            name,
            True,
            "reverted",
            msg,
            foreign=foreign,
            touched=[str(info.site_packages / c.rel) for c in changes],
        )


def _unrecorded_restores(eng: Engine, info, done: set[str]) -> list[Change]:
    """For a target an unreadable journal left mixed: every library not yet handled that
    differs from RECORD goes back to stock from the backups, and every one no RECORD
    lists that holds a bundle's bytes is removed."""
    out = []
    listed = set(done)
    for lf in sorted(info.libs.values(), key=lambda f: f.rel):
        p = info.site_packages / lf.rel
        if lf.rel in done or not lf.stock_sha256:
            continue
        listed.add(lf.rel)
        if p.is_file() and sha256_file(p) == lf.stock_sha256:
            continue
        c = _restore_change(eng, info, lf.rel, {"prior": "stock"})
        if _needed(c):
            out.append(c)
    for rel in mixed.ours_unlisted(eng, info, listed):
        p = info.site_packages / rel
        out.append(Change(rel, None, None, None, sha256_file(p), stat_key(p)))
    return out


def reapply_if_still_wanted(eng: Engine, name: str, seen: TargetStatus, progress=None) -> Result:
    """Re-apply an undone overlay, for a decision taken on ``seen`` (a status read
    before this lock was taken). Under the target's lock the state is read again: a
    `revert`, `use` or `apply` that landed since wins, and nothing is written
    (action "not wanted", the message says why)."""
    eng.target(name)
    with target_lock(eng.home, name):
        st = eng.state.read()
        why = _changed_since(st, name, seen)
        held = hold.active(eng.home, name)
        if held and not why:  # `bench` swaps stock and bundle: its state is not drift
            why = f"{held[0].describe()} (torchkeeper {held[0].why})"
        if why:
            return Result(name, True, "not wanted", why)
        return apply(eng, name, progress=progress)


def _changed_since(st: StateData, name: str, seen: TargetStatus) -> str | None:
    """Why a re-apply decided on ``seen`` is no longer wanted, or None."""
    rec = st["targets"].get(name)
    overlay = st["overlays"].get(name)
    if rec is None:
        return f"target '{name}' was removed"
    if overlay is None:
        return f"'{name}' was reverted to stock after the agent decided to re-apply"
    if (
        seen.applied is None
        or overlay.get("bundle") != seen.applied.bundle
        or overlay.get("applied") != seen.applied.at
    ):
        return f"the overlay of '{name}' was applied again after the agent decided"
    if rec.get("bundle") != (seen.bundle.id if seen.bundle else None):
        return f"another bundle was chosen for '{name}' after the agent decided"
    return None


def _needed(c: Change) -> bool:
    """Whether a restoring change changes anything (the file may already be stock)."""
    if c.src is None:
        return c.old_sha256 is not None
    return c.old_sha256 != c.new_sha256
