"""Plans and the compatibility gate.

A plan says, for one target and one bundle, what happens to each file: ``replace``
(the stock file, or an earlier overlay, gives way), ``in place`` (already the bundle's
bytes), ``add`` (a sibling a newer cuDNN release needs, beside its family), ``foreign``
(a file that is neither stock nor an overlay of ours: replaced only with --force) or
``no counterpart`` (torch does not load such a file here: refused). The verdict is
``ok``, ``needs-force`` (warnings only: a person's --force or Reapply passes them) or
``refused`` (never overridden); each reason names its rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import libs, versions
from .fsutil import hash_many
from .target import SEEN_BEFORE, TargetInfo, env_root
from .records import JsonObject, Manifest, ManifestFile, Overlay, OverlayFile, StatKey
from ..i18n import _, ngettext

REPLACE = "replace"
IN_PLACE = "in place"
ADD = "add"
FOREIGN = "foreign"
NO_COUNTERPART = "no counterpart"


@dataclass
class Reason:
    rule: str        # platform, cuda-major, cudnn-version, counterpart, mixed-family, driver, foreign, ...
    level: str       # "refuse" | "force" (a warning that needs --force) | "note"
    message: str
    hint: str | None = None

    def to_dict(self) -> JsonObject:
        return dict(self.__dict__)


@dataclass
class FileStep:
    key: str
    rel: str                  # target path, relative to site-packages
    action: str
    new_sha256: str
    new_size: int
    current_sha256: str | None = None   # None when absent
    stock_sha256: str | None = None
    stock_size: int | None = None
    prior: str | None = None  # "stock" | "overlay" | "foreign" | "absent"
    current_stat: StatKey | None = None  # stat data when current_sha256 was taken
    stock_source: str | None = None   # where stock_sha256 came from: RECORD, conda-meta, seen ...

    def to_dict(self) -> JsonObject:
        return dict(self.__dict__)


@dataclass
class Plan:
    target: str
    bundle_id: str
    bundle_name: str
    steps: list[FileStep] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """refused (never applied), needs-force (applied only with --force) or ok; a note
        (no driver answering, say) tells, and changes nothing."""
        if any(r.level == "refuse" for r in self.reasons):
            return "refused"
        if any(r.level == "force" for r in self.reasons):
            return "needs-force"
        return "ok"

    @property
    def refusals(self) -> list[Reason]:
        return [r for r in self.reasons if r.level == "refuse"]

    @property
    def needs_force(self) -> list[Reason]:
        return [r for r in self.reasons if r.level == "force"]

    @property
    def changes(self) -> list[FileStep]:
        return [s for s in self.steps if s.action in (REPLACE, ADD, FOREIGN)]

    def to_dict(self) -> JsonObject:
        return {"target": self.target, "bundle": self.bundle_id, "bundle_name": self.bundle_name,
                "verdict": self.verdict, "files": [s.to_dict() for s in self.steps],
                "reasons": [r.to_dict() for r in self.reasons]}


def check(info: TargetInfo, m: Manifest, driver=None) -> list[Reason]:
    """The version rules of the gate (no file I/O)."""
    reasons: list[Reason] = []
    bname = m.get("name", m["id"][:12])
    torch_cuda = versions.major_minor(info.torch_cuda)
    if torch_cuda is None:
        reasons.append(
            Reason(
                "cuda-major",
                "refuse",
                _("torch %(value)s is a CPU build (torch.version.cuda is None): it loads no CUDA libraries")
                % {"value": info.torch_version or "?"},
                _("install a CUDA build of torch first"),
            )
        )
        return reasons
    if m["platform"] != info.platform:
        want = "Linux .so" if info.platform == libs.LINUX else "Windows DLL"
        reasons.append(
            Reason(
                "platform",
                "refuse",
                _("bundle '%(bname)s' holds %(platform)s libraries but this torch loads %(want)s files")
                % {"bname": bname, "platform": m["platform"], "want": want},
                _("build a bundle from the %(platform)s cuDNN archive or nvidia-* wheel")
                % {"platform": info.platform},
            )
        )
        return reasons
    bundle_cuda_major = m.get("cuda_major")
    if bundle_cuda_major is not None and bundle_cuda_major != torch_cuda[0]:
        what = (
            f"cuDNN {m['cudnn']} built for CUDA {bundle_cuda_major}"
            if m.get("cudnn") and not m.get("cuda")
            else f"CUDA {m.get('cuda') or bundle_cuda_major}"
        )
        reasons.append(
            Reason(
                "cuda-major",
                "refuse",
                _("bundle '%(bname)s' is %(what)s but torch %(torch_version)s uses CUDA %(torch_cuda)s")
                % {
                    "bname": bname,
                    "what": what,
                    "torch_version": info.torch_version,
                    "torch_cuda": info.torch_cuda,
                },
                _(
                    "build a bundle for CUDA %(torch_cuda)s (e.g. cuDNN for CUDA %(torch_cuda)s: "
                    "..._cuda%(torch_cuda)s-archive or nvidia-cudnn-cu%(torch_cuda)s)"
                )
                % {"torch_cuda": torch_cuda[0]},
            )
        )
    if m.get("cudnn"):
        b = versions.major_minor(m["cudnn"])
        t = versions.major_minor(info.cudnn_build)
        if t is None:
            reasons.append(
                Reason(
                    "cudnn-version",
                    "note",
                    _(
                        "cannot tell which cuDNN torch %(torch_version)s was built with; PyTorch's "
                        "version check is unverified"
                    )
                    % {"torch_version": info.torch_version},
                    None,
                )
            )
        elif b[0] != t[0]:
            reasons.append(
                Reason(
                    "cudnn-version",
                    "refuse",
                    _(
                        "bundle '%(bname)s' is cuDNN %(cudnn)s but torch %(torch_version)s uses "
                        "cuDNN %(t)s.x (%(cudnn_build)s); PyTorch requires the same major"
                    )
                    % {
                        "bname": bname,
                        "cudnn": m["cudnn"],
                        "torch_version": info.torch_version,
                        "t": t[0],
                        "cudnn_build": info.cudnn_build,
                    },
                    _("build a bundle from cuDNN %(t)s.x for CUDA %(torch_cuda)s")
                    % {"t": t[0], "torch_cuda": torch_cuda[0]},
                )
            )
        elif info.cudnn_build.count(".") == 0:
            reasons.append(
                Reason(
                    "cudnn-version",
                    "note",
                    _(
                        "torch %(torch_version)s says only that it uses cuDNN %(t)s "
                        "(%(cudnn_build_source)s); PyTorch's minor-version check is unverified"
                    )
                    % {
                        "torch_version": info.torch_version,
                        "t": t[0],
                        "cudnn_build_source": info.cudnn_build_source,
                    },
                )
            )
        elif b[1] < t[1]:
            reasons.append(
                Reason(
                    "cudnn-version",
                    "refuse",
                    _(
                        "bundle '%(bname)s' is cuDNN %(cudnn)s, older than the %(cudnn_build)s "
                        "torch %(torch_version)s was built with; PyTorch requires minor >= "
                        "%(t)s.%(t2)s"
                    )
                    % {
                        "bname": bname,
                        "cudnn": m["cudnn"],
                        "cudnn_build": info.cudnn_build,
                        "torch_version": info.torch_version,
                        "t": t[0],
                        "t2": t[1],
                    },
                    _("build a bundle from cuDNN %(t)s.%(t2)s or newer (for CUDA %(torch_cuda)s)")
                    % {"t": t[0], "t2": t[1], "torch_cuda": torch_cuda[0]},
                )
            )
    need = versions.major_minor(m.get("cuda"))
    if driver is None or not getattr(driver, "ok", False):
        why = getattr(driver, "message", None) or "no NVIDIA driver answered"
        reasons.append(
            Reason(
                "driver",
                "note",
                _("%(why)s: cannot check that the driver supports this bundle's CUDA") % {"why": why},
                getattr(driver, "hint", None),
            )
        )
    elif need and driver.cuda:
        have = versions.major_minor(driver.cuda)
        if have and have < need:
            reasons.append(
                Reason(
                    "driver",
                    "force",
                    _(
                        "driver %(version)s supports CUDA %(cuda)s, older than the bundle's CUDA "
                        "%(cuda2)s: torch may fail with 'CUDA driver version is insufficient'"
                    )
                    % {"version": driver.version, "cuda": driver.cuda, "cuda2": m["cuda"]},
                    _("update the NVIDIA driver, or pass --force to apply anyway"),
                )
            )
    return reasons


def plan(
    name: str,
    info: TargetInfo,
    m: Manifest,
    overlay: Overlay | None = None,
    driver=None,
    hash_current: bool = True,
) -> Plan:
    """The file-by-file plan and the verdict for applying bundle ``m`` to a target."""
    p = Plan(name, m["id"], m.get("name", m["id"][:12]))
    p.reasons = check(info, m, driver)
    if info.torch_cuda is None or m["platform"] != info.platform:
        return p  # nothing file by file to say
    applied = (overlay or {}).get("files", {})  # rel -> file record of an earlier overlay
    sp = info.site_packages
    paths = []
    for f in m["files"]:
        lf = info.libs.get(f["name"])
        d = None if lf is not None else info.dir_for_family(f["family"], f["major"])
        if lf is not None or d is not None:
            paths.append(sp / (lf.rel if lf is not None else f"{d}/{f['name']}"))
    hashed = hash_many(paths) if hash_current else {}
    bundle_families: dict[tuple[str, int], set[str]] = {}
    unknown: list[str] = []  # no stock hash anywhere: taken as stock from what is there
    for f in m["files"]:
        bundle_families.setdefault((f["family"], f["major"]), set()).add(f["name"])
        lf = info.libs.get(f["name"])
        if lf is None:
            p.steps.append(_added_step(f, info, applied, hashed))
            continue
        step, guessed = _replaced_step(f, lf, applied.get(lf.rel), hashed.get(sp / lf.rel))
        if guessed:
            unknown.append(lf.rel)
        p.steps.append(step)
    p.reasons += _file_reasons(p, info, bundle_families, unknown)
    return p


def _added_step(
    f: ManifestFile,
    info: TargetInfo,
    applied: dict[str, OverlayFile],
    hashed: dict[Path, tuple[str, StatKey]],
) -> FileStep:
    """A bundle file torch has no file of that name for: added beside its family, if it has one."""
    d = info.dir_for_family(f["family"], f["major"])
    if d is None:
        return FileStep(f["name"], "", NO_COUNTERPART, f["sha256"], f["size"])
    rel = f"{d}/{f['name']}"
    step = FileStep(f["name"], rel, ADD, f["sha256"], f["size"], prior="absent")
    path = info.site_packages / rel
    if path.exists():  # left by an earlier overlay or another tool
        step.current_sha256, step.current_stat = hashed.get(path) or (None, None)
        rec = applied.get(rel)
        if step.current_sha256 == f["sha256"]:
            step.action = IN_PLACE
        elif rec is not None and step.current_sha256 == rec.get("sha256"):
            step.prior = "overlay"
        else:
            step.action, step.prior = FOREIGN, "foreign"
    return step


def _replaced_step(
    f: ManifestFile, lf, rec: OverlayFile | None, hashed: tuple | None
) -> tuple[FileStep, bool]:
    """A bundle file that replaces torch's file of the same name; ``rec``: the earlier overlay's
    record of it, ``hashed``: (sha256, stat) of what is there now. The bool: no stock hash was
    known, so what is there now is taken as stock."""
    step = FileStep(
        f["name"],
        lf.rel,
        REPLACE,
        f["sha256"],
        f["size"],
        stock_sha256=lf.stock_sha256,
        stock_size=lf.stock_size,
        stock_source=lf.stock_source,
    )
    if step.stock_sha256 is None and rec is not None:
        # no RECORD hash: the stock bytes are the ones the first overlay replaced
        step.stock_sha256 = rec.get("stock_sha256") or (
            rec.get("stock_backup") if rec.get("prior") == "stock" else None
        )
        step.stock_size, step.stock_source = rec.get("stock_size"), rec.get("stock_source") or SEEN_BEFORE
    cur, step.current_stat = hashed or (None, None)
    step.current_sha256 = cur
    stock = step.stock_sha256
    guessed = stock is None and cur is not None and rec is None
    if guessed:
        # nothing records the stock hash (no RECORD hash, no conda-meta sha256): what is
        # there before the first overlay is stock, and is backed up as such
        stock = step.stock_sha256 = cur
        step.stock_size = (step.current_stat or {}).get("size")
        step.stock_source = SEEN_BEFORE
    if cur == f["sha256"]:
        step.action = IN_PLACE
        step.prior = "overlay" if rec else ("stock" if cur == stock else "foreign")
    elif stock and cur == stock:
        step.prior = "stock"
    elif rec is not None and cur == rec.get("sha256"):
        step.prior = "overlay"
    elif rec is not None and _same_placed_file(step.current_stat, rec):
        # the very file the overlay placed (inode, size and mtime as recorded), its bytes
        # changed in place: the overlay damaged, not another tool's copy
        step.prior = "overlay"
    else:
        step.action, step.prior = FOREIGN, "foreign"
    return step, guessed


def _file_reasons(
    p: Plan, info: TargetInfo, bundle_families: dict[tuple[str, int], set[str]], unknown: list[str]
) -> list[Reason]:
    """What the file-by-file plan adds to the verdict: notes, refusals, what needs --force."""
    out = []
    if unknown:
        out.append(
            Reason(
                "stock-unknown",
                "note",
                ngettext(
                    "no RECORD or conda-meta hash for %(files)s: its current bytes are backed up as stock",
                    "no RECORD or conda-meta hash for %(files)s: their current bytes are backed up as stock",
                    len(unknown),
                )
                % {"files": ", ".join(unknown)},
            )
        )
    strays = [s.key for s in p.steps if s.action == NO_COUNTERPART]
    if strays:
        out.append(
            Reason(
                "counterpart",
                "refuse",
                ngettext(
                    "torch here loads no file like %(files)s: copying it in would add a library torch never used",
                    "torch here loads no file like %(files)s: copying them in would add a library torch never used",
                    len(strays),
                )
                % {"files": ", ".join(strays)}
                + (
                    _(" (and torch on Windows loads every DLL in torch\\lib)")
                    if info.platform == libs.WINDOWS
                    else ""
                ),
                _("build the bundle only from libraries this torch uses (same CUDA and cuDNN majors)"),
            )
        )
    for (family, major), names in sorted(bundle_families.items()):
        have = set(info.family_keys(family, major))
        missing = sorted(have - names)
        if missing and names & have:
            title = libs.FAMILY_TITLES[family]
            out.append(
                Reason(
                    "mixed-family",
                    "refuse",
                    _(
                        "bundle '%(bundle_name)s' replaces %(n)s of the %(n2)s %(title)s files; "
                        "%(join)s would stay at the old version and mix two %(title)s releases"
                    )
                    % {
                        "bundle_name": p.bundle_name,
                        "n": len(names & have),
                        "n2": len(have),
                        "title": title,
                        "join": ", ".join(missing),
                    },
                    _("build the bundle from the complete %(title)s release (all %(n)s files)")
                    % {"title": title, "n": len(have)},
                )
            )
    written = sorted({s.rel.rpartition("/")[0] for s in p.changes})
    sp = info.site_packages
    for d in (d for d in written if d in info.outside):
        out.append(
            Reason(
                "outside-target",
                "force",
                _(
                    "%(d)s is a link to %(outside)s, outside this environment (%(env_root)s): "
                    "applying writes the bundle's files into %(outside)s, for everything that uses "
                    "it"
                )
                % {"d": d, "outside": info.outside[d], "env_root": env_root(sp)},
                _(
                    "pass --force to write into %(outside)s anyway, or replace the link with a "
                    "copy of the folder"
                )
                % {"outside": info.outside[d]},
            )
        )
    foreign = [s.rel for s in p.steps if s.action == FOREIGN]
    if foreign:
        out.append(
            Reason(
                "foreign",
                "force",
                ngettext(
                    "%(files)s matches neither the stock file nor an overlay of ours (another tool's copy?)",
                    "%(files)s match neither the stock file nor an overlay of ours (another tool's copy?)",
                    len(foreign),
                )
                % {"files": ", ".join(foreign)},
                _("pass --force to replace; the current bytes are backed up first"),
            )
        )
    return out


def _same_placed_file(st: StatKey | None, rec: OverlayFile) -> bool:
    return bool(st) and all(
        st.get(k) is not None and st.get(k) == rec.get(k) for k in ("ino", "size", "mtime_ns")
    )
