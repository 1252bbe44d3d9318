"""Typed records the engine hands to the CLI and the agent: what a target is now (status,
verify) and what was applied to it (the overlay). Each has ``to_dict()`` for JSON; the
field names are the JSON keys.

Also the shapes of what the engine keeps on disk as JSON -- state.json (:class:`StateData`:
targets, overlays) and a bundle's manifest.json (:class:`Manifest`) -- as TypedDicts: they stay
plain dicts (read, checked once by StateStore.read / Store._read, written back as they are),
and these name their keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from .target import TargetInfo

JsonObject = dict[str, Any]   # a JSON object: what to_dict() gives `--json` and the event log
Config = dict[str, Any]       # config.toml (or one of its tables) as engine/config.py checked it
StatKey = dict[str, int]      # fsutil.stat_key: size, mtime_ns, ino


class TargetRecord(TypedDict, total=False):
    """state.json: targets[name]."""
    path: str
    site_packages: str
    bundle: str | None            # the chosen bundle's id
    added: str
    last_bench: JsonObject


class OverlayFile(TypedDict, total=False):
    """state.json: overlays[name].files[rel] -- one library the overlay placed (with its stat
    data after the write: size, mtime_ns, ino)."""
    key: str
    action: str                   # replace / add / foreign
    prior: str                    # stock / foreign / overlay / absent
    sha256: str
    stock_sha256: str | None
    stock_size: int | None
    stock_source: str | None
    stock_backup: str | None      # the backup's sha256 (backups are stored by hash)
    foreign_backup: str | None
    same_as_stock: bool
    size: int
    mtime_ns: int
    ino: int


class Overlay(TypedDict, total=False):
    """state.json: overlays[name] -- what an apply put in place."""
    bundle: str
    bundle_name: str | None
    site_packages: str
    applied: str
    torch_version: str | None
    torch_cuda: str | None
    cudnn_stock: str | None
    files: dict[str, OverlayFile]


class StateData(TypedDict):
    """state.json as a whole."""
    schema: int
    targets: dict[str, TargetRecord]
    overlays: dict[str, Overlay]
    default_bundle: str | None


ManifestFile = TypedDict("ManifestFile", {   # "from" is a keyword: the functional form
    "name": str, "family": str, "member": str, "major": int, "size": int, "sha256": str,
    "from": str, "version": str}, total=False)


class Manifest(TypedDict, total=False):
    """A bundle's manifest.json (engine/bundle.py)."""
    format: int
    id: str
    name: str
    platform: str
    cuda: str | None
    cuda_full: str | None
    cuda_major: int | None
    cudnn: str | None
    cudnn_cuda_major: int | None
    files: list[ManifestFile]
    sources: list[JsonObject]
    read: list[str]
    left_out: list[str]
    left_out_other: int
    created: str

# schema/status.schema.json: raised when a field is removed or changes meaning (added: not)
STATUS_SCHEMA_VERSION = 1

PATCHED, DRIFTED, STOCK, INCOMPATIBLE, MISSING = "patched", "drifted", "stock", "incompatible", "missing"


def last_gain(target_record: TargetRecord) -> JsonObject | None:
    """The newest bench result kept with a target's record (None when none, or damaged)."""
    lb = target_record.get("last_bench")
    if isinstance(lb, dict) and isinstance(lb.get("ratio"), (int, float)) and not isinstance(lb["ratio"], bool):
        return lb
    return None


@dataclass
class BundleRef:
    """The bundle a target should use (chosen with `use`)."""
    id: str
    name: str
    cuda: str | None = None
    cudnn: str | None = None

    def to_dict(self) -> JsonObject:
        return {"id": self.id, "name": self.name, "cuda": self.cuda, "cudnn": self.cudnn}


@dataclass
class AppliedRef:
    """The overlay in place: which bundle, when, how many files."""
    bundle: str
    bundle_name: str | None
    at: str | None
    files: int

    def to_dict(self) -> JsonObject:
        return {"bundle": self.bundle, "bundle_name": self.bundle_name, "at": self.at,
                "files": self.files}


@dataclass
class TargetStatus:
    """One target as `status` and `verify` see it. The versions are absent (None) for a
    target whose environment is missing."""
    name: str
    path: str
    site_packages: str
    state: str | None = None          # PATCHED, DRIFTED, STOCK, INCOMPATIBLE or MISSING
    bundle: BundleRef | None = None
    problems: list[str] = field(default_factory=list)
    torch_version: str | None = None
    torch_cuda: str | None = None
    platform: str | None = None
    cudnn_stock: str | None = None    # the cuDNN torch ships (or shipped, under an overlay)
    cudnn_now: str | None = None      # the cuDNN in place now, where known
    cudnn_unknown: str | None = None  # why cudnn_now (or cudnn_stock) is not known, in words
    applied: AppliedRef | None = None
    info: TargetInfo | None = None    # the full inspection, when asked for
    in_desired_state: bool | None = None  # set by verify
    last_bench: JsonObject | None = None    # the newest `bench` result kept with the target
    standby: JsonObject | None = None       # the standby copy: state, files, bytes (engine/standby.py)
    held: JsonObject | None = None          # another torchkeeper process's hold (bench): why, pid, since

    @property
    def inspected(self) -> bool:
        return self.state != MISSING

    def to_dict(self) -> JsonObject:
        d = {"name": self.name, "path": self.path, "site_packages": self.site_packages,
             "bundle": self.bundle.to_dict() if self.bundle else None, "state": self.state,
             "problems": list(self.problems)}
        if self.inspected:
            d.update(torch_version=self.torch_version, torch_cuda=self.torch_cuda,
                     platform=self.platform, cudnn_stock=self.cudnn_stock, cudnn_now=self.cudnn_now)
            if self.cudnn_unknown:
                d["cudnn_unknown"] = self.cudnn_unknown
        if self.applied is not None:
            d["applied"] = self.applied.to_dict()
        if self.info is not None:
            d["info"] = self.info.to_dict()
        if self.in_desired_state is not None:
            d["in_desired_state"] = self.in_desired_state
        if self.last_bench is not None:
            d["last_bench"] = {k: self.last_bench.get(k) for k in ("ratio", "bundle_name", "time", "gpu", "it_s", "parts")}
        if self.standby is not None:
            d["standby"] = self.standby
        if self.held is not None:
            d["held"] = self.held
        return d


@dataclass
class Status:
    """Every target, the driver as NVML reports it (its ``state``: ok, no_driver, not_loaded,
    reboot_needed, ...), and the targets with an unfinished transaction."""
    targets: list[TargetStatus]
    driver: JsonObject | None
    journal: list[str | None]

    def to_dict(self) -> JsonObject:
        return {"targets": [t.to_dict() for t in self.targets], "driver": self.driver,
                "journal": self.journal}


@dataclass
class Result:
    """What apply or revert did (``action``: applied, already applied, dry run, reverted,
    nothing to revert, not wanted)."""
    target: str
    ok: bool
    action: str
    message: str
    plan: JsonObject | None = None
    foreign: list[str] | None = None  # revert: files put back as the foreign bytes they were
    via: JsonObject | None = None      # apply: files linked from the standby / copied, and why copied
    touched: list[str] = field(default_factory=list)  # the paths the transaction wrote or removed

    def to_dict(self) -> JsonObject:
        d = {"target": self.target, "ok": self.ok, "action": self.action, "message": self.message,
             "changed": self.action in ("applied", "reverted")}
        if self.via is not None:
            d["via"] = self.via
        if self.plan is not None:
            d["plan"] = self.plan
        if self.foreign is not None:
            d["foreign"] = self.foreign
        return d


@dataclass
class UseResult:
    """What `use` did: the targets now bound to the bundle, and those the gate refused it for."""
    bundle: Manifest
    bound: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # target -> the gate's reason
    changed: list[str] = field(default_factory=list)      # bound now, to another bundle before
    default_changed: bool = False                           # the default for new targets

    def to_dict(self) -> JsonObject:
        return {"bundle": self.bundle["id"], "bundle_name": self.bundle["name"],
                "targets": self.bound, "skipped": self.skipped,
                "changed": bool(self.changed or self.default_changed), "changed_targets": self.changed}
