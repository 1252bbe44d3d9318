"""Dependencies that hold: every runtime dependency has a lower bound (what `./run-tests
--lowest` installs and tests), and the Windows app's lock file satisfies pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = REPO / "installer" / "windows" / "requirements.lock"
WINDOWS = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
           "python_version": "3.11", "python_full_version": "3.11.9", "implementation_name": "cpython",
           "platform_machine": "AMD64", "platform_python_implementation": "CPython", "extra": ""}


def _requirements(extra: str | None = None) -> list[Requirement]:
    deps = PYPROJECT["project"]["dependencies"]
    if extra:
        deps = deps + PYPROJECT["project"]["optional-dependencies"][extra]
    return [Requirement(d) for d in deps]


def test_every_runtime_dependency_has_a_lower_bound():
    for req in _requirements("buttons"):
        assert any(s.operator in (">=", "==", "~=") for s in req.specifier), \
            f"{req}: no lower bound, so `./run-tests --lowest` cannot test the oldest allowed"


def test_the_internals_we_patch_are_bounded_above():
    """tray.py patches pystray's X11 backend; an upper bound keeps a new release from
    breaking a running tray unnoticed (tested by the next bump, deliberately)."""
    bounded = {canonicalize_name(r.name): r for r in _requirements()}
    for name in ("pystray", "watchdog", "apscheduler", "inotify-simple", "pefile"):
        assert any(s.operator == "<" for s in bounded[name].specifier), bounded[name]


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_the_windows_lock_satisfies_pyproject_and_pins_with_hashes():
    pins = _lock()
    text = LOCK.read_text()
    assert pins and text.count("--hash=sha256:") >= len(pins)
    for req in _requirements("buttons"):
        if req.marker is not None and not req.marker.evaluate(WINDOWS):
            continue   # Linux-only (inotify-simple, jeepney)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is missing from {LOCK.name}: make it anew (see its header)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{LOCK.name} pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
    assert "pyinstaller" in pins
    assert not Marker("sys_platform == 'linux'").evaluate(WINDOWS)
