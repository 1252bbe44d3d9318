"""`bundle fetch`: NVIDIA's library wheels through pip's own download, cached, made into a bundle.

pip does every network step (``python -m pip download --no-deps --only-binary=:all:
--platform P --python-version V``), so the user's pip configuration (index, proxy,
certificates, find-links, every ``PIP_*`` variable) applies, and pip checks each wheel
against the hash the index publishes (the ``#sha256=`` of a simple index's link) where there
is one. ``--no-deps`` always: cuDNN's wheels depend on cuBLAS, which is fetched (or not) on
its own terms.

Versions come from the index, not from a list here: pip is asked for an impossible version
(``NAME<0``) and its "(from versions: ...)" answer is read. That works the same against an
index URL and a ``--find-links`` folder (``pip index versions`` ignores find-links), and pip
lists only the versions that have a wheel for the platform asked.

The cache: ``<cache>/wheels/<platform>/<name>-<version>/<file>.whl`` plus ``sha256``; a
download goes to a temporary folder and is renamed into place when complete, so an
interrupted download leaves nothing that looks cached. A cached wheel is re-hashed before use.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import libs, versions, wheels
from ..errors import OperationFailed, UsageError
from .fsutil import sha256_file
from ..home import Home
from .records import JsonObject, Manifest
from ..i18n import _

POLL_S = 0.2

_FROM_VERSIONS = re.compile(r"\(from versions: ([^)]*)\)")
_DOWNLOADING = re.compile(r"Downloading (\S+\.whl)(?: \(([\d.]+) (kB|MB|GB|bytes)\))?")
_UNITS = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
_NO_SPACE = ("No space left on device", "[Errno 28]")


@dataclass
class PipOptions:
    """How to call pip: the platform asked for, and where to look besides the user's config."""

    platform: str
    python_version: str = f"{sys.version_info[0]}.{sys.version_info[1]}"
    find_links: list[str] = field(default_factory=list)
    index_url: str | None = None
    pre: bool = False        # pre-release, dev and local versions may be chosen (--pre)
    timeout_s: float = 30.0  # pip's socket timeout; nothing new for twice that: stalled (--timeout)

    @property
    def stall_s(self) -> float:
        return 2 * self.timeout_s + 5

    def args(self) -> list[str]:
        out = ["--no-deps", "--only-binary=:all:", "--python-version", self.python_version,
               "--disable-pip-version-check", "--no-input",
               "--timeout", f"{self.timeout_s:g}", "--retries", "1"]
        for p in wheels.PIP_PLATFORMS[self.platform]:
            out += ["--platform", p]
        for fl in self.find_links:
            out += ["--find-links", fl]
        if self.index_url:
            out += ["--index-url", self.index_url]
        return out


class Stalled(Exception):
    """pip printed nothing and downloaded nothing for ``seconds``: it was stopped."""

    def __init__(self, seconds: float, done: int):
        super().__init__(f"nothing for {seconds:.0f} s")
        self.seconds, self.done = seconds, done


_TIMED_OUT = ("Read timed out", "ReadTimeoutError", "ConnectTimeoutError", "timed out")


def _timed_out(text: str) -> bool:
    return any(s in text for s in _TIMED_OUT)


def _pip(args: list[str], tmp: Path, progress=None, expect: int | None = None,
         stall_s: float | None = None) -> tuple[int, str]:
    """Runs pip with its temporary files in tmp; while it runs, reports the bytes under tmp
    (the download in flight) to progress(done, total). pip's output is kept in memory, not in
    a file: on a full disk a log file would lose the very line that says so. With ``stall_s``,
    pip is stopped (:class:`Stalled`) once it has printed and downloaded nothing for that long."""
    env = dict(os.environ)
    env["TMPDIR"] = env["TEMP"] = env["TMP"] = str(tmp)  # where pip writes the wheel it fetches
    env["PYTHONUNBUFFERED"] = "1"
    chunks: list[bytes] = []
    proc = subprocess.Popen([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(65536), b"")),
                              name="tk-pip-output", daemon=True)
    reader.start()
    try:
        total = expect
        seen, moved = (0, 0), time.monotonic()
        while proc.poll() is None:
            time.sleep(POLL_S)
            if stall_s is not None:
                now = (sum(map(len, chunks)), _tree_size(tmp))
                if now != seen:
                    seen, moved = now, time.monotonic()
                elif time.monotonic() - moved > stall_s:
                    proc.kill()
                    proc.wait()
                    raise Stalled(stall_s, now[1])
            if progress is None:
                continue
            m = _DOWNLOADING.search(b"".join(chunks).decode(errors="replace"))
            if m and m.group(2):
                total = int(float(m.group(2)) * _UNITS[m.group(3)])
            progress(_tree_size(tmp), total)
    except BaseException:  # Ctrl-C, or the agent stopping: pip must not go on alone
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(10)
        proc.stdout.close()
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def _tree_size(root: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                n += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return n


def _pip_says(text: str) -> str:
    """pip's most telling line: its first ERROR, else its last WARNING."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("ERROR:") and "from versions" not in ln:
            return ln
    warns = [ln for ln in lines if ln.startswith("WARNING:") and "is ignored" not in ln]
    return warns[-1] if warns else (lines[-1] if lines else "no output")


def _no_space(text: str) -> bool:
    return any(s in text for s in _NO_SPACE)


def _no_space_error(what: str, folder: Path) -> OperationFailed:
    return OperationFailed(
        _("no space left on the disk of %(folder)s while %(what)s") % {"folder": folder, "what": what},
        _(
            "free disk space there (NVIDIA's wheels are 300-900 MB each; "
            "the cache needs about twice that while a bundle is made), then "
            "fetch again"
        ),
    )


# the engine's temporary folders are named <kind>-<pid>-...: what a killed process left is
# found by its pid (the trash of a bundle removal ends in the pid instead)
_WORK_KINDS = ("fetch", "versions", "create", "import")
_WORK_NAME = re.compile(r"^(?:(?:%s)-(\d+)-.*|(?:damaged|remove)-[0-9a-f]+-(\d+))$" % "|".join(_WORK_KINDS))


def work_dir(home: Home, kind: str) -> Path:
    """A new temporary folder under the cache's tmp, named so that sweep() knows its owner."""
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=home.tmp_dir()))


def sweep(home: Home) -> list[str]:
    """Removes the temporary folders of torchkeeper processes that are gone (a kill -9 or a
    power cut in the middle of a download): a partial wheel is never left to fill the disk.
    The folders of a process that still runs are left alone. Returns the names removed."""
    import psutil

    removed = []
    try:
        entries = list(home.tmp_dir().iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _WORK_NAME.match(p.name)
        if m is None:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid == os.getpid() or psutil.pid_exists(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p.name)
    return removed


def _where_hint() -> str:
    return (
        "check the network, or point pip elsewhere: PIP_INDEX_URL=URL (an index or mirror) "
        "or --find-links DIR (a folder of downloaded nvidia-* wheels)"
    )


class Fetcher:
    """Lists versions on the index and downloads wheels into the cache."""

    def __init__(self, home: Home, opts: PipOptions):
        self.home = home
        self.opts = opts
        self.root = home.cache_dir / "wheels" / opts.platform
        sweep(home)

    def _work(self, kind: str) -> Path:
        return work_dir(self.home, kind)

    def versions(self, name: str) -> list[str]:
        """Every version of name the index has a wheel of for this platform, oldest first."""
        work = self._work("versions")
        try:
            (work / "tmp").mkdir()
            rc, text = _pip(
                ["download", *self.opts.args(), "--dest", str(work / "out"), f"{name}<0"],
                work / "tmp",
                stall_s=self.opts.stall_s,
            )
        except Stalled:
            text = "timed out"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if _timed_out(text):  # before "(from versions: none)": a silent index is not an empty one
            raise UsageError(
                _(
                    "the package index did not answer within %(timeout_s)g s "
                    "(asking for the versions of %(name)s)"
                )
                % {"timeout_s": self.opts.timeout_s, "name": name},
                _(
                    "check the network and the index (PIP_INDEX_URL, pip.conf), "
                    "then try again; --timeout SECONDS waits longer"
                ),
            )
        m = _FROM_VERSIONS.search(text)
        if m is None and _no_space(text):
            raise _no_space_error(f"asking the package index for the versions of {name}", self.home.tmp_dir())
        if m is None:
            raise UsageError(
                _(
                    "could not list the versions of %(name)s (%(platform)s) on "
                    "the package index: %(_pip_says)s"
                )
                % {"name": name, "platform": self.opts.platform, "_pip_says": _pip_says(text)},
                _where_hint(),
            )
        found = [v.strip() for v in m.group(1).split(",") if v.strip() and v.strip() != "none"]
        return sorted(found, key=versions.version_key)

    def cached(self, name: str, version: str) -> Path | None:
        d = self.root / f"{name}-{version}"
        try:
            whl = [p for p in d.iterdir() if p.suffix == ".whl"]
            want = (d / "sha256").read_text().strip()
        except OSError:
            return None
        if len(whl) != 1 or sha256_file(whl[0]) != want:
            return None  # damaged: download again (the rename below replaces it)
        return whl[0]

    def download(self, name: str, version: str, progress=None) -> tuple[Path, bool]:
        """(the wheel in the cache, whether it was downloaded now)."""
        hit = self.cached(name, version)
        if hit is not None:
            return hit, False
        work = self._work("fetch")
        try:
            (work / "tmp").mkdir()
            out = work / f"{name}-{version}"
            try:
                rc, text = _pip(
                    ["download", *self.opts.args(), "--dest", str(out), f"{name}=={version}"],
                    work / "tmp",
                    progress,
                    stall_s=self.opts.stall_s,
                )
                got = sorted(out.glob("*.whl")) if out.is_dir() else []
                if rc == 0 and len(got) == 1:
                    (out / "sha256").write_text(sha256_file(got[0]) + "\n")
            except Stalled as e:
                raise _stalled(name, version, e.done, e.seconds) from None
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                rc, text, got = 1, str(e), []
            if rc != 0 or len(got) != 1:
                said = _pip_says(text)
                if _no_space(text):
                    raise _no_space_error(f"downloading {name} {version}", self.home.tmp_dir())
                if _timed_out(text):
                    raise _stalled(name, version, _tree_size(work / "tmp"), self.opts.timeout_s)
                raise UsageError(
                    _("could not download %(name)s %(version)s (%(platform)s): %(said)s")
                    % {"name": name, "version": version, "platform": self.opts.platform, "said": said},
                    _where_hint(),
                )
            _check_download(got[0])  # a wheel refused here never enters the cache
            final = self.root / out.name
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a damaged copy the check above rejected
                shutil.rmtree(final, ignore_errors=True)
            os.replace(out, final)
            return final / got[0].name, True
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def evict(self, name: str, version: str) -> None:
        """Drop a cached wheel (one the bundle refused): the next fetch downloads it again."""
        shutil.rmtree(self.root / f"{name}-{version}", ignore_errors=True)


def _stalled(name: str, version: str, done: int, seconds: float) -> UsageError:
    return UsageError(
        _(
            "the download of %(name)s %(version)s stalled after %(value).1f MB "
            "(nothing for %(seconds).0f s); nothing was kept"
        )
        % {"name": name, "version": version, "value": done / 1e6, "seconds": seconds},
        _("try again later, or another index or mirror (PIP_INDEX_URL); --timeout SECONDS waits longer"),
    )


def _check_download(whl: Path) -> None:
    """The checks a bundle makes of a wheel's members (paths, sizes, inflation), made before
    the wheel is kept: a refused wheel would otherwise be reused from the cache forever."""
    import zipfile

    from .bundle import check_wheel

    try:
        with zipfile.ZipFile(whl) as zf:
            check_wheel(whl, zf)
    except (zipfile.BadZipFile, OSError) as e:
        raise UsageError(
            _("the downloaded %(name)s is not a readable wheel: %(e)s") % {"name": whl.name, "e": e},
            _("fetch again; if it fails again, the index serves a damaged file"),
        ) from None


def host_platform() -> str:
    return libs.WINDOWS if sys.platform.startswith("win") else libs.LINUX


# -- the whole of `bundle fetch` ---------------------------------------------------------------
FLAG = {libs.CUDNN: "--cudnn", libs.CUBLAS: "--cublas", libs.CUDART: "--cudart"}


@dataclass
class Fetched:
    suggestion: object  # suggest.Suggestion
    wheels: list[JsonObject]  # {"package", "version", "file", "downloaded"}
    bundle: Manifest | None = None  # the manifest
    created: bool = False


def resolve_request(
    engine,
    target: str | None,
    asked: dict[str, str | None],
    cuda: str | None,
    platform: str | None,
    info=None,
):
    """(platform, CUDA major, wanted families -> version prefix, target info or None).
    asked maps a family to its flag's value ('' for "newest"); absent families were not asked.
    info: the install's TargetInfo when it is not a target yet (target is then its label)."""
    from ..errors import Refused

    for fam, spec in asked.items():
        if spec and not re.fullmatch(r"\d+(\.\d+){0,3}", spec):
            raise UsageError(
                _("%(FLAG)s %(spec)r is not a version") % {"FLAG": FLAG[fam], "spec": spec},
                _("write it like 9.5 or 9.5.1.17"),
            )
    if cuda is not None and not re.fullmatch(r"\d+", cuda):
        raise UsageError(
            _("--cuda %(cuda)r is not a CUDA major") % {"cuda": cuda}, _("use --cuda 11, 12 or 13")
        )
    if target is not None:
        info = info if info is not None else engine.inspect(target)
        tcuda = versions.major_minor(info.torch_cuda)
        if tcuda is None:
            raise Refused(
                _(
                    "target '%(target)s': torch %(torch_version)s is a CPU build: it "
                    "loads no CUDA libraries, so no wheel would help"
                )
                % {"target": target, "torch_version": info.torch_version},
                _("install a CUDA build of torch first"),
            )
        if platform and platform != info.platform:
            raise UsageError(
                _("--platform %(platform)s contradicts target '%(target)s' (%(platform2)s libraries)")
                % {"platform": platform, "target": target, "platform2": info.platform},
                _("drop --platform with --for"),
            )
        if cuda and int(cuda) != tcuda[0]:
            raise UsageError(
                _("--cuda %(cuda)s contradicts target '%(target)s' (torch uses CUDA %(torch_cuda)s)")
                % {"cuda": cuda, "target": target, "torch_cuda": info.torch_cuda},
                _("drop --cuda with --for"),
            )
        platform, major = info.platform, tcuda[0]
        wanted = {f: (asked[f] or None) for f in asked}
        if not wanted:  # every library torch loads there
            wanted = {f: None for f in (libs.CUDNN, libs.CUBLAS, libs.CUDART) if info.family_keys(f)}
    else:
        if not asked:
            raise UsageError(
                _(
                    "say what to fetch: --cudnn, --cublas, --cudart (each with an "
                    "optional version), or --for TARGET"
                ),
                _(
                    "e.g. `torchkeeper bundle fetch --for a1111` or `torchkeeper "
                    "bundle fetch --cudnn 9.5 --cuda 12 --platform windows`"
                ),
            )
        platform = platform or host_platform()
        majors = {int(v.split(".")[0]) for f, v in asked.items() if v and f != libs.CUDNN}
        if cuda:
            majors.add(int(cuda))
        if len(majors) > 1:
            raise UsageError(
                _("the versions asked are for different CUDA majors: %(majors)s")
                % {"majors": ", ".join(sorted(map(str, majors)))},
                _("fetch one CUDA major at a time"),
            )
        if not majors:
            raise UsageError(
                _("which CUDA major is this cuDNN for?"),
                _("add --cuda 11, 12 or 13 (nvidia-cudnn-cu11/-cu12/-cu13), or use --for TARGET"),
            )
        major = majors.pop()
        wanted = {f: (asked[f] or None) for f in asked}
    if major not in wheels.CUDA_MAJORS:
        raise UsageError(
            _("no NVIDIA wheels are known for CUDA %(major)s") % {"major": major},
            _("use --cuda %(join)s") % {"join": " or ".join(map(str, wheels.CUDA_MAJORS))},
        )
    return platform, major, wanted, info


def _choose(engine, target, asked, cuda, platform, opts, info):
    """The one path from a request to a choice, for `suggest` and `fetch` alike: resolve the
    request, list the index's versions, choose (suggest.choose, pure). The caller's PipOptions
    are left as they were (a copy gets the resolved platform)."""
    from dataclasses import replace

    from . import suggest

    platform, major, wanted, info = resolve_request(engine, target, asked, cuda, platform, info=info)
    opts = replace(opts, platform=platform) if opts is not None else PipOptions(platform)
    fx = Fetcher(engine.home, opts)
    found = {f: fx.versions(wheels.package(f, major)) for f in wanted}
    driver = engine.driver() if info is not None else None
    return (
        suggest.choose(platform, major, wanted, found, info, driver, target, pre=opts.pre),
        fx,
        major,
        wanted,
    )


def suggest_for(engine, name: str, opts: PipOptions):
    """The suggestion for one target: its families, the index's versions, the gate's rules."""
    return _choose(engine, name, {}, None, None, opts, None)[0]


def suggest_for_install(engine, path: str, label: str, opts: PipOptions):
    """The same for a torch install that is not a target yet (one discover found)."""
    from . import target as targetmod

    return _choose(engine, label, {}, None, None, opts, targetmod.inspect(path, engine.home.cache_dir))[0]


def fetch_bundle(
    engine,
    *,
    target: str | None = None,
    asked: dict[str, str | None] = None,
    cuda: str | None = None,
    platform: str | None = None,
    name: str | None = None,
    opts: PipOptions | None = None,
    progress=None,
    say=None,
) -> Fetched:
    """Choose, download (or take from the cache) and build the bundle. progress(label, done,
    total) during downloads; say(line) for each step."""
    from ..errors import Refused
    from . import suggest
    from .state import log_event

    asked = asked or {}
    say = say or (lambda line: None)
    s, fx, major, wanted = _choose(engine, target, asked, cuda, platform, opts, None)
    platform = s.platform
    if not s.chosen or any(f not in s.chosen for f in asked):
        missing = [f for f in (asked or wanted) if f not in s.chosen]
        fam = missing[0] if missing else next(iter(wanted))
        pkg = wheels.package(fam, major)
        seen = [c for c in s.candidates if c.family == fam]
        detail = "; ".join(f"{c.version}: {c.why}" for c in seen[:4]) or _(
            "the index has no %(pkg)s for %(platform)s"
        ) % {"pkg": pkg, "platform": platform}
        if target is not None:
            raise Refused(
                _("target '%(target)s': no %(pkg)s on the index fits (%(detail)s)")
                % {"target": target, "pkg": pkg, "detail": detail},
                _(
                    "see `torchkeeper suggest %(target)s` for the rules; pass a version with %(flag)s to "
                    "fetch one anyway for another target"
                )
                % {"target": target, "flag": FLAG[fam]},
            )
        raise UsageError(
            _("no %(pkg)s version on the index matches (%(detail)s)") % {"pkg": pkg, "detail": detail},
            _(
                "see the versions with `torchkeeper bundle fetch %(FLAG)s --cuda "
                "%(major)s` (newest), or point pip elsewhere (PIP_INDEX_URL, "
                "--find-links)"
            )
            % {"FLAG": FLAG[fam], "major": major},
        )
    out = Fetched(s, [])
    for fam in suggest.FAMILY_ORDER:
        if fam not in s.chosen:
            continue
        pkg, ver = s.chosen[fam]["package"], s.chosen[fam]["version"]
        label = f"{pkg} {ver}"
        path, downloaded = fx.download(
            pkg, ver, (lambda d, t, lb=label: progress(lb, d, t)) if progress else None
        )
        say(("downloaded " if downloaded else "from the cache: ") + f"{label} ({path.name})")
        out.wheels.append({"package": pkg, "version": ver, "file": str(path), "downloaded": downloaded})
    try:
        m, created = engine.bundles.create([w["file"] for w in out.wheels], name)
    except UsageError as e:  # a wheel the bundle refuses (a fake DLL, ...): not kept for next time
        for w in out.wheels:
            fx.evict(w["package"], w["version"])
        raise UsageError(
            _("%(message)s (the downloaded wheels were removed from the cache)") % {"message": e.message},
            e.hint,
        ) from None
    out.bundle, out.created = m, created
    log_event(
        engine.home,
        "fetched",
        target=target,
        bundle=m["id"],
        bundle_name=m["name"],
        wheels=[f"{w['package']}=={w['version']}" for w in out.wheels],
        downloaded=[w["package"] for w in out.wheels if w["downloaded"]],
    )
    return out
