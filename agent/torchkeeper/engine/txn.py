"""Replace-many-files transactions that survive a crash (after pip's stash/commit and dpkg's
``.dpkg-new`` markers).

A transaction is a list of :class:`Change`: put these bytes at this path (or remove the
file). It runs in phases, recorded in a journal beside the state:

1. ``prepare``: back up every file it will touch (content-addressed in the backup store,
   hash-checked), stage each new file as ``<name>.tk-new`` beside its target (hashed
   while copied). The target is untouched.
2. ``swap``: rename each staged file over its target; remove files to remove.
3. ``commit``: check every target file is the staged inode with the right size, then the
   caller records the result in the state and the journal is deleted.

A crash in ``prepare`` or ``swap`` is rolled back at the next start, undoing only what the
transaction did: before the swap that is its staged files; during the swap, each target file
that still is the staged file it renamed there (same inode, size and mtime, recorded in the
journal) is put back from the backups. A file a third party (pip) wrote meanwhile is left
alone. A crash in ``commit`` is rolled forward: the new files are all in place and verified.

A journal that cannot be read is set aside (``journal-damaged/``), never deleted, and while
one is there no backup is collected: the target is judged from its files instead.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import OperationFailed, TKError
from .. import testing
from ..platform.files import FileOps, is_no_space
from .fsutil import (atomic_write_json, clone_or_copy, copy_hashing, fsync_dir, load_json, sha256_file,
                     stat_key)
from . import standby
from ..home import Home
from .state import TARGET_NAME_RX
from .records import JsonObject, StatKey
from ..i18n import _

STAGED = ".tk-new"
RESTORE = ".tk-restore"
PARTIAL = ".in-"  # a backup being written: .in-<txn>-<random> in the backup store


@dataclass
class Change:
    rel: str                    # path relative to the root (site-packages), '/' separators
    src: str | None             # file whose bytes go there; None removes the file
    new_sha256: str | None      # expected hash of src (None when removing)
    new_size: int | None = None
    old_sha256: str | None = None  # what is there now (None: absent); checked before backup
    old_stat: StatKey | None = None   # stat data of the file when old_sha256 was taken
    backup: str | None = None   # sha256 of the backed-up old bytes (set in prepare)
    staged: StatKey | None = None  # stat data of the staged file (set in prepare): what the swap put there
    link: JsonObject | None = None    # a standby file with src's bytes ({"path", identity}): staged as a
                                # hard link to it, no copy; None after falling back to the copy


class BackupStore:
    """Content-addressed copies of every file a transaction replaced."""

    def __init__(self, home: Home):
        self.dir = home.backups_dir

    def path(self, digest: str) -> Path:
        return self.dir / digest[:2] / digest

    def has(self, digest: str) -> bool:
        p = self.path(digest)
        return p.is_file()

    def put(self, src: Path, expect: str | None, txn: str = "", expect_stat: StatKey | None = None) -> str:
        """Back up src; returns its sha256. The store holds only regular files whose bytes
        nobody else can reach: a hard link only when src is a regular file with no other
        link (the transaction then replaces the target by rename, so the linked inode keeps
        the old bytes). Anything else -- a file uv hard-linked from its cache into many
        venvs, a symlink -- is copied (a reflink where possible) and hash-checked: a tool
        writing in place into another venv would otherwise rewrite our backup. txn names the
        transaction, so that what a crash left half-written can be found
        (:meth:`discard_partial`)."""
        if expect and self.has(expect):
            return expect
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{PARTIAL}{txn}-{uuid.uuid4().hex}"
        try:
            testing.check_space(self.dir)
            try:
                st = os.lstat(src)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    raise OSError("shared or not a regular file: copy it")
                os.link(src, tmp)
            except OSError:
                try:
                    digest, _how = clone_or_copy(src, tmp)
                except OSError as e:
                    raise _at(e, self.dir) from None
                if expect_stat and stat_key(Path(src)) != expect_stat:
                    digest = None  # written to while it was copied
            else:
                # The link is the file itself, which may have changed since it was hashed.
                # The same inode with the same size and mtime as when it was hashed holds
                # the same bytes; anything else is hashed again, so no other bytes are ever
                # stored under the expected digest.
                if expect and expect_stat and stat_key(tmp) == expect_stat:
                    digest = expect
                else:
                    digest = sha256_file(tmp)
            if digest is None or (expect and digest != expect):
                raise OperationFailed(_("%(src)s changed while it was being backed up") % {"src": src},
                                      _("run the command again"))
            final = self.path(digest)
            final.parent.mkdir(exist_ok=True)
            if final.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, final)
            fsync_dir(final.parent)
            return digest
        finally:
            if tmp.exists():
                os.unlink(tmp)

    def discard_partial(self, txn: str) -> None:
        """Remove the backups a killed transaction was writing (a hard link there keeps a
        whole old library alive)."""
        if not txn or not self.dir.is_dir():
            return
        for p in self.dir.glob(f"{PARTIAL}{txn}-*"):
            try:
                os.unlink(p)
            except OSError:
                pass

    def remove_unreferenced(self, keep: set[str]) -> int:
        n = 0
        if not self.dir.is_dir():
            return 0
        for sub in self.dir.iterdir():
            if not sub.is_dir():
                continue
            for p in sub.iterdir():
                if p.name not in keep:
                    try:
                        os.unlink(p)
                        n += 1
                    except OSError:
                        pass
            try:
                sub.rmdir()  # only when empty
            except OSError:
                pass
        return n


class Transaction:
    def __init__(self, home: Home, target: str, root: Path, op: str, changes: list[Change],
                 meta: JsonObject | None = None, ops: FileOps | None = None,
                 progress: Callable[[int], None] | None = None):
        self.home = home
        self.target = target
        self.root = root
        self.op = op
        self.changes = changes
        self.meta = meta or {}
        self.ops = ops or testing.file_ops()
        self.backups = BackupStore(home)
        self.progress = progress
        self.crash = testing.Checkpoints()
        self.id = uuid.uuid4().hex[:12]
        self.journal = journal_path(home, target)
        self.phase = "new"

    # -- journal ---------------------------------------------------------------------
    def _write_journal(self) -> None:
        atomic_write_json(self.journal, {
            "txn": self.id, "op": self.op, "target": self.target, "root": str(self.root),
            "phase": self.phase, "meta": self.meta, "changes": [asdict(c) for c in self.changes]})

    def _path(self, c: Change) -> Path:
        return self.root / c.rel

    # -- phases ----------------------------------------------------------------------
    def run(self, on_commit: Callable[["Transaction"], None]) -> None:
        """Run all phases; on any failure roll back and raise OperationFailed/FileInUse."""
        try:
            self.phase = "prepare"
            self._write_journal()
            self.crash("journal written")
            self._prepare()
            self.phase = "swap"
            self._write_journal()
            self.crash("swap begins")
            self._swap()
            self._verify()
            self.phase = "commit"
            self._write_journal()
            self.crash("commit begins")
            on_commit(self)
            self.crash("state committed")
            self._cleanup()
        except BaseException as e:
            if self.phase == "commit":
                raise
            self._rollback_safely()
            if isinstance(e, TKError):
                raise
            if isinstance(e, OSError):
                raise _os_failure(e, self.target) from None
            raise

    def _prepare(self) -> None:
        from concurrent.futures import ThreadPoolExecutor  # not on status's import path

        # Hash-checked backups of the current files and staged copies of the new ones are
        # independent: do them side by side (hashlib and file I/O release the GIL).
        with ThreadPoolExecutor(max_workers=2) as pool:
            futs = [pool.submit(self._backup_all), pool.submit(self._stage_all)]
            errors = []
            for f in futs:
                try:
                    f.result()
                except BaseException as e:  # keep the first, but wait for both
                    errors.append(e)
            if errors:
                raise errors[0]

    def _backup_all(self) -> None:
        for c in self.changes:
            p = self._path(c)
            if c.old_sha256 is None:
                if p.exists():
                    raise OperationFailed(_("%(p)s appeared while the transaction ran") % {"p": p},
                                          _("run the command again"))
                continue
            c.backup = self.backups.put(p, c.old_sha256, self.id, c.old_stat)
            self.crash(f"backed up {c.rel}")

    def _stage_all(self) -> None:
        for c in self.changes:
            if c.src is None:
                continue
            staged = Path(str(self._path(c)) + STAGED)
            if staged.exists():
                os.unlink(staged)
            if c.link is not None:
                if self._link_standby(c, staged):
                    c.staged = stat_key(staged)
                    self.crash(f"linked {c.rel}")
                    continue
                c.link = None  # any doubt: the copy, as without a standby
            try:
                testing.check_space(staged.parent)
                # fsync: once swapped in, a file must survive a power cut (the backups
                # thread runs meanwhile, so the wait overlaps with its work)
                digest, size = copy_hashing(c.src, staged, self.progress)
            except OSError as e:
                raise _at(e, staged) from None
            if digest != c.new_sha256:
                raise OperationFailed(_("%(src)s does not match its recorded sha256") % {"src": c.src},
                                      _("run `torchkeeper bundle verify`; re-create or "
                                        "re-import the bundle"))
            c.staged = stat_key(staged)  # journalled before the swap: how rollback knows its own
            self.crash(f"staged {c.rel}")

    @staticmethod
    def _link_standby(c: Change, staged: Path) -> bool:
        """Stage c as a hard link to its standby file, when that file still is the one
        hashed (identity) and the link lands on the same inode. No bytes move."""
        sb = c.link.get("path")
        if not isinstance(sb, str) or not standby.same(sb, c.link):
            return False
        try:
            testing.check_space(staged.parent)
            os.link(sb, staged, follow_symlinks=False)   # a link swapped in: its own inode, refused below
        except OSError:  # another volume, no hard links there, no space for a name
            return False
        st = os.lstat(staged)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (c.link["ino"], c.new_size, c.link["mtime_ns"]):
            os.unlink(staged)
            return False
        return True

    def _swap(self) -> None:
        for c in self.changes:
            p = self._path(c)
            if c.src is None:
                self.ops.remove(p)
            else:
                self.ops.replace(Path(str(p) + STAGED), p)
            self.crash(f"swapped {c.rel}")
        for d in {self._path(c).parent for c in self.changes}:
            fsync_dir(d)

    def _verify(self) -> None:
        for c in self.changes:
            p = self._path(c)
            if c.src is None:
                if p.exists():
                    raise OperationFailed(_("%(p)s could not be removed") % {"p": p}, _("run the command again"))
            elif not p.is_file() or p.stat().st_size != c.new_size:
                raise OperationFailed(
                    _("%(p)s is not the file just written") % {"p": p}, _("run the command again")
                )

    def _cleanup(self) -> None:
        try:
            os.unlink(self.journal)
        except FileNotFoundError:
            pass

    def _rollback_safely(self) -> None:
        try:
            rollback(self.home, self.root, self.changes, self.backups, self.ops, self.phase)
            self._cleanup()
        except BaseException:
            # The journal stays: the next command or agent start retries the rollback.
            pass


def journal_path(home: Home, target: str) -> Path:
    return home.journal_dir / f"{target}.json"


def rollback(
    home: Home,
    root: Path,
    changes: list[Change],
    backups: BackupStore,
    ops: FileOps | None = None,
    phase: str = "swap",
) -> None:
    """Undo what this transaction did, and only that. Before the swap (phase ``prepare``)
    it wrote nothing but its staged files: remove them. During the swap, a target file is
    put back from its backup only when it is still the staged file the swap renamed there
    (or, for a removal, still absent); one a third party rewrote meanwhile is left alone."""
    ops = ops or FileOps()
    for c in changes:
        p = root / c.rel
        mine = phase == "swap" and _swapped_in(p, c)
        for ours in (Path(str(p) + STAGED), Path(str(p) + RESTORE)):
            if ours.exists():
                os.unlink(ours)
        if not mine:
            continue
        if c.old_sha256 is None:
            ops.remove(p)
            continue
        src = backups.path(c.old_sha256)
        if not src.is_file():
            raise OperationFailed(
                _("cannot restore %(p)s: its backup %(src)s is missing") % {"p": p, "src": src},
                _("reinstall torch (pip install --force-reinstall torch==<version>)"),
            )
        tmp = Path(str(p) + RESTORE)
        digest, _how = copy_hashing(src, tmp)
        if digest != c.old_sha256:
            os.unlink(tmp)
            raise OperationFailed(
                _("the backup of %(p)s is damaged (%(src)s)") % {"p": p, "src": src},
                _("reinstall torch (pip install --force-reinstall torch==<version>)"),
            )
        ops.replace(tmp, p)
    for d in {(root / c.rel).parent for c in changes}:
        fsync_dir(d)


def _swapped_in(p: Path, c: Change) -> bool:
    """Whether the swap put c in place at p and nobody changed p since."""
    if c.src is None:  # a removal: absent means removed (nothing else makes it absent here)
        return not os.path.lexists(p)
    if not p.is_file() or os.path.lexists(str(p) + STAGED):
        return False
    if c.staged is not None:
        return stat_key(p) == c.staged
    # a journal written before staged stat data was recorded: trust the bytes
    return c.old_sha256 != c.new_sha256 and sha256_file(p) == c.new_sha256


JOURNAL_KEYS = {"txn", "op", "target", "root", "phase", "meta", "changes"}
CHANGE_TYPES = {
    "rel": (str,),
    "src": (str, type(None)),
    "new_sha256": (str, type(None)),
    "new_size": (int, type(None)),
    "old_sha256": (str, type(None)),
    "old_stat": (dict, type(None)),
    "backup": (str, type(None)),
    "staged": (dict, type(None)),
    "link": (dict, type(None)),
}


def journal_problem(j, stem: str) -> str | None:
    """What makes a parsed journal unusable, or None. A journal is only acted on whole:
    any unknown shape is treated as unreadable."""
    if not isinstance(j, dict):
        return "not a JSON object"
    if set(j) != JOURNAL_KEYS:
        return "keys " + ", ".join(sorted(set(j) ^ JOURNAL_KEYS)) + " missing or unknown"
    if j["target"] != stem or not isinstance(j["target"], str) or not TARGET_NAME_RX.match(stem):
        return "it names another target"
    if j["op"] not in ("apply", "revert") or j["phase"] not in ("prepare", "swap", "commit"):
        return "unknown op or phase"
    if (
        not isinstance(j["txn"], str)
        or not isinstance(j["root"], str)
        or not os.path.isabs(j["root"])
        or not isinstance(j["meta"], dict)
        or not isinstance(j["changes"], list)
    ):
        return "malformed fields"
    for c in j["changes"]:
        if (
            not isinstance(c, dict)
            or not {"rel", "src", "new_sha256"} <= set(c) <= set(CHANGE_TYPES)
            or not all(isinstance(v, CHANGE_TYPES[k]) for k, v in c.items())
        ):
            return "a malformed change"
        rel = c["rel"]
        if rel.startswith("/") or "\\" in rel or ":" in rel or ".." in rel.split("/"):
            return f"a change outside the target ({rel[:80]!r})"
    if (
        j["phase"] == "commit"
        and j["op"] == "apply"
        and not (isinstance(j["meta"].get("files"), dict) and isinstance(j["meta"].get("bundle"), str))
    ):
        return "a commit without the overlay it records"
    return None


def pending(home: Home) -> list[JsonObject]:
    d = home.journal_dir
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            # never through a link, never a FIFO or a folder: those are damaged journals
            j = load_json(p, 64 << 20, follow=False)
            problem = journal_problem(j, p.stem)
        except (OSError, ValueError) as e:
            problem = f"{e.strerror} ({p.name})" if isinstance(e, OSError) and e.strerror else str(e)
        if problem:
            out.append({"target": p.stem, "corrupt": problem, "_path": str(p)})
        else:
            out.append(j)
    return out


def damaged_dir(home: Home) -> Path:
    return home.data_dir / "journal-damaged"


def set_aside(home: Home, path: Path) -> Path:
    """Move an unreadable journal out of the way, keeping it: <target>@<time>.json."""
    d = damaged_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    dest = d / f"{path.stem}@{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.json"
    os.replace(path, dest)
    fsync_dir(d)
    fsync_dir(path.parent)
    return dest


def damaged(home: Home, target: str | None = None) -> list[Path]:
    """Set-aside journals not yet resolved (the target judged whole since)."""
    d = damaged_dir(home)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.json") if target is None or p.name.rpartition("@")[0] == target)


def resolve_damaged(path: Path) -> None:
    """The target is whole again: the set-aside journal no longer holds backups."""
    os.replace(path, path.with_suffix(".resolved"))


def recover(home: Home, j: JsonObject, on_commit: Callable[[JsonObject, list[Change]], None]) -> str:
    """Finish an interrupted transaction. Returns 'rolled back', 'rolled forward' or
    'set aside' (an unreadable journal: see :func:`set_aside`)."""
    path = journal_path(home, j["target"])
    if j.get("corrupt"):
        # Never deleted: what it recorded may still be needed, and nobody can tell what.
        j["_set_aside"] = str(set_aside(home, Path(j["_path"])))
        return "set aside"
    root = Path(j["root"])
    changes = [Change(**c) for c in j["changes"]]
    backups = BackupStore(home)
    if j["phase"] == "commit":
        on_commit(j, changes)
        os.unlink(path)
        return "rolled forward"
    rollback(home, root, changes, backups, testing.file_ops(), j["phase"])
    backups.discard_partial(j.get("txn", ""))
    os.unlink(path)
    return "rolled back"


def _at(e: OSError, path: Path) -> OSError:
    """Name the path a failed write was for: a write error carries no file name, and 'disk
    full' must say which disk (the target's, or the one holding the backups)."""
    if e.filename is None:
        e.filename = str(path)
    return e


def _os_failure(e: OSError, target: str) -> OperationFailed:
    where = f" ({e.filename})" if e.filename else ""
    if is_no_space(e):
        return OperationFailed(
            _("disk full while changing target '%(target)s'%(where)s; nothing was changed")
            % {"target": target, "where": where},
            _("free some disk space and run it again"),
        )
    if isinstance(e, PermissionError):
        return OperationFailed(
            _("permission denied%(where)s while changing target '%(target)s'; nothing was changed")
            % {"where": where, "target": target},
            _("run as the user that owns the environment, or fix its permissions"),
        )
    return OperationFailed(
        _("%(value)s%(where)s while changing target '%(target)s'; nothing was changed")
        % {"value": e.strerror or e, "where": where, "target": target},
        _("fix the cause and run it again"),
    )
