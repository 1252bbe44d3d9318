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

A crash in ``prepare`` or ``swap`` is rolled back at the next start: every file is put
back from the backups, so the target ends exactly as it was. A crash in ``commit`` is
rolled forward: the new files are all in place and verified.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..errors import OperationFailed, TKError
from .. import testing
from ..platform.files import FileOps, is_no_space
from .fsutil import atomic_write_json, copy_hashing, fsync_dir, sha256_file, stat_key
from ..home import Home

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
    old_stat: dict | None = None   # stat data of the file when old_sha256 was taken
    backup: str | None = None   # sha256 of the backed-up old bytes (set in prepare)


class BackupStore:
    """Content-addressed copies of every file a transaction replaced."""

    def __init__(self, home: Home):
        self.dir = home.backups_dir

    def path(self, digest: str) -> Path:
        return self.dir / digest[:2] / digest

    def has(self, digest: str) -> bool:
        p = self.path(digest)
        return p.is_file()

    def put(self, src: Path, expect: str | None, txn: str = "", expect_stat: dict | None = None) -> str:
        """Back up src; returns its sha256. A hard link when on the same volume (the
        transaction then replaces the target by rename, so the linked inode keeps the old
        bytes), else a hashed copy. txn names the transaction, so that what a crash left
        half-written can be found (:meth:`discard_partial`)."""
        if expect and self.has(expect):
            return expect
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{PARTIAL}{txn}-{uuid.uuid4().hex}"
        try:
            testing.check_space(self.dir)
            try:
                os.link(src, tmp)
            except OSError:
                try:
                    digest, _ = copy_hashing(src, tmp)
                except OSError as e:
                    raise _at(e, self.dir) from None
            else:
                # The link is the file itself, which may have changed since it was hashed.
                # The same inode with the same size and mtime as when it was hashed holds
                # the same bytes; anything else is hashed again, so no other bytes are ever
                # stored under the expected digest.
                if expect and expect_stat and stat_key(tmp) == expect_stat:
                    digest = expect
                else:
                    digest = sha256_file(tmp)
            if expect and digest != expect:
                raise OperationFailed(f"{src} changed while it was being backed up",
                                      "run the command again")
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
                 meta: dict | None = None, ops: FileOps | None = None,
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
                    raise OperationFailed(f"{p} appeared while the transaction ran",
                                          "run the command again")
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
            try:
                testing.check_space(staged.parent)
                # fsync: once swapped in, a file must survive a power cut (the backups
                # thread runs meanwhile, so the wait overlaps with its work)
                digest, size = copy_hashing(c.src, staged, self.progress)
            except OSError as e:
                raise _at(e, staged) from None
            if digest != c.new_sha256:
                raise OperationFailed(f"{c.src} does not match its recorded sha256",
                                      "run `torchkeeper bundle verify`; re-create or re-import the "
                                      "bundle")
            self.crash(f"staged {c.rel}")

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
                    raise OperationFailed(f"{p} could not be removed", "run the command again")
            elif not p.is_file() or p.stat().st_size != c.new_size:
                raise OperationFailed(f"{p} is not the file just written", "run the command again")

    def _cleanup(self) -> None:
        try:
            os.unlink(self.journal)
        except FileNotFoundError:
            pass

    def _rollback_safely(self) -> None:
        try:
            rollback(self.home, self.root, self.changes, self.backups, self.ops)
            self._cleanup()
        except BaseException:
            # The journal stays: the next command or agent start retries the rollback.
            pass


def journal_path(home: Home, target: str) -> Path:
    return home.journal_dir / f"{target}.json"


def rollback(home: Home, root: Path, changes: list[Change], backups: BackupStore,
             ops: FileOps | None = None) -> None:
    """Put every file back to its old bytes; remove staged leftovers."""
    ops = ops or FileOps()
    for c in changes:
        p = root / c.rel
        staged = Path(str(p) + STAGED)
        if staged.exists():
            os.unlink(staged)
        cur = sha256_file(p) if p.is_file() else None
        if cur == c.old_sha256:
            continue
        if c.old_sha256 is None:
            ops.remove(p)
            continue
        src = backups.path(c.old_sha256)
        if not src.is_file():
            raise OperationFailed(f"cannot restore {p}: its backup {src} is missing",
                                  "reinstall torch (pip install --force-reinstall torch==<version>)")
        tmp = Path(str(p) + RESTORE)
        if tmp.exists():
            os.unlink(tmp)
        digest, _ = copy_hashing(src, tmp)
        if digest != c.old_sha256:
            os.unlink(tmp)
            raise OperationFailed(f"the backup of {p} is damaged ({src})",
                                  "reinstall torch (pip install --force-reinstall torch==<version>)")
        ops.replace(tmp, p)
    for d in {(root / c.rel).parent for c in changes}:
        fsync_dir(d)


def pending(home: Home) -> list[dict]:
    d = home.journal_dir
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            out.append({"target": p.stem, "corrupt": True, "_path": str(p)})
    return out


def recover(home: Home, j: dict, on_commit: Callable[[dict, list[Change]], None]) -> str:
    """Finish an interrupted transaction. Returns 'rolled back' or 'rolled forward'."""
    path = journal_path(home, j["target"])
    if j.get("corrupt"):
        # A journal is written atomically: a corrupt one was never the one in force.
        os.unlink(path)
        return "discarded"
    root = Path(j["root"])
    changes = [Change(**c) for c in j["changes"]]
    backups = BackupStore(home)
    if j["phase"] == "commit":
        on_commit(j, changes)
        os.unlink(path)
        return "rolled forward"
    rollback(home, root, changes, backups, testing.file_ops())
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
        return OperationFailed(f"disk full while changing target '{target}'{where}; "
                               "nothing was changed", "free some disk space and run it again")
    if isinstance(e, PermissionError):
        return OperationFailed(f"permission denied{where} while changing target '{target}'; "
                               "nothing was changed",
                               "run as the user that owns the environment, or fix its permissions")
    return OperationFailed(f"{e.strerror or e}{where} while changing target '{target}'; nothing "
                           "was changed", "fix the cause and run it again")
