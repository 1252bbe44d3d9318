"""The agent: construction, start and stop, its threads, and the queue that runs its work.

Watchers, timers, tray clicks and toast buttons queue jobs (daemon/jobs.py); one worker thread
runs every check and every change to a target, in order (daemon/repair.py decides through
daemon/decide.py and carries it out). Outside that queue, on their own threads: the driver poll
(daemon/driverwatch.py, on APScheduler's thread), the standby's preparation and the hashing of
what an installer wrote (two low-priority lanes that never write a library file), discover on
a first run (daemon/offers.py), and the tray's "Start at login" (it writes the OS's entry on the
tray's thread). What the tray shows lives on the board (daemon/board.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .. import i18n
from ..engine import config as configmod
from ..engine.core import Engine
from ..engine.autostart import Autostart
from ..engine.records import TargetStatus
from ..errors import TKError
from ..home import Home
from . import agentstate, board as boardmod, decide as D
from . import view as V
from .board import Board
from .driverwatch import DriverWatch
from .jobs import Job, JobKind, JobQueue
from .lane import Lane
from .metricsfile import MetricsFile
from .offers import MENU_STEP, NEXT_STEP, Offers
from .ownwrites import OwnWrites
from .repair import Repair
from .tell import Teller
from ..engine.records import Config
from ..i18n import _

log = logging.getLogger("torchkeeper.agent")

PREPARE, REHASH, REFRESH = "prepare", "rehash", "refresh"   # standby work, weakest first
_STANDBY_RANK = {REFRESH: 0, PREPARE: 1, REHASH: 2}

DEGRADED_POLL_S = boardmod.DEGRADED_POLL_S
_ASKED = {V.REAPPLY, V.REVERT, V.REAPPLY_ALL}   # a person's explicit ask (gate warnings pass)


def _use_language(cfg: Config) -> str:
    """[ui] language (TORCHKEEPER_LANG wins, "auto" is the OS's) for the tray and toasts."""
    from ..platform.language import os_languages

    return i18n.setup(cfg["ui"]["language"], os_languages())


class Agent:
    """The agent. ``start()`` recovers, verifies and starts watching; ``stop()`` waits for
    the running job (never stops inside a transaction)."""

    def __init__(self, home: Home, engine: Engine | None = None, notifier=None,
                 clock=time.monotonic, watch: bool = True, schedule: bool = True,
                 driver_query=None, autostart: Autostart | None = None):
        self.home = home
        self.engine = engine or Engine(home, driver_query=driver_query)
        self.config_file = home.config_file
        self.log_file = home.log_dir / "agent.log"
        self.first_run = not (self.config_file.exists() or self.config_file.is_symlink())
        self.state = agentstate.AgentState(home)   # agent.json, one lock for every thread
        self.tell = Teller(home, notifier)
        self.cfg, self._config_problem = self._load_config()
        self.engine.config = self.cfg
        _use_language(self.cfg)
        self.jobs = JobQueue(clock)
        self.board = Board(lambda: self.state.paused)
        self.own = OwnWrites(self.engine)
        self.offers = Offers(self.engine, home, self.board, self.tell, self.jobs.put, self._sync_targets)
        self.repair = Repair(self.engine, self.board, self.tell, self.jobs.put, self.own, self._settings,
                             self._want_standby, self._rewatch, self.offers.line_for)
        self.driver = DriverWatch(self.engine, self.state, self.board, self.tell, self.jobs.put)
        self.autostart = autostart or Autostart(home)
        self.board.set(autostart=self._read_autostart())
        self.watcher = None
        self.safety = None
        self._watch, self._schedule = watch, schedule
        self._stopped = threading.Event()
        self._worker = threading.Thread(target=self._work, name="tk-worker", daemon=True)
        # standby preparation: its own low-priority thread, so that the worker queue (the
        # repairs) never waits behind hashing another target's standby
        self._standby = Lane("tk-standby", self._standby_work,
                             merge=lambda old, new: max(old, new, key=_STANDBY_RANK.__getitem__))
        self.standby_runs = 0
        # library files an installer wrote, hashed while it goes on: the repair's plan then finds
        # them hashed (fsutil.remember), not on its critical path. At the agent's own priority,
        # not nice 19: it works only during an install the user started (one sha256 pass, ~0.5 CPU
        # s per GB), and at nice 19 a busy machine starved it until the repair had to hash on its
        # critical path (real cuDNN, CPU hog: pip exit -> verified p50 768 ms at nice 19, 78 ms)
        self._hasher = Lane("tk-hash", self._hash_work, nice=None)
        self.prehashed = 0
        self.metrics = MetricsFile(self.engine)   # [metrics] textfile_dir, when set
        # the dashboard (dashboard/server.py), wired by run.py and started when asked:
        # make_dashboard(controller, engine, idle_minutes) -> an object with start/stop/login_url
        self.make_dashboard = None
        self._dashboard = None
        self._dash_lock = threading.Lock()
        self._ask_lock = threading.Lock()   # the watcher's thread and start() both answer asks
        self._answered: str | None = None    # the last ask's nonce answered

    # -- what `run`, tests and the benchmark read and set
    notifier = property(lambda self: self.tell.notifier,
                        lambda self, n: setattr(self.tell, "notifier", n))
    say = property(lambda self: self.tell.say_to, lambda self, f: setattr(self.tell, "say_to", f))
    has_menu = property(lambda self: self.offers.has_menu,
                        lambda self, v: setattr(self.offers, "has_menu", v))
    checks = property(lambda self: self.repair.checks)
    applies = property(lambda self: self.repair.applies)
    nvml_queries = property(lambda self: self.driver.nvml_queries)

    def poll_driver(self, initial: bool = False) -> None:
        self.driver.poll(initial)

    def writing_to(self) -> str | None:
        """The target an apply or revert is writing to now, if any."""
        return self.own.working

    def idle(self) -> bool:
        """No job running or queued (tests and benchmarks wait for this)."""
        return self.jobs.idle(waiting_is_not_work=(JobKind.SUGGEST, JobKind.SUGGEST_FOUND))

    # -- config
    def _load_config(self) -> tuple[Config, str | None]:
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

    def _settings(self) -> D.Settings:
        a = self.cfg["agent"]
        return D.Settings(auto_reapply=bool(a["auto_reapply"]), paused=self.state.paused,
                          max_wait_s=float(a["max_wait_seconds"]))

    def _reload_config(self) -> None:
        try:
            text, origin = configmod.read_text(self.config_file)
            new = configmod.parse(text, origin)
        except TKError as e:
            self.tell.event("config rejected", error=e.message)
            self.tell.toast(
                V.Toast(
                    "config",
                    _("torchkeeper: config change not used"),
                    _("%(message)s. The last good settings stay in use.") % {"message": e.message},
                    level="error",
                )
            )
            return
        self._remember_config(text)
        if new == self.cfg:
            return
        old_a = self.cfg["agent"]
        self.cfg = new
        self.engine.config = new
        before = i18n.current()
        if _use_language(new) != before:
            self.board.changed()  # the menu and tooltip in the new language
        a = new["agent"]
        if self.watcher:
            self.watcher.debouncer.configure(a["quiet_seconds"], a["max_wait_seconds"])
        if self.safety:
            self.safety.reconfigure(a)
        keys = ("standby", "standby_copy", "standby_min_free_mb")
        if any(a.get(k) != old_a.get(k) for k in keys):
            for name in self.engine.targets():
                self._want_standby(name)  # prepared, or deleted when turned off
        self.metrics.start_if_configured()
        if self.notifier is not None and hasattr(self.notifier, "update_config"):
            self.notifier.update_config(new["notifications"])
        self.tell.event("config reloaded", auto_reapply=a["auto_reapply"], quiet_seconds=a["quiet_seconds"])
        if a["auto_reapply"]:
            self.request(V.CHECK_ALL, why=D.Why.CONFIG_CHANGED)

    # -- lifecycle
    def start(self) -> None:
        if self.state.get("watching") is not None:  # an earlier agent's
            self.state.set(watching=None)
        if not self.engine.targets():
            log.info("no targets yet: %s%s", MENU_STEP if self.has_menu else "", NEXT_STEP)
        if self.first_run:
            self.offers.first_run(self.config_file)
        for line in self.engine.recover_all():
            log.warning(line)
            self.tell.event("recovered", message=line)
        if self._config_problem:
            self.tell.toast(
                V.Toast("config", _("torchkeeper: config not used"), self._config_problem, level="error")
            )
        if self._watch:
            self._start_watching()
        self._worker.start()
        self._standby.start()
        self._hasher.start()
        self.driver.poll(initial=True)
        self.metrics.start_if_configured()
        self.request(V.CHECK_ALL, why=D.Why.START)
        if self._schedule:
            from .schedule import SafetyNet

            self.safety = SafetyNet(
                self.cfg["agent"],
                self.driver.poll,
                lambda why: self.request(V.CHECK_ALL, why=D.Why(why)),
                lambda: self.jobs.put(JobKind.FULL, None, D.Why.DAILY),
            )
            self.safety.start()
        self.tell.event("started", targets=len(self.engine.targets()))

    def _start_watching(self) -> None:
        from .watch import SETTLE, Debouncer, Watcher

        a = self.cfg["agent"]
        self.watcher = Watcher(
            Debouncer(a["quiet_seconds"], a["max_wait_seconds"], settle=SETTLE),
            self._on_burst,
            self.own.is_own,
            on_lost=self._events_lost,
            on_health=self._watch_health,
            # an install began: prove the standby's bytes again meanwhile,
            # off the repair's critical path
            on_start=lambda name: self._want_standby(name, refresh=True),
            on_written=self._want_hash,
        )
        self.watcher.start()
        # config.toml (read it again) and state.json (targets the CLI added or removed)
        for path, kind in ((self.config_file, JobKind.CONFIG), (self.home.state_file, JobKind.TARGETS)):
            self.watcher.watch_file(
                path, lambda kind=kind: self.jobs.put(kind, None, D.Why.SETTINGS_FILE, delay=0.2)
            )
        # `torchkeeper dashboard` asks through a file in the data folder (the user's own);
        # `status` says "running" from the lock, before this watch exists: an ask written
        # meanwhile is answered now
        self.watcher.watch_file(self.home.data_dir / V.DASHBOARD_ASK, self._dashboard_asked)
        self._dashboard_asked(at_start=True)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, let the running job finish, stop the watchers."""
        if self._stopped.is_set():
            return
        self.jobs.stop()
        self._hasher.stop(timeout=0)  # nothing more is taken up; the work in hand finishes
        self._standby.stop(timeout=0)
        if self._worker.is_alive():
            self._worker.join(timeout)
        self._standby.stop(timeout)  # a kill here is recovered: see standby.py
        if self.safety:
            self.safety.stop()
        self.metrics.stop()
        if self._dashboard is not None:
            self._dashboard.stop()
        if self.watcher:
            self.watcher.stop()
        self.tell.close()
        self._stopped.set()
        log.info("agent stopped")

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # -- the standby and the installer-file hasher (two low-priority lanes)
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
                self.jobs.put(JobKind.FULL_ONE, name, D.Why.STANDBY_CHANGED)
        except Exception as e:  # TKError (a lock held too long), OSError: next time
            log.warning("standby of '%s' not prepared: %s", name, e)

    def _want_hash(self, target: str, path: str) -> None:
        from ..engine import libs

        if libs.parse(os.path.basename(path)) is not None:  # not the 20,000 other files of torch
            self._hasher.want(path)

    def _hash_work(self, path: str, _=None) -> None:
        from ..engine.fsutil import remember

        if remember(path) is not None:
            self.prehashed += 1

    # -- the Controller interface (tray, toast buttons)
    def view(self) -> V.AgentView:
        return self.board.view()

    def request(
        self, action: str, target: str | None = None, why: D.Why = D.Why.USER, explicit: bool | None = None
    ) -> None:
        if action == V.QUIT:
            threading.Thread(target=self.stop, name="tk-quit", daemon=True).start()
            return
        if explicit is None:
            explicit = action in _ASKED
        if action in (V.CHECK_ALL, V.REAPPLY_ALL):
            kind = JobKind.CHECK if action == V.CHECK_ALL else JobKind.REAPPLY
            if why is D.Why.USER:
                why = D.Why.CHECK_NOW if action == V.CHECK_ALL else D.Why.REAPPLY_ALL
            for name in self.engine.targets():
                self.jobs.put(kind, name, why, explicit=explicit)
            return
        self.jobs.put(JobKind(action), target, why, explicit=explicit)

    def set_paused(self, paused: bool) -> None:
        self.state.set(paused=bool(paused))
        self.tell.event("paused" if paused else "resumed")
        if not paused:
            self.request(V.CHECK_ALL, why=D.Why.RESUMED)
        self.board.changed()

    def set_autostart(self, enabled: bool) -> None:
        """A person's choice from the tray (never called by the agent's own decisions)."""
        try:
            _st, said = self.autostart.enable() if enabled else self.autostart.disable()
            self.tell.event("autostart", enabled=enabled, message=said)
        except (TKError, OSError) as e:
            msg, hint = (e.message, e.hint) if isinstance(e, TKError) else (str(e), None)
            self.tell.toast(
                V.Toast(
                    "autostart",
                    _("torchkeeper: start at login"),
                    f"{msg}. {hint or ''}".strip(),
                    level="warning",
                )
            )
        self.board.set(autostart=self._read_autostart())

    def open_dashboard(self) -> str:
        """Serve the dashboard on 127.0.0.1 (imported and started only now) and return a
        one-time login URL for a browser."""
        with self._dash_lock:
            if self.make_dashboard is None:
                raise TKError(_("this agent has no dashboard"), _("start the agent with `torchkeeper run`"))
            if self._dashboard is None or not self._dashboard.running:
                self._dashboard = self.make_dashboard(
                    self, self.engine, self.cfg["dashboard"]["idle_minutes"]
                )
                self._dashboard.start()
                self.tell.event("dashboard", port=self._dashboard.port)
            return self._dashboard.login_url()

    def dashboard_token(self) -> str | None:
        d = self._dashboard
        return d.keys.token if d is not None and d.running else None

    def _dashboard_asked(self, at_start: bool = False) -> None:
        """`torchkeeper dashboard` wrote its ask (a nonce): the answer, readable by this user
        only (mkstemp's 0600, in the data folder), names the URL and the API token.
        The ask is taken (removed), so one left by a killed CLI never opens the dashboard at
        the next start (an ask older than ASK_FRESH_S found at start is dropped); the CLI
        writes it again while it waits, and a nonce already answered is not answered twice."""
        from ..engine.fsutil import atomic_write_json, load_json

        ask_file = self.home.data_dir / V.DASHBOARD_ASK
        with self._ask_lock:
            try:
                stale = at_start and time.time() - ask_file.stat().st_mtime > V.ASK_FRESH_S
                ask = None if stale else load_json(ask_file, follow=False)
                ask_file.unlink(missing_ok=True)
                nonce = str(ask["nonce"])[:64]
            except (OSError, ValueError, KeyError, TypeError):
                return
            if nonce == self._answered:
                return
            self._answered = nonce
        try:
            url = self.open_dashboard()
            out = {"nonce": nonce, "url": url, "token": self.dashboard_token(), "pid": os.getpid()}
        except Exception as e:  # a port, a missing library: the CLI says it
            log.exception("dashboard: cannot start")
            out = {"nonce": nonce, "error": f"{type(e).__name__}: {e}"}
        atomic_write_json(self.home.data_dir / V.DASHBOARD_ANSWER, out)

    def _read_autostart(self) -> bool | None:
        """Whether the agent starts at login; None (greyed in the menu) when it cannot tell."""
        try:
            return bool(self.autostart.status()["enabled"])
        except Exception as e:  # a registry or file the OS will not let us read
            log.warning("cannot tell whether torchkeeper starts at login: %s", e)
            return None

    def subscribe(self, callback) -> None:
        self.board.listen(callback)
        self.offers.menu_came()

    # -- the queue
    def _work(self) -> None:
        while True:
            job = self.jobs.take()
            if job is None:
                return
            self.board.changed()
            try:
                self._run(job)
            except Exception as e:  # a bug must not stop the agent; say so and go on
                log.exception("job %s %s failed", job.kind.value, job.target or "")
                self.tell.event("agent error", target=job.target, error=f"{type(e).__name__}: {e}")
            finally:
                self.jobs.done()
                self.board.changed()
                self.metrics.changed()

    def _run(self, job: Job) -> None:
        k, name = job.kind, job.target
        if k in (JobKind.CHECK, JobKind.REAPPLY):
            if name not in self.engine.targets():
                self._forget(name)
            else:
                self.repair.check(job)
        elif k in (JobKind.FULL, JobKind.FULL_ONE):
            self.repair.full_check([name] if k is JobKind.FULL_ONE else None, job.why)
        elif k in (JobKind.DRIVER, JobKind.POLL):
            if k is JobKind.POLL and self.board.shown.degraded is None:
                return  # the watches work again
            for n in self.engine.targets():
                self.repair.check(Job(0, 0, JobKind.CHECK, n, job.why))
            if k is JobKind.POLL:
                self.jobs.put(JobKind.POLL, None, job.why, delay=DEGRADED_POLL_S)
        elif k is JobKind.CONFIG:
            self._reload_config()
        elif k is JobKind.TARGETS:
            self._sync_targets()
        elif k is JobKind.REVERT:
            self.repair.revert(job)
        elif k is JobKind.SUGGEST:
            self.offers.suggest(job)
        elif k is JobKind.SUGGEST_FOUND:
            self.offers.suggest_found(job)
        elif k is JobKind.MANAGE:
            self.offers.manage(job)
        elif k in (JobKind.FETCH_APPLY, JobKind.MANAGE_FETCH_APPLY):
            self._fetch_apply(job)

    def _fetch_apply(self, job: Job) -> None:
        name = self.offers.manage(job) if job.kind is JobKind.MANAGE_FETCH_APPLY else job.target
        if name is None or name not in self.engine.targets():
            return
        job = Job(job.at, job.seq, JobKind.REAPPLY, name, D.Why.GET_AND_APPLY, job.detected, True)
        if self.offers.fetch(job):
            s = self.engine.target_state(name, with_versions=True)
            self.repair.apply(name, s, job, time.time(), force=True)

    # -- watching
    def _on_burst(self, name: str, burst) -> None:
        self.tell.event(
            "files changed",
            target=name,
            events=burst.events,
            detected=burst.first_wall,
            stashes=sorted(burst.stashes) or None,
        )
        self.jobs.put(
            JobKind.CHECK,
            name,
            D.Why.FILE_EVENTS,
            detected=burst.first_wall,
            lib_stats=burst.sizes,
            last_write=burst.last_wall or None,
        )

    def _events_lost(self, why: str = "") -> None:
        """File events were lost (the kernel's queue overflowed in a huge install, or the
        watches were made anew after a failure): what they would have said is found by
        checking every target now."""
        self.tell.event("file events lost", why=why or None)
        self.request(V.CHECK_ALL, why=D.Why.EVENTS_LOST)

    def _watch_health(self, ok: bool, why: str) -> None:
        """The watcher stopped working (a watch thread failed) or works again. While it does
        not, every target is checked every DEGRADED_POLL_S, and the tray and `status` say so."""
        self.state.set_watching(ok, why)
        if ok:
            self.tell.event("watching again")
        else:
            log.error(
                "watching: degraded (%s); checking every target every %d s until it works",
                why,
                DEGRADED_POLL_S,
            )
            self.tell.event("watching degraded", why=why)
            self.jobs.put(JobKind.POLL, None, D.Why.WATCHING_DEGRADED)
        self.board.set(degraded=None if ok else why)

    def _rewatch(self, name: str, s: TargetStatus) -> None:
        if self.watcher is None:
            return
        dirs = list(s.info.lib_dirs if s.info else [])
        # also watch where the overlay's files are (a bundle may add beside the family)
        overlay = self.engine.state.read()["overlays"].get(name) or {}
        dirs += sorted({rel.rpartition("/")[0] for rel in overlay.get("files", {})})
        self.watcher.set_target(name, Path(s.site_packages), [d for d in dirs if d])

    def _sync_targets(self) -> None:
        """`torchkeeper target add/remove` ran while the agent did: check new targets, and
        stop watching removed ones."""
        names, known = set(self.engine.targets()), self.board.names()
        for name in sorted(names - known):
            self.jobs.put(JobKind.CHECK, name, D.Why.TARGET_ADDED)
        for name in sorted(known - names):
            self._forget(name)

    def _forget(self, name: str) -> None:
        self.board.forget(name)
        if self.watcher:
            self.watcher.remove_target(name)
