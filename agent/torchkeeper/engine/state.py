"""The state store: targets, desired bundles, applied overlays and the event log.

One JSON file, replaced atomically under a cross-process lock; readers never see a
half-written state.
"""

from __future__ import annotations

import contextlib
import json
import os
import logging
import re
import sys
import threading
import time
from pathlib import Path

from ..errors import OperationFailed, UsageError
from .fsutil import atomic_write_json, load_json, read_file
from ..home import Home
from .. import testing
from .records import JsonObject, StateData
from ..i18n import _

SCHEMA = 1
STATE_MAX = 256 << 20       # state.json: far beyond thousands of targets
EVENTS_MAX = 512 << 20      # events.jsonl as `log` reads it
# A target name is also a file name (locks/<name>.lock) on every OS: Unicode letters and
# digits, '.', '_', '-'; starts with a letter or digit; at most 64 characters, none outside
# the BMP (64 x 3 UTF-8 bytes stays under NAME_MAX); no '..', no trailing '.', and none of
# Windows' device names (CON, NUL.txt, COM1, ...). \Z, not $: "a\n" is no name.
TARGET_NAME_RX = re.compile(
    r"^(?!(?:con|prn|aux|nul|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3])(?:\.|\Z))"
    r"(?!.*\.\.)(?!.*[\U00010000-\U0010ffff])"
    r"[^\W_][\w.-]{0,63}(?<!\.)\Z", re.IGNORECASE)
LOCK_TIMEOUT_S = 30


def empty() -> StateData:
    return {"schema": SCHEMA, "targets": {}, "overlays": {}, "default_bundle": None}


class StateStore:
    def __init__(self, home: Home):
        self.home = home
        self.path = home.state_file

    def read(self) -> StateData:
        try:
            data = load_json(self.path, STATE_MAX)  # a regular file only: a FIFO never blocks
        except FileNotFoundError:
            return empty()
        except (OSError, ValueError) as e:
            raise UsageError(
                _("the state file %(path)s is unreadable: %(value)s")
                % {"path": self.path, "value": getattr(e, "strerror", None) or e},
                _(
                    "restore it from %(path)s.bak if present, or move it away to "
                    "start over (backups in the data folder are kept)"
                )
                % {"path": self.path},
            ) from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(
                _("the state file %(path)s has an unknown format") % {"path": self.path},
                _("upgrade torchkeeper, or move the file away to start over"),
            )
        for k, v in empty().items():
            data.setdefault(k, v)
        problem = _shape_problem(data)
        if problem:
            raise UsageError(
                _("the state file %(path)s is damaged: %(problem)s")
                % {"path": self.path, "problem": problem},
                _(
                    "restore it from %(name)s.bak beside it, or move it away to "
                    "start over (backups in the data folder are kept)"
                )
                % {"name": self.path.name},
            )
        return data

    def write(self, data: StateData) -> None:
        # Keep the previous state as state.json.bak: a hard link to the current file, which
        # the atomic write then replaces by a new one. state.json itself never goes missing.
        bak = self.path.with_suffix(".json.bak")
        tmp = self.path.with_suffix(".json.bak.tmp")
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        with contextlib.suppress(OSError):
            os.link(self.path, tmp)
            os.replace(tmp, bak)
        atomic_write_json(self.path, data)

    @contextlib.contextmanager
    def edit(self):
        """Read-modify-write under the state lock."""
        with self.lock():
            data = self.read()
            yield data
            self.write(data)

    def lock(self):
        self.home.data_dir.mkdir(parents=True, exist_ok=True)
        return _timed_lock(self.home.data_dir / "state.lock", "the torchkeeper state")


SHA256_RX = re.compile(r"^[0-9a-f]{64}$")

# what the code reads of each record, and its type: None allowed where the type says so
_STR, _OPT_STR, _OPT_INT, _INT, _OPT_BOOL = "text", "text or null", "integer or null", "integer", "true/false"
_TARGET_FIELDS = {"path": _STR, "site_packages": _STR, "bundle": _OPT_STR, "added": _OPT_STR}
_OVERLAY_FIELDS = {
    "bundle": _STR,
    "bundle_name": _OPT_STR,
    "site_packages": _STR,
    "applied": _OPT_STR,
    "torch_version": _OPT_STR,
    "torch_cuda": _OPT_STR,
    "cudnn_stock": _OPT_STR,
}
_FILE_FIELDS = {
    "key": _OPT_STR,
    "action": _OPT_STR,
    "prior": _OPT_STR,
    "stock_size": _OPT_INT,
    "size": _OPT_INT,
    "mtime_ns": _OPT_INT,
    "ino": _OPT_INT,
    "same_as_stock": _OPT_BOOL,
}
_HASH_FIELDS = {"sha256": False, "stock_sha256": True, "stock_backup": True, "foreign_backup": True}


def _type_ok(v, kind: str) -> bool:
    if v is None:
        return kind in (_OPT_STR, _OPT_INT, _OPT_BOOL)
    if kind in (_STR, _OPT_STR):
        return isinstance(v, str) and (kind == _OPT_STR or v != "")
    if kind in (_INT, _OPT_INT):
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, bool)


def _fields_problem(rec: JsonObject, fields: JsonObject, where: str, required=()) -> str | None:
    for k, kind in fields.items():
        if k not in rec:
            if k in required:
                return f"{where} has no '{k}'"
            continue
        if not _type_ok(rec[k], kind):
            return f"{where}: '{k}' must be {kind}, not {type(rec[k]).__name__}"
    return None


def _rel_ok(rel: str) -> bool:
    """A library's path inside site-packages, as the engine writes it: never one that leaves it."""
    parts = rel.split("/")
    return (
        bool(rel)
        and "\\" not in rel
        and ":" not in rel
        and not rel.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
        and "\0" not in rel
    )


def _shape_problem(data: JsonObject) -> str | None:
    """What is wrong in a state file, or None: every field the code reads, with its type
    (a hostile or hand-edited file gives one error line, never a traceback)."""
    if not isinstance(data["targets"], dict) or not isinstance(data["overlays"], dict):
        return "'targets' and 'overlays' must be tables"
    for name, t in data["targets"].items():
        where = f"target {name[:40]!r}"
        if not TARGET_NAME_RX.match(name) or not isinstance(t, dict):
            return f"{where} is malformed"
        problem = _fields_problem(t, _TARGET_FIELDS, where, ("path", "site_packages"))
        if problem:
            return problem
    for name, o in data["overlays"].items():
        where = f"the overlay of {name[:40]!r}"
        if not isinstance(o, dict) or not isinstance(o.get("files"), dict):
            return f"{where} is malformed"
        problem = _fields_problem(o, _OVERLAY_FIELDS, where, ("bundle",))
        if problem:
            return problem
        for rel, f in o["files"].items():
            fwhere = f"{where}, file {rel[:60]!r}"
            if not isinstance(rel, str) or not _rel_ok(rel):
                return f"{fwhere}: not a path inside site-packages"
            if not isinstance(f, dict):
                return f"{fwhere} is malformed"
            problem = _fields_problem(f, _FILE_FIELDS, fwhere)
            if problem:
                return problem
            for k, optional in _HASH_FIELDS.items():
                v = f.get(k)
                if v is None and optional:
                    continue
                if not isinstance(v, str) or not SHA256_RX.match(v):
                    return f"{fwhere}: '{k}' must be a sha256 hash"
    if data["default_bundle"] is not None and (
        not isinstance(data["default_bundle"], str) or not data["default_bundle"]
    ):
        return "'default_bundle' must be a bundle id"
    return None


_held = threading.local()  # the target locks this thread holds


@contextlib.contextmanager
def target_lock(home: Home, name: str):
    """Cross-process lock per target: the CLI and the agent never apply at once. Re-entrant
    in one thread: a decision taken under the lock may call apply, which takes it too."""
    if not TARGET_NAME_RX.match(name):  # a name becomes a file name: never a path
        raise UsageError(
            _("no target named %(name)r") % {"name": name[:64]},
            _("see `torchkeeper target list` for the names"),
        )
    held = _held.__dict__.setdefault("keys", set())
    key = (str(home.locks_dir), name)
    if key in held:
        yield
        return
    home.locks_dir.mkdir(parents=True, exist_ok=True)
    with _timed_lock(home.locks_dir / f"{name}.lock", f"target '{name}'"):
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)


@contextlib.contextmanager
def _timed_lock(path: Path, what: str):
    from filelock import FileLock, Timeout  # imported here: status never locks

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise OperationFailed(
            _("%(what)s is locked by another torchkeeper process (%(path)s)") % {"what": what, "path": path},
            _("wait for the other command or the agent to finish, then retry"),
        ) from None
    try:
        yield
    finally:
        lock.release()


def log_event(home: Home, kind: str, **fields) -> JsonObject:
    """Append one event to the event log (JSON lines): the CLI's and the agent's history.

    Never fails the caller: most events are written after what they tell of is committed,
    and a full disk or a broken log folder must not turn that into a failure. It warns."""
    ev = {"ts": time.time(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": kind, **fields}
    try:
        home.log_dir.mkdir(parents=True, exist_ok=True)
        testing.check_space(home.log_dir)
        with open(home.events_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(ev, sort_keys=True) + "\n")
    except OSError as e:
        warn(
            f"the event log {home.events_file} could not be written ({e.strerror or e}); "
            "what was done is done, but it is not logged"
        )
    return ev


_warned: set[str] = set()


def warn(message: str) -> None:
    """One `warning:` line on stderr, or in the agent's log where it has one; once per process
    for the same text."""
    if message in _warned:
        return
    _warned.add(message)
    log = logging.getLogger("torchkeeper")
    if log.hasHandlers():
        log.warning(message)
        return
    with contextlib.suppress(OSError, ValueError):
        print(f"warning: {message}", file=sys.stderr, flush=True)


def read_events(home: Home, n: int | None = None) -> list[JsonObject]:
    return read_events_counted(home, n)[0]


def read_events_counted(home: Home, n: int | None = None) -> tuple[list[JsonObject], int]:
    """The last n events (all when n is None), and how many of the lines read could not
    be: not UTF-8, not JSON, not an event (a crash mid-line, a damaged disk, an editor)."""
    try:
        data = read_file(home.events_file, EVENTS_MAX)
    except FileNotFoundError:
        return [], 0
    except OSError as e:
        raise UsageError(
            _("the event log %(events_file)s cannot be read: %(strerror)s")
            % {"events_file": home.events_file, "strerror": e.strerror},
            _("move it away: the next event starts a new one"),
        ) from None
    lines = data.splitlines()
    out, skipped = [], 0
    for raw in lines[-n:] if n else lines:
        if not raw.strip():
            continue
        try:
            ev = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            ev = None
        if isinstance(ev, dict) and isinstance(ev.get("event"), str):
            out.append(ev)
        else:
            skipped += 1
    return out, skipped
