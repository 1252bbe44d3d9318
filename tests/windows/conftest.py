"""The Windows test tier: a real Windows CPython 3.11 under Wine (see tests/windows/setup.sh).

Every test in tests/windows gets the ``windows`` marker (``-m "not windows"`` leaves the tier
out). The tier never skips itself: when Wine cannot be set up, its tests fail with setup.sh's
output and a hint.

Fixtures:

* ``wine_session`` (session): runs setup.sh when ``setup.sh --check`` says it is needed (./run-tests
  runs it before pytest), then joins the shared Wine session: an Xvfb display and a warm,
  persistent wineserver, shared by all xdist workers. Leaving it stops nothing at once: Wine exits
  60 s after the last test process left it, and its Xvfb with it (``winkit.stop_all()`` now).
* ``win_display`` (session): the session's X DISPLAY (":N"). Every Windows process already gets it;
  use it for Linux-side X tools (xdotool, xwd) on windows the tests open.
* ``win`` (function): a ``winkit.Win`` bound to the test's tmp_path:

  - ``win.run(args, env=None, timeout=120, cwd=None, input=None) -> WinResult(rc, out, err, seconds,
    .json())``: args[0] is "python" (C:\\Python311\\python.exe), a Windows path or a Linux path;
    every pathlib.Path in args is passed as its Z:\\ path. The environment is small and clean
    (PATH, HOME, USER, LANG, WINEPREFIX, WINEDEBUG=-all, WINEDLLOVERRIDES, DISPLAY, PYTHONUTF8=1)
    plus ``env`` (a value None removes a variable; Path values become Windows paths).
  - ``win.py(*args)``: the base python.exe; ``win.tk(*args, env=None, python=None)``:
    ``python.exe -m torchkeeper ARGS`` with TORCHKEEPER_HOME = ``win.home`` (tmp_path/tk-home).
  - ``win.path(linux_path) -> "Z:\\..."``, ``win.unix(windows_path) -> Path`` (Z: and C:).
  - ``win.venv(dir, pip=True) -> dir``: a real Windows venv (virtualenv --copies; pip, no setuptools).
    ``win.venv_python(venv)``, ``win.site_packages(venv)`` (Linux paths).
  - ``win.pip(venv, *args, check=True)``: the venv's pip; ``win.pip_install(venv, *wheels, deps=False)``
    offline (``deps=True`` resolves from the setup's wheelhouse: torchkeeper's Windows deps).
  - ``win.popen(args, env=None, **kw) -> subprocess.Popen`` (text pipes): for programs that keep running.
  - ``win.python``, ``win.prefix``, ``win.wheelhouse``, ``win.tk_wheel``, ``win.home``, ``win.display``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import winkit  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "windows: runs a real Windows CPython under Wine (tests/windows)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.windows)
            # the limit is the test's own (its module's, else the suite's): waiting for the tier's
            # lock (fixture setup) while another worker runs a Windows test does not count
            limit = item.get_closest_marker("timeout")
            seconds = limit.args[0] if limit and limit.args else config.getini("timeout")
            item.add_marker(pytest.mark.timeout(float(seconds), func_only=True))


@pytest.fixture(scope="session")
def wine_session():
    winkit.ensure_setup()
    s = winkit.WineSession()
    with winkit.tier_lock():
        s.up()
    yield s
    s.down()


@pytest.fixture(scope="session")
def win_display(wine_session) -> str:
    return wine_session.display


@pytest.fixture
def win(wine_session, tmp_path) -> winkit.Win:
    # one Windows test at a time, whichever xdist worker runs it: two workers sharing one Wine
    # session must never bring it up again under each other's running programs. (--dist
    # loadgroup would keep the tier on one worker, but pytest 9.2 broke it: pytest-xdist#1386.)
    with winkit.tier_lock():
        wine_session.ensure()   # a session that died under an earlier test comes up again (logged)
        yield winkit.Win(wine_session, tmp_path)
