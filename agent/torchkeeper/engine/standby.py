"""The standby: the overlay's files kept ready on the target's own volume, so that a repair
after a pip or uv reinstall links them back into place instead of copying the bundle again.

Each standby file, in ``<site-packages>/.torchkeeper-standby/<sha256>``, is either a copy of
a file the overlay placed (``standby_copy``, the default: an inode of its own, which pip and
uv never touch, so a repair links it in without hashing it again; it costs the overlay's size
on disk) or a hard link to it (pip and uv unlink the files they replace, so after a reinstall
the overlay's inode lives on there; no disk while the overlay is in place, but pip's unlink
moves its ctime and the repair hashes it first). A copy is made only while the disk keeps
``standby_min_free_mb`` free after it; otherwise links. After a repair links a copy in, the
next preparation makes a new copy. Every file is recorded (``<data>/standby/<target>.json``)
with its sha256, read back after copying or linking, and its stat identity (device, inode,
size, mtime, ctime, links).

A repair uses a standby file only while its identity proves "the bytes we hashed": the same
device, inode, size, mtime and ctime. pip unlinking the overlay's name moves the inode's ctime,
and so does a write that puts the mtime back (through the standby's name, or a second hard
link): a moved ctime is never explained away, the file is hashed again first (the agent does
that in the background as soon as an install starts: :func:`refresh`), and used only if its
bytes are still the overlay's. Otherwise the repair copies from the bundle.

The folder is torchkeeper's own: never followed when it is a link (a sync tool's, a user's,
an attacker's). Something other than a real folder there is moved aside with a warning and a
real folder made; every link, rename, hash and removal inside it goes through a descriptor of
that folder opened without following links (POSIX), so a swap of the folder in between cannot
send a deletion elsewhere.

Preparation takes ``<target>.preparing`` (a marker, and a lock held while it runs): a kill -9
during it leaves the marker, and the next command throws that standby away. Preparing never
writes a library file, so the target itself is untouched by it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import time
from pathlib import Path

from .. import testing
from ..home import Home
from .fsutil import (CHUNK, NotARegularFile, atomic_write_json, fsync_dir, kind_of, load_json,
                     set_aside)
from .records import Config, JsonObject, StatKey

DIRNAME = ".torchkeeper-standby"
PREP = ".tk-prep"
DEFAULT_FLOOR_MB = 2048


def folder(site_packages: Path | str) -> Path:
    return Path(site_packages) / DIRNAME


def record_path(home: Home, target: str) -> Path:
    return home.data_dir / "standby" / f"{target}.json"


def _marker(home: Home, target: str) -> Path:
    return home.data_dir / "standby" / f"{target}.preparing"


IDENTITY = ("dev", "ino", "size", "mtime_ns", "ctime_ns")   # what proves the bytes
_SHA_RX = re.compile(r"^[0-9a-f]{64}$")


def _ident(st: os.stat_result) -> StatKey:
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "nlink": st.st_nlink}


def identity(p: Path | str) -> StatKey:
    return _ident(os.lstat(p))


def same(p: Path | str, rec: JsonObject) -> bool:
    """Whether p still is the file rec recorded, with the bytes that were hashed: nothing
    about it has changed since, not even its ctime (a write that put the mtime back moves it)."""
    try:
        now = identity(p)
    except OSError:
        return False
    return all(now[k] == rec.get(k) for k in IDENTITY)


def _only_ctime_moved(now: StatKey, rec: JsonObject) -> bool:
    """Same inode, size and mtime, another ctime: pip's unlink of the overlay's name, or a
    write that put the mtime back; only a hash can tell which."""
    return all(now[k] == rec.get(k) for k in ("dev", "ino", "size", "mtime_ns")) \
        and now["ctime_ns"] != rec.get("ctime_ns")


def _valid_record(rec) -> bool:
    """The record's shape, every value checked: a damaged or hostile one is no standby."""
    if not isinstance(rec, dict) or not isinstance(rec.get("dir"), str) \
            or not isinstance(rec.get("files"), dict):
        return False
    for sha, f in rec["files"].items():
        if not (isinstance(sha, str) and _SHA_RX.match(sha) and isinstance(f, dict)):
            return False
        if not all(type(f.get(k)) is int for k in IDENTITY):
            return False
    if rec.get("mode", "link") not in ("copy", "link", "mixed"):
        return False
    return rec.get("bundle") is None or isinstance(rec["bundle"], str)


def read(home: Home, target: str) -> JsonObject | None:
    """The standby record, or None (none, damaged, or a preparation was interrupted). A
    record path that is not a file (a folder, a link) is moved aside: it never stops a command."""
    if kind_of(_marker(home, target)) is not None:
        return None
    path = record_path(home, target)
    try:
        rec = load_json(path, follow=False)
    except FileNotFoundError:
        return None
    except NotARegularFile as e:
        set_aside(path, e.strerror.split(",")[0])
        return None
    except (OSError, ValueError):
        return None
    return rec if _valid_record(rec) else None


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def floor_bytes(cfg: Config | None) -> int:
    return int((cfg or {}).get("standby_min_free_mb", DEFAULT_FLOOR_MB)) * (1 << 20)


def enabled(cfg: Config | None) -> bool:
    return bool((cfg or {}).get("standby", True))


def copies(cfg: Config | None) -> bool:
    """A copy of its own per standby file (True) or hard links to the placed files."""
    return bool((cfg or {}).get("standby_copy", True))


# -- the folder: torchkeeper's own, never followed -----------------------------------------
class _Folder:
    """The standby folder, opened without following a link: every operation inside it goes
    through that descriptor (POSIX), so the folder swapped for a link in between changes
    nothing. Where descriptors cannot be used this way (Windows), paths, after the same check."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    @classmethod
    @contextlib.contextmanager
    def open(cls, site_packages: Path | str, create: bool):
        """Yields the folder, or None when there is none (and not ``create``) or it cannot be
        had (something there that could not be moved aside)."""
        d = folder(site_packages)
        kind = kind_of(d)
        if kind not in (None, "a folder"):
            set_aside(d, kind)      # a link, a file, a FIFO: never followed, never deleted
            kind = kind_of(d)
        if kind is None and create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(d)
            kind = kind_of(d)
        if kind != "a folder":
            yield None
            return
        if not _DIR_FD:
            yield cls(d, None)
            return
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # swapped for a link since the look above (ELOOP): not ours
            yield None
            return
        try:
            yield cls(d, fd)
        finally:
            os.close(fd)

    def _at(self, name: str):
        return (name, self.fd) if self.fd is not None else (str(self.path / name), None)

    def stat(self, name: str) -> StatKey:
        p, fd = self._at(name)
        return _ident(os.stat(p, dir_fd=fd, follow_symlinks=False))

    def link_from(self, src: Path, name: str) -> None:
        """name becomes a hard link to src (replacing what was there), in one rename."""
        tmp = name + PREP
        with contextlib.suppress(FileNotFoundError):
            self.unlink(tmp)
        p, fd = self._at(tmp)
        os.link(src, p, dst_dir_fd=fd, follow_symlinks=False)
        q, _ = self._at(name)
        os.replace(p, q, src_dir_fd=fd, dst_dir_fd=fd)

    def unlink(self, name: str) -> None:
        p, fd = self._at(name)
        os.unlink(p, dir_fd=fd)

    def copy_from(self, src: Path, name: str) -> None:
        """name becomes a copy of src's bytes, an inode of its own, flushed, in one rename."""
        tmp = name + PREP
        with contextlib.suppress(FileNotFoundError):
            self.unlink(tmp)
        p, fd = self._at(tmp)
        nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        fin = os.open(src, os.O_RDONLY | nofollow)
        try:
            if not stat.S_ISREG(os.fstat(fin).st_mode):
                raise NotARegularFile(errno.EINVAL, "not a file", str(src))
            fout = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o644, dir_fd=fd)
            try:
                _copy_fd(fin, fout)
                os.fsync(fout)
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        q, _ = self._at(name)
        os.replace(p, q, src_dir_fd=fd, dst_dir_fd=fd)

    def names(self) -> list[str]:
        return os.listdir(self.fd if self.fd is not None else self.path)

    def sha256(self, name: str) -> str:
        """The bytes of a regular file in the folder (a link or a FIFO there: an OSError)."""
        p, fd = self._at(name)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
            | getattr(os, "O_BINARY", 0)
        h = hashlib.sha256()
        f = os.open(p, flags, dir_fd=fd)
        try:
            if not stat.S_ISREG(os.fstat(f).st_mode):
                raise NotARegularFile(errno.EINVAL, "not a file", p)
            while chunk := os.read(f, CHUNK):
                h.update(chunk)
        finally:
            os.close(f)
        return h.hexdigest()

    def fsync(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
        else:
            fsync_dir(self.path)


def _copy_fd(fin: int, fout: int) -> None:
    """The kernel's copy where there is one (copy_file_range: a reflink on btrfs and XFS),
    else reads and writes."""
    if hasattr(os, "copy_file_range"):
        try:
            while os.copy_file_range(fin, fout, 1 << 30):
                pass
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.lseek(fin, 0, os.SEEK_SET)
            os.lseek(fout, 0, os.SEEK_SET)
            os.ftruncate(fout, 0)
    while chunk := os.read(fin, CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fout, view):]


_DIR_FD = os.name != "nt" and all(
    f in os.supports_dir_fd for f in (os.link, os.unlink, os.stat, os.open, os.rename)) \
    and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")


def _check(f: _Folder, sha: str, rec: JsonObject) -> JsonObject | None:
    """The file's identity now when it proves rec's bytes; a file whose ctime alone moved is
    hashed again (and trusted only when its bytes still are ``sha``). None: not usable."""
    try:
        now = f.stat(sha)
        if all(now[k] == rec.get(k) for k in IDENTITY):
            return now
        if not _only_ctime_moved(now, rec) or f.sha256(sha) != sha:
            return None
        return now if f.stat(sha) == now else None   # unchanged while it was hashed
    except OSError:
        return None


# -- using it ------------------------------------------------------------------------------
def usable(home: Home, target: str, site_packages: Path, bundle: str, cfg: Config | None
           ) -> tuple[dict[str, JsonObject], str | None]:
    """{sha256: {"path", "identity"}} of the standby files a repair may link in, and why
    none can be used (None when some can). A file whose ctime moved since it was hashed is
    hashed again here, unless :func:`refresh` already did."""
    if not enabled(cfg):
        return {}, "standby off"
    rec = read(home, target)
    if rec is None:
        return {}, "no standby"
    if rec.get("bundle") != bundle or Path(rec["dir"]) != folder(site_packages):
        return {}, "standby of another overlay"
    try:
        if free_bytes(site_packages) < floor_bytes(cfg):
            return {}, "disk space below the standby floor"
    except OSError:
        return {}, "free space unknown"
    out, bad, changed = {}, [], False
    with _Folder.open(site_packages, create=False) as f:
        if f is None:
            return {}, "no standby folder of torchkeeper's"
        # the files whose ctime moved are hashed again: two at a time (hashlib drops the GIL),
        # largest first, as hash_many does; this is on a repair's path
        from concurrent.futures import ThreadPoolExecutor

        items = sorted(rec["files"].items(), key=lambda kv: -kv[1].get("size", 0))
        with ThreadPoolExecutor(max_workers=2) as pool:
            checked = list(pool.map(lambda kv: _check(f, kv[0], kv[1]), items))
        for (sha, fr), now in zip(items, checked):
            if now is None:
                bad.append(sha)
                continue
            if now != fr:
                rec["files"][sha], changed = now, True
            out[sha] = {"path": str(f.path / sha), "identity": now}
    if changed:
        _save(home, target, rec)
    if not out:
        return {}, "standby damaged" if bad else "standby empty"
    return out, ("standby damaged" if bad else None)


def refresh(home: Home, target: str, site_packages: Path, cfg: Config | None) -> JsonObject:
    """Hash again, now, the standby files whose ctime moved (pip unlinking the overlay's names
    during an install), so that the repair after the install finds them proven and links them
    without hashing on its critical path. A file whose bytes are no longer the overlay's is
    dropped from the record. Returns {"checked", "dropped"}."""
    rec = read(home, target)
    if rec is None or not enabled(cfg) or Path(rec["dir"]) != folder(site_packages):
        return {"checked": 0, "dropped": 0}
    checked = dropped = 0
    with _Folder.open(site_packages, create=False) as f:
        if f is None:
            return {"checked": 0, "dropped": 0}
        for sha, fr in list(rec["files"].items()):
            try:
                if all(f.stat(sha)[k] == fr.get(k) for k in IDENTITY):
                    continue
            except OSError:
                continue   # gone: usable() says so
            checked += 1
            now = _check(f, sha, fr)
            if now is None:
                rec["files"].pop(sha)
                dropped += 1
            else:
                rec["files"][sha] = now
    if checked:
        fresh = read(home, target)   # a repair or a preparation may have written it meanwhile
        if fresh is not None and fresh.get("prepared") == rec.get("prepared"):
            _save(home, target, rec)
    return {"checked": checked, "dropped": dropped}


def _save(home: Home, target: str, rec: JsonObject) -> None:
    path = record_path(home, target)
    if kind_of(path) not in (None, "a file"):
        set_aside(path, kind_of(path))
    atomic_write_json(path, rec)


def after_commit(home: Home, target: str, used: dict[str, bool]) -> None:
    """A repair linked these standby files in: each is now the overlay's own inode again,
    so the standby is ready once its identity (one more link, a new ctime) is recorded."""
    rec = read(home, target)
    if rec is None or not used:
        return
    for sha in used:
        f = rec["files"].get(sha)
        p = Path(rec["dir"]) / sha
        if f is None:
            continue
        try:
            now = identity(p)
        except OSError:
            rec["files"].pop(sha)
            continue
        if all(now[k] == f[k] for k in ("dev", "ino", "size", "mtime_ns")):
            f.update(now)
        else:
            rec["files"].pop(sha)
    rec["refreshed"] = time.time()
    _save(home, target, rec)


# -- preparing it --------------------------------------------------------------------------
def prepare(home: Home, target: str, site_packages: Path, get_overlay, cfg: Config | None,
            lock, low_priority: bool = False, rehash: bool = False) -> JsonObject:
    """Make the standby match the overlay in place: link each overlay file into the standby
    folder, hash it, record it. ``lock`` is the target's lock (a context manager), taken for
    the short part that reads the overlay and links its files; the hashing runs outside it.
    ``get_overlay()`` reads the overlay record (under that lock). Returns {"state", "files",
    "bytes", "why", "bad"}: ``bad`` names overlay files whose bytes were found not to be the
    overlay's (the caller must check that target in full: it is drifted, not patched).
    ``rehash``: hash files already in the standby again (the daily check)."""
    from filelock import FileLock, Timeout

    crash = testing.Checkpoints()
    if low_priority:
        _lower_priority()
    mk = _marker(home, target)
    mk.parent.mkdir(parents=True, exist_ok=True)
    if kind_of(mk) not in (None, "a file"):
        set_aside(mk, kind_of(mk))
    plock = FileLock(str(mk) + ".lock")
    try:
        plock.acquire(timeout=30)
    except Timeout:
        return {"state": "busy", "why": "another preparation runs"}
    try:
        if not enabled(cfg):
            drop(home, target, site_packages)
            return {"state": "off", "why": "standby off"}
        try:
            low = free_bytes(site_packages) < floor_bytes(cfg)
        except OSError:
            low = True
        if low:
            drop(home, target, site_packages)
            return {"state": "skipped", "why": "disk space below the standby floor"}
        old = read(home, target)
        with _Folder.open(site_packages, create=True) as f:
            if f is None:
                return {"state": "none", "why": f"{folder(site_packages)} is not a folder of torchkeeper's"}
            spare = None
            if copies(cfg):
                try:
                    spare = free_bytes(site_packages) - floor_bytes(cfg)
                except OSError:
                    spare = None
            return _prepare_in(home, target, f, mk, get_overlay, lock, old, rehash, crash, spare)
    finally:
        plock.release()


def _prepare_in(home, target, f: _Folder, mk: Path, get_overlay, lock, old, rehash, crash,
                spare: int | None) -> JsonObject:
    """``spare``: the bytes copies may take (copy mode), None for links only."""
    want: dict[str, JsonObject] = {}
    to_copy: dict[str, tuple[Path, str, tuple[int, int, int]]] = {}
    why = None
    with lock:
        overlay = get_overlay()
        if not overlay:
            drop(home, target, f.path.parent)
            return {"state": "none", "why": "no overlay"}
        _write_marker(mk)
        crash("standby: marker written")
        for rel, o in sorted(overlay.get("files", {}).items()):
            sha = o.get("sha256")
            if not sha or o.get("same_as_stock") or sha in want:
                continue
            p = Path(overlay["site_packages"]) / rel
            try:
                st = os.stat(p)
                in_place = (st.st_size, st.st_mtime_ns, st.st_ino) == (o.get("size"), o.get("mtime_ns"),
                                                                      o.get("ino"))
            except OSError:
                in_place = False
            if not in_place:
                # a reinstall undid it: the standby's own copy, if still whole, is just
                # what the coming repair needs
                # (hashed below, outside the lock, when its ctime moved)
                prev = (old or {}).get("files", {}).get(sha)
                try:
                    now = f.stat(sha)
                except OSError:
                    now = None
                if prev and now and all(now[k] == prev.get(k) for k in ("dev", "ino", "size", "mtime_ns")):
                    want[sha] = {"ident": now, "rel": rel, "placed": False}
                else:
                    why = "the overlay is not in place"
                continue
            try:
                try:
                    cur = f.stat(sha)
                except FileNotFoundError:
                    cur = None
                if spare is not None:
                    prev = (old or {}).get("files", {}).get(sha)
                    if cur and cur["ino"] != st.st_ino and prev and all(cur[k] == prev.get(k) for k in IDENTITY):
                        want[sha] = {"ident": cur, "rel": rel, "placed": False, "copy": True}  # untouched since hashed
                        continue
                    if spare >= st.st_size:  # copied below, outside the lock
                        spare -= st.st_size
                        to_copy[sha] = (p, rel, (st.st_ino, st.st_size, st.st_mtime_ns))
                        continue
                if cur is None or cur["ino"] != st.st_ino:
                    f.link_from(p, sha)
            except OSError as e:
                why = ("the library folder is on another volume" if e.errno == errno.EXDEV
                       else f"cannot link into {f.path}: {e.strerror}")
                continue
            want[sha] = {"ident": f.stat(sha), "rel": rel, "placed": True}
            crash(f"standby: linked {rel}")
        if want:
            f.fsync()
        bundle = overlay.get("bundle")
    for sha, (src, rel, placed_as) in to_copy.items():
        # a copy of the placed file (not of the bundle: the same bytes, on the same volume,
        # and its hash below proves both); a placed file replaced meanwhile is not copied
        try:
            f.copy_from(src, sha)
            st = os.stat(src)
        except OSError as e:
            why = f"cannot copy {rel} into {f.path}: {e.strerror}"
            continue
        if (st.st_ino, st.st_size, st.st_mtime_ns) != placed_as:
            why = f"{rel} changed while it was copied"
            with contextlib.suppress(OSError):
                f.unlink(sha)
            continue
        want[sha] = {"ident": f.stat(sha), "rel": rel, "placed": True, "copy": True}  # the placed file's bytes
        crash(f"standby: copied {rel}")
    if to_copy:
        f.fsync()
    files, bad = {}, []
    for sha, w in want.items():
        prev = (old or {}).get("files", {}).get(sha)
        if not rehash and prev and prev.get("ino") == w["ident"]["ino"] and same(f.path / sha, prev):
            files[sha] = f.stat(sha)  # hashed before, untouched since
            continue
        before = f.stat(sha)
        ok = f.sha256(sha) == sha and f.stat(sha) == before
        crash(f"standby: hashed {w['rel']}")
        if ok:
            files[sha] = before
        else:
            why = f"{w['rel']} is not the overlay's bytes (changed in place?)"
            if w["placed"]:
                bad.append(w["rel"])  # the placed file is that inode: the target is drifted
            with contextlib.suppress(OSError):
                f.unlink(sha)
    for name in f.names():
        if name not in files:  # an older overlay's, or a damaged one (links are unlinked, not followed)
            with contextlib.suppress(OSError):
                f.unlink(name)
    copied = sum(1 for sha in files if want[sha].get("copy"))
    rec = {"bundle": bundle, "dir": str(f.path), "files": files, "prepared": time.time(), "why": why,
           "mode": "copy" if files and copied == len(files) else ("link" if not copied else "mixed")}
    _save(home, target, rec)
    crash("standby: recorded")
    os.unlink(mk)
    return {"state": "ready" if files and not why else ("partial" if files else "none"),
            "files": len(files), "bytes": sum(x["size"] for x in files.values()), "why": why,
            "bad": bad, "mode": rec["mode"]}


def _write_marker(mk: Path) -> None:
    with open(mk, "w") as f:
        f.write(str(os.getpid()))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(mk.parent)


def _lower_priority(nice: int = 19) -> None:
    """This thread only (Linux: a thread is a task with its own nice value)."""
    try:
        import threading

        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


def drop(home: Home, target: str, site_packages: Path | str | None) -> None:
    """Delete the standby (revert, target remove, standby off, too little disk). Only a real
    folder is deleted (shutil.rmtree does not follow links inside it); a link or anything else
    in its place is moved aside, never deleted through. The same for the record and marker."""
    if site_packages is None:
        rec = read(home, target)
        site_packages = Path(rec["dir"]).parent if rec else None
    if site_packages is not None:
        d = folder(site_packages)
        kind = kind_of(d)
        if kind == "a folder":
            shutil.rmtree(d, ignore_errors=True)
        elif kind is not None:
            set_aside(d, kind)
    for p in (record_path(home, target), _marker(home, target)):
        kind = kind_of(p)
        if kind in ("a file", "a link"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)   # a link itself, not what it points to
        elif kind is not None:
            set_aside(p, kind)


def recover(home: Home, site_packages_of) -> list[str]:
    """Throw away standbys whose preparation was killed (the marker is left, its lock is
    free). ``site_packages_of(target)`` names the target's site-packages, or None."""
    from filelock import FileLock, Timeout

    d = home.data_dir / "standby"
    out = []
    for mk in sorted(d.glob("*.preparing")) if d.is_dir() else []:
        target = mk.stem
        lk = FileLock(str(mk) + ".lock")
        try:
            lk.acquire(timeout=0)
        except Timeout:
            continue  # being prepared now
        try:
            if mk.exists():
                drop(home, target, site_packages_of(target))
                out.append(target)
        finally:
            lk.release()
    return out


def describe(home: Home, target: str, site_packages: Path | str, cfg: Config | None) -> JsonObject:
    """What status and doctor show: state, files, bytes only the standby holds, free space."""
    if not enabled(cfg):
        return {"state": "off"}
    if _marker(home, target).exists():
        return {"state": "preparing"}
    rec = read(home, target)
    if rec is None:
        return {"state": "none"}
    if kind_of(folder(site_packages)) != "a folder":
        return {"state": "none", "why": "no standby folder of torchkeeper's"}
    ready, held, total = 0, 0, 0
    for sha, f in rec["files"].items():
        p = Path(rec["dir"]) / sha
        if same(p, f) or _refreshable(p, f):
            ready += 1
            total += f["size"]
            if os.lstat(p).st_nlink == 1:
                held += f["size"]  # the overlay's name is gone: only the standby keeps it
    out = {"state": "ready" if ready and ready == len(rec["files"]) else ("damaged" if rec["files"] else "none"),
           "files": ready, "bytes": total, "disk_bytes": held, "folder": rec["dir"],
           "mode": rec.get("mode", "link")}
    if rec.get("why"):
        out["why"] = rec["why"]
    return out


def _refreshable(p: Path, rec: JsonObject) -> bool:
    """Status: ctime moved by pip's unlink of the overlay's name (one link fewer); the next
    repair hashes it again before trusting it, so it counts as ready here."""
    try:
        now = identity(p)
    except OSError:
        return False
    return _only_ctime_moved(now, rec) and now["nlink"] < rec.get("nlink", 0)


def interrupted(home: Home) -> bool:
    d = home.data_dir / "standby"
    return d.is_dir() and any(d.glob("*.preparing"))
