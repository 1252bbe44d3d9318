"""Every folder watch of the agent on one inotify instance and ONE thread (Linux).

watchdog's Observer runs an emitter thread per watch (two per target: 400 threads at 200
targets). :class:`SharedInotify` reads one inotify instance (``inotify_simple``: a thin,
public wrapper of the system calls; watchdog's own reader is internal API and changed in
every minor release) on one thread and hands each event to its watch's handler as the
watchdog event it would have got. Same interface as the part of watchdog's Observer the
Watcher uses: ``schedule``, ``unschedule``, ``start``, ``stop``, ``join``. Only
non-recursive folder watches.

Moves: a rename inside one watched folder is one ``FileMovedEvent(src, dest)`` (the
kernel queues its two halves together); a half whose partner is not in the same folder
is a ``FileMovedEvent`` with the other side ``""`` (watchdog's "full events").

It cannot die silently: a kernel queue overflow (events were lost) calls ``on_lost``; an
exception on the reader thread is logged, the watcher reports itself degraded
(``on_health``), the inotify instance is made anew with every watch re-added (retried
until it works), and then ``on_lost`` asks for what the lost events would have said.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable

from inotify_simple import INotify, flags as F
from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirModifiedEvent, DirMovedEvent,
                             FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent,
                             FileMovedEvent, FileSystemEvent)

log = logging.getLogger("torchkeeper.agent")

# the inotify events behind each watchdog event class a handler can ask for
_MASK_FOR = {
    FileMovedEvent: F.MOVED_FROM | F.MOVED_TO, DirMovedEvent: F.MOVED_FROM | F.MOVED_TO,
    FileCreatedEvent: F.CREATE, DirCreatedEvent: F.CREATE,
    FileDeletedEvent: F.DELETE, DirDeletedEvent: F.DELETE,
    FileModifiedEvent: F.MODIFY | F.ATTRIB, DirModifiedEvent: F.MODIFY | F.ATTRIB,
    FileClosedEvent: F.CLOSE_WRITE,
}
_ALWAYS = F.DELETE_SELF | F.DONT_FOLLOW | F.ONLYDIR
RETRY_S = (0.0, 1.0, 2.0, 5.0, 10.0)   # waits before each try to make the instance anew


def mask_for(event_filter) -> int:
    if event_filter is None:
        kinds = _MASK_FOR.values()
    else:
        kinds = [_MASK_FOR[k] for k in event_filter if k in _MASK_FOR]
    m = int(_ALWAYS)
    for k in kinds:
        m |= int(k)
    return m


class _Sub:
    """One scheduled watch: a folder, its handler, what it asked for."""

    def __init__(self, handler, path: str, event_filter):
        self.handler = handler
        self.path = path
        self.kinds = None if event_filter is None else frozenset(event_filter)
        self.mask = mask_for(event_filter)
        self.wd: int | None = None
        self.live = True
        self._moved_from: dict[int, tuple[str, bool]] = {}  # cookie -> (path, is_dir)

    def on_event(self, mask: int, cookie: int, name: str) -> None:
        if not self.live:
            return
        path = os.path.join(self.path, name) if name else self.path
        is_dir = bool(mask & F.ISDIR)
        if mask & F.MOVED_TO and cookie in self._moved_from:
            src, was_dir = self._moved_from.pop(cookie)
            self.flush()  # anything older first, in order
            self._emit((DirMovedEvent if was_dir else FileMovedEvent)(src, path))
            return
        self.flush()
        if mask & F.MOVED_FROM:
            self._moved_from[cookie] = (path, is_dir)  # its moved_to comes next
        elif mask & F.MOVED_TO:
            self._emit((DirMovedEvent if is_dir else FileMovedEvent)("", path))
        elif mask & F.DELETE_SELF:
            self._emit(DirDeletedEvent(self.path))
        elif mask & F.DELETE:
            self._emit((DirDeletedEvent if is_dir else FileDeletedEvent)(path))
        elif mask & F.CREATE:
            self._emit((DirCreatedEvent if is_dir else FileCreatedEvent)(path))
        elif mask & F.CLOSE_WRITE and not is_dir:
            self._emit(FileClosedEvent(path))
        elif mask & (F.MODIFY | F.ATTRIB):
            self._emit((DirModifiedEvent if is_dir else FileModifiedEvent)(path))

    def flush(self) -> None:
        """Moves out of this folder whose partner never came: the source half alone."""
        if not self.live:
            self._moved_from.clear()
        while self._moved_from:
            cookie = next(iter(self._moved_from))
            src, is_dir = self._moved_from.pop(cookie)
            self._emit((DirMovedEvent if is_dir else FileMovedEvent)(src, ""))

    def _emit(self, e: FileSystemEvent) -> None:
        if self.kinds is not None and type(e) not in self.kinds:
            return
        try:
            self.handler.dispatch(e)
        except Exception:  # a handler must never stop the one reader thread
            log.exception("handling a file event for %s failed", self.path)


class SharedInotify:
    """A drop-in for the part of watchdog's Observer the Watcher uses (see the module doc).

    ``on_lost(why)``: events were lost (a queue overflow, or the watches were made anew after
    a failure): whoever listens should look at everything. ``on_health(ok, why)``: the watches
    stopped working (``ok`` False) or work again."""

    def __init__(self, on_lost: Callable[[str], None] = lambda why: None,
                 on_health: Callable[[bool, str], None] = lambda ok, why: None,
                 retry_s: tuple[float, ...] = RETRY_S):
        self.on_lost, self.on_health = on_lost, on_health
        self._retry_s = retry_s
        self._lock = threading.Lock()            # _subs, _by_wd, _ino
        self._subs: list[_Sub] = []
        self._by_wd: dict[int, list[_Sub]] = {}
        self._ino: INotify | None = INotify()
        self._wake_r, self._wake_w = os.pipe()   # stop() wakes the reader: no idle polling
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tk-inotify", daemon=True)
        self.failures = 0

    # -- the Observer interface --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            with self._lock:
                self._close()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def schedule(self, handler, path, recursive: bool = False, event_filter=None) -> _Sub:
        if recursive:
            raise ValueError("SharedInotify watches single folders")
        sub = _Sub(handler, os.fspath(path), event_filter)
        with self._lock:
            if self._ino is not None:   # else added when the instance is made anew
                self._add(sub)
            self._subs.append(sub)
        return sub

    def unschedule(self, sub: _Sub) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
            if sub.live:
                sub.live = False
                self._drop(sub)

    # -- bookkeeping (under self._lock) ----------------------------------------------------
    def _add(self, sub: _Sub) -> None:
        """Watch sub's folder; two subs on one folder share its wd (their masks added)."""
        wd = self._ino.add_watch(sub.path, sub.mask | F.MASK_ADD)
        sub.wd = wd
        self._by_wd.setdefault(wd, []).append(sub)

    def _drop(self, sub: _Sub) -> None:
        others = [s for s in self._by_wd.get(sub.wd, []) if s is not sub]
        if sub.wd is None or self._ino is None:
            return
        if others:
            self._by_wd[sub.wd] = others
            mask = 0
            for s in others:
                mask |= s.mask
            try:  # without MASK_ADD: what the others want, no more
                self._ino.add_watch(sub.path, mask)
            except OSError:
                pass
        else:
            self._by_wd.pop(sub.wd, None)
            try:
                self._ino.rm_watch(sub.wd)
            except OSError:
                pass  # its folder is gone: the kernel dropped the watch itself

    def _close(self) -> None:
        if self._ino is not None:
            try:
                self._ino.close()
            except OSError:
                pass
            self._ino = None
        self._by_wd.clear()

    def _rearm(self) -> None:
        """A new inotify instance with every live watch on it (their folders may be gone)."""
        with self._lock:
            self._close()
            self._ino = INotify()
            for sub in list(self._subs):
                sub._moved_from.clear()
                try:
                    self._add(sub)
                except OSError as e:  # gone: the Watcher re-arms its watches on the next event
                    log.warning("cannot watch %s again: %s", sub.path, e)
                    sub.live = False
                    self._subs.remove(sub)

    # -- the reader thread -------------------------------------------------------------
    def _run(self) -> None:
        tries = 0
        while not self._stopping.is_set():
            try:
                if tries:
                    self._rearm()
                    log.warning("file watches made anew after a failure; checking everything")
                    self.on_health(True, "")
                    self.on_lost("file watches made anew")
                    tries = 0
                self._read_loop()
            except Exception as e:
                self.failures += 1
                log.exception("the file watch thread failed; making its watches anew")
                if tries == 0:
                    self.on_health(False, f"the file watch failed ({type(e).__name__}: {e})")
                wait = self._retry_s[min(tries, len(self._retry_s) - 1)]
                tries += 1
                if self._stopping.wait(wait):
                    return

    def _read_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                ino = self._ino
            if ino is None:
                raise OSError("no inotify instance")
            poller = select.poll()
            poller.register(ino.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            ready = poller.poll()
            if self._stopping.is_set():
                return
            if any(fd == self._wake_r for fd, _ in ready):
                os.read(self._wake_r, 64)
            self._dispatch(ino.read(timeout=0))

    def _dispatch(self, events) -> None:
        touched: set[_Sub] = set()
        for ev in events:
            if ev.mask & F.Q_OVERFLOW:
                log.warning("inotify queue overflowed; file events were lost")
                for sub in touched:
                    sub._moved_from.clear()
                self.on_lost("inotify queue overflow")
                continue
            with self._lock:
                subs = (self._by_wd.pop(ev.wd, []) if ev.mask & F.IGNORED
                        else list(self._by_wd.get(ev.wd, ())))
            if ev.mask & F.IGNORED:
                for sub in subs:  # the folder is gone; the kernel dropped the watch itself
                    sub.flush()
                    sub.live = False
                continue
            for sub in subs:
                sub.on_event(ev.mask, ev.cookie, ev.name)
                touched.add(sub)
        for sub in touched:  # a move half whose partner was not in this read
            sub.flush()
