"""The standby: the overlay's files kept ready on the target's own volume, so that a repair
after a pip or uv reinstall links them back into place instead of copying the bundle again.

Each standby file is a hard link, in ``<site-packages>/.torchkeeper-standby/<sha256>``, to a
file the overlay placed. pip and uv unlink the files they replace, so after a reinstall the
overlay's inode lives on there with our bytes; while the overlay is in place it costs no
disk at all. Every file is recorded (``<data>/standby/<target>.json``) with its sha256, read
back after linking, and its stat identity (device, inode, size, mtime, ctime, links).

A repair uses a standby file only while its identity still says "the bytes we hashed":
same device, inode, size and mtime, and the same ctime -- or a ctime that moved together with
a lost link (pip unlinking the overlay's name changes the inode's ctime). An in-place write
into the overlay file (the same inode) changes its mtime: such a file is never used, and the
repair copies from the bundle as before. The daily full check re-hashes the standby.

Preparation takes ``<target>.preparing`` (a marker, and a lock held while it runs): a kill -9
during it leaves the marker, and the next command throws that standby away. Preparing never
writes a library file, so the target itself is untouched by it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from pathlib import Path

from .. import testing
from ..home import Home
from .fsutil import atomic_write_json, fsync_dir, sha256_file

DIRNAME = ".torchkeeper-standby"
PREP = ".tk-prep"
DEFAULT_FLOOR_MB = 2048


def folder(site_packages: Path | str) -> Path:
    return Path(site_packages) / DIRNAME


def record_path(home: Home, target: str) -> Path:
    return home.data_dir / "standby" / f"{target}.json"


def _marker(home: Home, target: str) -> Path:
    return home.data_dir / "standby" / f"{target}.preparing"


def identity(p: Path | str) -> dict:
    st = os.lstat(p)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "nlink": st.st_nlink}


def same(p: Path | str, rec: dict) -> bool:
    """Whether p still is the file rec recorded, with the bytes that were hashed."""
    try:
        now = identity(p)
    except OSError:
        return False
    if any(now[k] != rec.get(k) for k in ("dev", "ino", "size", "mtime_ns")):
        return False
    # a link removed (pip unlinking the overlay's name) moves ctime too; anything else that
    # moves it (chmod, a write that restored mtime) is doubt
    return now["ctime_ns"] == rec.get("ctime_ns") or now["nlink"] < rec.get("nlink", 0)


def read(home: Home, target: str) -> dict | None:
    """The standby record, or None (none, damaged, or a preparation was interrupted)."""
    if _marker(home, target).exists():
        return None
    try:
        rec = json.loads(record_path(home, target).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("files"), dict) \
            or not isinstance(rec.get("dir"), str):
        return None
    return rec


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def floor_bytes(cfg: dict | None) -> int:
    return int((cfg or {}).get("standby_min_free_mb", DEFAULT_FLOOR_MB)) * (1 << 20)


def enabled(cfg: dict | None) -> bool:
    return bool((cfg or {}).get("standby", True))


# -- using it ------------------------------------------------------------------------------
def usable(home: Home, target: str, site_packages: Path, bundle: str, cfg: dict | None
           ) -> tuple[dict[str, dict], str | None]:
    """{sha256: {"path", "identity"}} of the standby files a repair may link in, and why
    none can be used (None when some can)."""
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
    out, bad = {}, []
    for sha, f in rec["files"].items():
        p = Path(rec["dir"]) / sha
        if isinstance(f, dict) and same(p, f):
            out[sha] = {"path": str(p), "identity": f}
        else:
            bad.append(sha)
    if not out:
        return {}, "standby damaged" if bad else "standby empty"
    return out, ("standby damaged" if bad else None)


def after_commit(home: Home, target: str, used: dict[str, dict]) -> None:
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
    atomic_write_json(record_path(home, target), rec)


# -- preparing it --------------------------------------------------------------------------
def prepare(home: Home, target: str, site_packages: Path, get_overlay, cfg: dict | None,
            lock, low_priority: bool = False, rehash: bool = False) -> dict:
    """Make the standby match the overlay in place: link each overlay file into the standby
    folder, hash it, record it. ``lock`` is the target's lock (a context manager), taken for
    the short part that reads the overlay and links its files; the hashing runs outside it.
    ``get_overlay()`` reads the overlay record (under that lock). Returns {"state", "files",
    "bytes", "why"}. ``rehash``: hash files already in the standby again (the daily check)."""
    from filelock import FileLock, Timeout

    crash = testing.Checkpoints()
    if low_priority:
        _lower_priority()
    d = folder(site_packages)
    mk = _marker(home, target)
    mk.parent.mkdir(parents=True, exist_ok=True)
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
        want: dict[str, dict] = {}
        why = None
        with lock:
            overlay = get_overlay()
            if not overlay:
                drop(home, target, site_packages)
                return {"state": "none", "why": "no overlay"}
            _write_marker(mk)
            crash("standby: marker written")
            for rel, f in sorted(overlay.get("files", {}).items()):
                sha = f.get("sha256")
                if not sha or f.get("same_as_stock") or sha in want:
                    continue
                p = Path(overlay["site_packages"]) / rel
                dest = d / sha
                try:
                    st = os.stat(p)
                    in_place = (st.st_size, st.st_mtime_ns, st.st_ino) == (
                        f.get("size"), f.get("mtime_ns"), f.get("ino"))
                except OSError:
                    in_place = False
                if not in_place:
                    # a reinstall undid it: the standby's own copy, if still whole, is
                    # just what the coming repair needs
                    prev = (old or {}).get("files", {}).get(sha)
                    if prev and same(dest, prev):
                        want[sha] = {"ident": prev, "rel": rel}
                    else:
                        why = "the overlay is not in place"
                    continue
                try:
                    d.mkdir(exist_ok=True)
                    if not (dest.exists() and os.stat(dest).st_ino == st.st_ino):
                        tmp = d / (sha + PREP)
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
                        os.link(p, tmp)
                        os.replace(tmp, dest)
                except OSError as e:
                    why = ("the library folder is on another volume" if e.errno == errno.EXDEV
                           else f"cannot link into {d}: {e.strerror}")
                    continue
                want[sha] = {"ident": identity(dest), "rel": rel}
                crash(f"standby: linked {rel}")
            if want:
                fsync_dir(d)
            bundle = overlay.get("bundle")
        files = {}
        for sha, w in want.items():
            dest = d / sha
            prev = (old or {}).get("files", {}).get(sha)
            if not rehash and prev and prev.get("ino") == w["ident"]["ino"] and same(dest, prev):
                files[sha] = identity(dest)  # hashed before, untouched since
                continue
            before = identity(dest)
            ok = sha256_file(dest) == sha and identity(dest) == before
            crash(f"standby: hashed {w['rel']}")
            if ok:
                files[sha] = before
            else:
                why = f"{w['rel']} changed while the standby was prepared"
                with contextlib.suppress(OSError):
                    os.unlink(dest)
        for p in d.iterdir() if d.is_dir() else []:
            if p.name not in files:  # an older overlay's, or a damaged one
                with contextlib.suppress(OSError):
                    os.unlink(p)
        rec = {"bundle": bundle, "dir": str(d), "files": files, "prepared": time.time(), "why": why}
        atomic_write_json(record_path(home, target), rec)
        crash("standby: recorded")
        os.unlink(mk)
        return {"state": "ready" if files and not why else ("partial" if files else "none"),
                "files": len(files), "bytes": sum(f["size"] for f in files.values()), "why": why}
    finally:
        plock.release()


def _write_marker(mk: Path) -> None:
    with open(mk, "w") as f:
        f.write(str(os.getpid()))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(mk.parent)


def _lower_priority() -> None:
    """This thread only (Linux: a thread is a task with its own nice value)."""
    try:
        import threading

        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def drop(home: Home, target: str, site_packages: Path | str | None) -> None:
    """Delete the standby (revert, target remove, standby off, too little disk)."""
    if site_packages is None:
        rec = read(home, target)
        site_packages = Path(rec["dir"]).parent if rec else None
    if site_packages is not None:
        shutil.rmtree(folder(site_packages), ignore_errors=True)
    for p in (record_path(home, target), _marker(home, target)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


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


def describe(home: Home, target: str, site_packages: Path | str, cfg: dict | None) -> dict:
    """What status and doctor show: state, files, bytes only the standby holds, free space."""
    if not enabled(cfg):
        return {"state": "off"}
    if _marker(home, target).exists():
        return {"state": "preparing"}
    rec = read(home, target)
    if rec is None:
        return {"state": "none"}
    ready, held, total = 0, 0, 0
    for sha, f in rec["files"].items():
        p = Path(rec["dir"]) / sha
        if same(p, f):
            ready += 1
            total += f["size"]
            if os.lstat(p).st_nlink == 1:
                held += f["size"]  # the overlay's name is gone: only the standby keeps it
    out = {"state": "ready" if ready and ready == len(rec["files"]) else ("damaged" if rec["files"] else "none"),
           "files": ready, "bytes": total, "disk_bytes": held, "folder": rec["dir"]}
    if rec.get("why"):
        out["why"] = rec["why"]
    return out


def interrupted(home: Home) -> bool:
    d = home.data_dir / "standby"
    return d.is_dir() and any(d.glob("*.preparing"))
