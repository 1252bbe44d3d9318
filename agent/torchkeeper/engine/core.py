"""The engine: targets, plans, apply / revert / verify, status. Knows nothing of tray,
toasts or timers; the CLI and the agent both drive it."""

from __future__ import annotations

import atexit
import contextlib
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from . import gate, hold, libs, standby, target as targetmod, versions
from .bundle import Store, describe
from ..errors import NotFound, OperationFailed, Refused, TKError, UsageError
from .fsutil import hash_many, sha256_file, stat_key
from ..home import Home, get_home
from .state import TARGET_NAME_RX, StateStore, log_event, target_lock, warn
from .txn import STAGED, BackupStore, Change, Transaction, damaged, pending, recover, resolve_damaged

from .records import (DRIFTED, INCOMPATIBLE, MISSING, PATCHED, STOCK, AppliedRef, BundleRef, Status,
                      TargetStatus, UseResult, last_gain)


@dataclass
class Result:
    target: str
    ok: bool
    action: str                  # applied, already applied, reverted, ...
    message: str
    plan: dict | None = None
    foreign: list[str] | None = None  # revert: files put back as the foreign bytes they were
    via: dict | None = None      # apply: files linked from the standby / copied, and why copied
    touched: list[str] = field(default_factory=list)  # the paths the transaction wrote or removed

    def to_dict(self) -> dict:
        d = {"target": self.target, "ok": self.ok, "action": self.action, "message": self.message}
        if self.via is not None:
            d["via"] = self.via
        if self.plan is not None:
            d["plan"] = self.plan
        if self.foreign is not None:
            d["foreign"] = self.foreign
        return d


class Engine:
    def __init__(self, home: Home | None = None, driver_query=None):
        self.home = home or get_home()
        versions.use_cache_file(self.home.cache_dir / "versions.json")
        atexit.register(versions.save_cache)
        self.state = StateStore(self.home)
        self.bundles = Store(self.home)
        self._driver_query = driver_query
        self._driver = None
        self.config: dict | None = None  # the CLI and the agent set the effective config

    def agent_config(self) -> dict:
        """[agent]: the standby's settings live there (the agent prepares it)."""
        if self.config is None:
            from . import config as configmod

            self.config = configmod.defaults()
        return self.config.get("agent", {})

    # -- driver ----------------------------------------------------------------------
    def driver(self, refresh: bool = False):
        if self._driver is None or refresh:
            if self._driver_query is not None:
                self._driver = self._driver_query()
            else:
                from . import driver

                self._driver = driver.query()
        return self._driver

    # -- recovery --------------------------------------------------------------------
    def recover_all(self) -> list[str]:
        """Finish transactions a crash interrupted. Returns one line per recovery."""
        out = []
        for j in pending(self.home):
            name = j.get("target", "?")
            # an unreadable journal may carry a name that is no target's: set aside unlocked
            lock = target_lock(self.home, name) if TARGET_NAME_RX.match(name) else contextlib.nullcontext()
            with lock:
                for jj in pending(self.home):  # re-read under the lock
                    if jj.get("target") != name:
                        continue
                    how = recover(self.home, jj, self._commit_from_journal)
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
                        self._discard_staged(name)
                        if not self._whole(name):
                            msg += f"\n{self._mixed_message(name)}"
                    log_event(self.home, "recovered", target=name, op=op, how=how)
                    if how == "rolled back":
                        self._refresh_stats(name)
                    out.append(msg)
        if out or damaged(self.home):
            self._gc_backups()
        st = self.state.read() if standby.interrupted(self.home) else None
        for name in standby.recover(self.home, lambda t: (st["targets"].get(t) or {}).get("site_packages")):
            out.append(f"target '{name}': an interrupted standby preparation was thrown away "
                       "(the target's files were not touched)")
        return out

    def _discard_staged(self, name: str) -> None:
        """Remove the staged copies an unreadable journal's transaction left beside the
        target's libraries (only our own temporary names)."""
        st = self.state.read()
        if name not in st["targets"]:
            return
        try:
            info = self.inspect(name, st["targets"][name], st["overlays"].get(name))
        except TKError:
            return
        for d in {(info.site_packages / lf.rel).parent for lf in info.libs.values()}:
            for p in d.glob(f"*{STAGED}"):
                with contextlib.suppress(OSError):
                    p.unlink()

    def _mixed_message(self, name: str) -> str:
        return (f"target '{name}' is mixed (an interrupted transaction's journal was unreadable): "
                "run `torchkeeper revert` (stock copies are kept)")

    def _whole(self, name: str, st: dict | None = None) -> bool:
        """Whether every library of a target is what the state says, judged from the files
        alone: each one the overlay's bytes where one is recorded, else RECORD's, and no
        file nobody lists holding a bundle's bytes (a sibling an interrupted apply added)."""
        st = st or self.state.read()
        if name not in st["targets"]:
            return False
        overlay = st["overlays"].get(name)
        try:
            info = self.inspect(name, st["targets"][name], overlay)
        except TKError:
            return False
        want = {lf.rel: lf.stock_sha256 for lf in info.libs.values() if lf.stock_sha256}
        want.update({rel: f.get("sha256") for rel, f in (overlay or {}).get("files", {}).items()})
        now = hash_many(info.site_packages / rel for rel in {*want, *(lf.rel for lf in info.libs.values())})
        if any(now.get(info.site_packages / rel, (None,))[0] != sha for rel, sha in want.items()):
            return False
        return not self._ours_unlisted(info, want, now)

    def _ours_unlisted(self, info, listed, hashed=None) -> list[str]:
        """Libraries no RECORD and no overlay lists whose bytes are a cached bundle's."""
        ours = {f.get("sha256") for m in self.bundles.all() for f in m["files"] if isinstance(f, dict)}
        out = []
        for lf in info.libs.values():
            p = info.site_packages / lf.rel
            if lf.rel in listed or not p.is_file():
                continue
            sha = (hashed or {}).get(p, (None,))[0] or sha256_file(p)
            if sha in ours:
                out.append(lf.rel)
        return out

    def _commit_from_journal(self, j: dict, changes: list[Change]) -> None:
        self._commit(j["target"], j["op"], Path(j["root"]), j["meta"], changes)

    # -- targets ---------------------------------------------------------------------
    def targets(self) -> dict:
        return self.state.read()["targets"]

    def target(self, name: str) -> dict:
        ts = self.targets()
        if name not in ts:
            raise NotFound(f"no target named '{name}' (targets: {', '.join(sorted(ts)) or 'none yet'})",
                           "see `torchkeeper target list`, or add one with `torchkeeper target add PATH`")
        return ts[name]

    def add_target(self, path: str, name: str | None = None) -> tuple[str, dict, targetmod.TargetInfo]:
        info = targetmod.inspect(path)
        sp = str(info.site_packages)
        if name is None:
            name = _default_target_name(Path(path).expanduser().resolve(), info.site_packages)
        name = unicodedata.normalize("NFC", name)
        if not TARGET_NAME_RX.match(name):
            raise UsageError(f"target name {name[:80]!r} is not allowed",
                             "use letters (any script), digits, '.', '_' or '-', starting with a "
                             "letter or digit, at most 64, no '..' and no Windows device name "
                             "(CON, NUL, COM1, ...), e.g. --name a1111")
        with self.state.edit() as st:
            for other, t in st["targets"].items():
                if t["site_packages"] == sp:
                    raise UsageError(f"{sp} is already target '{other}'",
                                     "each environment is added once; see `torchkeeper target list`")
            name = _numbered(name, st["targets"])
            st["targets"][name] = {"path": str(Path(path).expanduser().resolve()),
                                   "site_packages": sp, "bundle": self._default_for(name, info, st),
                                   "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            rec = st["targets"][name]
        log_event(self.home, "target added", target=name, path=sp)
        return name, rec, info

    def remove_target(self, name: str, force: bool = False) -> None:
        self.target(name)
        with target_lock(self.home, name), self.state.edit() as st:
            if name not in st["targets"]:
                self.target(name)
            if (name in st["overlays"] or damaged(self.home, name)) and not force:
                what = ("has an overlay applied" if name in st["overlays"] else
                        "is mixed (an interrupted transaction's journal was unreadable)")
                raise UsageError(f"target '{name}' {what}",
                                 f"revert it first (torchkeeper revert {name}), or pass --force to "
                                 "forget it and keep its files as they are")
            sp = st["targets"].pop(name)["site_packages"]
            st["overlays"].pop(name, None)
            standby.drop(self.home, name, sp)
        self._gc_backups()
        log_event(self.home, "target removed", target=name)

    def use(self, ref: str, target: str | None = None) -> UseResult:
        """Choose bundle ``ref`` for one target, or for every target it fits (and, as the
        default, for targets added later). The gate's file-level rules run without hashing:
        a bundle it refuses is never bound."""
        m = self.bundles.get(ref)
        with self.state.edit() as st:
            if target is not None and target not in st["targets"]:
                self.target(target)
            names = [target] if target is not None else sorted(st["targets"])
            res = UseResult(m)
            for n in names:
                why = self._refusal(n, m, st)
                if why is None:
                    res.bound.append(n)
                else:
                    res.skipped[n] = why
            if target is not None and res.skipped:
                raise Refused(f"target '{target}': the compatibility gate refuses bundle "
                              f"'{m['name']}': {res.skipped[target]}",
                              "choose a bundle that fits (`torchkeeper suggest` or `torchkeeper plan "
                              f"{target} --bundle B` explains), or create one for it")
            if target is None:
                st["default_bundle"] = m["id"]
            for n in res.bound:
                st["targets"][n]["bundle"] = m["id"]
        log_event(self.home, "use", bundle=m["id"], targets=res.bound, skipped=res.skipped or None)
        return res

    def _default_for(self, name: str, info, st: dict) -> str | None:
        """The bundle `use` chose for every target, if it fits this new one."""
        bid = st.get("default_bundle")
        try:
            m = self.bundles.get(bid) if bid else None
        except NotFound:
            return None
        if m is None or gate.plan(name, info, m, None, None, hash_current=False).refusals:
            return None
        return bid

    def _refusal(self, name: str, m: dict, st: dict) -> str | None:
        """Why the gate refuses bundle m for this target (None: it fits), without hashing."""
        try:
            info = self.inspect(name, st["targets"][name], st["overlays"].get(name))
        except TKError as e:
            return e.message
        p = gate.plan(name, info, m, st["overlays"].get(name), None, hash_current=False)
        return p.refusals[0].message if p.refusals else None

    def inspect(self, name: str, rec: dict | None = None, overlay: dict | None = None) -> targetmod.TargetInfo:
        rec = rec or self.target(name)
        info = targetmod.inspect(rec["site_packages"], self.home.cache_dir)
        if overlay and overlay.get("cudnn_stock") and overlay.get("torch_version") == info.torch_version:
            src = info.cudnn_build_source or ""
            if info.cudnn_build is None or "major only" in src:
                info.cudnn_build = overlay["cudnn_stock"]
                info.cudnn_build_source = "recorded when the overlay was applied"
        return info

    def desired_bundle(self, name: str, st: dict | None = None) -> dict | None:
        st = st or self.state.read()
        bid = st["targets"][name].get("bundle")
        if not bid:
            return None
        try:
            return self.bundles.get(bid)
        except NotFound:
            raise NotFound(f"target '{name}' wants bundle {bid[:12]}, which is no longer in the cache",
                           "import or create it again, or choose another with `torchkeeper use`") from None

    # -- plan ------------------------------------------------------------------------
    def plan(self, name: str, ref: str | None = None) -> tuple[gate.Plan, targetmod.TargetInfo, dict]:
        st = self.state.read()
        if name not in st["targets"]:
            self.target(name)
        m = self.bundles.get(ref) if ref else self.desired_bundle(name, st)
        if m is None:
            raise UsageError(f"target '{name}' has no bundle chosen",
                             f"choose one with `torchkeeper use BUNDLE --target {name}`")
        overlay = st["overlays"].get(name)
        info = self.inspect(name, st["targets"][name], overlay)
        p = gate.plan(name, info, m, overlay, self.driver())
        return p, info, m

    # -- apply -----------------------------------------------------------------------
    def apply(self, name: str, force: bool = False, dry_run: bool = False, progress=None) -> Result:
        self.target(name)
        with target_lock(self.home, name):
            if damaged(self.home, name) and not self._whole(name):
                # an overlay over it would record its bundle's bytes as stock: revert first
                raise OperationFailed(self._mixed_message(name) + "; nothing was changed",
                                      f"run `torchkeeper revert {name}` first (stock copies are kept)")
            p, info, m = self.plan(name)
            if p.refusals:
                raise Refused(f"target '{name}': the compatibility gate refuses bundle "
                              f"'{p.bundle_name}': " + p.refusals[0].message,
                              p.refusals[0].hint, list(p.reasons))
            if p.needs_force and not force:
                raise Refused(f"target '{name}': " + p.needs_force[0].message,
                              p.needs_force[0].hint, list(p.reasons))
            if dry_run:
                return Result(name, True, "dry run",
                              f"would change {len(p.changes)} file(s) of '{name}'", p.to_dict())
            if progress is not None and hasattr(progress, "set_total"):
                progress.set_total(sum(s.new_size for s in p.changes))
            st = self.state.read()
            overlay = st["overlays"].get(name)
            if not p.changes and overlay and overlay.get("bundle") == m["id"]:
                return Result(name, True, "already applied",
                              f"'{name}' already has {describe(m)} ({m['name']})", p.to_dict())
            prev_files = (overlay or {}).get("files", {})
            changes, meta_files = [], {}
            for s in p.steps:
                prev = prev_files.get(s.rel, {})
                meta_files[s.rel] = {
                    "key": s.key, "action": s.action if s.action != gate.IN_PLACE else
                    (prev.get("action") or gate.REPLACE), "prior": s.prior,
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
                    changes.append(Change(s.rel, str(self.bundles.file_path(m, s.key)),
                                          s.new_sha256, s.new_size, s.current_sha256,
                                          s.current_stat))
                elif s.action == gate.IN_PLACE and s.prior == "stock" and s.stock_sha256:
                    # stock bytes that equal the bundle's: nothing to restore on revert
                    meta_files[s.rel]["stock_backup"] = None
                    meta_files[s.rel]["same_as_stock"] = True
            # files of an earlier overlay this bundle no longer has go back to stock
            for rel, prev in prev_files.items():
                if rel not in meta_files:
                    c = self._restore_change(info, rel, prev)
                    if _needed(c):
                        changes.append(c)
            meta = {"bundle": m["id"], "bundle_name": m["name"], "files": meta_files,
                    "torch_version": info.torch_version, "torch_cuda": info.torch_cuda,
                    "cudnn_stock": (overlay or {}).get("cudnn_stock") or info.cudnn_build}
            why_copy = self._offer_standby(name, info, overlay, m, changes)
            t0 = time.time()
            tx = Transaction(self.home, name, info.site_packages, "apply", changes, meta,
                             progress=progress)
            try:
                tx.run(lambda t: self._commit(name, "apply", t.root, t.meta, t.changes))
            except TKError as e:
                log_event(self.home, "apply failed", target=name, bundle=m["id"], error=e.message)
                self._refresh_stats(name)
                self._gc_backups()
                raise
            linked = {c.new_sha256 for c in changes if c.link is not None}
            copied = [c for c in changes if c.src is not None and c.link is None]
            if linked:
                standby.after_commit(self.home, name, {sha: True for sha in linked})
            if copied and why_copy is None:
                why_copy = "standby file changed"  # seen at the last moment, in the transaction
            via = {"standby": sum(c.link is not None for c in changes), "copy": len(copied),
                   "why_copy": why_copy if copied else None}
            self._gc_backups()
            log_event(self.home, "applied", target=name, bundle=m["id"], bundle_name=m["name"],
                      files=len(changes), seconds=round(time.time() - t0, 3), via=via)
            how = (f"{via['standby']} linked from the standby, {via['copy']} copied" if via["standby"]
                   else f"{len(changes)} file(s) replaced")
            return Result(name, True, "applied",
                          f"applied {describe(m)} ({m['name']}) to '{name}': {how}, backed up and "
                          "verified", p.to_dict(), via=via,
                          touched=[str(info.site_packages / c.rel) for c in changes])

    def _offer_standby(self, name, info, overlay, m, changes) -> str | None:
        """Let the transaction link standby files in where a repair puts back the overlay
        the standby was prepared for. Returns why (some) files will be copied instead."""
        if not any(c.src is not None for c in changes):
            return None
        if not overlay or overlay.get("bundle") != m["id"]:
            # another overlay's standby: its links would only make backups copies
            standby.drop(self.home, name, info.site_packages)
            return "first apply" if not overlay else "another bundle"
        ready, why = standby.usable(self.home, name, info.site_packages, m["id"], self.agent_config())
        if why == "disk space below the standby floor":
            standby.drop(self.home, name, info.site_packages)  # give the space back first
        for c in changes:
            f = ready.get(c.new_sha256) if c.src is not None else None
            if f is not None:
                c.link = {**f["identity"], "path": f["path"]}
        missing = [c for c in changes if c.src is not None and c.link is None]
        return (why or "no standby file for " + missing[0].rel) if missing else None

    def _restore_change(self, info, rel: str, prev: dict) -> Change:
        """What puts rel back as it was before the first overlay: the stock bytes, or the
        foreign bytes `apply --force` replaced (unless a reinstall has put stock back since)."""
        path = info.site_packages / rel
        st = stat_key(path) if path.is_file() else None
        cur = sha256_file(path) if st else None
        if prev.get("action") == gate.ADD:
            return Change(rel, None, None, None, cur, st)
        lf = next((f for f in info.libs.values() if f.rel == rel), None)
        stock = (lf.stock_sha256 if lf else None) or prev.get("stock_sha256") or (
            prev.get("stock_backup") if prev.get("prior") == "stock" else None)
        backups = BackupStore(self.home)
        foreign = prev.get("foreign_backup")
        want = foreign if foreign and cur != stock else stock  # unless a reinstall put stock back
        if want and backups.has(want):
            return Change(rel, str(backups.path(want)), want,
                          backups.path(want).stat().st_size, cur, st)
        if cur is not None and cur == want:
            return Change(rel, str(path), cur, path.stat().st_size, cur, st)
        if info.conda_prefix:
            hint = ("reinstall torch with conda: conda install --force-reinstall pytorch "
                    f"(in the env {info.conda_prefix})")
        else:
            hint = f"reinstall torch: pip install --force-reinstall --no-deps torch=={info.torch_version}"
        raise OperationFailed(f"no stock copy of {path} to restore (it was "
                              f"{prev.get('prior', 'unknown')} before the overlay)", hint)

    def _commit(self, name: str, op: str, root: Path, meta: dict, changes: list[Change]) -> None:
        """Record a finished transaction in the state (also used to roll forward)."""
        by_rel = {c.rel: c for c in changes}
        with self.state.edit() as st:
            if op == "revert":
                st["overlays"].pop(name, None)
            else:
                st["overlays"][name] = self._overlay_record(root, meta, by_rel)
                if name in st["targets"] and not st["targets"][name].get("bundle"):
                    st["targets"][name]["bundle"] = meta["bundle"]

    @staticmethod
    def _overlay_record(root: Path, meta: dict, by_rel: dict) -> dict:
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
            "bundle": meta["bundle"], "bundle_name": meta.get("bundle_name"),
            "site_packages": str(root), "applied": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch_version": meta.get("torch_version"), "torch_cuda": meta.get("torch_cuda"),
            "cudnn_stock": meta.get("cudnn_stock"), "files": files}

    def _refresh_stats(self, name: str) -> None:
        """After a rollback: files put back as copies of our own bytes get new stat data
        in the overlay record, so quick verification need not hash them again."""
        with self.state.edit() as st:
            ov = st["overlays"].get(name)
            root = Path(ov["site_packages"]) if ov else None
            for rel, f in (ov or {}).get("files", {}).items():
                p = root / rel
                if not p.is_file():
                    continue
                same, cur = _holds(p, f)
                if same:
                    f.update(cur)

    def _gc_backups(self) -> None:
        """Remove backups nothing may need: not the state, not a journal, and nothing at all
        while a set-aside journal's target is not whole again (nobody can tell what it
        referenced). Never fails the command: what is left is collected next time."""
        try:
            st = self.state.read()
            for p in damaged(self.home):
                name = p.name.rpartition("@")[0]
                if name not in st["targets"] or self._whole(name, st):  # forgotten, or whole again
                    resolve_damaged(p)
            if damaged(self.home):
                return
            keep = set()
            for ov in st["overlays"].values():
                for f in ov.get("files", {}).values():
                    keep.update(x for x in (f.get("stock_backup"), f.get("foreign_backup")) if x)
            for j in pending(self.home):
                for c in j.get("changes", []):
                    keep.update(x for x in (c.get("backup"), c.get("old_sha256")) if x)
                if j.get("corrupt"):
                    return
            BackupStore(self.home).remove_unreferenced(keep)
        except (OSError, TKError) as e:
            warn(f"old backups were not cleaned up ({getattr(e, 'message', e)}); the next command retries")

    # -- revert ----------------------------------------------------------------------
    def revert(self, name: str, progress=None) -> Result:
        self.target(name)
        with target_lock(self.home, name):
            st = self.state.read()
            if name not in st["targets"]:
                self.target(name)
            overlay = st["overlays"].get(name)
            mixed = bool(damaged(self.home, name))
            # its links to our files would also make the backups below copies
            standby.drop(self.home, name, st["targets"][name]["site_packages"])
            if not overlay and not mixed:
                return Result(name, True, "nothing to revert", f"'{name}' has no overlay applied")
            info = self.inspect(name, st["targets"][name], overlay)
            changes, foreign = [], []
            for rel, prev in sorted((overlay or {}).get("files", {}).items()):
                if prev.get("same_as_stock"):
                    continue
                c = self._restore_change(info, rel, prev)
                if prev.get("foreign_backup") and c.new_sha256 == prev["foreign_backup"]:
                    foreign.append(rel)
                if _needed(c):  # else already stock: a pip reinstall restored it
                    changes.append(c)
            if mixed:
                changes += self._unrecorded_restores(info, {c.rel for c in changes} | set(
                    (overlay or {}).get("files", {})))
            tx = Transaction(self.home, name, info.site_packages, "revert", changes,
                             {"bundle": (overlay or {}).get("bundle")}, progress=progress)
            try:
                tx.run(lambda t: self._commit(name, "revert", t.root, t.meta, t.changes))
            except TKError as e:
                log_event(self.home, "revert failed", target=name, error=e.message)
                self._refresh_stats(name)
                self._gc_backups()
                raise
            self._gc_backups()
            log_event(self.home, "reverted", target=name, files=len(changes), foreign=foreign)
            sources = sorted({f.get("stock_source") or targetmod.FROM_RECORD
                              for rel, f in (overlay or {}).get("files", {}).items() if rel not in foreign
                              and f.get("action") != gate.ADD})
            msg = (f"reverted '{name}' to the files it had before the overlay ({len(changes)} "
                   f"restored, each checked against its stock hash: {', '.join(sources) or '-'})")
            if foreign:
                msg += (f"; {len(foreign)} of them {'was' if len(foreign) == 1 else 'were'} foreign "
                        f"(neither stock nor ours) and {'is' if len(foreign) == 1 else 'are'} back "
                        f"as before: {', '.join(foreign)}")
            return Result(name, True, "reverted", msg, foreign=foreign,
                          touched=[str(info.site_packages / c.rel) for c in changes])

    def _unrecorded_restores(self, info, done: set[str]) -> list[Change]:
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
            c = self._restore_change(info, lf.rel, {"prior": "stock"})
            if _needed(c):
                out.append(c)
        for rel in self._ours_unlisted(info, listed):
            p = info.site_packages / rel
            out.append(Change(rel, None, None, None, sha256_file(p), stat_key(p)))
        return out

    # -- the standby ---------------------------------------------------------------------
    def prepare_standby(self, name: str, low_priority: bool = False, rehash: bool = False) -> dict:
        """Link the overlay's files into the target's standby folder and hash them there
        (engine/standby.py): what lets the next repair link instead of copy."""
        sp = Path(self.target(name)["site_packages"])
        res = standby.prepare(self.home, name, sp, lambda: self.state.read()["overlays"].get(name),
                              self.agent_config(), target_lock(self.home, name), low_priority, rehash)
        log_event(self.home, "standby", target=name, **{k: v for k, v in res.items() if v})
        return res

    def refresh_standby(self, name: str) -> dict:
        """Hash again the standby files an install in progress has touched (standby.refresh):
        the repair after it then links them without hashing on its critical path."""
        sp = Path(self.target(name)["site_packages"])
        return standby.refresh(self.home, name, sp, self.agent_config())

    # -- the agent's re-apply ----------------------------------------------------------
    def reapply_if_still_wanted(self, name: str, seen: TargetStatus, progress=None) -> Result:
        """Re-apply an undone overlay, for a decision taken on ``seen`` (a status read
        before this lock was taken). Under the target's lock the state is read again: a
        `revert`, `use` or `apply` that landed since wins, and nothing is written
        (action "not wanted", the message says why)."""
        self.target(name)
        with target_lock(self.home, name):
            st = self.state.read()
            why = _changed_since(st, name, seen)
            held = hold.active(self.home, name)
            if held and not why:  # `bench` swaps stock and bundle: its state is not drift
                why = f"{held[0].describe()} (torchkeeper {held[0].why})"
            if why:
                return Result(name, True, "not wanted", why)
            return self.apply(name, progress=progress)

    # -- verify and status -----------------------------------------------------------
    def target_state(self, name: str, full: bool = False, st: dict | None = None,
                     with_versions: bool = False) -> TargetStatus:
        st = st or self.state.read()
        rec = st["targets"][name]
        overlay = st["overlays"].get(name)
        out = TargetStatus(name, rec["path"], rec["site_packages"], last_bench=last_gain(rec))
        held = hold.active(self.home, name)
        if held:
            out.held = {**held[0].to_dict(), "describe": held[0].describe()}
        try:
            info = self.inspect(name, rec, overlay)
        except TKError as e:
            out.state, out.problems = MISSING, [e.message]
            return out
        out.torch_version, out.torch_cuda, out.platform = info.torch_version, info.torch_cuda, info.platform
        m = None
        try:
            m = self.desired_bundle(name, st)
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
                elif not _holds(p, f)[0]:
                    drift.append(f"{rel} changed")
        refused = None
        if m is not None:
            refusals = [r for r in gate.check(info, m, None) if r.level == "refuse"]
            if refusals:
                refused = refusals[0]
        if damaged(self.home, name) and not self._whole(name, st):
            state = DRIFTED
            out.problems.append(self._mixed_message(name))
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
        out.cudnn_now = self._cudnn_now(info, state, overlay, m)
        if out.cudnn_now is None or out.cudnn_stock is None:
            out.cudnn_unknown = _cudnn_unknown(info, out.cudnn_now is None)
        if overlay:
            try:
                out.standby = standby.describe(self.home, name, info.site_packages, self.agent_config())
            except OSError as e:
                out.standby = {"state": "unreadable", "why": str(e)}
        if overlay:
            out.applied = AppliedRef(overlay["bundle"], overlay.get("bundle_name"), overlay.get("applied"),
                                     len(overlay["files"]))
        if with_versions:
            out.info = info
        return out

    def _cudnn_now(self, info, state, overlay, m) -> str | None:
        if state == PATCHED and overlay:
            try:
                om = self.bundles.get(overlay["bundle"])
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

    def verify(self, names: list[str] | None = None, full: bool = False) -> list[TargetStatus]:
        st = self.state.read()
        names = names or sorted(st["targets"])
        for n in names:
            if n not in st["targets"]:
                self.target(n)
        out = []
        for n in names:
            s = self.target_state(n, full=full, st=st)
            s.in_desired_state = s.state in (PATCHED, STOCK)
            out.append(s)
        log_event(self.home, "verified", full=full, results={s.name: s.state for s in out})
        return out

    def status(self) -> Status:
        st = self.state.read()
        return Status([self.target_state(n, st=st) for n in sorted(st["targets"])],
                      self._driver_info(), [j.get("target") for j in pending(self.home)])

    def _driver_info(self) -> dict | None:
        """The driver as NVML reports it, its state included (no driver, not loaded, reboot
        needed, ok); None only when no query was possible at all."""
        d = self.driver()
        return d.to_dict() if d is not None and hasattr(d, "to_dict") else None


def _changed_since(st: dict, name: str, seen: TargetStatus) -> str | None:
    """Why a re-apply decided on ``seen`` is no longer wanted, or None."""
    rec = st["targets"].get(name)
    overlay = st["overlays"].get(name)
    if rec is None:
        return f"target '{name}' was removed"
    if overlay is None:
        return f"'{name}' was reverted to stock after the agent decided to re-apply"
    if seen.applied is None or overlay.get("bundle") != seen.applied.bundle \
            or overlay.get("applied") != seen.applied.at:
        return f"the overlay of '{name}' was applied again after the agent decided"
    if rec.get("bundle") != (seen.bundle.id if seen.bundle else None):
        return f"another bundle was chosen for '{name}' after the agent decided"
    return None


def _holds(p: Path, f: dict) -> tuple[bool, dict]:
    """Whether p still holds the bytes an overlay record f describes, and p's stat data.
    The recorded stat data says yes, another size says no; anything else is hashed: a
    rolled-back transaction puts back copies (new inodes) of our own bytes."""
    cur = stat_key(p)
    if cur == {k: f.get(k) for k in cur}:
        return True, cur
    if cur["size"] != f.get("size"):
        return False, cur
    return sha256_file(p) == f["sha256"], cur


def _needed(c: Change) -> bool:
    """Whether a restoring change changes anything (the file may already be stock)."""
    if c.src is None:
        return c.old_sha256 is not None
    return c.old_sha256 != c.new_sha256


def _default_target_name(path: Path, sp: Path) -> str:
    """A name a user recognises: the app folder ('stable-diffusion-webui', 'ComfyUI-便携'), not
    'venv'. Always one TARGET_NAME_RX accepts, whatever the folder is called."""
    p = path
    generic = {"venv", ".venv", "python_embeded", "python_embedded", "site-packages", "lib", "env",
               "python", "system", "torch", "installer_files"}
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
        name = base[:64 - len(suffix)].rstrip("-._") + suffix
        i += 1
    return name


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
