"""The engine: one object the CLI and the agent both drive. It holds what every operation
needs -- the home, the state store, the bundle cache, the effective config, the driver -- and
answers the small questions (which targets, which bundle a target wants, what the gate plans);
the operations themselves live one concern per module:

* engine/targets.py   add, remove, `use` a bundle
* engine/writes.py    apply, revert, the agent's re-apply (transactions, the overlay record)
* engine/status.py    what a target is now (status, verify)
* engine/recovery.py  interrupted transactions finished at start
* engine/mixed.py     whether a target a torn journal left is whole

Knows nothing of tray, toasts or timers."""

from __future__ import annotations

import atexit
from pathlib import Path

from . import gate, recovery, standby, status as statusmod, target as targetmod, targets as targetsmod
from . import versions, writes
from .bundle import Store
from ..errors import NotFound, UsageError
from ..home import Home, get_home
from .records import Result, Status, TargetStatus, UseResult
from .state import StateStore, log_event, target_lock
from .records import Config, JsonObject, Manifest, Overlay, StateData, TargetRecord
from ..i18n import _

__all__ = ["Engine", "Result"]


class Engine:
    def __init__(self, home: Home | None = None, driver_query=None):
        self.home = home or get_home()
        versions.use_cache_file(self.home.cache_dir / "versions.json")
        atexit.register(versions.save_cache)
        self.state = StateStore(self.home)
        self.bundles = Store(self.home)
        self._driver_query = driver_query
        self._driver = None
        self.config: Config | None = None  # the CLI and the agent set the effective config

    def agent_config(self) -> Config:
        """[agent]: the standby's settings live there (the agent prepares it)."""
        if self.config is None:
            from . import config as configmod

            self.config = configmod.defaults()
        return self.config.get("agent", {})

    def known_driver(self):
        """The driver as last read (None when never): no NVML call, so no sleeping GPU woken."""
        return self._driver

    def driver(self, refresh: bool = False):
        if self._driver is None or refresh:
            if self._driver_query is not None:
                self._driver = self._driver_query()
            else:
                from . import driver

                self._driver = driver.query()
        return self._driver

    # -- the small questions
    def targets(self) -> dict[str, TargetRecord]:
        return self.state.read()["targets"]

    def target(self, name: str) -> TargetRecord:
        ts = self.targets()
        if name not in ts:
            raise NotFound(
                _("no target named '%(name)s' (targets: %(value)s)")
                % {"name": name, "value": ", ".join(sorted(ts)) or "none yet"},
                _("see `torchkeeper target list`, or add one with `torchkeeper target add PATH`"),
            )
        return ts[name]

    def inspect(
        self, name: str, rec: TargetRecord | None = None, overlay: Overlay | None = None
    ) -> targetmod.TargetInfo:
        rec = rec or self.target(name)
        info = targetmod.inspect(rec["site_packages"], self.home.cache_dir)
        if overlay and overlay.get("cudnn_stock") and overlay.get("torch_version") == info.torch_version:
            src = info.cudnn_build_source or ""
            if info.cudnn_build is None or "major only" in src:
                info.cudnn_build = overlay["cudnn_stock"]
                info.cudnn_build_source = "recorded when the overlay was applied"
        return info

    def desired_bundle(self, name: str, st: StateData | None = None) -> Manifest | None:
        st = st or self.state.read()
        bid = st["targets"][name].get("bundle")
        if not bid:
            return None
        try:
            return self.bundles.get(bid)
        except NotFound:
            raise NotFound(
                _("target '%(name)s' wants bundle %(bid)s, which is no longer in the cache")
                % {"name": name, "bid": bid[:12]},
                _("import or create it again, or choose another with `torchkeeper use`"),
            ) from None

    def plan(self, name: str, ref: str | None = None) -> tuple[gate.Plan, targetmod.TargetInfo, Manifest]:
        st = self.state.read()
        if name not in st["targets"]:
            self.target(name)
        m = self.bundles.get(ref) if ref else self.desired_bundle(name, st)
        if m is None:
            raise UsageError(
                _("target '%(name)s' has no bundle chosen") % {"name": name},
                _("choose one with `torchkeeper use BUNDLE --target %(name)s`") % {"name": name},
            )
        overlay = st["overlays"].get(name)
        info = self.inspect(name, st["targets"][name], overlay)
        p = gate.plan(name, info, m, overlay, self.driver())
        return p, info, m

    # -- the operations (one module each, see the docstring)
    def add_target(
        self, path: str, name: str | None = None, exist_ok: bool = False
    ) -> tuple[str, TargetRecord, targetmod.TargetInfo]:
        return targetsmod.add_target(self, path, name, exist_ok)

    def remove_target(self, name: str, force: bool = False) -> None:
        targetsmod.remove_target(self, name, force)

    def use(self, ref: str, target: str | None = None) -> UseResult:
        return targetsmod.use(self, ref, target)

    def apply(self, name: str, force: bool = False, dry_run: bool = False, progress=None) -> Result:
        return writes.apply(self, name, force, dry_run, progress)

    def revert(self, name: str, progress=None) -> Result:
        return writes.revert(self, name, progress)

    def reapply_if_still_wanted(self, name: str, seen: TargetStatus, progress=None) -> Result:
        return writes.reapply_if_still_wanted(self, name, seen, progress)

    def target_state(
        self, name: str, full: bool = False, st: StateData | None = None, with_versions: bool = False
    ) -> TargetStatus:
        return statusmod.target_state(self, name, full, st, with_versions)

    def verify(self, names: list[str] | None = None, full: bool = False) -> list[TargetStatus]:
        return statusmod.verify(self, names, full)

    def status(self) -> Status:
        return statusmod.status(self)

    def recover_all(self) -> list[str]:
        return recovery.recover_all(self)

    # -- the standby
    def prepare_standby(self, name: str, low_priority: bool = False, rehash: bool = False) -> JsonObject:
        """Link the overlay's files into the target's standby folder and hash them there
        (engine/standby.py): what lets the next repair link instead of copy."""
        sp = Path(self.target(name)["site_packages"])
        res = standby.prepare(
            self.home,
            name,
            sp,
            lambda: self.state.read()["overlays"].get(name),
            self.agent_config(),
            target_lock(self.home, name),
            low_priority,
            rehash,
        )
        log_event(self.home, "standby", target=name, **{k: v for k, v in res.items() if v})
        return res

    def refresh_standby(self, name: str) -> JsonObject:
        """Hash again the standby files an install in progress has touched (standby.refresh):
        the repair after it then links them without hashing on its critical path."""
        sp = Path(self.target(name)["site_packages"])
        return standby.refresh(self.home, name, sp, self.agent_config())
