"""Every folder watch of the agent on one inotify instance and ONE thread (Linux).

watchdog's Observer runs an emitter thread per watch (two per target: 400 threads at 200
targets) in front of one shared inotify file descriptor. :class:`SharedInotify` keeps
watchdog's inotify reader (its ctypes reading, watch bookkeeping and the "Inotify queue
overflowed" warning the agent listens for) and hands each raw event straight to the
watch's handler, as the watchdog event it would have got, from that reader's thread.
Same interface as the part of watchdog's Observer the Watcher uses: ``schedule``,
``unschedule``, ``start``, ``stop``, ``join``. Only non-recursive folder watches.

Moves: a rename inside one watched folder is one ``FileMovedEvent(src, dest)`` (the
kernel queues its two halves together); a half whose partner is not in the same folder
is a ``FileMovedEvent`` with the other side ``""`` (watchdog's "full events").
"""

from __future__ import annotations

import logging
import os

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirModifiedEvent, DirMovedEvent,
                             FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent,
                             FileMovedEvent, FileSystemEvent)
from watchdog.observers.inotify_c import InotifyConstants as C
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

log = logging.getLogger("torchkeeper.agent")

# the inotify events behind each watchdog event class a handler can ask for
_MASK_FOR = {
    FileMovedEvent: C.IN_MOVE, DirMovedEvent: C.IN_MOVE,
    FileCreatedEvent: C.IN_CREATE, DirCreatedEvent: C.IN_CREATE,
    FileDeletedEvent: C.IN_DELETE, DirDeletedEvent: C.IN_DELETE,
    FileModifiedEvent: C.IN_MODIFY | C.IN_ATTRIB, DirModifiedEvent: C.IN_MODIFY | C.IN_ATTRIB,
    FileClosedEvent: C.IN_CLOSE_WRITE,
}
_ALWAYS = C.IN_DELETE_SELF | C.IN_DONT_FOLLOW | C.IN_ONLYDIR
# IN_MASK_ADD: two handlers on one folder (one wd) each keep what they asked for
_ADD = C.IN_MASK_ADD


def mask_for(event_filter) -> int:
    if event_filter is None:
        kinds = _MASK_FOR.values()
    else:
        kinds = [_MASK_FOR[k] for k in event_filter if k in _MASK_FOR]
    m = _ALWAYS
    for k in kinds:
        m |= k
    return m


class _Sub:
    """One scheduled watch: a folder, its handler, what it asked for (inotify's WatchCallback)."""

    def __init__(self, handler, path: str, event_filter, halves: set):
        self.handler = handler
        self._halves = halves  # the reader's set of watches holding a move half
        self.path = path
        self.kinds = None if event_filter is None else frozenset(event_filter)
        self.wd = None
        self.live = True
        self._moved_from: dict[int, tuple[str, bool]] = {}  # cookie -> (path, is_dir)

    # -- WatchCallback ---------------------------------------------------------------
    def on_event(self, ev: InotifyEvent) -> None:
        if not self.live:
            return
        path = os.path.join(self.path, os.fsdecode(ev.name)) if ev.name else self.path
        if ev.is_moved_to and ev.cookie in self._moved_from:
            src, is_dir = self._moved_from.pop(ev.cookie)
            self.flush()  # anything older first, in order
            self._emit((DirMovedEvent if is_dir else FileMovedEvent)(src, path))
            return
        self.flush()
        if ev.is_moved_from:
            self._moved_from[ev.cookie] = (path, ev.is_directory)  # its moved_to comes next
            self._halves.add(self)
        elif ev.is_moved_to:
            self._emit((DirMovedEvent if ev.is_directory else FileMovedEvent)("", path))
        elif ev.is_delete_self:
            self._emit(DirDeletedEvent(self.path))
        elif ev.is_delete:
            self._emit((DirDeletedEvent if ev.is_directory else FileDeletedEvent)(path))
        elif ev.is_create:
            self._emit((DirCreatedEvent if ev.is_directory else FileCreatedEvent)(path))
        elif ev.is_close_write and not ev.is_directory:
            self._emit(FileClosedEvent(path))
        elif ev.is_modify or ev.is_attrib:
            self._emit((DirModifiedEvent if ev.is_directory else FileModifiedEvent)(path))

    def on_watch_deleted(self, wd) -> None:
        self.flush()
        self.live = False  # the folder is gone; inotify dropped the watch itself

    def on_queue_overflow(self) -> None:
        self._moved_from.clear()  # the agent checks everything (it listens for the warning)

    # --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Moves out of this folder whose partner never came: the source half alone."""
        self._halves.discard(self)
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


class _Reader(InotifyFD):
    """watchdog's inotify reader; after each read, unpaired move halves go out."""

    def __init__(self):
        super().__init__()
        self.name = "tk-inotify"
        self.halves: set[_Sub] = set()  # only this thread touches it

    def run(self) -> None:
        while self.should_keep_running():
            for event in self.read_events():
                self.handle_event(event)
            for sub in list(self.halves):
                sub.flush()


class SharedInotify:
    """A drop-in for the part of watchdog's Observer the Watcher uses (see the module doc)."""

    def __init__(self):
        self._fd = _Reader()

    def start(self) -> None:
        self._fd.start()

    def stop(self) -> None:
        self._fd.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._fd.is_alive():
            self._fd.join(timeout)

    def schedule(self, handler, path, recursive: bool = False, event_filter=None) -> _Sub:
        if recursive:
            raise ValueError("SharedInotify watches single folders")
        sub = _Sub(handler, os.fspath(path), event_filter, self._fd.halves)
        sub.wd = self._fd.add_callback(os.fsencode(sub.path), mask_for(event_filter) | _ADD, sub, id(sub))
        return sub

    def unschedule(self, sub: _Sub) -> None:
        if sub.live:
            sub.live = False
            self._fd.remove_callbacks([(sub.wd, id(sub))])
