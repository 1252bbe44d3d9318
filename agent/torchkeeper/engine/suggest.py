"""Which NVIDIA wheel versions fit a target: the candidates the index has, each taken or not
and why, by the gate's rules (engine/gate.py) plus what only a choice needs:

- cuDNN: the same major as torch's, minor >= the one torch was built with (PyTorch's rule),
  newer than what torch has now; 9.11 and later refuse GPUs below compute capability 7.5;
- CUDA runtime / cuBLAS: torch's CUDA major, not older than the CUDA torch was built with, no
  newer than the driver's CUDA version (NVML) and its minimum driver (cudadrivers.py); both
  from one CUDA minor release, as a bundle needs;
- the newest that passes is taken.

Pure: it chooses among the versions it is given (fetch.py lists them, fetch.suggest_for
puts the two together); it imports neither pip nor the fetcher.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from . import cudadrivers, libs, versions, wheels
from .driver import lowest_compute_capability
from .versions import is_final, matches, version_key as _version_key
from .records import JsonObject

CC_MIN_FROM = ((9, 11), (7, 5))
PRE_WHY = "a pre-release, dev or local build: chosen only with --pre"  # cuDNN >= 9.11 needs compute capability >= 7.5
FAMILY_ORDER = (libs.CUDNN, libs.CUBLAS, libs.CUDART)


@dataclass
class Candidate:
    family: str
    package: str
    version: str
    taken: bool
    why: str


@dataclass
class Suggestion:
    target: str | None
    platform: str
    cuda_major: int
    torch: str | None = None                    # "2.3.1+cu121 (CUDA 12.1, cuDNN 8.8.1.3)"
    driver: str | None = None                   # the driver line
    rules: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    chosen: JsonObject = field(default_factory=dict)  # family -> {"package", "version"}
    problems: list[str] = field(default_factory=list)  # what stopped a family being chosen

    def headline(self) -> str | None:
        """'cuDNN 9.10.2 fits' (for the tray); None when nothing newer fits."""
        if not self.chosen:
            return None
        parts = []
        if libs.CUDNN in self.chosen:
            parts.append(f"cuDNN {versions.short(self.chosen[libs.CUDNN]['version'])}")
        cuda = [self.chosen[f]["version"] for f in (libs.CUDART, libs.CUBLAS) if f in self.chosen]
        if cuda:
            mm = versions.major_minor(cuda[0])
            parts.append(f"CUDA {mm[0]}.{mm[1]}" if libs.CUDART in self.chosen
                         else f"cuBLAS {versions.short(cuda[0])}")
        return " + ".join(parts) + (" fits" if len(parts) == 1 else " fit")

    def to_dict(self) -> JsonObject:
        d = asdict(self)
        d["headline"] = self.headline()
        return d


def _mm(v: str) -> tuple[int, int]:
    return versions.major_minor(v) or (0, 0)


def choose(platform: str, cuda_major: int, wanted: dict[str, str | None],
           found: dict[str, list[str]], info=None, driver=None, target: str | None = None,
           pre: bool = False) -> Suggestion:
    """The candidates for each wanted family (family -> a version prefix or None for newest),
    from the versions found on the index (family -> versions). Pre-release, dev and local
    versions are candidates only with ``pre``; otherwise each is listed as skipped."""
    s = Suggestion(target, platform, cuda_major)
    if not pre:
        for fam, vs in found.items():
            for v in sorted((v for v in vs if not is_final(v)), key=_version_key, reverse=True):
                s.candidates.append(Candidate(fam, wheels.package(fam, cuda_major), v, False,
                                              PRE_WHY))
        found = {fam: [v for v in vs if is_final(v)] for fam, vs in found.items()}
    driver_ok = driver is not None and getattr(driver, "ok", False)
    cc = lowest_compute_capability(driver) if driver_ok else None
    if driver_ok:
        s.driver = driver.summary() + (f", compute capability {cc[0]}.{cc[1]}" if cc else "")
    else:
        s.driver = getattr(driver, "message", None) or "no NVIDIA driver answered"
    if info is not None:
        s.torch = (f"torch {info.torch_version} (CUDA {info.torch_cuda}, cuDNN "
                   f"{info.cudnn_build or 'unknown'})")
    compat = cudadrivers.MINOR_COMPAT.get(cuda_major)
    need_compat = cudadrivers.minimum(f"{cuda_major}.0", platform)["compat"]
    too_old = driver_ok and cudadrivers.driver_at_least(driver.version, need_compat) is False
    if compat:
        s.rules.append(f"CUDA {cuda_major}.x runs on a driver >= {need_compat} ({platform}, minor-version "
                       "compatibility; NVIDIA CUDA release notes, Table 2)")
    if too_old:
        s.problems.append(f"driver {driver.version} is older than the {need_compat} every CUDA "
                          f"{cuda_major}.x runtime needs: update the NVIDIA driver")
    if libs.CUDNN in wanted:
        _cudnn(s, wanted[libs.CUDNN], found.get(libs.CUDNN, []), info, cc, cuda_major)
    cuda_fams = [f for f in (libs.CUBLAS, libs.CUDART) if f in wanted]
    if cuda_fams:
        _cuda(s, cuda_fams, wanted, found, info, driver if driver_ok else None, too_old)
    return s


def _cudnn(s: Suggestion, spec, found, info, cc, cuda_major) -> None:
    pkg = wheels.package(libs.CUDNN, cuda_major)
    t_major = t_minor = stock = None
    if info is not None:
        keys = info.family_keys(libs.CUDNN)
        if keys:
            t_major = info.libs[keys[0]].major
        build = versions.major_minor(info.cudnn_build) if info.cudnn_build else None
        if build and info.cudnn_build.count("."):
            t_minor = build[1]
            stock = info.cudnn_build
        if t_major is not None:
            s.rules.append(f"cuDNN: major {t_major} as torch's" + (
                f", minor >= {t_major}.{t_minor} (PyTorch's rule), newer than {versions.short(stock)}"
                if t_minor is not None else " (torch does not say its minor)"))
    if cc is not None:
        s.rules.append(f"cuDNN 9.11 and later need compute capability >= 7.5; the GPU has {cc[0]}.{cc[1]}")
    taken = None
    for v in sorted(found, key=_version_key, reverse=True):
        mm = _mm(v)
        if not matches(v, spec):
            why = f"not {spec} (asked with --cudnn {spec})"
        elif t_major is not None and mm[0] != t_major:
            why = f"cuDNN {mm[0]}, but torch uses cuDNN {t_major}: PyTorch needs the same major"
        elif t_minor is not None and mm[1] < t_minor:
            why = f"older than the cuDNN {stock} torch was built with (PyTorch needs minor >= {t_minor})"
        elif stock is not None and _version_key(v) <= _version_key(stock):
            why = f"not newer than the cuDNN {stock} torch has now"
        elif cc is not None and mm >= CC_MIN_FROM[0] and cc < CC_MIN_FROM[1]:
            why = f"cuDNN {mm[0]}.{mm[1]} needs compute capability >= 7.5; the GPU has {cc[0]}.{cc[1]}"
        elif taken is None:
            taken = v
            why = "the newest that fits"
        else:
            why = f"fits, but {taken} is newer"
        s.candidates.append(Candidate(libs.CUDNN, pkg, v, v == taken, why))
    if taken:
        s.chosen[libs.CUDNN] = {"package": pkg, "version": taken}
    else:
        s.problems.append(f"no {pkg} on the index fits" + (f" ({len(found)} version(s) seen)" if found
                                                             else ": the index has none for " + s.platform))


def _cuda(s: Suggestion, fams, wanted, found, info, driver, too_old) -> None:
    t_mm = versions.major_minor(info.torch_cuda) if info is not None else None
    have = versions.major_minor(driver.cuda) if driver is not None and driver.cuda else None
    if have:
        s.rules.append(f"CUDA runtime / cuBLAS: no newer than CUDA {have[0]}.{have[1]}, what driver "
                       f"{driver.version} supports (each release's own driver: NVIDIA's Table 3)")
    if t_mm:
        s.rules.append(f"CUDA runtime / cuBLAS: CUDA {s.cuda_major}, not older than the {t_mm[0]}.{t_mm[1]} "
                       "torch was built with; both from one CUDA release")
    fits: dict[str, list[str]] = {}
    verdicts: dict[tuple[str, str], str] = {}
    for fam in fams:
        fits[fam] = []
        for v in sorted(found.get(fam, []), key=_version_key, reverse=True):
            mm = _mm(v)
            pkg = wheels.package(fam, s.cuda_major)
            if wheels.is_stub(pkg, v, s.cuda_major) or mm[0] != s.cuda_major:
                why = f"not a CUDA {s.cuda_major} release (a placeholder without libraries)"
            elif not matches(v, wanted[fam]):
                why = f"not {wanted[fam]} (asked)"
            elif too_old:
                why = "the driver is too old for any CUDA " + str(s.cuda_major)
            elif t_mm and mm <= t_mm:
                why = f"not newer than the CUDA {t_mm[0]}.{t_mm[1]} torch was built with"
            elif have and mm > have:
                need = cudadrivers.minimum(f"{mm[0]}.{mm[1]}", s.platform)["toolkit"]
                why = (f"CUDA {mm[0]}.{mm[1]} is newer than the driver's CUDA {have[0]}.{have[1]}"
                       + (f" (it ships with driver {need})" if need else ""))
            else:
                fits[fam].append(v)
                continue
            verdicts[(fam, v)] = why
    minors = None
    for fam in fams:
        ms = {_mm(v) for v in fits[fam]}
        minors = ms if minors is None else minors & ms
    best = max(minors) if minors else None
    for fam in fams:
        pkg = wheels.package(fam, s.cuda_major)
        taken = next((v for v in fits[fam] if _mm(v) == best), None)
        for v in sorted(found.get(fam, []), key=_version_key, reverse=True):
            if (fam, v) in verdicts:
                why = verdicts[(fam, v)]
            elif v == taken:
                why = "the newest that fits" + (" (the same CUDA release as the others)" if len(fams) > 1 else "")
            elif best is None or _mm(v) != best:
                why = ("fits, but not from the CUDA release chosen for all" if best
                       else "no other library has a release for this CUDA version")
            else:
                why = f"fits, but {taken} is newer"
            s.candidates.append(Candidate(fam, pkg, v, v == taken, why))
        if taken:
            s.chosen[fam] = {"package": pkg, "version": taken}
        else:
            s.problems.append(f"no {pkg} on the index fits")


def render(s: Suggestion, verbose: bool = False) -> str:
    """The choice and why in a few lines; ``verbose``: the rules and every candidate."""
    lines = [f"target '{s.target}': {s.torch}" if s.target else
             f"{s.platform}, CUDA {s.cuda_major}"]
    lines.append(f"  driver: {s.driver}")
    head = s.headline()
    lines.append(f"  suggestion: {head}" if head else "  suggestion: nothing newer fits")
    if verbose:
        lines += [f"  rule: {r}" for r in s.rules]
    for c in s.candidates:
        if verbose or c.taken:
            lines.append(f"  {'take' if c.taken else 'skip'} {c.package} {c.version}: {c.why}")
    lines += [f"  {p}" for p in s.problems]
    skipped = [c for c in s.candidates if not c.taken]
    if skipped and not verbose:
        # the reasons, with their versions left out, most common first
        counts: dict[str, int] = {}
        for c in skipped:
            why = re.sub(r"\b\d+(?:\.\d+)+\S*", "X", c.why)
            counts[why] = counts.get(why, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        lines.append(f"  skipped {len(skipped)} other version(s): "
                     + "; ".join(f"{n} {why}" for why, n in top[:3])
                     + (f"; {sum(n for _, n in top[3:])} for other reasons" if len(top) > 3 else ""))
        lines.append("  (--verbose lists each version and the rules; --json too)")
    return "\n".join(lines)
