"""Noticing: file events on each target's folders, turned into one "look at target X"
once an install has finished.

Two parts:
- :class:`Debouncer` - pure logic on an injected clock: a burst of events for a target
  becomes one check after a quiet period, once the install looks finished (every
  ``*.dist-info`` created in the burst has its RECORD, pip's ``~orch`` stash is gone),
  and never later than a bound after the first event. Where the installer's own last
  step shows it is done (see :func:`install_done`), a short settle period replaces the
  quiet period.
- :class:`Watcher` - watchdog watches (non-recursive) on each target's site-packages and
  library folders, re-armed when pip swaps ``torch/`` for a new folder. A watch follows
  the inode it was put on, so after ``torch -> ~orch`` it reports the stash's deletions
  under the old name: each watch remembers its folder's inode and drops what comes from
  a folder that is no longer there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..engine.fsutil import read_file

log = logging.getLogger("torchkeeper.agent")

# top-level names in site-packages whose changes matter: torch itself, the nvidia-* wheels
# torch loads its CUDA libraries from on Linux, their dist-info, and pip's stashes (~orch)
_RELEVANT_PREFIXES = ("torch", "nvidia", "~")


NEW = "new"  # Debouncer.event: the event started a burst

# quiet time after a burst whose install is known done (install_done): pip and uv write
# nothing more by then (measured: uv exits 1-3 ms after RECORD, pip ~100 ms after its
# stash removal, with no file event in between)
SETTLE = 0.1

LibStats = dict[str, tuple[int, int] | None]   # a library file -> (size, mtime_ns); None: missing


def relevant_top(name: str) -> bool:
    n = name.lower()
    return n.startswith(_RELEVANT_PREFIXES)


@dataclass
class Burst:
    first: float                 # clock time of the first event
    last: float                  # clock time of the latest event
    first_wall: float            # wall time of the first event, for the event log
    last_wall: float = 0.0       # wall time of the latest event: the installer's last write
    events: int = 0
    dist_infos: set[str] = field(default_factory=set)  # dist-info folders created in the burst
    stashes: set[str] = field(default_factory=set)     # ~xxx folders pip stashed into
    lib_dirs: tuple[str, ...] = ()                     # the target's library folders (relative)
    sizes: LibStats | None = None                      # their files' stat data at the last look


class Debouncer:
    """Coalesces events per target. Thread-safe; time comes from ``clock``.

    ``finished(site_packages, burst)`` says whether an install has finished (checked only
    once the quiet period has passed); the default looks at the file system.
    ``settle`` (None: the quiet period): the shorter quiet time after which a burst is due
    when ``done(site_packages, burst)`` (default :func:`install_done`) and ``finished``
    both say so.
    """

    def __init__(self, quiet: float, max_wait: float, clock: Callable[[], float] = time.monotonic,
                 finished: Callable[[Path, Burst], bool] | None = None, settle: float | None = None,
                 done: Callable[[Path, Burst], bool] | None = None):
        self.quiet = quiet
        self.max_wait = max_wait
        self.settle = settle
        self.clock = clock
        self.finished = finished or install_finished
        self.done = done or install_done
        self._bursts: dict[str, Burst] = {}
        self._roots: dict[str, Path] = {}
        self._lib_dirs: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def configure(self, quiet: float, max_wait: float) -> None:
        with self._lock:
            self.quiet, self.max_wait = quiet, max_wait

    def _settle(self) -> float:
        return self.quiet if self.settle is None else min(self.settle, self.quiet)

    def _short(self, root: Path, b: Burst) -> bool:
        """Whether this burst may come out after the settle period: only an install whose
        last step was seen (a stash or a new dist-info), now done and finished."""
        return (b.stashes or b.dist_infos) and self.done(root, b) and self.finished(root, b)

    def set_lib_dirs(self, target: str, lib_dirs) -> None:
        """The folders (relative to site-packages) the target loads libraries from: an
        install has not finished while their files still grow or pip's stash of one of
        their parents (``nvidia/~udnn``) is there."""
        with self._lock:
            self._lib_dirs[target] = tuple(lib_dirs)

    def event(self, target: str, root: Path, top: str | None = None, kind: str = "") -> bool:
        """One relevant event. ``top`` is the site-packages entry it touched, when it came
        from the site-packages watch (``torch``, ``~orch``, ``torch-2.5.1.dist-info``).
        Returns False when it did not count, NEW when it started a burst, else True."""
        now = self.clock()
        with self._lock:
            b = self._bursts.get(target)
            if b is None and top and top.startswith("~") and kind in ("deleted", "moved_from"):
                # pip removing its stash: the tail of an install that was already checked
                # (its stash was gone by then); it changes nothing torch loads
                return False
            started = b is None
            if b is None:
                b = self._bursts[target] = Burst(now, now, time.time(),
                                                 lib_dirs=self._lib_dirs.get(target, ()))
            b.last = now
            b.last_wall = time.time()
            b.events += 1
            self._roots[target] = root
            if top and kind in ("created", "moved_to"):
                # a stash first: pip stashes a dist-info as ~orch-2.5.1.dist-info too
                if top.startswith("~"):
                    b.stashes.add(top)
                elif top.endswith(".dist-info"):
                    b.dist_infos.add(top)
        return NEW if started else True

    def pending(self) -> bool:
        with self._lock:
            return bool(self._bursts)

    def pending_targets(self) -> list[str]:
        with self._lock:
            return list(self._bursts)

    def due(self) -> list[tuple[str, Burst]]:
        """Bursts ready for their check; they are removed from the pending set."""
        now = self.clock()
        out = []
        with self._lock:
            for name, b in list(self._bursts.items()):
                root, quiet_for = self._roots[name], now - b.last
                if now - b.first >= self.max_wait or (
                        quiet_for >= self.quiet and self.finished(root, b)) or (
                        self._settle() <= quiet_for < self.quiet and self._short(root, b)):
                    out.append((name, b))
                    del self._bursts[name]
        return out

    def next_wakeup(self, poll: float = 0.05) -> float | None:
        """Seconds until something may be due; None when nothing is pending."""
        now = self.clock()
        with self._lock:
            if not self._bursts:
                return None
            waits = []
            for b in self._bursts.values():
                # an install that may be done: look after the settle period already
                quiet = self._settle() if b.stashes or b.dist_infos else self.quiet
                quiet_left = b.last + quiet - now
                # once quiet, poll for the install to finish (RECORD written, stash gone)
                waits.append(min(max(quiet_left, poll), b.first + self.max_wait - now))
            return max(0.0, min(waits))

    def forget(self, target: str) -> None:
        with self._lock:
            self._bursts.pop(target, None)
            self._lib_dirs.pop(target, None)


# pip's AdjacentTempDirectory names a stash of "cudnn" "~udnn", then "~-dnn", "~~dnn", ...
_STASH_CHARS = set("-~.=%0123456789")


def is_stash_of(entry: str, name: str) -> bool:
    """Whether ``entry`` is a name pip gives its stash of the folder ``name``."""
    if not entry.startswith("~"):
        return False
    for i in range(1, len(name)):
        mid = entry[1:len(entry) - (len(name) - i)]
        if entry.endswith(name[i:]) and len(mid) == i - 1 and set(mid) <= _STASH_CHARS:
            return True
    return False


def install_finished(root: Path, b: Burst) -> bool:
    """Whether the install that caused the burst looks finished. pip writes RECORD last in
    a new dist-info, then deletes its ``~xxx`` stashes; those of a package folder lie beside
    it wherever it is (``nvidia/~udnn`` for ``nvidia/cudnn``), where no site-packages event
    shows them. A file being written gives no event until it is closed: the library
    folders' files must also keep their size and times between two looks."""
    for d in b.dist_infos:
        if (root / d).is_dir() and not (root / d / "RECORD").is_file():
            return False
    if any((root / s).exists() for s in b.stashes):
        return False
    if nested_stash(root, b.lib_dirs, gone_counts=True):
        return False
    sizes = _lib_stats(root, b.lib_dirs)
    if sizes and sizes != b.sizes:
        b.sizes = sizes  # look again at the next poll
        return False
    return True


def nested_stash(root: Path, lib_dirs, gone_counts: bool = False) -> str | None:
    """pip's stash of a library folder's parent, beside it (``nvidia/~udnn`` for
    ``nvidia/cudnn``), relative to root; None when there is none. ``gone_counts``: a parent
    folder that is gone (a stash higher up) counts as one too (its path is returned)."""
    for rel in lib_dirs:
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            try:
                near = os.listdir(root.joinpath(*parts[:i]))
            except OSError:
                if gone_counts:
                    return "/".join(parts[:i])
                continue
            hit = next((e for e in near if is_stash_of(e, parts[i])), None)
            if hit:
                return "/".join(parts[:i] + (hit,))
    return None


def install_done(root: Path, b: Burst) -> bool:
    """Whether the installer's own last step is there: pip and uv both write a dist-info's
    final RECORD last, and it lists the dist-info's INSTALLER, which a wheel's own RECORD
    (extracted first, by pip and by uv's cache links) never does. True when every
    dist-info created in the burst has such a RECORD, at least one did or the burst saw
    a pip stash (then gone: :func:`install_finished`); stashes and growth are left to it."""
    seen = bool(b.stashes)
    for d in b.dist_infos:
        try:
            record = read_file(root / d / "RECORD", 64 << 20)  # a FIFO must not block the timer
        except FileNotFoundError:
            if (root / d).exists():
                return False
            continue  # created and removed again
        except OSError:
            return False
        name = d.encode("utf-8", "surrogateescape")
        if name + b"/INSTALLER," not in record and name + b"\\INSTALLER," not in record:
            return False
        seen = True
    return seen


def _lib_stats(root: Path, lib_dirs) -> LibStats:
    out = {}
    for rel in lib_dirs:
        try:
            with os.scandir(root / rel) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out[e.path] = (st.st_size, st.st_mtime_ns)
        except OSError:
            out[str(root / rel)] = None  # missing now: compare on the next look
    return out


@dataclass
class _Watch:
    target: str
    path: str
    ino: tuple[int, int] | None
    handle: object = None
    top_level: bool = False      # the site-packages watch


def _ino(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


# watchdog event types that never mean "a file changed": reads by a running webui
_IGNORED = {"opened", "closed_no_write"}


def _event_filter(top_level: bool) -> list:
    """The events to ask the kernel for. On Linux every finished write is IN_CLOSE_WRITE,
    so a library folder needs no IN_CREATE (a new file is closed after its write), no
    IN_MODIFY (one per write() call) and no IN_OPEN (every read of a DLL by a running
    webui): a 20,000-file install costs one event per file, not three. site-packages also
    needs folder creation (a new torch/). Windows and macOS report writes as create/modify."""
    from watchdog import events as e

    kinds = [e.FileDeletedEvent, e.FileMovedEvent, e.DirDeletedEvent, e.DirMovedEvent]
    if not sys.platform.startswith("linux"):
        return kinds + [e.FileCreatedEvent, e.FileModifiedEvent, e.DirCreatedEvent]
    kinds.append(e.FileClosedEvent)
    if top_level:
        kinds += [e.FileCreatedEvent, e.DirCreatedEvent]
    return kinds


class Watcher:
    """watchdog watches for every target; events go to a :class:`Debouncer`, and due
    bursts to ``on_due(target, burst)`` from the watcher's own timer thread.

    ``is_own(target, path)`` lets the agent drop events its own writes caused.
    ``on_lost(why)``: file events were lost (an inotify overflow, watches made anew after a
    failure): look at every target. ``on_health(ok, why)``: watching stopped working, or works
    again (an exception on a watch thread never ends watching silently).
    """

    def __init__(self, debouncer: Debouncer, on_due: Callable[[str, Burst], None],
                 is_own: Callable[[str, str], bool] = lambda t, p: False, observer=None,
                 on_lost: Callable[[str], None] = lambda why: None,
                 on_health: Callable[[bool, str], None] = lambda ok, why: None,
                 on_start: Callable[[str], None] = lambda target: None,
                 on_written: Callable[[str, str], None] = lambda target, path: None):
        self.debouncer = debouncer
        self.on_start = on_start   # a burst began (an install is under way): called once per burst
        self.on_written = on_written  # a file in a library folder was written whole (closed, moved in)
        self.on_due = on_due
        self.is_own = is_own
        self.on_lost = on_lost
        self._health_cb = on_health
        self._unhealthy: dict[str, str] = {}   # which thread -> why it is not working
        if observer is None:
            if sys.platform.startswith("linux"):
                from .inotify import SharedInotify  # one thread for all watches

                observer = SharedInotify(on_lost=on_lost,
                                         on_health=lambda ok, why: self._health("reader", ok, why))
            else:
                from watchdog.observers import Observer

                observer = Observer()
        self._observer = observer
        self._watches: dict[str, list[_Watch]] = {}     # target -> watches
        self._dirs: dict[str, tuple[Path, list[str]]] = {}  # target -> (site-packages, lib dirs)
        self._lock = threading.RLock()
        self._wake = threading.Condition()
        self._stop = False
        self._rearm: set[str] = set()
        self._last_sweep = 0.0
        self._thread = threading.Thread(target=self._timer_loop, name="tk-debounce", daemon=True)
        self.dropped_own = 0
        self.dropped_stale = 0

    # -- health ----------------------------------------------------------------------
    def _health(self, part: str, ok: bool, why: str) -> None:
        with self._lock:
            was = dict(self._unhealthy)
            if ok:
                self._unhealthy.pop(part, None)
            else:
                self._unhealthy[part] = why
            now = dict(self._unhealthy)
        if now != was:
            self._health_cb(not now, "; ".join(now.values()))

    def health(self) -> tuple[bool, str]:
        """(True, "") while every watch thread works; else (False, why)."""
        with self._lock:
            unhealthy = dict(self._unhealthy)
        threads = getattr(self._observer, "emitters", None)  # watchdog's Observer
        if threads is not None and self._observer.is_alive():
            dead = [e for e in list(threads) if not e.is_alive()]
            if dead:
                unhealthy["emitters"] = f"{len(dead)} file watch thread(s) ended"
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stop:
            unhealthy["timer"] = "the file event timer thread ended"
        return (not unhealthy, "; ".join(unhealthy.values()))

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    # -- watches ---------------------------------------------------------------------
    def set_target(self, name: str, site_packages: Path, lib_dirs: list[str]) -> None:
        """Watch (or re-watch) a target: its site-packages and the folders it loads from."""
        with self._lock:
            self._dirs[name] = (Path(site_packages), sorted(set(lib_dirs)))
            self.debouncer.set_lib_dirs(name, self._dirs[name][1])
            self._arm(name)

    def remove_target(self, name: str) -> None:
        with self._lock:
            self._dirs.pop(name, None)
            for w in self._watches.pop(name, []):
                self._unschedule(w)
        self.debouncer.forget(name)

    def targets(self) -> list[str]:
        with self._lock:
            return sorted(self._dirs)

    def watched(self, name: str) -> list[str]:
        with self._lock:
            return sorted(w.path for w in self._watches.get(name, []) if w.handle is not None)

    def _arm(self, name: str) -> None:
        """Keep each watch that still sits on its folder; re-create the rest."""
        sp, lib_dirs = self._dirs[name]
        wanted = [(str(sp), True)] + [(str(sp / d), False) for d in lib_dirs]
        old = {w.path: w for w in self._watches.get(name, [])}
        new = []
        for path, top in wanted:
            ino = _ino(path)
            w = old.pop(path, None)
            if w is not None and w.handle is not None and w.ino == ino:
                new.append(w)
                continue
            if w is not None:
                self._unschedule(w)
            w = _Watch(name, path, ino, None, top)
            if ino is not None:
                try:
                    w.handle = self._observer.schedule(_Handler(self, w), path, recursive=False,
                                                       event_filter=_event_filter(top))
                except OSError as e:  # vanished in between, or out of inotify watches
                    log.warning("cannot watch %s for target '%s': %s", path, name, e)
                    w.handle = None
            new.append(w)
        for w in old.values():
            self._unschedule(w)
        self._watches[name] = new

    def _unschedule(self, w: _Watch) -> None:
        if w.handle is not None:
            try:
                self._observer.unschedule(w.handle)
            except (KeyError, ValueError, OSError):
                pass  # its folder is gone: watchdog already dropped it
            w.handle = None

    def _request_rearm(self, name: str) -> None:
        with self._wake:
            self._rearm.add(name)
            self._wake.notify_all()

    def watch_file(self, path: Path, on_change: Callable[[], None]) -> None:
        """Call on_change when the file is written, replaced or removed (a watch on its
        folder, on this watcher's observer: no thread or inotify instance of its own)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._observer.schedule(_FileHandler(str(path), on_change), str(path.parent),
                                recursive=False)

    # -- events ----------------------------------------------------------------------
    def _event(self, w: _Watch, ev) -> None:
        kind = ev.event_type
        if kind in _IGNORED or (ev.is_directory and kind == "modified"):
            return
        if w.top_level:
            sp = Path(w.path)
            touched = [(ev.src_path, "moved_from" if kind == "moved" else kind)]
            if kind == "moved":
                touched.append((ev.dest_path, "moved_to"))
            touched = [(Path(p).name, k) for p, k in touched
                       if p and Path(p).parent == sp and relevant_top(Path(p).name)]
            if not touched:
                return  # another package changed
            counted = [self.debouncer.event(w.target, sp, top, k) for top, k in touched]
            if not any(counted):
                return
            if NEW in counted:
                self._started(w.target)
            # torch/ replaced or a library folder appeared: watch the new folders
            self._request_rearm(w.target)
            self._nudge()
            return
        if _ino(w.path) != w.ino:
            # this watch followed its folder into pip's stash (or the folder is gone):
            # what it reports is not the target's; watch the new folder instead
            self.dropped_stale += 1
            self._request_rearm(w.target)
            return
        paths = [p for p in (ev.src_path, getattr(ev, "dest_path", "") or "") if p]
        if paths and all(self.is_own(w.target, p) for p in paths):
            self.dropped_own += 1
            return
        if kind in ("closed", "moved"):   # an installer's file, whole: hash it in the background
            written = ev.dest_path if kind == "moved" else ev.src_path
            if written:
                try:
                    self.on_written(w.target, written)
                except Exception:
                    log.exception("handling a written file of target '%s' failed", w.target)
        if self.debouncer.event(w.target, self._dirs.get(w.target, (Path(w.path),))[0]) == NEW:
            self._started(w.target)
            self._nudge()  # later events only move the deadline the timer already waits for

    def _started(self, target: str) -> None:
        try:
            self.on_start(target)
        except Exception:  # never the reader thread's end
            log.exception("starting a burst for target '%s' failed", target)

    def _nudge(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _timer_loop(self) -> None:
        failed = 0
        while True:
            try:
                if self._timer_loop_once():
                    return
                if failed:
                    failed = 0
                    self._health("timer", True, "")
                    self.on_lost("file event timer restarted")
            except Exception as e:  # never end silently: say so, look at everything, go on
                log.exception("the file event timer failed; going on")
                if not failed:
                    self._health("timer", False, f"the file event timer failed ({type(e).__name__}: {e})")
                failed += 1
                with self._wake:
                    self._wake.wait(timeout=min(10.0, 0.5 * failed))

    def _timer_loop_once(self) -> bool:
        """One wait and what is due after it; True when the watcher is stopping."""
        with self._wake:
            if self._stop:
                return True
            if not self._rearm:
                self._wake.wait(timeout=self.debouncer.next_wakeup())  # None: until an event
            if self._stop:
                return True
            rearm, self._rearm = self._rearm, set()
        now = time.monotonic()
        if now - self._last_sweep >= 0.1:
            # during an install, folders appear between events: watch them as soon
            # as they exist, so the rest of the burst is seen
            rearm.update(self.debouncer.pending_targets())
            self._last_sweep = now
        for name in rearm:
            with self._lock:
                if name in self._dirs:
                    self._arm(name)
        for name, burst in self.debouncer.due():
            with self._lock:  # the folders may have changed under an old watch
                if name in self._dirs:
                    self._arm(name)
            try:
                self.on_due(name, burst)
            except Exception:  # the agent's callback must never kill the watcher
                log.exception("handling file events for target '%s' failed", name)
        return False


class _Handler:
    """A watchdog handler bound to one watch (watchdog calls ``dispatch``)."""

    def __init__(self, watcher: Watcher, w: _Watch):
        self._watcher, self._w = watcher, w

    def dispatch(self, event) -> None:
        self._watcher._event(self._w, event)


class _FileHandler:
    """Calls on_change for events that touch one file of the watched folder."""

    def __init__(self, path: str, on_change: Callable[[], None]):
        self._path, self._on_change = path, on_change

    def dispatch(self, event) -> None:
        if event.event_type in _IGNORED:
            return
        if self._path in (event.src_path, getattr(event, "dest_path", "")):
            self._on_change()
