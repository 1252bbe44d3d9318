"""What the agent offers a person, never does on its own: the torch installs a first run finds
("Found, not managed" -> Manage), the best nvidia-* wheels for a target or a found install (one
tray line each, the index asked once per agent run, only once a menu listens), and "get it and
apply" (fetch, make the bundle, use it, apply) once the person said yes."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..engine import config as configmod
from ..engine.records import TargetStatus
from ..errors import TKError
from ..home import Home
from . import view as V
from .board import Board
from .decide import Why
from .jobs import Job, JobKind
from .tell import Teller
from ..i18n import N_, _, ngettext

log = logging.getLogger("torchkeeper.agent")

FOUND_SHOWN = 10          # found installs listed (and inspected for their cuDNN) at most
SUGGEST_DELAY_S = 30.0    # after a target is first shown: the index is asked once per agent run
NEXT_STEP = N_("run `torchkeeper discover --add` (every install found) or `torchkeeper target add PATH`")
MENU_STEP = N_("choose Manage under \"Found, not managed\" in the tray menu, or ")


class Offers:
    def __init__(self, engine, home: Home, board: Board, tell: Teller, put: Callable[..., None],
                 sync_targets: Callable[[], None]):
        self.engine, self.home, self.board, self.tell, self.put = engine, home, board, tell, put
        self.sync_targets = sync_targets
        self.has_menu = False     # a tray menu shows "Found, not managed" (set by `run`)
        self.delay = SUGGEST_DELAY_S
        self._lines: dict[str, str | None] = {}        # target -> its suggestion line, once asked
        self._found_lines: dict[str, str | None] = {}  # found install's path -> its line

    # -- the first run
    def first_run(self, config_file) -> None:
        """No config yet: write the commented defaults (so "Open config" opens something),
        and look for torch installs. Nothing is added or applied: the user chooses."""
        try:
            if configmod.write_default(config_file):
                log.info("first run: wrote the default settings to %s", config_file)
                self.tell.event("first run", config=str(config_file))
        except OSError as e:
            log.warning("could not write the default settings to %s: %s", config_file, e)
        # read-only and slow (every drive root on Windows, up to its time limit): its own
        # thread, so a repair never waits behind it, and nothing to finish at stop
        threading.Thread(target=self.discover, args=("first run",), name="tk-discover",
                         daemon=True).start()

    def discover(self, reason: str) -> None:
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
                                     self._found_lines.get(str(f.path))))
        self.board.set_found(views)
        self.want_found_suggestions()
        self.tell.event("discovered", reason=reason, found=[v.__dict__ for v in views],
                        more=len(fresh) - len(views), timed_out=bool(getattr(found, "timed_out", False)))
        if reason == "first run":
            self._say_found(views, len(fresh))

    def _say_found(self, views: list[V.FoundView], total: int) -> None:
        if not views:
            self.tell.toast(V.Toast("found", _("torchkeeper: no torch installs found"),
                                    _("Add one with `torchkeeper target add PATH` (a venv, a "
                                      "python_embeded folder or a conda env).")))
            self.tell.say(_("found no torch install in the usual places"))
            self.tell.say(
                _("next: `torchkeeper target add PATH` (a venv, a python_embeded folder or a conda env)")
            )
            return
        shown = "; ".join(v.label for v in views[:4]) + (
            _(" (+%(n)d more)") % {"n": total - 4} if total > 4 else ""
        )
        how = (
            _("Choose Manage in the tray menu to keep one.")
            if self.has_menu
            else _("Run `torchkeeper discover --add` to keep them.")
        )
        self.tell.toast(
            V.Toast(
                "found",
                ngettext(
                    "torchkeeper: found %(n)d torch install", "torchkeeper: found %(n)d torch installs", total
                )
                % {"n": total},
                ngettext(
                    "Found %(n)d torch install: %(shown)s. %(how)s",
                    "Found %(n)d torch installs: %(shown)s. %(how)s",
                    total,
                )
                % {"n": total, "shown": shown, "how": how},
            )
        )
        self.tell.say(
            ngettext("found %(n)d torch install: %(shown)s", "found %(n)d torch installs: %(shown)s", total)
            % {"n": total, "shown": shown}
        )
        self.tell.say(_("next: %(step)s") % {"step": (_(MENU_STEP) if self.has_menu else "") + _(NEXT_STEP)})

    def manage(self, job: Job) -> str | None:
        """A person chose Manage on a found install: it becomes a target (no bundle is
        applied: it gets one only when `use` chose one that fits it)."""
        try:
            name, _added, _info = self.engine.add_target(job.target)
        except TKError as e:
            self.tell.toast(
                V.Toast(
                    f"manage:{job.target}",
                    _("torchkeeper: could not add it"),
                    f"{e.message}. {e.hint or ''}".strip(),
                    level="error",
                )
            )
            return None
        self.board.found_changed(job.target, gone=True)
        self.tell.event("managed", target=name, path=job.target)
        self.sync_targets()
        return name

    # -- suggestions
    def line_for(self, name: str, s: TargetStatus) -> str | None:
        """A target's suggestion line; the first time it is shown, a SUGGEST job is queued."""
        if name not in self._lines and s.torch_cuda and self.board.listened:  # a menu to show it in
            self._lines[name] = None
            self.put(JobKind.SUGGEST, name, Why.OFFER, delay=self.delay)
        return self._lines.get(name)

    def menu_came(self) -> None:
        """A menu listens now: what was shown before it gets its suggestion too."""
        self.want_found_suggestions()
        for name in sorted(self.board.names() - set(self._lines)):
            self._lines[name] = None
            self.put(JobKind.SUGGEST, name, Why.OFFER, delay=self.delay)

    def want_found_suggestions(self) -> None:
        """Found installs get a suggestion the same lazy way targets do: only once a menu
        listens, and the index is asked once per install per agent run."""
        if not self.board.listened:
            return
        for f in self.board.found():
            if f.path not in self._found_lines:
                self._found_lines[f.path] = None
                self.put(JobKind.SUGGEST_FOUND, f.path, Why.OFFER, delay=self.delay)

    def suggest(self, job: Job) -> None:
        from ..engine.fetch import PipOptions, suggest_for

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
        self._lines[name] = line
        self.tell.event("suggested", target=name, suggestion=head, chosen=sg.chosen)
        self.board.suggest(name, line)

    def suggest_found(self, job: Job) -> None:
        from ..engine.fetch import PipOptions, suggest_for_install

        f = next((x for x in self.board.found() if x.path == job.target), None)
        if f is None:  # managed or gone since
            return
        try:
            sg = suggest_for_install(self.engine, f.path, f.app, PipOptions("linux"))
        except TKError as e:  # offline, no index, a CPU build: no suggestion, said in the log
            log.info("no suggestion for %s: %s", f.path, e.message)
            return
        head = sg.headline()
        line = (
            f"{head} — manage it, get {'it' if head.endswith('fits') else 'them'} and apply" if head else None
        )
        self._found_lines[f.path] = line
        self.tell.event("suggested", path=f.path, suggestion=head, chosen=sg.chosen)
        self.board.found_changed(f.path, suggestion=line)

    # -- get it and apply
    def fetch(self, job: Job) -> bool:
        """A person's yes from the tray: fetch what fits, make the bundle, use it. True when the
        target now has it chosen (the caller applies it)."""
        from ..engine.fetch import fetch_bundle

        name = job.target
        shown = [0.0]

        def progress(label, done, total):
            now = time.monotonic()
            if now - shown[0] < 0.5:
                return
            shown[0] = now
            pct = f" {min(done / total, 1) * 100:.0f}%" if total else f" {done / 1e6:.0f} MB"
            self.board.set(fetching=_("torchkeeper: downloading %(what)s") % {"what": label} + pct)

        self.board.set(fetching=_("torchkeeper: getting the libraries for '%(name)s' ...") % {"name": name})
        try:
            res = fetch_bundle(self.engine, target=name, progress=progress)
            self.engine.use(res.bundle["id"], name)
        except (TKError, OSError) as e:
            msg, hint = (e.message, e.hint or "") if isinstance(e, TKError) else (str(e), "")
            self.tell.event("fetch failed", target=name, error=msg)
            self.tell.toast(
                V.Toast(
                    f"fetch:{name}",
                    _("torchkeeper: could not get the libraries for '%(name)s'") % {"name": name},
                    f"{msg}. {hint}".strip(),
                    name,
                    level="error",
                )
            )
            return False
        finally:
            self.board.set(fetching=None)
        self._lines[name] = None
        return True
