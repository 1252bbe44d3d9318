"""A background lane: one thread (nice 19 unless told otherwise) draining keyed work, never the worker queue's.
Asking again for a key that waits merges the two asks (``merge(old, new)``); a key being worked
on can be asked for again and is then done once more. The standby's preparation and the hashing
of what an installer writes each run on one."""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("torchkeeper.agent")


class Lane:
    def __init__(self, name: str, work: Callable[[str, object], None],
                 merge: Callable[[object, object], object] = lambda old, new: new,
                 nice: int | None = 19):
        """``nice``: this thread's nice value (Linux), None: the process's own."""
        self._work, self._merge, self._nice = work, merge, nice
        self._todo: dict[str, object] = {}
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def want(self, key: str, value: object = None) -> None:
        with self._cv:
            self._todo[key] = self._merge(self._todo[key], value) if key in self._todo else value
            self._cv.notify_all()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Drop what waits, let the work in hand finish (``timeout``: how long to wait for it)."""
        with self._cv:
            self._stopping = True
            self._todo.clear()
            self._cv.notify_all()
        if self._thread.is_alive() and timeout != 0:
            self._thread.join(timeout)

    def _loop(self) -> None:
        from ..engine.standby import _lower_priority

        if self._nice is not None:
            _lower_priority(self._nice)  # this thread only: the worker and pip keep their share
        while True:
            with self._cv:
                while not self._todo and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                key = next(iter(self._todo))
                value = self._todo.pop(key)
            try:
                self._work(key, value)
            except Exception:  # a bug must not end the lane: say so and go on
                log.exception("%s: work on %s failed", self._thread.name, key)
