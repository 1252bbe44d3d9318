"""The agent: a loop around the engine.

Watchers, timers, tray clicks and toast buttons queue work (daemon/jobs.py); one worker
thread runs every check and every mutation of a target, in order. A request that arrives
while the same job is running is queued again (never a dropped check); requests already
waiting are merged. Outside that queue, on their own threads: the driver poll (APScheduler's
thread: it reads what the OS shows of the driver, asks NVML when that changed, and queues the
checks a change needs), the standby's preparation and the hashing of what an installer wrote
(both at low priority, never writing a library file), discover on a first run, and the tray's
"Start at login" (it writes the OS's entry on the tray's thread).

What to do about a target is decided by daemon/decide.py (pure, tested as a table); this
module reads the target once (daemon/snapshot.py), asks it, and carries the decision out:
re-apply and toast, ask, refuse and say why, wait (an install under way, a hold), retry
(files in use, with backoff).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..engine import config as configmod, gate
from . import agentstate, decide as D
from .jobs import Job, JobQueue
from .lane import Lane
from . import view as V
from .decide import decide
from .snapshot import install_signs, snapshot
from ..engine.core import DRIFTED, INCOMPATIBLE, MISSING, PATCHED, STOCK, Engine
from ..engine.login import Login
from ..engine.records import TargetStatus
from ..errors import FileInUse, Refused, TKError
from ..engine.fsutil import stat_key
from ..home import Home
from ..engine.state import log_event
from ..engine.txn import RESTORE, STAGED
from ..testing import pause_point

log = logging.getLogger("torchkeeper.agent")

RETRY_FIRST_S = 2.0
RETRY_MAX_S = 60.0


# internal job kinds besides view's actions
CHECK, FULL, DRIVER, CONFIG, TARGETS = "check", "full check", "driver", "config", "targets"
SUGGEST = "suggest"
POLL = "poll"             # every target, while the file watches do not work
FULL_ONE = "full check of one"    # one target's files re-hashed (its standby found other bytes)
PREPARE, REHASH, REFRESH = "prepare", "rehash", "refresh"   # standby work, weakest last
_STANDBY_RANK = {REFRESH: 0, PREPARE: 1, REHASH: 2}
DEGRADED_POLL_S = 10.0
FOUND_SHOWN = 10          # found installs listed (and inspected for their cuDNN) at most
SUGGEST_FOUND = "suggest found"   # the same for a found install (target=its path)
NEXT_STEP = "run `torchkeeper discover --add` (every install found) or `torchkeeper target add PATH`"
MENU_STEP = "choose Manage under \"Found, not managed\" in the tray menu, or "
SUGGEST_DELAY_S = 30.0   # after a target is first shown: the index is asked once per agent run


class Agent:
    """The agent. ``start()`` recovers, verifies and starts watching; ``stop()`` waits for
    the running job (never stops inside a transaction)."""

    def __init__(self, home: Home, engine: Engine | None = None, notifier=None,
                 clock=time.monotonic, watch: bool = True, schedule: bool = True,
                 driver_query=None, login: Login | None = None):
        self.home = home
        self.engine = engine or Engine(home, driver_query=driver_query)
        self.clock = clock
        self.notifier = notifier
        self.config_file = home.config_file
        self.log_file = home.log_dir / "agent.log"
        self.first_run = not (self.config_file.exists() or self.config_file.is_symlink())
        self._found: list[V.FoundView] = []
        self._holds: dict[str, dict] = {}  # target -> the hold another process has on it (as status says)
        self._lib_stats: dict[str, dict] = {}  # target -> its library files' stat data at the last check
        self._found_suggestions: dict[str, str | None] = {}  # found install's path -> its line
        self.state = agentstate.AgentState(home)   # agent.json, one lock for every thread
        self.cfg, problem = self._load_config()
        self.engine.config = self.cfg
        self._config_problem = problem
        self.jobs = JobQueue(clock)
        self._cv = threading.Lock()      # the view model: _views, _found
        self._suggestions: dict[str, str | None] = {}  # target -> its suggestion line, once asked
        self._fetch_line: str | None = None  # the tooltip while "get it and apply" downloads
        self._stopped = threading.Event()
        self._worker = threading.Thread(target=self._work, name="tk-worker", daemon=True)
        self._listeners = []
        self._views: dict[str, V.TargetView] = {}
        self._asks: dict[str, str] = {}         # target -> why it needs the user
        self._retry: dict[str, float] = {}      # target -> current backoff (files in use)
        self._busy: dict[str, set[str]] = {}    # target -> file names a running txn writes
        self._own: dict[str, dict | None] = {}  # path -> stat after our write (None: we deleted it)
        self._own_lock = threading.Lock()
        self._driver_line = "driver: not checked yet"
        self.login = login or Login(home)
        self._autostart = self._read_autostart()
        self._driver_error = False
        self._driver_signal = None   # what the OS showed of the driver at the last NVML query
        self.nvml_queries = 0
        self._degraded: str | None = None   # why the file watches do not work, None: they do
        self.has_menu = False     # a tray menu shows "Found, not managed" (set by `run`)
        self.say = None           # say(line): a line for the terminal that started the agent
        self.watcher = None
        self.safety = None
        self._watch, self._schedule = watch, schedule
        self._busy_rels: dict[str, set[str]] = {}  # target -> overlay files before a running txn
        self._working: str | None = None         # target an apply / revert is writing to
        self.checks = 0       # counters, for tests and the benchmark
        self.applies = 0
        # standby preparation: its own low-priority thread, so that the worker queue (the
        # repairs) never waits behind hashing another target's standby
        self._standby = Lane("tk-standby", self._standby_work,
                             merge=lambda old, new: max(old, new, key=_STANDBY_RANK.__getitem__))
        self.standby_runs = 0
        # library files an installer wrote, hashed at low priority while it goes on: the repair's
        # plan then finds them hashed (fsutil.remember), not on its critical path
        self._hasher = Lane("tk-hash", self._hash_work)
        self.prehashed = 0

    # -- config and the agent's own small state --------------------------------------
    def _load_config(self):
        """The config at start-up: a broken file keeps the last good settings (remembered
        in agent.json across restarts), else the defaults."""
        try:
            text, origin = configmod.read_text(self.config_file)
            cfg = configmod.parse(text, origin)
        except TKError as e:
            good = self.state.get("config_text")
            if good is not None:
                try:
                    cfg = configmod.parse(good, "the last good config")
                except TKError:
                    pass
                else:
                    log.error("%s (%s); using the last good settings", e.message, e.hint)
                    return cfg, f"{e.message} - using the last good settings"
            log.error("%s (%s); using the defaults", e.message, e.hint)
            return configmod.defaults(), f"{e.message} - using the defaults"
        self._remember_config(text)
        return cfg, None

    def _remember_config(self, text: str) -> None:
        if self.state.get("config_text") != text:
            self.state.set(config_text=text)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self.state.get("watching") is not None:  # an earlier agent's
            self.state.set(watching=None)
        if not self.engine.targets():
            log.info("no targets yet: %s%s", MENU_STEP if self.has_menu else "", NEXT_STEP)
        if self.first_run:
            self._first_run()
        for line in self.engine.recover_all():
            log.warning(line)
            self._event("recovered", message=line)
        if self._config_problem:
            self._toast(V.Toast("config", "torchkeeper: config not used", self._config_problem,
                                level="error"))
        if self._watch:
            from .watch import SETTLE, Debouncer, Watcher

            a = self.cfg["agent"]
            self.watcher = Watcher(Debouncer(a["quiet_seconds"], a["max_wait_seconds"], settle=SETTLE),
                                   self._on_burst, self._is_own, on_lost=self._events_lost,
                                   on_health=self._watch_health,
                                   # an install began: prove the standby's bytes again meanwhile,
                                   # off the repair's critical path
                                   on_start=lambda name: self._want_standby(name, refresh=True),
                                   on_written=self._want_hash)
            self.watcher.start()
            self._watch_config()
        self._worker.start()
        self._standby.start()
        self._hasher.start()
        self.poll_driver(initial=True)
        self.request(V.CHECK_ALL, reason="start")
        if self._schedule:
            from .schedule import SafetyNet

            self.safety = SafetyNet(self.cfg["agent"], self.poll_driver,
                                    lambda why: self.request(V.CHECK_ALL, reason=why),
                                    lambda: self._enqueue(FULL, None, "daily full check"))
            self.safety.start()
        self._event("started", targets=len(self.engine.targets()))

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, let the running job finish, stop the watchers."""
        if self._stopped.is_set():
            return
        self.jobs.stop()
        self._hasher.stop(timeout=0)    # nothing more is taken up; the work in hand finishes
        self._standby.stop(timeout=0)
        if self._worker.is_alive():
            self._worker.join(timeout)
        self._standby.stop(timeout)     # a kill here is recovered: see standby.py
        if self.safety:
            self.safety.stop()
        if self.watcher:
            self.watcher.stop()
        if self.notifier is not None and hasattr(self.notifier, "close"):
            self.notifier.close()
        self._stopped.set()
        log.info("agent stopped")

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def writing_to(self) -> str | None:
        """The target an apply or revert is writing to now, if any."""
        return self._working

    def idle(self) -> bool:
        """No job running or queued (tests and benchmarks wait for this)."""
        return self.jobs.idle(waiting_is_not_work=(SUGGEST, SUGGEST_FOUND))

    # -- the standby -----------------------------------------------------------------
    def _want_standby(self, name: str, rehash: bool = False, refresh: bool = False) -> None:
        """Prepare (or, with standby off, delete) a target's standby in the background;
        ``refresh``: only hash again what an install in progress touched (standby.refresh)."""
        self._standby.want(name, REFRESH if refresh else (REHASH if rehash else PREPARE))

    def _standby_work(self, name: str, what: str) -> None:
        try:
            if name not in self.engine.targets():
                return
            if what == REFRESH:
                log.info("standby of '%s' refreshed: %s", name, self.engine.refresh_standby(name))
                return
            res = self.engine.prepare_standby(name, rehash=what == REHASH)
            self.standby_runs += 1
            log.info("standby of '%s': %s", name, res)
            if res.get("bad"):
                # the placed file is that inode: not the overlay's bytes, so not patched
                self._enqueue(FULL_ONE, name, "standby found changed bytes")
        except Exception as e:  # TKError (a lock held too long), OSError: next time
            log.warning("standby of '%s' not prepared: %s", name, e)

    # -- hashing what an installer writes, while it writes -------------------------------
    def _want_hash(self, target: str, path: str) -> None:
        from ..engine import libs

        if libs.parse(os.path.basename(path)) is not None:  # not the 20,000 other files of torch
            self._hasher.want(path)

    def _hash_work(self, path: str, _=None) -> None:
        from ..engine.fsutil import remember

        if remember(path) is not None:
            self.prehashed += 1

    # -- the Controller interface (tray, toast buttons) -----------------------------
    def view(self) -> V.AgentView:
        with self._cv:
            targets = [self._views[n] for n in sorted(self._views)]
        paused = self.state.paused
        states = {t.state for t in targets}
        if states & {MISSING} or self._driver_error:
            overall = V.ERROR
        elif self._degraded is not None:
            overall = V.ATTENTION
        elif self._working is not None:
            overall = V.WORKING
        elif states & {DRIFTED, INCOMPATIBLE, V.WAITING} or self._asks:
            overall = V.ATTENTION
        elif paused:
            overall = V.PAUSED
        else:
            overall = V.OK
        bad = [t for t in targets if t.state not in (PATCHED, STOCK)]
        if not targets:
            tip = ("torchkeeper: no targets yet - choose Manage on a found install" if self._found
                   else "torchkeeper: no targets yet - add one with `torchkeeper target add PATH`")
        elif not bad:
            tip = f"torchkeeper: {len(targets)} target{'s' if len(targets) != 1 else ''} ok"
        else:
            tip = "torchkeeper: " + "; ".join(f"{t.name} {t.state}" for t in bad[:3])
        if paused:
            tip += " (auto re-apply paused)"
        if self._degraded is not None:
            tip += f"; watching: degraded - checking every {DEGRADED_POLL_S:.0f} s"
        holds = dict(self._holds)
        if holds:
            tip += "; " + ", ".join(f"'{n}' {h['describe']}" for n, h in sorted(holds.items()))
        fetching = self._fetch_line
        if fetching:
            overall, tip = V.WORKING, fetching
        return V.AgentView(overall, tip, targets, self._driver_line, paused, self._autostart,
                           list(self._found), self._degraded)

    def request(self, action: str, target: str | None = None, reason: str = "",
                explicit: bool | None = None) -> None:
        if action == V.QUIT:
            threading.Thread(target=self.stop, name="tk-quit", daemon=True).start()
            return
        if explicit is None:
            explicit = action in (V.REAPPLY, V.REVERT, V.REAPPLY_ALL)
        if action == V.CHECK_ALL:
            for name in self.engine.targets():
                self._enqueue(CHECK, name, reason or "check now")
            return
        if action == V.REAPPLY_ALL:
            for name in self.engine.targets():
                self._enqueue(V.REAPPLY, name, reason or "reapply all", explicit=explicit)
            return
        self._enqueue(action, target, reason, explicit=explicit)

    def set_paused(self, paused: bool) -> None:
        self.state.set(paused=bool(paused))
        self._event("paused" if paused else "resumed")
        if not paused:
            self.request(V.CHECK_ALL, reason="auto re-apply resumed")
        self._changed()

    def set_autostart(self, enabled: bool) -> None:
        """A person's choice from the tray (never called by the agent's own decisions)."""
        try:
            _, said = self.login.enable() if enabled else self.login.disable()
            self._event("autostart", enabled=enabled, message=said)
        except (TKError, OSError) as e:
            msg, hint = (e.message, e.hint) if isinstance(e, TKError) else (str(e), None)
            self._toast(V.Toast("autostart", "torchkeeper: start at login",
                                f"{msg}. {hint or ''}".strip(), level="warning"))
        self._autostart = self._read_autostart()
        self._changed()

    def _read_autostart(self) -> bool | None:
        """Whether the agent starts at login; None (greyed in the menu) when it cannot tell."""
        try:
            return bool(self.login.status()["enabled"])
        except Exception as e:  # a registry or file the OS will not let us read
            log.warning("cannot tell whether torchkeeper starts at login: %s", e)
            return None

    def subscribe(self, callback) -> None:
        self._listeners.append(callback)
        self._want_found_suggestions()
        known = self._suggestions
        with self._cv:
            shown = [n for n in self._views if n not in known]
        for name in shown:  # shown before a menu was there to offer a suggestion
            known[name] = None
            self._enqueue(SUGGEST, name, "suggest", delay=self.suggest_delay)

    def _changed(self) -> None:
        v = self.view()
        for cb in list(self._listeners):
            try:
                cb(v)
            except Exception:
                log.exception("a view listener failed")

    # -- the queue -------------------------------------------------------------------
    def _enqueue(self, action: str, target: str | None, reason: str = "", delay: float = 0.0,
                 detected: float | None = None, explicit: bool = False,
                 lib_stats: dict | None = None, last_write: float | None = None) -> None:
        self.jobs.put(action, target, reason, delay, detected, explicit, lib_stats, last_write)

    def _work(self) -> None:
        while True:
            job = self.jobs.take()
            if job is None:
                return
            self._changed()
            try:
                self._run(job)
            except Exception as e:  # a bug must not stop the agent; say so and go on
                log.exception("job %s %s failed", job.action, job.target or "")
                self._event("agent error", target=job.target, error=f"{type(e).__name__}: {e}")
            finally:
                self.jobs.done()
                self._changed()

    def _run(self, job: Job) -> None:
        if job.action == CHECK:
            self._check(job)
        elif job.action == FULL:
            self._full_check()
        elif job.action == FULL_ONE:
            self._full_check([job.target], job.reason)
        elif job.action == DRIVER:
            for name in self.engine.targets():
                self._check(Job(0, 0, CHECK, name, job.reason))
        elif job.action == POLL:
            self._poll_all()
        elif job.action == CONFIG:
            self._reload_config()
        elif job.action == TARGETS:
            self._sync_targets()
        elif job.action == V.REAPPLY:
            self._reapply(job)
        elif job.action == V.REVERT:
            self._revert(job)
        elif job.action == SUGGEST:
            self._suggest(job)
        elif job.action == V.FETCH_APPLY:
            self._fetch_apply(job)
        elif job.action == V.MANAGE:
            self._manage(job)
        elif job.action == SUGGEST_FOUND:
            self._suggest_found(job)
        elif job.action == V.MANAGE_FETCH_APPLY:
            name = self._manage(job)
            if name is not None:
                self._fetch_apply(Job(job.at, job.seq, V.FETCH_APPLY, name, job.reason, None, True))
        else:
            log.warning("unknown job %s", job.action)

    # -- the first run: a config to open, and the installs there are ---------------
    def _first_run(self) -> None:
        """No config yet: write the commented defaults (so "Open config" opens something),
        and look for torch installs. Nothing is added or applied: the user chooses."""
        try:
            if configmod.write_default(self.config_file):
                log.info("first run: wrote the default settings to %s", self.config_file)
                self._event("first run", config=str(self.config_file))
        except OSError as e:
            log.warning("could not write the default settings to %s: %s", self.config_file, e)
        # read-only and slow (every drive root on Windows, up to its time limit): its own
        # thread, so a repair never waits behind it, and nothing to finish at stop
        threading.Thread(target=self._discover, args=("first run",), name="tk-discover",
                         daemon=True).start()

    def _events_lost(self, why: str = "") -> None:
        """File events were lost (the kernel's queue overflowed in a huge install, or the
        watches were made anew after a failure): what they would have said is found by
        checking every target now."""
        self._event("file events lost", why=why or None)
        self.request(V.CHECK_ALL, reason="file events lost")

    def _watch_health(self, ok: bool, why: str) -> None:
        """The watcher stopped working (a watch thread failed) or works again. While it does
        not, every target is checked every DEGRADED_POLL_S, and the tray and `status` say so."""
        self._degraded = None if ok else why
        self.state.set_watching(ok, why)
        if ok:
            self._event("watching again")
        else:
            log.error("watching: degraded (%s); checking every target every %d s until it works",
                      why, DEGRADED_POLL_S)
            self._event("watching degraded", why=why)
            self._enqueue(POLL, None, "watching degraded")
        self._changed()

    def _poll_all(self) -> None:
        """The fallback while watching is degraded: every target checked, again and again."""
        if self._degraded is None:
            return
        for name in self.engine.targets():
            self._check(Job(0, 0, CHECK, name, "watching degraded"))
        self._enqueue(POLL, None, "watching degraded", delay=DEGRADED_POLL_S)

    def _discover(self, reason: str) -> None:
        from ..engine import target as targetmod
        from ..engine.discover import discover

        try:
            found = discover(None)
        except TKError as e:
            log.warning("discover failed: %s", e.message)
            return
        managed = {t["site_packages"] for t in self.engine.targets().values()}
        fresh = [f for f in found if str(f.site_packages) not in managed]
        views = []
        for f in fresh[:FOUND_SHOWN]:
            try:
                cudnn = targetmod.inspect(str(f.path), self.home.cache_dir).cudnn_build
            except TKError:
                cudnn = None
            views.append(V.FoundView(str(f.path), f.app, f.torch_version, cudnn,
                                     self._found_suggestions.get(str(f.path))))
        with self._cv:
            self._found = views
        self._want_found_suggestions()
        self._event("discovered", reason=reason, found=[v.__dict__ for v in views],
                    more=len(fresh) - len(views), timed_out=bool(getattr(found, "timed_out", False)))
        self._changed()
        if reason == "first run":
            total = len(fresh)
            if views:
                many = "s" if total != 1 else ""
                shown = "; ".join(v.label for v in views[:4]) + (f" (+{total - 4} more)" if total > 4 else "")
                how = ("Choose Manage in the tray menu to keep one." if self.has_menu else
                       "Run `torchkeeper discover --add` to keep them.")
                self._toast(V.Toast("found", f"torchkeeper: found {total} torch install{many}",
                                    f"Found {total} torch install{many}: {shown}. {how}"))
                self._say(f"found {total} torch install{many}: {shown}")
                self._say(f"next: {MENU_STEP if self.has_menu else ''}{NEXT_STEP}")
            else:
                self._toast(V.Toast("found", "torchkeeper: no torch installs found",
                                    "Add one with `torchkeeper target add PATH` (a venv, a python_embeded "
                                    "folder or a conda env)."))
                self._say("found no torch install in the usual places")
                self._say("next: `torchkeeper target add PATH` (a venv, a python_embeded folder or a conda env)")

    def _manage(self, job: Job) -> str | None:
        """A person chose Manage on a found install: it becomes a target (no bundle is
        applied: it gets one only when `use` chose one that fits it)."""
        try:
            name, _, _ = self.engine.add_target(job.target)
        except TKError as e:
            self._toast(V.Toast(f"manage:{job.target}", "torchkeeper: could not add it",
                                f"{e.message}. {e.hint or ''}".strip(), level="error"))
            return None
        with self._cv:
            self._found = [f for f in self._found if f.path != job.target]
        self._event("managed", target=name, path=job.target)
        self._sync_targets()
        return name

    def _want_found_suggestions(self) -> None:
        """Found installs get a suggestion the same lazy way targets do: only once a menu
        listens, and the index is asked once per install per agent run."""
        if not self._listeners:
            return
        with self._cv:
            paths = [f.path for f in self._found if f.path not in self._found_suggestions]
        for path in paths:
            self._found_suggestions[path] = None
            self._enqueue(SUGGEST_FOUND, path, "suggest", delay=self.suggest_delay)

    def _suggest_found(self, job: Job) -> None:
        from dataclasses import replace

        from ..engine.fetch import PipOptions
        from ..engine.fetch import suggest_for_install

        with self._cv:
            f = next((x for x in self._found if x.path == job.target), None)
        if f is None:  # managed or gone since
            return
        try:
            sg = suggest_for_install(self.engine, f.path, f.app, PipOptions("linux"))
        except TKError as e:  # offline, no index, a CPU build: no suggestion, said in the log
            log.info("no suggestion for %s: %s", f.path, e.message)
            return
        head = sg.headline()
        line = (f"{head} — manage it, get {'it' if head.endswith('fits') else 'them'} and apply"
                if head else None)
        self._found_suggestions[f.path] = line
        self._event("suggested", path=f.path, suggestion=head, chosen=sg.chosen)
        with self._cv:
            self._found = [replace(x, suggestion=line) if x.path == f.path else x for x in self._found]
        self._changed()

    # -- checking and deciding -------------------------------------------------------
    def _check(self, job: Job) -> None:
        """Read the target once, decide (daemon/decide.py, pure), carry the decision out."""
        name = job.target
        if name not in self.engine.targets():
            self._forget(name)
            return
        self.checks += 1
        s = self.engine.target_state(name, with_versions=True)
        self._note_hold(name, s)
        self._rewatch(name, s)
        self._act(name, s, job)

    def _act(self, name: str, s: TargetStatus, job: Job) -> None:
        """Decide about a target read once (daemon/decide.py) and carry the decision out."""
        lib_dirs = list(s.info.lib_dirs) if s.info else []
        libs_rel = [lf.rel for lf in s.info.libs.values()] if s.info else []
        signs, self._lib_stats[name] = install_signs(Path(s.site_packages), lib_dirs, libs_rel,
                                                     job.lib_stats or self._lib_stats.get(name))
        d = decide(snapshot(s, (s.held or {}).get("describe"), signs), self._settings(),
                   D.JobView(_why(job.reason), explicit=job.explicit,
                             waited_s=time.time() - job.detected if job.detected else 0.0))
        if d.kind is D.Kind.WAIT:
            if not s.held:  # an install under way: never judged mid-write, looked at again
                self._set_view(name, s, V.CHECKING, d.words)
            # no torch and no install to wait for: look once more, then say so
            again = D.Why.STILL_MISSING.value if s.state == MISSING and not signs.any else job.reason
            self._enqueue(CHECK, name, again, delay=d.delay, detected=job.detected, explicit=job.explicit,
                          last_write=job.last_write)
            return
        if d.kind is D.Kind.REFUSE and s.state == MISSING:
            self._set_view(name, s, MISSING, d.words)
            self._toast(V.Toast(f"missing:{name}", f"torchkeeper: '{name}' has no torch", d.words, name,
                                level="error"))
            return
        if d.kind is D.Kind.REFUSE:
            self._incompatible(name, s, job)
            return
        if d.kind is D.Kind.ASK:
            self._ask(name, s, d.words, job.detected or time.time(), job)
            return
        if d.kind is D.Kind.REAPPLY:
            detected = job.detected or time.time()
            self._event("drift", target=name, reason=job.reason, detected=detected,
                        decided=time.time(), decision="re-apply", what=d.words)
            pause_point("agent decided")
            stock_now = s.cudnn_now or (s.info.cudnn_build if s.info else None)
            self._apply(name, s, job, detected, stock_now, explicit=False)
            return
        if s.state == DRIFTED:   # left alone: not torchkeeper's overlay
            self._set_view(name, s, DRIFTED, d.words)
            self._event("drift", target=name, reason=job.reason, detected=job.detected,
                        decided=time.time(), decision="left alone: not torchkeeper's overlay")
            return
        self._asks.pop(name, None)
        self._retry.pop(name, None)
        self._set_view(name, s, s.state, self._ok_message(s))
        if s.state == PATCHED and (s.standby or {}).get("state") not in ("ready", "off", "preparing"):
            self._want_standby(name)
        if s.state == PATCHED and job.reason.startswith("driver"):
            self._driver_gate(name, s)

    def _settings(self) -> D.Settings:
        a = self.cfg["agent"]
        return D.Settings(auto_reapply=bool(a["auto_reapply"]), paused=self.state.paused,
                          max_wait_s=float(a["max_wait_seconds"]))

    def _note_hold(self, name: str, s: TargetStatus) -> None:
        """Another torchkeeper process (bench) holds this target, or its hold ended: said once
        each, as events and in the view; the user's own pause is untouched by it."""
        was = self._holds.get(name)
        if s.held and was is None:
            self._holds[name] = s.held
            self._event("held", target=name, by=s.held["why"], pid=s.held["pid"], since=s.held["since"])
            self._changed()
        elif not s.held and was is not None:
            del self._holds[name]
            self._event("hold released", target=name, by=was["why"])
            self._changed()

    def _apply(self, name: str, s: TargetStatus, job: Job, detected: float, stock_now: str | None,
               explicit: bool) -> None:
        decided = time.time()
        m = s.bundle
        self._set_view(name, s, V.APPLYING, "re-applying ...")
        try:
            self._begin_own(name)
            try:
                # a person's Reapply is a new decision; the agent's own one, taken on s
                # without the lock, yields to a revert or `use` that landed since
                res = (self.engine.apply(name, force=True) if explicit
                       else self.engine.reapply_if_still_wanted(name, s))
            finally:
                self._end_own(name)
        except FileInUse as e:
            self._file_in_use(name, s, e, job, detected)
            return
        except Refused as e:
            if any(r.get("level") == "refuse" for r in e.reasons):
                self._incompatible(name, s, job, refusal=e.message)
            else:  # only warnings (driver older than the bundle, foreign files): ask
                self._ask(name, s, e.message, detected, job)
            return
        except (TKError, OSError) as e:
            if isinstance(e, TKError):
                msg, hint = e.message, e.hint or ""
            else:  # e.g. a folder made read-only under us: say which, never a traceback
                msg = f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
                hint = "check that folder's permissions and free space, then choose Reapply"
            self._set_view(name, s, DRIFTED, msg)
            self._event("reapply failed", target=name, detected=detected, decided=decided,
                        error=msg)
            self._toast(V.Toast(f"failed:{name}", f"torchkeeper: could not re-apply to '{name}'",
                                f"{msg}. {hint}".strip(), name, (V.REAPPLY,), level="error"))
            return
        applied = time.time()
        after = self.engine.target_state(name)
        verified = time.time()
        if res.action == "not wanted":
            self._retry.pop(name, None)
            self._asks.pop(name, None)
            self._set_view(name, after, after.state, self._ok_message(after))
            self._event("not re-applied", target=name, reason=job.reason, detected=detected,
                        decided=decided, why=res.message)
            return
        self._retry.pop(name, None)
        self._asks.pop(name, None)
        ok = after.state == PATCHED
        self._set_view(name, after, after.state, self._ok_message(after))
        if res.action == "already applied":
            self._event("already applied", target=name, reason=job.reason)
            return
        self.applies += 1
        # the repair's time counts from the installer's last write (what a user waits for), not
        # from its first file event (the install's own length is in since_first_event)
        self._event("repaired" if ok else "reapply unverified", target=name, reason=job.reason,
                    detected=detected, first_event=detected, last_write=job.last_write, decided=decided,
                    applied=applied, verified=verified, bundle=m.id if m else None, action=res.action,
                    latency=round(verified - (job.last_write or detected), 3),
                    since_first_event=round(verified - detected, 3), via=res.via)
        if ok and (after.standby or {}).get("state") != "ready":
            self._want_standby(name)  # after the toast's work: at low priority, off the queue
        bundle_cudnn = m.cudnn if m else None
        what = f"cuDNN {bundle_cudnn}" if bundle_cudnn else f"bundle '{m.name if m else None}'"
        if job.reason == "file events" and stock_now and stock_now != bundle_cudnn:
            because = f"a pip reinstall had restored stock {stock_now}"
        else:
            because = _BECAUSE.get(job.reason, "as asked" if job.explicit else "its files had changed")
        self._toast(V.Toast(f"reapplied:{name}", f"torchkeeper: re-applied to '{name}'",
                            f"Re-applied {what} to '{name}' — {because}", name))

    def _reapply(self, job: Job) -> None:
        name = job.target
        if name not in self.engine.targets():
            return
        s = self.engine.target_state(name, with_versions=True)
        self._rewatch(name, s)
        if s.state == PATCHED and not job.explicit:
            self._set_view(name, s, PATCHED, self._ok_message(s))
            return
        # asked by a person: apply's own plan hashes every file, so it also fixes what
        # stat data cannot see, and is a no-op ("already applied") when all is in place
        if not s.bundle:
            self._set_view(name, s, s.state, "no bundle chosen")
            if job.explicit and job.reason != "reapply all":
                self._toast(V.Toast(f"nobundle:{name}", f"torchkeeper: '{name}' has no bundle",
                                    f"choose one with `torchkeeper use BUNDLE --target {name}`", name))
            return
        if s.state == INCOMPATIBLE:
            self._incompatible(name, s, job)
            return
        stock_now = s.cudnn_now or (s.info.cudnn_build if s.info else None)
        self._apply(name, s, job, job.detected or time.time(), stock_now, explicit=job.explicit)

    def _revert(self, job: Job) -> None:
        name = job.target
        if name not in self.engine.targets():
            return
        try:
            self._begin_own(name)
            try:
                res = self.engine.revert(name)
            finally:
                self._end_own(name)
        except FileInUse as e:
            self._toast(V.Toast(f"inuse:{name}", f"torchkeeper: '{name}' is in use",
                                f"{e.message}. Close it and choose Revert again.", name,
                                level="warning"))
            return
        except TKError as e:
            self._toast(V.Toast(f"failed:{name}", f"torchkeeper: could not revert '{name}'",
                                f"{e.message}. {e.hint or ''}".strip(), name, level="error"))
            return
        self._asks.pop(name, None)
        s = self.engine.target_state(name)
        self._set_view(name, s, s.state, self._ok_message(s))
        self._toast(V.Toast(f"reverted:{name}", f"torchkeeper: '{name}' reverted", res.message, name))

    def _ask(self, name, s, why, detected, job) -> None:
        self._asks[name] = why
        self._set_view(name, s, DRIFTED, why)
        self._event("drift", target=name, reason=job.reason, detected=detected,
                    decided=time.time(), decision="asked the user", why=why)
        self._toast(V.Toast(f"drift:{name}", f"torchkeeper: '{name}' needs you",
                            f"{why}. Choose Reapply to put the overlay back.", name,
                            (V.REAPPLY,), level="warning"))

    def _incompatible(self, name: str, s: TargetStatus, job: Job, refusal: str | None = None) -> None:
        why = refusal or (s.problems[0] if s.problems else "the gate refuses the bundle")
        fits = self._bundles_that_fit(name)
        hint = (f"bundle '{fits[0]}' would fit: `torchkeeper use {fits[0]} --target {name}`"
                if fits else "create a bundle that matches it (`torchkeeper bundle create`)")
        self._set_view(name, s, INCOMPATIBLE, why)
        self._event("incompatible", target=name, reason=job.reason, detected=job.detected,
                    decided=time.time(), decision="not applied", why=why, fits=fits)
        self._toast(V.Toast(f"incompatible:{name}:{s.torch_version}",
                            f"torchkeeper: not re-applying to '{name}'",
                            f"{why}. Nothing was changed; {hint}.", name, level="warning"))

    def _bundles_that_fit(self, name: str) -> list[str]:
        try:
            info = self.engine.inspect(name)
        except TKError:
            return []
        out = []
        for m in self.engine.bundles.all():
            if not any(r.level == "refuse" for r in gate.check(info, m, None)):
                out.append(m["name"])
        return out

    def _file_in_use(self, name, s, e: FileInUse, job: Job, detected: float) -> None:
        backoff = self._retry.get(name)
        first = backoff is None
        backoff = RETRY_FIRST_S if first else min(backoff * 2, RETRY_MAX_S)
        self._retry[name] = backoff
        self._set_view(name, s, V.WAITING, f"waiting: {e.message}")
        self._event("files in use", target=name, detected=detected, decided=time.time(),
                    error=e.message, retry_in=backoff)
        if first:
            self._toast(V.Toast(f"inuse:{name}", f"torchkeeper: '{name}' is in use",
                                f"{e.message}. torchkeeper will re-apply as soon as it is closed.",
                                name, level="warning"))
        self._enqueue(V.REAPPLY if job.explicit else CHECK, name, job.reason, delay=backoff,
                      detected=detected, explicit=job.explicit)

    def _driver_gate(self, name: str, s: TargetStatus) -> None:
        """After a driver change: does the applied bundle still suit this driver?"""
        try:
            p, _, _ = self.engine.plan(name)
        except TKError:
            return
        warn = [r for r in p.reasons if r.level == "force"]
        if warn:
            self._asks[name] = warn[0].message
            self._set_view(name, s, PATCHED, warn[0].message)
            self._toast(V.Toast(f"driver-gate:{name}", f"torchkeeper: '{name}' and the new driver",
                                f"{warn[0].message}. {warn[0].hint or ''}".strip(), name,
                                level="warning"))

    def _full_check(self, names: list[str] | None = None, reason: str = "daily full check") -> None:
        """Every file re-hashed: catches what stat data cannot (same size, same times)."""
        names = [n for n in names if n in self.engine.targets()] if names is not None else None
        if names == []:
            return
        for r in self.engine.verify(names, full=True):
            if r.state == PATCHED and names is None:
                self._want_standby(r.name, rehash=True)  # its bytes re-hashed too
            job = Job(0, 0, CHECK, r.name, reason)
            if r.state == DRIFTED and r.applied:
                self._act(r.name, r, job)  # not via a quick check: it may see no change
            elif r.state != PATCHED:
                self._check(job)

    def _ok_message(self, s: TargetStatus) -> str:
        b = s.bundle
        if s.state == PATCHED:
            return f"{b.name if b else 'overlay'} applied" + (f" (cuDNN {s.cudnn_now})" if s.cudnn_now else "")
        if s.state == STOCK:
            return "stock" + (f", bundle '{b.name}' chosen, not applied" if b else "")
        return s.state

    def _set_view(self, name: str, s: TargetStatus, state: str, message: str) -> None:
        lib_dirs = s.info.lib_dirs if s.info else []
        folder = str(Path(s.site_packages) / lib_dirs[0]) if lib_dirs else s.site_packages
        details = [f"target: {name}", f"path: {s.path}", f"state: {state}",
                   f"torch: {s.torch_version} (CUDA {s.torch_cuda})"]
        b = s.bundle
        if b:
            vs = ", ".join(f"{label} {v}" for v, label in ((b.cuda, "CUDA"), (b.cudnn, "cuDNN")) if v)
            details.append(f"bundle: {b.name}" + (f" ({vs})" if vs else ""))
        details += [f"problem: {p}" for p in s.problems]
        old = self._views.get(name)
        if old is not None and not lib_dirs:
            folder = old.folder
        suggestion = self._suggestion(name, s)
        with self._cv:
            self._views[name] = V.TargetView(name, state, s.bundle.name if s.bundle else None,
                                             message, folder, "\n".join(details), suggestion)
        self._changed()

    # -- suggestions: the best nvidia-* wheels for a target, and "get it and apply" ------
    suggest_delay = SUGGEST_DELAY_S

    def _suggestion(self, name: str, s: TargetStatus) -> str | None:
        """The tray line for a target; the first time it is shown, a SUGGEST job is queued."""
        known = self._suggestions
        if name not in known and s.torch_cuda and self._listeners:  # a menu to show it in
            known[name] = None
            self._enqueue(SUGGEST, name, "suggest", delay=self.suggest_delay)
        return known.get(name)

    def _suggest(self, job: Job) -> None:
        from ..engine.fetch import PipOptions
        from ..engine.fetch import suggest_for

        name = job.target
        if name not in self.engine.targets():
            return
        try:
            sg = suggest_for(self.engine, name, PipOptions("linux"))
        except TKError as e:  # offline, no index: no suggestion, said once in the log
            log.info("no suggestion for %s: %s", name, e.message)
            return
        head = sg.headline()
        line = f"{head} — get {'it' if head.endswith('fits') else 'them'} and apply" if head else None
        self._suggestions[name] = line
        self._event("suggested", target=name, suggestion=head, chosen=sg.chosen)
        with self._cv:
            old = self._views.get(name)
            if old is not None:
                self._views[name] = V.TargetView(old.name, old.state, old.bundle, old.message,
                                                 old.folder, old.details, line)
        self._changed()

    def _fetch_apply(self, job: Job) -> None:
        """A person's yes from the tray: fetch what fits, make the bundle, use it, apply."""
        from ..engine.fetch import fetch_bundle

        name = job.target
        if name not in self.engine.targets():
            return
        job = Job(job.at, job.seq, job.action, name, "get it and apply", job.detected, True)
        shown = [0.0]

        def progress(label, done, total):
            now = time.monotonic()
            if now - shown[0] < 0.5:
                return
            shown[0] = now
            pct = f" {min(done / total, 1) * 100:.0f}%" if total else f" {done / 1e6:.0f} MB"
            self._fetch_line = f"torchkeeper: downloading {label}{pct}"
            self._changed()

        self._fetch_line = f"torchkeeper: getting the libraries for '{name}' ..."
        self._changed()
        try:
            res = fetch_bundle(self.engine, target=name, progress=progress)
            self.engine.use(res.bundle["id"], name)
        except (TKError, OSError) as e:
            msg, hint = (e.message, e.hint or "") if isinstance(e, TKError) else (str(e), "")
            self._event("fetch failed", target=name, error=msg)
            self._toast(V.Toast(f"fetch:{name}", f"torchkeeper: could not get the libraries for '{name}'",
                                f"{msg}. {hint}".strip(), name, level="error"))
            return
        finally:
            self._fetch_line = None
            self._changed()
        self._suggestions[name] = None
        s = self.engine.target_state(name, with_versions=True)
        stock_now = s.cudnn_now or (s.info.cudnn_build if s.info else None)
        self._apply(name, s, job, time.time(), stock_now, explicit=True)

    def _forget(self, name: str) -> None:
        with self._cv:
            self._views.pop(name, None)
        if self.watcher:
            self.watcher.remove_target(name)
        self._changed()

    # -- watching --------------------------------------------------------------------
    def _rewatch(self, name: str, s: TargetStatus) -> None:
        if self.watcher is None:
            return
        dirs = list(s.info.lib_dirs if s.info else [])
        # also watch where the overlay's files are (a bundle may add beside the family)
        dirs += sorted({rel.rpartition("/")[0] for rel in self._overlay_files(name)})
        self.watcher.set_target(name, Path(s.site_packages), [d for d in dirs if d])

    def _overlay_files(self, name: str) -> dict:
        ov = self.engine.state.read()["overlays"].get(name) or {}
        return ov.get("files", {})

    def _on_burst(self, name: str, burst) -> None:
        self._event("files changed", target=name, events=burst.events, detected=burst.first_wall,
                    stashes=sorted(burst.stashes) or None)
        self._enqueue(CHECK, name, "file events", detected=burst.first_wall, lib_stats=burst.sizes,
                      last_write=burst.last_wall or None)

    def _begin_own(self, name: str) -> None:
        self._working = name
        self._changed()
        before = set(self._overlay_files(name))
        names = {Path(rel).name for rel in before}
        try:
            m = self.engine.desired_bundle(name)
        except TKError:
            m = None
        if m:
            names |= {f["name"] for f in m.get("files", [])}
        with self._own_lock:
            self._busy[name] = names
            self._busy_rels[name] = before

    def _end_own(self, name: str) -> None:
        """Remember what our write left, so its late events are not taken for drift."""
        st = self.engine.state.read()
        ov = st["overlays"].get(name) or {}
        rec = st["targets"].get(name) or {}
        sp = Path(ov.get("site_packages") or rec.get("site_packages") or ".")
        own = {}
        with self._own_lock:
            before = self._busy_rels.pop(name, set())
        for rel in set(ov.get("files", {})) | before:  # what the write put, and took, away
            p = sp / rel
            try:
                own[str(p)] = stat_key(p)
            except OSError:
                own[str(p)] = None
        with self._own_lock:
            self._own.update(own)
            self._busy.pop(name, None)
        self._working = None

    def _is_own(self, target: str, path: str) -> bool:
        if path.endswith((STAGED, RESTORE)):
            return True
        with self._own_lock:
            busy = self._busy.get(target)
            if busy is not None and Path(path).name in busy:
                return True
            if path not in self._own:
                return False
            want = self._own[path]
        try:
            now = stat_key(Path(path))
        except OSError:
            now = None
        return now == want

    def _watch_config(self) -> None:
        """config.toml (re-read it) and state.json (targets the CLI added or removed)."""
        for path, job in ((self.config_file, CONFIG), (self.home.state_file, TARGETS)):
            self.watcher.watch_file(
                path, lambda job=job: self._enqueue(job, None, job + " changed", delay=0.2))

    def _sync_targets(self) -> None:
        """`torchkeeper target add/remove` ran while the agent did: check new targets, and
        stop watching removed ones."""
        names = set(self.engine.targets())
        with self._cv:
            known = set(self._views)
        for name in sorted(names - known):
            self._enqueue(CHECK, name, "target added")
        for name in sorted(known - names):
            self._forget(name)

    def _reload_config(self) -> None:
        try:
            text, origin = configmod.read_text(self.config_file)
            new = configmod.parse(text, origin)
        except TKError as e:
            self._event("config rejected", error=e.message)
            self._toast(V.Toast("config", "torchkeeper: config change not used",
                                f"{e.message}. The last good settings stay in use.", level="error"))
            return
        self._remember_config(text)
        if new == self.cfg:
            return
        old_a = self.cfg["agent"]
        self.cfg = new
        self.engine.config = new
        a = new["agent"]
        if self.watcher:
            self.watcher.debouncer.configure(a["quiet_seconds"], a["max_wait_seconds"])
        if self.safety:
            self.safety.reconfigure(a)
        if (a.get("standby"), a.get("standby_min_free_mb")) != (old_a.get("standby"),
                                                                 old_a.get("standby_min_free_mb")):
            for name in self.engine.targets():
                self._want_standby(name)  # prepared, or deleted when turned off
        if self.notifier is not None and hasattr(self.notifier, "update_config"):
            self.notifier.update_config(new["notifications"])
        self._event("config reloaded", auto_reapply=a["auto_reapply"],
                    quiet_seconds=a["quiet_seconds"])
        if a["auto_reapply"]:
            self.request(V.CHECK_ALL, reason="config changed")

    # -- the driver ------------------------------------------------------------------
    def poll_driver(self, initial: bool = False) -> None:
        """The driver, through what the OS shows (engine/driversignal.py): NVML, which wakes a
        sleeping laptop GPU, only at start and when that changed."""
        from ..engine import driversignal

        sig = driversignal.current()
        if not initial and sig == self._driver_signal:
            return
        self._driver_signal = sig
        self.nvml_queries += 1
        d = self.engine.driver(refresh=True)
        now = {"state": d.state, "version": d.version, "cuda": d.cuda,
               "gpus": sorted(g.get("name") or "?" for g in d.gpus)}
        before = self.state.get("driver")
        self._driver_error = d.state in ("error", "reboot_needed")
        self._driver_line = d.summary() if d.ok else (d.message or d.state)
        if before != now:
            self.state.set(driver=now)
            if before is not None:
                title, body = _driver_change_text(before, now, d)
                self._event("driver changed", before=before, after=now)
                # the state in the kind: "reboot needed" is never merged into a "changed" toast
                self._toast(V.Toast(f"driver-{now['state']}:{now['version']}", title, body,
                                    level="warning" if not d.ok else "info"))
                self._enqueue(DRIVER, None, "driver changed")
        self._changed()

    # -- telling ---------------------------------------------------------------------
    def _toast(self, toast: V.Toast) -> None:
        self._event("toast", key=toast.key, title=toast.title, body=toast.body, target=toast.target)
        if self.notifier is None:
            log.info("toast: %s - %s", toast.title, toast.body)
            return
        try:
            self.notifier.notify(toast)
        except Exception:
            log.exception("notification failed")

    def _say(self, line: str) -> None:
        if self.say is not None:
            try:
                self.say(f"torchkeeper: {line}")
            except (OSError, ValueError):  # no terminal any more (closed, or a pythonw start)
                self.say = None

    def _event(self, kind: str, **fields) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))
        try:
            log_event(self.home, kind, source="agent", **fields)
        except OSError as e:  # a full disk must not stop the agent
            log.error("cannot write the event log: %s", e)


# why a re-apply happened, for its toast
_BECAUSE = {
    "get it and apply": "fetched and applied as asked",
    "file events": "its files had changed",
    "start": "found undone when the agent started",
    "scheduled": "a scheduled check found it undone",
    "file events lost": "a check after lost file events found it undone",
    "watching degraded": "a check while file watching is degraded found it undone",
    "resume from sleep": "found undone after the computer woke up",
    "daily full check": "the daily full check found it undone",
    "standby found changed bytes": "its files' bytes were changed in place",
    "config changed": "auto re-apply was turned on",
    "auto re-apply resumed": "auto re-apply was resumed",
}


_WHYS = {w.value: w for w in D.Why}


def _why(reason: str) -> D.Why:
    """A job's reason as decide's Why (a driver poll's reasons carry the versions)."""
    if reason.startswith("driver"):
        return D.Why.DRIVER
    return _WHYS.get(reason, D.Why.USER)


def _driver_change_text(before: dict, now: dict, d) -> tuple[str, str]:
    if now["state"] == "ok" and before.get("state") == "ok":
        parts = []
        if before.get("version") != now["version"]:
            parts.append(f"Driver {before.get('version')} → {now['version']}")
        if before.get("cuda") != now["cuda"]:
            parts.append(f"CUDA {before.get('cuda')} → {now['cuda']}")
        if before.get("gpus") != now["gpus"]:
            parts.append("GPUs: " + (", ".join(now["gpus"]) or "none"))
        return "torchkeeper: driver changed", ", ".join(parts) or d.summary()
    if now["state"] == "ok":
        return "torchkeeper: driver available", d.summary()
    return "torchkeeper: driver " + now["state"].replace("_", " "), \
        f"{d.message or now['state']}. {d.hint or ''}".strip()
