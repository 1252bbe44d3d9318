"""The way back, checked the same way everywhere: after any sequence of events every managed
library file of a target is the stock bytes (RECORD's hash) or the bundle's bytes, the same
for a whole family, and revert gives back the stock bytes.

Targets are real venvs filled by the real pip with torch-shaped wheels (tests/kit/builders.py),
driven through the real CLI (conftest's ``run_tk``). Shared by the transaction, hardening and
agent tests: build on these rather than writing another classifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kit import builders
from torchkeeper.engine import libs

NAME = "t"
KILLED = (-9, 137)
LEFTOVER_SUFFIXES = (".tk-new", ".tk-restore")

WIN_TORCH = dict(version="2.3.1+cu121", cuda="12.1", layout="windows", cudnn="8.8.1.3")
LINUX_TORCH = dict(version="2.4.1+cu121", cuda="12.1", layout="linux-nvidia", cudnn="9.1.0.70")
LINUX_NVIDIA = [("cudnn", "9.1.0.70"), ("cublas", "12.1.3.1"), ("cuda_runtime", "12.1.105")]
# Windows torch taking its CUDA libraries from nvidia-* wheels (nvidia/<part>/bin; CUDA 13:
# the merged nvidia/cu13/bin/x86_64, cuDNN in nvidia/cudnn/bin)
WIN_NVIDIA_TORCH = dict(version="2.6.0+cu124", cuda="12.4", layout="windows-nvidia", cudnn="9.1.0.70")
WIN_NVIDIA = [("cudnn", "9.1.0.70"), ("cublas", "12.4.5.8"), ("cuda_runtime", "12.4.127")]
WIN_CU13_TORCH = dict(version="2.12.0+cu130", cuda="13.0", layout="windows-nvidia", cudnn="9.13.0.50")
WIN_CU13 = [("cudnn", "9.13.0.50"), ("cublas", "13.1.0.3"), ("cuda_runtime", "13.0.96")]
LAYOUTS = {  # layout -> (torch wheel, [(nvidia lib, version)], CUDA major, platform)
    "windows": (WIN_TORCH, [], 12, "windows"),
    "linux-nvidia": (LINUX_TORCH, LINUX_NVIDIA, 12, "linux"),
    "windows-nvidia": (WIN_NVIDIA_TORCH, WIN_NVIDIA, 12, "windows"),
    "windows-nvidia-cu13": (WIN_CU13_TORCH, WIN_CU13, 13, "windows"),
}


def key_of(rel: str) -> str:
    """The library key a path's file name stands for (Windows names in any case)."""
    return libs.parse(rel.rsplit("/", 1)[-1]).key


# ----------------------------------------------------------------------------- helpers


@dataclass
class Target:
    venv: Path
    sp: Path
    home: Path
    wheels: list[Path]
    stock: dict[str, str]                     # rel -> sha256 from RECORD (managed libraries)
    bundles: dict[str, dict] = field(default_factory=dict)  # name -> {"id", "files": {key: sha}}

    def expect(self, bundle: str | None) -> dict[str, str]:
        """Every managed file's hash when `bundle` is applied (None: stock)."""
        if bundle is None:
            return dict(self.stock)
        files = self.bundles[bundle]["files"]
        return {rel: files.get(key_of(rel), sha) for rel, sha in self.stock.items()}

    def lib_dirs(self) -> list[Path]:
        return sorted({(self.sp / rel).parent for rel in self.stock})


def record_libs(sp: Path) -> dict[str, str]:
    """{rel: sha256} of every managed library some RECORD in sp lists."""
    out = {}
    for di in sorted(sp.glob("*.dist-info")):
        dist, _, version = di.name[: -len(".dist-info")].rpartition("-")
        for rel, (sha, _size) in builders.record_hashes(sp, dist, version).items():
            if libs.parse(rel.rsplit("/", 1)[-1]) is not None:
                out[rel] = sha
    assert out, f"no managed libraries in any RECORD under {sp}"
    return out


def present_libs(sp: Path) -> dict[str, str]:
    """{rel: sha256} of every managed library in torch/lib and nvidia/*/lib as it is now: the
    stock files of a target whose RECORD cannot tell them (no RECORD, no hashes, conda)."""
    out = {}
    for d in [sp / "torch" / "lib", *sorted(sp.glob("nvidia/*/lib"))]:
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if p.is_file() and libs.parse(p.name) is not None:
                out[p.relative_to(sp).as_posix()] = builders.sha256_file(p)
    assert out, f"no managed libraries under {sp}"
    return out


def hashes(t: Target) -> dict[str, str]:
    return {rel: builders.sha256_file(t.sp / rel) for rel in t.stock}


def classify(t: Target, candidates: dict[str, str | None]) -> str:
    """Which candidate state (label -> bundle name or None for stock) the files are in, exactly.

    Fails with a per-file account when the target is mixed (or matches none)."""
    now = hashes(t)
    extra = sorted(p.name for d in t.lib_dirs() for p in d.iterdir()
                   if libs.parse(p.name) and f"{d.relative_to(t.sp).as_posix()}/{p.name}" not in t.stock)
    for label, bundle in candidates.items():
        if now == t.expect(bundle) and not extra:
            return label
    lines = []
    for rel, sha in sorted(now.items()):
        which = [lb for lb, b in candidates.items() if t.expect(b)[rel] == sha] or ["none"]
        lines.append(f"  {rel}: {'/'.join(which)}")
    raise AssertionError("target is not entirely one of " + ", ".join(candidates) +
                         (f"; extra libraries: {extra}" if extra else "") + "\n" + "\n".join(lines))


def leftovers(t: Target) -> list[str]:
    return sorted(str(p) for p in t.sp.rglob("*") if p.name.endswith(LEFTOVER_SUFFIXES))


def journals(t: Target) -> list[str]:
    d = t.home / "data" / "journal"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def backup_files(t: Target) -> list[Path]:
    d = t.home / "data" / "backups"
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.is_dir() else []


def state(t: Target) -> dict:
    return json.loads((t.home / "data" / "state.json").read_text())


def ok(r):
    assert r.rc == 0, str(r)
    assert "Traceback" not in r.err, str(r)
    return r


def status_of(run_tk) -> tuple[dict, object]:
    r = ok(run_tk("status", "--json"))
    st = r.json()
    (tgt,) = [x for x in st["targets"] if x["name"] == NAME]
    assert st["journal"] == [], str(r)
    return tgt, r


def assert_clean(t: Target) -> None:
    assert leftovers(t) == []
    assert journals(t) == []


def assert_stock(t: Target, run_tk) -> None:
    classify(t, {"stock": None})
    assert_clean(t)
    tgt, r = status_of(run_tk)
    assert tgt["state"] == "stock", str(r)
    assert "applied" not in tgt, str(r)


def assert_patched(t: Target, run_tk, bundle: str) -> None:
    classify(t, {bundle: bundle})
    assert_clean(t)
    tgt, r = status_of(run_tk)
    assert tgt["state"] == "patched", str(r)
    assert tgt["applied"]["bundle"] == t.bundles[bundle]["id"], str(r)


def make_target(build, tmp_path: Path, run_tk, tk_home: Path, layout: str, venv: Path | None = None,
                spell=None, install=None) -> Target:
    """A venv with torch of `layout` (see LAYOUTS), added as target NAME. spell names the
    managed library files (str.upper); install(venv, *wheels) replaces pip (uv, say)."""
    wh = tmp_path / "wheels"
    torch, nvidia, cuda_major, platform = LAYOUTS[layout]
    wheels = [build.torch_wheel(wh, **torch, spell=spell)]
    wheels += [build.nvidia_wheel(wh, lib=lib, version=v, cuda_major=cuda_major, platform=platform,
                                  spell=spell) for lib, v in nvidia]
    venv = builders.make_venv(venv or tmp_path / "venv")
    (install or builders.pip_install)(venv, *wheels)
    sp = builders.site_packages(venv)
    ok(run_tk("target", "add", venv, "--name", NAME))
    return Target(venv, sp, tk_home, wheels, record_libs(sp))


def add_bundle(t: Target, run_tk, name: str, *sources) -> None:
    ok(run_tk("bundle", "create", *sources, "--name", name))
    m = ok(run_tk("bundle", "show", name, "--json")).json()
    t.bundles[name] = {"id": m["id"], "files": {f["name"]: f["sha256"] for f in m["files"]}}
    touched = [rel for rel in t.stock if key_of(rel) in t.bundles[name]["files"]]
    assert len(touched) == len(m["files"]), f"bundle {name} has files the target lacks: {m['files']}"


def win_sources(build, tmp_path: Path, cudnn: str, cuda: str | None = "12.4.127") -> list[Path]:
    src = tmp_path / "src" / f"{cudnn}-{cuda}"
    out = [build.cudnn_archive(src, version=cudnn, cuda_major=12, platform="windows")]
    if cuda:
        out.append(build.cuda_toolkit(src, version=cuda, platform="windows"))
    return out


def windows_target(build, tmp_path, run_tk, tk_home, **kw) -> Target:
    t = make_target(build, tmp_path, run_tk, tk_home, "windows", **kw)
    add_bundle(t, run_tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    return t


def linux_target(build, tmp_path, run_tk, tk_home) -> Target:
    """linux-nvidia: the overlay goes into nvidia/cudnn/lib and nvidia/cublas/lib."""
    t = make_target(build, tmp_path, run_tk, tk_home, "linux-nvidia")
    src = tmp_path / "src"
    archive = build.cudnn_archive(src, version="9.5.1.17", cuda_major=12, platform="linux")
    cublas = build.nvidia_wheel(src, lib="cublas", version="12.4.5.8", cuda_major=12, platform="linux")
    add_bundle(t, run_tk, "a", archive, cublas)
    assert {rel.rsplit("/", 1)[0] for rel in t.stock if rel.rsplit("/", 1)[1] in t.bundles["a"]["files"]} \
        == {"nvidia/cudnn/lib", "nvidia/cublas/lib"}
    return t


def crash_at(t: Target, run_tk, tmp_path: Path, cmd: list[str], n: int) -> str:
    """Run `cmd` killed (SIGKILL) at its n-th transaction checkpoint; returns that checkpoint's
    label. The interrupted transaction's journal is left for the next command."""
    trace = tmp_path / f"crash-trace-{n}.txt"
    r = run_tk(*cmd, extra_env={"TORCHKEEPER_TEST_CRASH_AT": n, "TORCHKEEPER_TEST_CRASH_TRACE": trace})
    assert r.rc in KILLED, str(r)
    assert journals(t) == [f"{NAME}.json"], str(r)
    return trace.read_text().splitlines()[-1].partition(" ")[2]


def journal_file(t: Target) -> Path:
    return t.home / "data" / "journal" / f"{NAME}.json"


def set_aside_journals(t: Target) -> list[Path]:
    """Unreadable journals the engine moved away (kept, never deleted), resolved or not."""
    d = t.home / "data" / "journal-damaged"
    return sorted(d.iterdir()) if d.is_dir() else []


def inodes(t: Target) -> dict[str, int]:
    return {rel: (t.sp / rel).stat().st_ino for rel in t.stock}


def assert_error(r, code: int, *names: str) -> str:
    """A failed command's one `error:` line (naming each of names) and its `hint:` line;
    returns the hint."""
    assert r.rc == code, str(r)
    assert "Traceback" not in r.err, str(r)
    lines = r.err.splitlines()
    assert [x[:6] for x in lines] == ["error:", "hint: "], str(r)
    for n in names:
        assert str(n) in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[1]
