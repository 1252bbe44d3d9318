"""Carrying out decisions about one target: read it once (daemon/snapshot.py), ask
daemon/decide.py what to do, then do it -- re-apply through the engine and toast, ask the user,
refuse and say why, wait (an install under way, a hold), retry (files in use, with backoff) --
and leave the target's line on the board. Runs on the agent's worker thread only."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from ..engine import gate
from ..engine.records import DRIFTED, INCOMPATIBLE, MISSING, PATCHED, STOCK, TargetStatus
from ..errors import FileInUse, Refused, TKError
from ..testing import pause_point
from . import decide as D
from . import view as V
from .board import Board
from .jobs import Job, JobKind
from .ownwrites import OwnWrites
from .snapshot import install_signs, snapshot
from .watch import LibStats
from .tell import Teller
from ..i18n import _

log = logging.getLogger("torchkeeper.agent")


class Repair:
    def __init__(self, engine, board: Board, tell: Teller, put: Callable[..., None], own: OwnWrites,
                 settings: Callable[[], D.Settings], want_standby: Callable[..., None],
                 rewatch: Callable[[str, TargetStatus], None],
                 suggestion: Callable[[str, TargetStatus], str | None]):
        self.engine, self.board, self.tell, self.put, self.own = engine, board, tell, put, own
        self.settings, self.want_standby, self.rewatch = settings, want_standby, rewatch
        self.suggestion = suggestion
        self._lib_stats: dict[str, LibStats] = {}  # target -> its library files' stat data at the last check
        self._retry: dict[str, float] = {}     # target -> current backoff (files in use)
        self.checks = 0       # counters, for tests and the benchmark
        self.applies = 0

    # -- reading and deciding
    def check(self, job: Job) -> None:
        """A check (or a person's Reapply): read the target once, decide, carry it out."""
        name = job.target
        if name not in self.engine.targets():
            return
        if job.kind is JobKind.CHECK:
            self.checks += 1
        s = self.engine.target_state(name, with_versions=True)
        self._note_hold(name, s)
        self.rewatch(name, s)
        self.act(name, s, job)

    def act(self, name: str, s: TargetStatus, job: Job) -> None:
        lib_dirs = list(s.info.lib_dirs) if s.info else []
        libs_rel = [lf.rel for lf in s.info.libs.values()] if s.info else []
        signs, self._lib_stats[name] = install_signs(Path(s.site_packages), lib_dirs, libs_rel,
                                                     job.lib_stats or self._lib_stats.get(name))
        reapply = job.kind is JobKind.REAPPLY
        d = D.decide(snapshot(s, (s.held or {}).get("describe"), signs), self.settings(),
                     D.JobView(job.why, reapply=reapply, explicit=job.explicit,
                               waited_s=time.time() - job.detected if job.detected else 0.0))
        if d.kind is D.Kind.WAIT:
            if not s.held:  # an install under way: never judged mid-write, looked at again
                self.show(name, s, V.CHECKING, d.words)
            # no torch and no install to wait for: look once more, then say so
            again = D.Why.STILL_MISSING if s.state == MISSING and not signs.any else job.why
            self.put(job.kind, name, again, delay=d.delay, detected=job.detected, explicit=job.explicit,
                     last_write=job.last_write)
        elif d.kind is D.Kind.REFUSE:
            self._refuse(name, s, job, d)
        elif d.kind is D.Kind.ASK:
            self._ask(name, s, d.words, job.detected or time.time(), job)
        elif d.kind is D.Kind.REAPPLY:
            detected = job.detected or time.time()
            if not reapply:
                self.tell.event("drift", target=name, reason=job.why.value, detected=detected,
                                decided=time.time(), decision="re-apply", what=d.words)
                pause_point("agent decided")
            self.apply(name, s, job, detected, force=d.force)
        elif s.state == DRIFTED and not reapply:   # left alone: not torchkeeper's overlay
            self.show(name, s, DRIFTED, d.words)
            self.tell.event("drift", target=name, reason=job.why.value, detected=job.detected,
                            decided=time.time(), decision="left alone: not torchkeeper's overlay")
        else:
            self._settled(name, s)
            if s.state == PATCHED and (s.standby or {}).get("state") not in ("ready", "off", "preparing"):
                self.want_standby(name)
            if s.state == PATCHED and job.why is D.Why.DRIVER:
                self._driver_gate(name, s)

    def _refuse(self, name: str, s: TargetStatus, job: Job, d: D.Decision) -> None:
        if s.state == MISSING:
            self.show(name, s, MISSING, d.words)
            self.tell.toast(
                V.Toast(
                    f"missing:{name}",
                    _("torchkeeper: '%(name)s' has no torch") % {"name": name},
                    d.words,
                    name,
                    level="error",
                )
            )
        elif s.state == INCOMPATIBLE:
            self._incompatible(name, s, job)
        else:  # a Reapply with no bundle chosen
            self.show(name, s, s.state, d.words)
            if d.toast:
                self.tell.toast(
                    V.Toast(
                        f"nobundle:{name}",
                        _("torchkeeper: '%(name)s' has no bundle") % {"name": name},
                        _("choose one with `torchkeeper use BUNDLE --target %(name)s`") % {"name": name},
                        name,
                    )
                )

    def _note_hold(self, name: str, s: TargetStatus) -> None:
        """Another torchkeeper process (bench) holds this target, or its hold ended: said once
        each, as events and in the view; the user's own pause is untouched by it."""
        was = self.board.holds.get(name)
        if s.held and was is None:
            self.board.holds[name] = s.held
            self.tell.event("held", target=name, by=s.held["why"], pid=s.held["pid"], since=s.held["since"])
            self.board.changed()
        elif not s.held and was is not None:
            del self.board.holds[name]
            self.tell.event("hold released", target=name, by=was["why"])
            self.board.changed()

    # -- effects
    def apply(self, name: str, s: TargetStatus, job: Job, detected: float, force: bool) -> None:
        """Re-apply (``force``: a person's yes, past the gate's warnings) and say how it went."""
        decided = time.time()
        if job.why is D.Why.FILE_EVENTS:
            job.last_write = _newest_write(s, job.last_write)
        stock_now = s.cudnn_now or (s.info.cudnn_build if s.info else None)
        self.show(name, s, V.APPLYING, "re-applying ...")
        self.board.set(working=name)
        self.own.begin(name)
        res = None
        try:
            # a person's Reapply is a new decision; the agent's own one, taken on s
            # without the lock, yields to a revert or `use` that landed since
            res = (
                self.engine.apply(name, force=True) if force else self.engine.reapply_if_still_wanted(name, s)
            )
        except FileInUse as e:
            self._file_in_use(name, s, e, job, detected)
            return
        except Refused as e:
            if any(r.level == "refuse" for r in e.reasons):
                self._incompatible(name, s, job, refusal=e.message)
            else:  # only warnings (driver older than the bundle, foreign files): ask
                self._ask(name, s, e.message, detected, job)
            return
        except (TKError, OSError) as e:
            self._failed(name, s, e, detected, decided)
            return
        finally:
            self.own.end(name, res.touched if res is not None else None)
            self.board.set(working=None)
        applied = time.time()
        after = self.engine.target_state(name)
        verified = time.time()
        self._settled(name, after)
        if res.action == "not wanted":
            self.tell.event(
                "not re-applied",
                target=name,
                reason=job.why.value,
                detected=detected,
                decided=decided,
                why=res.message,
            )
            return
        if res.action == "already applied":
            self.tell.event("already applied", target=name, reason=job.why.value)
            return
        self.applies += 1
        ok = after.state == PATCHED
        m = s.bundle
        # the repair's time counts from the installer's last write (what a user waits for), not
        # from its first file event (the install's own length is in since_first_event)
        self.tell.event(
            "repaired" if ok else "reapply unverified",
            target=name,
            reason=job.why.value,
            detected=detected,
            first_event=detected,
            last_write=job.last_write,
            decided=decided,
            applied=applied,
            verified=verified,
            bundle=m.id if m else None,
            action=res.action,
            latency=round(verified - (job.last_write or detected), 3),
            since_first_event=round(verified - detected, 3),
            via=res.via,
        )
        if ok and ((after.standby or {}).get("state") != "ready" or (res.via or {}).get("standby")):
            # after the toast's work, at low priority, off the queue: a standby of copies
            # linked in is made anew (standby_copy); one of links is ready at once (a no-op)
            self.want_standby(name)
        bundle_cudnn = m.cudnn if m else None
        what = (
            f"cuDNN {bundle_cudnn}"
            if bundle_cudnn
            else _("bundle '%(name)s'") % {"name": m.name if m else None}
        )
        if job.why is D.Why.FILE_EVENTS and stock_now and stock_now != bundle_cudnn:
            because = _("a pip reinstall had restored stock %(what)s") % {"what": stock_now}
        else:
            because = _("as asked") if job.explicit and job.why is D.Why.USER else job.why.because
        self.tell.toast(
            V.Toast(
                f"reapplied:{name}",
                _("torchkeeper: re-applied to '%(name)s'") % {"name": name},
                _("Re-applied %(what)s to '%(name)s' — %(because)s")
                % {"what": what, "name": name, "because": because},
                name,
            )
        )

    def revert(self, job: Job) -> None:
        name = job.target
        if name not in self.engine.targets():
            return
        self.board.set(working=name)
        self.own.begin(name)
        res = None
        try:
            res = self.engine.revert(name)
        except FileInUse as e:
            self.tell.toast(
                V.Toast(
                    f"inuse:{name}",
                    _("torchkeeper: '%(name)s' is in use") % {"name": name},
                    _("%(message)s. Close it and choose Revert again.") % {"message": e.message},
                    name,
                    level="warning",
                )
            )
            return
        except TKError as e:
            self.tell.toast(
                V.Toast(
                    f"failed:{name}",
                    _("torchkeeper: could not revert '%(name)s'") % {"name": name},
                    f"{e.message}. {e.hint or ''}".strip(),
                    name,
                    level="error",
                )
            )
            return
        finally:
            self.own.end(name, res.touched if res is not None else None)
            self.board.set(working=None)
        self._settled(name, self.engine.target_state(name))
        self.tell.toast(
            V.Toast(
                f"reverted:{name}", _("torchkeeper: '%(name)s' reverted") % {"name": name}, res.message, name
            )
        )

    def full_check(self, names: list[str] | None, why: D.Why) -> None:
        """Every file re-hashed: catches what stat data cannot (same size, same times)."""
        names = [n for n in names if n in self.engine.targets()] if names is not None else None
        if names == []:
            return
        for r in self.engine.verify(names, full=True):
            if r.state == PATCHED and names is None:
                self.want_standby(r.name, rehash=True)  # its bytes re-hashed too
            job = Job(0, 0, JobKind.CHECK, r.name, why)
            if r.state == DRIFTED and r.applied:
                self.act(r.name, r, job)  # not via a quick check: it may see no change
            elif r.state != PATCHED:
                self.check(job)

    def _settled(self, name: str, s: TargetStatus) -> None:
        self._retry.pop(name, None)
        self.board.asks.pop(name, None)
        self.show(name, s, s.state, ok_message(s))

    def _failed(self, name: str, s: TargetStatus, e: Exception, detected: float, decided: float) -> None:
        if isinstance(e, TKError):
            msg, hint = e.message, e.hint or ""
        else:  # e.g. a folder made read-only under us: say which, never a traceback
            msg = f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
            hint = "check that folder's permissions and free space, then choose Reapply"
        self.show(name, s, DRIFTED, msg)
        self.tell.event("reapply failed", target=name, detected=detected, decided=decided, error=msg)
        self.tell.toast(
            V.Toast(
                f"failed:{name}",
                _("torchkeeper: could not re-apply to '%(name)s'") % {"name": name},
                f"{msg}. {hint}".strip(),
                name,
                (V.REAPPLY,),
                level="error",
            )
        )

    def _ask(self, name: str, s: TargetStatus, why: str, detected: float, job: Job) -> None:
        self.board.asks[name] = why
        self.show(name, s, DRIFTED, why)
        self.tell.event(
            "drift",
            target=name,
            reason=job.why.value,
            detected=detected,
            decided=time.time(),
            decision="asked the user",
            why=why,
        )
        self.tell.toast(
            V.Toast(
                f"drift:{name}",
                _("torchkeeper: '%(name)s' needs you") % {"name": name},
                _("%(why)s. Choose Reapply to put the overlay back.") % {"why": why},
                name,
                (V.REAPPLY,),
                level="warning",
            )
        )

    def _incompatible(self, name: str, s: TargetStatus, job: Job, refusal: str | None = None) -> None:
        why = refusal or (s.problems[0] if s.problems else "the gate refuses the bundle")
        fits = self._bundles_that_fit(name)
        hint = (
            f"bundle '{fits[0]}' would fit: `torchkeeper use {fits[0]} --target {name}`"
            if fits
            else "create a bundle that matches it (`torchkeeper bundle create`)"
        )
        self.show(name, s, INCOMPATIBLE, why)
        self.tell.event(
            "incompatible",
            target=name,
            reason=job.why.value,
            detected=job.detected,
            decided=time.time(),
            decision="not applied",
            why=why,
            fits=fits,
        )
        self.tell.toast(
            V.Toast(
                f"incompatible:{name}:{s.torch_version}",
                _("torchkeeper: not re-applying to '%(name)s'") % {"name": name},
                _("%(why)s. Nothing was changed; %(hint)s.") % {"why": why, "hint": hint},
                name,
                level="warning",
            )
        )

    def _bundles_that_fit(self, name: str) -> list[str]:
        try:
            info = self.engine.inspect(name)
        except TKError:
            return []
        return [
            m["name"]
            for m in self.engine.bundles.all()
            if not any(r.level == "refuse" for r in gate.check(info, m, None))
        ]

    def _file_in_use(self, name: str, s: TargetStatus, e: FileInUse, job: Job, detected: float) -> None:
        d = D.after_attempt(D.Outcome.IN_USE, e.message, self._retry.get(name), job.explicit)
        self._retry[name] = d.delay
        self.show(name, s, V.WAITING, f"waiting: {e.message}")
        self.tell.event(
            "files in use",
            target=name,
            detected=detected,
            decided=time.time(),
            error=e.message,
            retry_in=d.delay,
        )
        if d.toast:
            self.tell.toast(
                V.Toast(
                    f"inuse:{name}",
                    _("torchkeeper: '%(name)s' is in use") % {"name": name},
                    _("%(message)s. torchkeeper will re-apply as soon as it is closed.")
                    % {"message": e.message},
                    name,
                    level="warning",
                )
            )
        self.put(
            JobKind.REAPPLY if job.explicit else JobKind.CHECK,
            name,
            job.why,
            delay=d.delay,
            detected=detected,
            explicit=job.explicit,
        )

    def _driver_gate(self, name: str, s: TargetStatus) -> None:
        """After a driver change: does the applied bundle still suit this driver?"""
        try:
            p, _info, _m = self.engine.plan(name)
        except TKError:
            return
        warn = [r for r in p.reasons if r.level == "force"]
        if warn:
            self.board.asks[name] = warn[0].message
            self.show(name, s, PATCHED, warn[0].message)
            self.tell.toast(
                V.Toast(
                    f"driver-gate:{name}",
                    _("torchkeeper: '%(name)s' and the new driver") % {"name": name},
                    f"{warn[0].message}. {warn[0].hint or ''}".strip(),
                    name,
                    level="warning",
                )
            )

    def show(self, name: str, s: TargetStatus, state: str, message: str) -> None:
        self.board.target(name, s, state, message, self.suggestion(name, s))


def ok_message(s: TargetStatus) -> str:
    b = s.bundle
    if s.state == PATCHED:
        return f"{b.name if b else 'overlay'} applied" + (f" (cuDNN {s.cudnn_now})" if s.cudnn_now else "")
    if s.state == STOCK:
        return "stock" + (f", bundle '{b.name}' chosen, not applied" if b else "")
    return s.state


def _newest_write(s: TargetStatus, seen: float | None) -> float | None:
    """The installer's last write: the last file event seen, or a later mtime of the library
    files, their folders or site-packages (pip's stash removal). Events can be missed: a
    library folder pip made anew is watched only once the agent has seen it (a loaded machine,
    a long install), and the events after a check that waited start no burst of their own."""
    sp = Path(s.site_packages)
    paths = [
        sp,
        *(sp / d for d in (s.info.lib_dirs if s.info else ())),
        *(sp / lf.rel for lf in (s.info.libs.values() if s.info else ())),
    ]
    newest = seen
    for p in paths:
        try:
            m = p.stat().st_mtime
        except OSError:
            continue
        if m <= time.time() and (newest is None or m > newest):
            newest = m
    return newest
