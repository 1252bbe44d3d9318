"""`torchkeeper run`: one agent per user, with a tray icon or headless.

Threads: the main thread runs the tray's event loop (pystray needs it) or, headless,
waits for a stop; the agent's worker, the watcher, the scheduler and the notifier have
their own. SIGTERM / SIGINT / SIGHUP / Quit, and on Windows a logoff (platform/session.py), stop the
agent after its running job: never inside a transaction.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .engine.fsutil import atomic_write_bytes, read_text
from .home import Home
from .engine.records import JsonObject
from .i18n import _, ngettext

log = logging.getLogger("torchkeeper.agent")


def setup_logging(home: Home, verbose: bool = False) -> None:
    home.log_dir.mkdir(parents=True, exist_ok=True)
    h = logging.handlers.RotatingFileHandler(home.log_dir / "agent.log", maxBytes=1_000_000,
                                             backupCount=3, encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("torchkeeper")
    root.setLevel(logging.INFO)
    root.addHandler(h)
    if verbose:
        s = logging.StreamHandler(sys.stderr)
        s.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root.addHandler(s)
    # apscheduler logs every job run at INFO: noise in a log meant for people; pystray logs
    # a traceback for every failed dock while no tray host runs yet (it docks again later)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("pystray").setLevel(logging.CRITICAL)


class SingleInstance:
    """An exclusive lock in the data folder; the holder's pid beside it."""

    def __init__(self, home: Home):
        from filelock import FileLock

        home.data_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file = home.data_dir / "agent.pid"
        self._lock = FileLock(str(home.data_dir / "agent.lock"))

    def acquire(self) -> bool:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        # whole or absent: `status` and a second start read it while this one starts
        atomic_write_bytes(self.pid_file, str(os.getpid()).encode(), durable=False)
        return True

    def holder(self) -> str:
        try:
            return read_text(self.pid_file, 64, follow=False).strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        try:
            self.pid_file.unlink()
        except OSError:
            pass
        self._lock.release()


def agent_status(home: Home) -> JsonObject:
    """Whether the agent runs (from its pid file; a stale one, left by a crash, says no)."""
    from .daemon.agentstate import read as read_agent_state

    pid = None
    try:
        pid = int(read_text(home.data_dir / "agent.pid", 64, follow=False).strip())
    except (OSError, ValueError):
        pass
    running = False
    if pid:
        import psutil

        try:
            cmd = psutil.Process(pid).cmdline()
            # `torchkeeper run`, `python -m torchkeeper run`, torchkeeper.exe run: not a
            # process that got the pid of one that crashed
            # (the frozen windowed torchkeeper.exe runs the agent with no arguments at all)
            running = any(Path(a).stem == "torchkeeper" for a in cmd) and ("run" in cmd or len(cmd) == 1)
        except (psutil.Error, OSError, OverflowError, ValueError):  # a pid out of any range
            running = False
    state = read_agent_state(home)
    out = {"running": running, "pid": pid if running else None, "paused": bool(state.get("paused"))}
    if running:
        w = state.get("watching") or {"ok": True}
        out["watching"] = "ok" if w["ok"] else "degraded"
        if not w["ok"]:
            out["watching_why"] = w.get("why") or "unknown"
            out["watching_since"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.get("since", 0)))
    return out


def stop_file(home: Home) -> Path:
    """Where `torchkeeper stop` asks the running agent to stop: a file, because a windowed
    Windows program gets no signal another process could send it (TerminateProcess kills)."""
    return home.data_dir / "agent.stop"


def _stop_requested(path: Path) -> bool:
    """A stop request is a regular file (what `torchkeeper stop` writes); anything else there
    (a folder, a FIFO, a link) is no request: moved aside, with a warning, and ignored."""
    from .engine.fsutil import kind_of, set_aside

    kind = kind_of(path)
    if kind in (None, "a file"):
        return kind == "a file"
    set_aside(path, kind)
    return False


def _watch_stop_request(home: Home, stop: threading.Event, on_request, every: float = 1.0) -> None:
    path = stop_file(home)
    while not stop.wait(every):
        if _stop_requested(path):
            log.info("stop requested (%s): stopping after the running job", path)
            on_request()
            return


def stop_agent(home: Home, timeout: float = 30.0) -> JsonObject:
    """Ask the running agent to stop after its job in hand and wait for it (never mid-transaction).

    Returns {"was_running", "stopped", "pid"}; "stopped" False: it still runs after ``timeout``."""

    st = agent_status(home)
    if not st["running"]:
        return {"was_running": False, "stopped": True, "pid": None}
    path = stop_file(home)
    atomic_write_bytes(path, str(st["pid"]).encode(), durable=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not agent_status(home)["running"]:
            try:
                path.unlink()
            except OSError:
                pass
            return {"was_running": True, "stopped": True, "pid": st["pid"]}
        time.sleep(0.2)
    return {"was_running": True, "stopped": False, "pid": st["pid"]}


HOST_POLL_S = 2.0   # how often a headless agent with a tray backend looks for a tray host


def first_words(agent) -> list[str]:
    """What the terminal that started the agent reads once: what it protects and what to type
    next (on a first run, what discover found follows when it is done)."""
    from .daemon.offers import MENU_STEP, NEXT_STEP

    targets = agent.engine.targets()
    if agent.first_run:
        return [_("torchkeeper: first run: default settings in %(path)s; looking for torch installs (a "
                  "minute at most)...") % {"path": agent.config_file}]
    if not targets:
        return [_("torchkeeper: no targets yet, so nothing is protected"),
                _("torchkeeper: next: %(step)s") % {"step": (_(MENU_STEP) if agent.has_menu else "") + _(NEXT_STEP)}]
    names = sorted(targets)
    shown = ", ".join(names[:5]) + (_(" (+%(n)d more)") % {"n": len(names) - 5} if len(names) > 5 else "")
    unbound = [n for n in names if not targets[n].get("bundle")]
    lines = [
        ngettext(
            "torchkeeper: protecting %(n)d target: %(names)s; a reinstall that undoes an overlay is "
            "re-applied and said in a toast",
            "torchkeeper: protecting %(n)d targets: %(names)s; a reinstall that undoes an overlay is "
            "re-applied and said in a toast",
            len(names),
        )
        % {"n": len(names), "names": shown}
    ]
    if unbound:
        lines.append(
            _(
                "torchkeeper: no bundle chosen for %(names)s: next: `torchkeeper suggest`, then "
                "`torchkeeper bundle fetch --for NAME` and `torchkeeper use BUNDLE`"
            )
            % {"names": ", ".join(unbound[:3]) + (" ..." if len(unbound) > 3 else "")}
        )
    else:
        lines.append(_("torchkeeper: next: `torchkeeper status` shows each target; Ctrl-C stops the agent"))
    return lines


def _say(line: str) -> None:
    """A line for the terminal, out at once (a pipe or a log file is block-buffered)."""
    if sys.stdout is not None:  # pythonw.exe: no console at all
        print(line, flush=True)


def _on_signals(handler) -> None:
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "SIGHUP"):  # logoff closes the session's terminal
        signal.signal(signal.SIGHUP, handler)
    if hasattr(signal, "SIGBREAK"):  # Ctrl+Break in a Windows console
        signal.signal(signal.SIGBREAK, handler)


def _tray_class(out):
    """(the Tray class, or None where no tray can run here; why no tray host is there yet, or
    None when one is). Each "no" is said once, on the terminal and in the log."""
    from .desktop import tray as traymod

    ok, why = traymod.available()
    if not ok:
        log.warning("no tray here (%s): running headless", why)
        out(f"torchkeeper: no tray here ({why}); running headless")
        return None, None
    present, no_host = traymod.host_present()
    if present:
        return traymod.Tray, None
    # said once; the icon docks when a tray host appears (looked for every 2 s)
    log.warning("%s: running headless until one appears", no_host)
    out(f"torchkeeper: {no_host}; running headless - the icon appears if a tray starts later")
    return traymod.Tray, no_host


def _headless_until_stopped(stop: threading.Event, agent, make_tray, out):
    """Headless: wait until the agent stops. Where only a tray host was missing (``make_tray``
    given), look for one every HOST_POLL_S and return the tray made once one appears."""
    from .desktop import tray as traymod

    looked = time.monotonic()
    while not stop.wait(0.5) and not agent.wait_stopped(0):
        if make_tray is None or time.monotonic() - looked < HOST_POLL_S:
            continue
        looked = time.monotonic()
        if traymod.host_present()[0]:
            log.info("a tray host appeared: showing the icon")
            out("torchkeeper: a system tray appeared; the icon is there now")
            return make_tray()
    return None


def make_dashboard(controller, engine, idle_minutes: float):
    """The agent's dashboard, imported only when first asked for (bottle and the pages)."""
    from .dashboard.server import Dashboard, Data

    return Dashboard(controller, Data(engine, lambda: controller.view().paused), idle_minutes)


def run(home: Home, headless: bool = False, verbose: bool = False, out=_say) -> int:
    from .daemon.worker import Agent
    from .desktop.notify import Notifier

    stop = threading.Event()
    shown = {}  # the tray, once there is one

    def on_signal(signum, frame):
        log.info("signal %d: stopping after the running job", signum)
        stop.set()
        if shown.get("tray") is not None:
            shown["tray"].stop()

    _on_signals(on_signal)  # before anything else: a SIGTERM during start-up still stops cleanly
    setup_logging(home, verbose)
    inst = SingleInstance(home)
    if not inst.acquire():
        out(f"torchkeeper: the agent is already running (pid {inst.holder()}); nothing to do")
        return 0
    try:
        if _stop_requested(stop_file(home)):  # left over from a stop that timed out: not for us
            try:
                stop_file(home).unlink()
            except OSError:
                pass
        tray = None
        tray_cls, no_host = _tray_class(out) if not headless else (None, None)
        headless = headless or tray_cls is None or no_host is not None
        agent = Agent(home)
        agent.make_dashboard = make_dashboard
        agent.say = out

        def make_tray():
            made = shown["tray"] = tray_cls(agent)
            agent.has_menu = made.has_menu
            if made.backend == "win32":
                from .platform.session import SessionEnd
                from .platform.windows import Win32Blocker

                def finish(timeout: float) -> None:
                    stop.set()
                    agent.stop(timeout)

                made.handle_session_end(
                    SessionEnd(agent.writing_to, finish, Win32Blocker(lambda: made.icon._hwnd))
                )
            return made

        if not headless:
            tray = make_tray()
        agent.notifier = Notifier(
            agent.cfg["notifications"],
            on_action=lambda action, target: agent.request(action, target),
            tray=tray,
            logger=log,
        )
        if stop.is_set():
            return 0
        agent.start()
        threading.Thread(
            target=_watch_stop_request,
            name="tk-stop-request",
            daemon=True,
            args=(home, stop, lambda: on_signal(0, None)),
        ).start()
        out(
            (
                _("torchkeeper: agent running (headless), log: %(path)s")
                if headless
                else _("torchkeeper: agent running (tray), log: %(path)s")
            )
            % {"path": agent.log_file}
        )
        for line in first_words(agent):
            out(line)
        if tray is None:
            tray = _headless_until_stopped(stop, agent, make_tray if no_host else None, out)
        if tray is not None and not stop.is_set() and not agent.wait_stopped(0):
            # Quit from the menu stops the agent; its end stops the tray's loop
            threading.Thread(
                target=lambda: (agent.wait_stopped(), tray.stop()), name="tk-tray-stop", daemon=True
            ).start()
            tray.run()
        agent.stop()
        return 0
    finally:
        inst.release()
