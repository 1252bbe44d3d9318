"""What the agent does about one target: a pure function of what it saw.

``decide(snapshot, settings, job)`` takes typed records -- the target as one check read it
(:class:`Snapshot`, with the signs of an install in progress), the user's settings and the job
that asked -- and returns a :class:`Decision`: what to do and the words a person will read. No
threads, no I/O, no engine, no clock: the caller measures time and passes it in. The effects
(applying, toasts, events) are the agent's (daemon/worker.py); the rules are here, tested as
tables in tests/test_decide.py.

Rules, in order:
1. another torchkeeper process holds the target (bench) -> wait, look again shortly;
2. an install is under way (pip's or uv's stash, a new dist-info without its RECORD, a library
   torch loads missing, library files still growing) -> wait, never judge: a half-written
   target is neither drift nor a refusal. Past INSTALL_CAP_S of that -> ask, in those words;
3. the environment has no torch -> after file events look again once; else refuse (say so);
4. the gate refuses the bundle for this torch -> refuse (nothing written; say why);
5. the overlay was undone -> re-apply when auto re-apply is on and not paused, else ask;
   a person's Reapply re-applies (it passes the gate's warnings, never its refusals);
6. files differ but torchkeeper applied nothing -> leave alone (not ours);
7. in place, or stock with nothing applied -> leave alone.
After an attempt, :func:`after_attempt` turns the engine's outcome into the next decision:
files in use -> retry with backoff; the gate's warnings -> ask; a refusal -> refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ..i18n import N_, _

INSTALL_POLL_S = 1.0        # how soon a check put off by an install looks again
INSTALL_CAP_S = 600.0       # an install still going after this long: the user is told
HOLD_POLL_S = 1.0           # how soon a check held off by another process looks again
RETRY_FIRST_S = 2.0         # files in use: the first retry, then doubled ...
RETRY_MAX_S = 60.0          # ... up to this


class State(str, Enum):
    """A target as the engine sees it (the str values are what status and events say)."""
    PATCHED = "patched"
    DRIFTED = "drifted"
    STOCK = "stock"
    INCOMPATIBLE = "incompatible"
    MISSING = "missing"


class Kind(str, Enum):
    REAPPLY = "re-apply"
    ASK = "ask"
    REFUSE = "refuse"
    WAIT = "wait"
    RETRY = "retry"
    LEAVE_ALONE = "leave alone"


class Why(str, Enum):
    """Why a check or re-apply was asked for (what the events and toasts say)."""
    START = "start"
    FILE_EVENTS = "file events"
    STILL_MISSING = "still missing?"
    EVENTS_LOST = "file events lost"
    WATCHING_DEGRADED = "watching degraded"
    SCHEDULED = "scheduled"
    RESUME = "resume from sleep"
    DAILY = "daily full check"
    STANDBY_CHANGED = "standby found changed bytes"
    CONFIG_CHANGED = "config changed"
    RESUMED = "auto re-apply resumed"
    DRIVER = "driver changed"
    CHECK_NOW = "check now"
    REAPPLY_ALL = "reapply all"
    GET_AND_APPLY = "get it and apply"
    USER = "asked"
    INSTALL = "install under way"
    HELD = "held"
    TARGET_ADDED = "target added"
    SETTINGS_FILE = "config.toml or state.json changed"
    OFFER = "suggest"

    @property
    def because(self) -> str:
        """The end of a re-apply toast: "Re-applied cuDNN 9.5.1 to 'a1111' — <because>"."""
        return _(_BECAUSE.get(self, N_("its files had changed")))


_BECAUSE = {
    Why.GET_AND_APPLY: N_("fetched and applied as asked"),
    Why.FILE_EVENTS: N_("its files had changed"),
    Why.START: N_("found undone when the agent started"),
    Why.SCHEDULED: N_("a scheduled check found it undone"),
    Why.EVENTS_LOST: N_("a check after lost file events found it undone"),
    Why.WATCHING_DEGRADED: N_("a check while file watching is degraded found it undone"),
    Why.RESUME: N_("found undone after the computer woke up"),
    Why.DAILY: N_("the daily full check found it undone"),
    Why.STANDBY_CHANGED: N_("its files' bytes were changed in place"),
    Why.CONFIG_CHANGED: N_("auto re-apply was turned on"),
    Why.RESUMED: N_("auto re-apply was resumed"),
    Why.INSTALL: N_("an install had undone it"),
    Why.USER: N_("as asked"),
    Why.REAPPLY_ALL: N_("as asked"),
    Why.CHECK_NOW: N_("a check found it undone"),
}


@dataclass(frozen=True)
class InstallSigns:
    """What shows an install is still writing the target (read from the file system)."""
    stash: str | None = None              # pip's ~orch / nvidia/~udnn, uv's temp folder
    dist_info_without_record: str | None = None
    library_missing: str | None = None    # a library torch loads, gone while its wheel is replaced
    growing: str | None = None            # a library file whose size or mtime moved since the last look
    age_s: float = 0.0                    # how long the oldest sign has been there (its mtime)

    @property
    def any(self) -> str | None:
        """The first sign, in words; None when the install looks finished."""
        for what, v in ((_("pip's stash"), self.stash), (_("a new dist-info without its RECORD"),
                        self.dist_info_without_record), (_("a library torch loads is missing"),
                        self.library_missing), (_("a library file is still growing"), self.growing)):
            if v:
                return f"{what} ({v})"
        return None


@dataclass(frozen=True)
class Snapshot:
    """One target as one check read it."""
    state: State
    applied: bool = False                  # an overlay of torchkeeper's is recorded
    bundle: str | None = None              # the bundle chosen for it (its name)
    problems: tuple[str, ...] = ()         # what the engine said (drift, refusal, missing)
    install: InstallSigns = InstallSigns()
    held_by: str | None = None             # "held by bench (pid N) since ..."


@dataclass(frozen=True)
class Settings:
    auto_reapply: bool = True
    paused: bool = False
    max_wait_s: float = 10.0


@dataclass(frozen=True)
class JobView:
    """The part of a job a decision reads."""
    why: Why
    reapply: bool = False        # a re-apply was asked (tray, toast button, fetch-and-apply)
    explicit: bool = False       # a person asked for it
    waited_s: float = 0.0        # since the first file event of what led here


@dataclass(frozen=True)
class Decision:
    kind: Kind
    words: str = ""              # what the user reads (toast body, menu line), or the event's why
    delay: float = 0.0           # WAIT / RETRY: look again after this many seconds
    force: bool = False          # REAPPLY: a person's yes passes the gate's warnings
    toast: bool = True           # ASK / REFUSE: say it in a toast (False: the view only)


def decide(s: Snapshot, settings: Settings, job: JobView) -> Decision:
    if s.held_by:
        return Decision(Kind.WAIT, s.held_by, HOLD_POLL_S, toast=False)
    busy = s.install.any
    if busy and not job.explicit:
        waited = max(job.waited_s, s.install.age_s)
        if waited < INSTALL_CAP_S:
            return Decision(Kind.WAIT, _("an install is under way: %(busy)s") % {"busy": busy}, INSTALL_POLL_S, toast=False)
        return Decision(
            Kind.ASK,
            _(
                "an install has not finished after %(duration)s "
                "(%(busy)s); once it is done (or its leftovers are "
                "removed), choose Reapply"
            )
            % {"duration": _duration(waited), "busy": busy},
        )
    if s.state is State.MISSING:
        if job.why is Why.FILE_EVENTS:  # maybe the middle of a long install: look again first
            return Decision(Kind.WAIT, _first(s, _("no torch right now")), settings.max_wait_s, toast=False)
        return Decision(Kind.REFUSE, _first(s, _("missing")))
    if job.reapply:
        return _reapply(s, job)
    if s.state is State.INCOMPATIBLE:
        return Decision(Kind.REFUSE, _first(s, _("the gate refuses the bundle")))
    if s.state is State.DRIFTED and s.applied:
        what = "; ".join(s.problems[:2])
        if not settings.auto_reapply or settings.paused:
            off = _("auto re-apply is paused") if settings.paused else _("auto re-apply is off")
            return Decision(
                Kind.ASK, _("the overlay was undone (%(what)s); %(off)s") % {"what": what, "off": off}
            )
        return Decision(Kind.REAPPLY, what)
    if s.state is State.DRIFTED:
        return Decision(Kind.LEAVE_ALONE, _("files differ from torch's RECORD (changed outside torchkeeper)"))
    return Decision(Kind.LEAVE_ALONE)


def _reapply(s: Snapshot, job: JobView) -> Decision:
    """A re-apply asked for (a person, or fetch-and-apply)."""
    if s.state is State.PATCHED and not job.explicit:
        return Decision(Kind.LEAVE_ALONE)
    if not s.bundle:
        # "Reapply all" over targets without one says nothing per target
        return Decision(
            Kind.REFUSE, _("no bundle chosen"), toast=job.explicit and job.why is not Why.REAPPLY_ALL
        )
    if s.state is State.INCOMPATIBLE:
        return Decision(Kind.REFUSE, _first(s, _("the gate refuses the bundle")))
    # a person's Reapply: apply's own plan hashes every file, so it also fixes what stat data
    # cannot see, and is a no-op when all is in place
    return Decision(Kind.REAPPLY, _("as asked") if job.explicit else "", force=job.explicit)


class Outcome(str, Enum):
    """What an attempt to re-apply came to (the engine's answer, typed)."""

    DONE = "done"
    NOT_WANTED = "not wanted"  # a revert, use or apply landed since the decision
    IN_USE = "in use"
    WARNED = "warned"  # the gate only warns: a person must say yes
    REFUSED = "refused"
    FAILED = "failed"


def after_attempt(outcome: Outcome, words: str, backoff: float | None, explicit: bool) -> Decision:
    """The next step after an attempt: ``backoff`` is the last retry delay (None: first)."""
    if outcome is Outcome.IN_USE:
        delay = RETRY_FIRST_S if backoff is None else min(backoff * 2, RETRY_MAX_S)
        return Decision(Kind.RETRY, words, delay, toast=backoff is None)  # one toast, not one per try
    if outcome is Outcome.WARNED:
        return Decision(Kind.ASK, words)
    if outcome is Outcome.REFUSED:
        return Decision(Kind.REFUSE, words)
    if outcome is Outcome.FAILED:
        return Decision(Kind.ASK, words)
    return Decision(Kind.LEAVE_ALONE, words)


def _duration(s: float) -> str:
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = int(s // n)
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{int(s)} seconds"


def _first(s: Snapshot, default: str) -> str:
    return s.problems[0] if s.problems else default
