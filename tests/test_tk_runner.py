"""./tk, the checkout's runner: the first run installs what running needs (no test tools) and
says so step by step; a .venv that ./run-tests keeps up to date is used as it is."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _checkout(tmp_path: Path) -> Path:
    """A checkout of a tiny torchkeeper-shaped project: the real ./tk, a test extra that
    would be seen if ./tk installed it."""
    co = tmp_path / "co"
    (co / "pkg" / "torchkeeper").mkdir(parents=True)
    shutil.copy(REPO / "tk", co / "tk")
    (co / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "torchkeeper"\nversion = "0.0.1"\n'
        '[project.optional-dependencies]\ntest = ["tk-test-only-extra-never-installed"]\n'
        '[tool.setuptools.packages.find]\nwhere = ["pkg"]\n')
    (co / "pkg" / "torchkeeper" / "__init__.py").write_text("")
    (co / "pkg" / "torchkeeper" / "__main__.py").write_text(
        "import sys\nprint('ran', *sys.argv[1:])\n")
    return co


def _tk(co: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    return subprocess.run(["bash", str(co / "tk"), *args], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


def test_first_run_installs_only_what_running_needs_and_shows_progress(tmp_path):
    co = _checkout(tmp_path)
    r = _tk(co, "status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ran status"
    # visible steps, and pip's own progress (not -q)
    assert "tk: making" in r.stderr and "step 2/2" in r.stderr, r.stderr
    assert "Successfully installed torchkeeper" in r.stderr, r.stderr
    # the test extra was never asked for (it does not exist: asking would have failed)
    assert "tk-test-only-extra" not in r.stderr
    again = _tk(co, "x")
    assert again.returncode == 0 and again.stdout.strip() == "ran x" and again.stderr == "", again.stderr
