"""watch.Watcher on real folders with real watchdog and inotify: one due burst per install, the
agent's own writes dropped, folders renamed and re-armed, one reader thread for every watch. The
tests use short quiet periods (0.1-0.2 s) and poll with deadlines. (The Debouncer alone, on a fake
clock: test_debounce.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kit.agentkit import wait_for
from kit import builders
from torchkeeper.daemon.watch import Burst, Debouncer, Watcher, install_done


@pytest.fixture
def sp(tmp_path) -> Path:
    d = tmp_path / "site-packages"
    (d / "torch" / "lib").mkdir(parents=True)
    return d


# ---- Watcher on real folders ----------------------------------------------------------------

class Dues:
    def __init__(self):
        self.items: list[tuple[str, Burst]] = []
        self.lock = threading.Lock()

    def __call__(self, name, burst):
        with self.lock:
            self.items.append((name, burst))

    def __len__(self):
        with self.lock:
            return len(self.items)

    def last(self):
        with self.lock:
            return self.items[-1]


@pytest.fixture
def make_watcher():
    made = []

    def make(quiet=0.1, max_wait=5.0, is_own=None):
        dues = Dues()
        kw = {"is_own": is_own} if is_own else {}
        w = Watcher(Debouncer(quiet, max_wait), dues, **kw)
        w.start()
        made.append(w)
        return w, dues

    yield make
    for w in made:
        w.stop()


def settle(w: Watcher, dues: Dues, n: int, timeout: float = 5.0):
    """Until n bursts were handed out and nothing is pending."""
    wait_for(lambda: len(dues) >= n and not w.debouncer.pending(), timeout, f"{n} due burst(s)")


def calm(w: Watcher, dues: Dues, seconds: float = 0.3, timeout: float = 5.0) -> int:
    """Until nothing was pending and no burst came out for ``seconds``; the count of bursts."""
    deadline = time.monotonic() + timeout
    n, since = len(dues), time.monotonic()
    while time.monotonic() < deadline:
        if w.debouncer.pending() or len(dues) != n:
            n, since = len(dues), time.monotonic()
        elif time.monotonic() - since >= seconds:
            return n
        time.sleep(0.02)
    raise AssertionError("the watcher never calmed down")


def quiet_for(w: Watcher, dues: Dues, seconds: float):
    """Nothing due and nothing pending, for ``seconds``."""
    n = len(dues)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert len(dues) == n, f"unexpected burst: {dues.last()}"
        assert not w.debouncer.pending(), "unexpected pending events"
        time.sleep(0.02)


def test_watcher_one_due_per_burst(make_watcher, sp):
    w, dues = make_watcher(quiet=0.2)
    w.set_target("t", sp, ["torch/lib"])
    assert w.targets() == ["t"]
    assert w.watched("t") == sorted([str(sp), str(sp / "torch" / "lib")])
    lib = sp / "torch" / "lib"
    for i in range(10):
        (lib / f"cudnn{i}.dll").write_bytes(b"x" * 100)
    settle(w, dues, 1)
    name, b = dues.last()
    assert name == "t" and b.events >= 10
    quiet_for(w, dues, 0.6)                  # the burst came out once
    assert len(dues) == 1
    # a second burst, later, is another check
    (lib / "cudnn0.dll").unlink()
    settle(w, dues, 2)
    assert len(dues) == 2


def test_watcher_ignores_reads(make_watcher, sp):
    lib = sp / "torch" / "lib"
    (lib / "torch_cuda.dll").write_bytes(b"x" * 4096)   # before the watch: not an event
    w, dues = make_watcher(quiet=0.1)
    w.set_target("t", sp, ["torch/lib"])
    for _ in range(5):                       # a running webui loading its libraries
        assert (lib / "torch_cuda.dll").read_bytes()
        os.listdir(lib)
        os.stat(lib / "torch_cuda.dll")
    quiet_for(w, dues, 0.5)
    assert len(dues) == 0
    # the watch is live: a write is seen
    (lib / "torch_cuda.dll").write_bytes(b"y")
    settle(w, dues, 1)


def test_watcher_drops_events_from_a_renamed_folder_and_rearms(make_watcher, sp):
    w, dues = make_watcher(quiet=0.1)
    w.set_target("t", sp, ["torch/lib"])
    lib = sp / "torch" / "lib"
    old_ino = os.stat(lib).st_ino
    # Hold the watcher's lock: the timer thread cannot re-arm, so the old watch (which
    # followed its inode into the stash) is still there when pip writes into ~orch/lib.
    # Without the lock that moment is a race the re-arm usually wins.
    with w._lock:
        os.rename(sp / "torch", sp / "~orch")
        lib.mkdir(parents=True)
        (lib / "new.dll").write_bytes(b"new")
        (sp / "~orch" / "lib" / "stashed.dll").write_bytes(b"old")
        wait_for(lambda: w.dropped_stale > 0, 5, "an event from the stale watch dropped")
    assert os.stat(lib).st_ino != old_ino
    # the rename's burst waits for the stash, as pip deletes it last
    time.sleep(0.3)
    assert len(dues) == 0 and w.debouncer.pending()
    shutil.rmtree(sp / "~orch")
    settle(w, dues, 1)
    b = dues.last()[1]
    assert b.stashes == {"~orch"}
    assert w.watched("t") == sorted([str(sp), str(lib)])
    # the NEW torch/lib is watched: a write there alone (no site-packages event) is seen.
    # (On a loaded machine the stash's deletion may reach the watcher after the check it
    # allowed, and make one more burst: let that pass first.)
    n = calm(w, dues)
    (lib / "cudnn_ops64_9.dll").write_bytes(b"v9")
    settle(w, dues, n + 1)


def test_watcher_arms_a_lib_folder_that_appears_later(make_watcher, tmp_path):
    sp = tmp_path / "site-packages"
    sp.mkdir()
    w, dues = make_watcher(quiet=0.1)
    w.set_target("t", sp, ["torch/lib"])
    assert w.watched("t") == [str(sp)]       # torch/lib is not there yet
    (sp / "torch" / "lib").mkdir(parents=True)   # "torch" created: a site-packages event
    settle(w, dues, 1)
    assert w.watched("t") == sorted([str(sp), str(sp / "torch" / "lib")])
    (sp / "torch" / "lib" / "x.dll").write_bytes(b"x")
    settle(w, dues, 2)


def test_watcher_drops_own_events(make_watcher, sp):
    own = lambda target, path: Path(path).name.startswith("own-")  # noqa: E731
    w, dues = make_watcher(quiet=0.1, is_own=own)
    w.set_target("t", sp, ["torch/lib"])
    lib = sp / "torch" / "lib"
    for i in range(3):
        (lib / f"own-{i}.dll").write_bytes(b"ours")
    os.rename(lib / "own-0.dll", lib / "own-0b.dll")
    wait_for(lambda: w.dropped_own >= 4, 5, "own events dropped")
    quiet_for(w, dues, 0.4)
    assert len(dues) == 0
    # a move from our file to a foreign name is not ours
    os.rename(lib / "own-1.dll", lib / "cudnn.dll")
    settle(w, dues, 1)


def test_watcher_ignores_unrelated_site_packages_entries(make_watcher, sp):
    w, dues = make_watcher(quiet=0.1)
    w.set_target("t", sp, ["torch/lib"])
    (sp / "gradio").mkdir()
    (sp / "gradio" / "__init__.py").write_text("")
    (sp / "gradio-4.44.0.dist-info").mkdir()
    (sp / "numpy.libs").mkdir()
    (sp / "six.py").write_text("")
    os.rename(sp / "gradio", sp / "gradio_old")
    quiet_for(w, dues, 0.5)
    assert len(dues) == 0


def test_watcher_counts_torch_entries_in_site_packages(make_watcher, sp):
    w, dues = make_watcher(quiet=0.1)
    w.set_target("t", sp, ["torch/lib"])
    di = sp / "torch-2.5.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Name: torch\n")
    # RECORD is missing: quiet, but not finished
    time.sleep(0.5)
    assert len(dues) == 0 and w.debouncer.pending()
    (di / "RECORD").write_text("")   # inside the dist-info: not an event, found by polling
    settle(w, dues, 1)
    b = dues.last()[1]
    assert b.dist_infos == {"torch-2.5.1.dist-info"}
    # an nvidia wheel in site-packages counts too
    (sp / "nvidia").mkdir()
    settle(w, dues, 2)


def test_watcher_remove_target(make_watcher, sp):
    w, dues = make_watcher(quiet=0.1)
    w.set_target("t", sp, ["torch/lib"])
    w.remove_target("t")
    assert w.targets() == [] and w.watched("t") == []
    (sp / "torch" / "lib" / "x.dll").write_bytes(b"x")
    (sp / "torch-9.dist-info").mkdir()
    quiet_for(w, dues, 0.4)
    assert len(dues) == 0


def test_watcher_survives_a_failing_callback(sp):
    calls = []

    def on_due(name, burst):
        calls.append(name)
        raise RuntimeError("boom")

    w = Watcher(Debouncer(0.1, 5), on_due)
    w.start()
    try:
        w.set_target("t", sp, ["torch/lib"])
        (sp / "torch" / "lib" / "a.dll").write_bytes(b"a")
        wait_for(lambda: len(calls) == 1, 5, "first burst")
        time.sleep(0.3)
        (sp / "torch" / "lib" / "b.dll").write_bytes(b"b")
        wait_for(lambda: len(calls) == 2, 5, "second burst after a failing callback")
    finally:
        w.stop()


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_real_install_is_due_after_settle_and_finished(installer, build, tmp_path):
    """A real pip / uv reinstall: one burst, handed out before a (long) quiet period would
    allow, and only once the install is complete (the new torch/ whole, no stash)."""
    wheel = build.torch_wheel(tmp_path / "w", layout="windows")
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, wheel)
    sp = builders.site_packages(venv)
    stock = sorted(p.name for p in (sp / "torch" / "lib").iterdir())
    seen = []

    def on_due(name, burst):
        seen.append((time.monotonic(), sorted(p.name for p in (sp / "torch" / "lib").iterdir()),
                     sorted(e for e in os.listdir(sp) if e.startswith("~")),
                     install_done(sp, burst)))

    quiet = 20
    w = Watcher(Debouncer(quiet, 60, settle=0.1), on_due)
    w.start()
    try:
        w.set_target("t", sp, ["torch/lib"])
        if installer == "pip":
            builders.pip_install(venv, wheel, force_reinstall=True)
        else:
            uv = shutil.which("uv", path=str(Path(sys.executable).parent))
            env = dict(os.environ, UV_LINK_MODE="hardlink", UV_CACHE_DIR=str(tmp_path / "uv-cache"),
                       UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
            subprocess.run([uv, "pip", "install", "--python", str(builders.venv_python(venv)), "--offline",
                            "--no-index", "--find-links", str(wheel.parent), "--reinstall", "--no-deps", "-q",
                            str(wheel)], check=True, env=env, stdin=subprocess.DEVNULL)
        exited = time.monotonic()
        wait_for(lambda: seen, quiet / 2, "the burst, well before the quiet period")
        time.sleep(0.5)
    finally:
        w.stop()
    assert len(seen) == 1, seen                 # one install, one check
    at, libs, stashes, done = seen[0]
    assert at - exited < quiet / 2
    assert libs == stock and stashes == [] and done


# ---- one thread for every watch (Linux) ------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux")


@linux_only
def test_watcher_threads_do_not_grow_with_targets(make_watcher, tmp_path):
    """50 targets, two watches each: no thread per watch (watchdog's Observer ran one each)."""
    w, dues = make_watcher(quiet=0.1)
    before = threading.active_count()
    sps = []
    for i in range(50):
        sp = tmp_path / f"t{i}" / "site-packages"
        (sp / "torch" / "lib").mkdir(parents=True)
        w.set_target(f"t{i}", sp, ["torch/lib"])
        sps.append(sp)
    assert all(len(w.watched(f"t{i}")) == 2 for i in range(50))
    assert threading.active_count() - before <= 1
    (sps[7] / "torch" / "lib" / "cudnn64_9.dll").write_bytes(b"x")
    (sps[42] / "torch-2.5.1.dist-info").mkdir()
    (sps[42] / "torch-2.5.1.dist-info" / "RECORD").write_text("")
    settle(w, dues, 2)
    assert sorted(n for n, _ in dues.items) == ["t42", "t7"]
    for i in range(50):
        w.remove_target(f"t{i}")
    assert threading.active_count() - before <= 1


def test_watcher_sees_a_file_moved_into_a_library_folder(make_watcher, sp, tmp_path):
    """A library written elsewhere and renamed into torch/lib (no close-after-write there)."""
    w, dues = make_watcher(quiet=0.1)
    w.set_target("t", sp, ["torch/lib"])
    (tmp_path / "cudnn64_9.dll").write_bytes(b"x")
    time.sleep(0.2)
    os.rename(tmp_path / "cudnn64_9.dll", sp / "torch" / "lib" / "cudnn64_9.dll")
    settle(w, dues, 1)
    # and one renamed out of it
    os.rename(sp / "torch" / "lib" / "cudnn64_9.dll", tmp_path / "gone.dll")
    settle(w, dues, 2)


@linux_only
def test_watcher_move_inside_a_folder_is_one_event_and_own_when_both_names_are(make_watcher, sp):
    own = lambda target, path: Path(path).name.endswith(".tk-new") or Path(path).name == "mine.dll"  # noqa: E731
    w, dues = make_watcher(quiet=0.1, is_own=own)
    w.set_target("t", sp, ["torch/lib"])
    lib = sp / "torch" / "lib"
    (lib / "mine.dll.tk-new").write_bytes(b"ours")
    os.replace(lib / "mine.dll.tk-new", lib / "mine.dll")   # the engine's swap: both names ours
    wait_for(lambda: w.dropped_own >= 2, 5, "the write and the rename, both ours")
    quiet_for(w, dues, 0.4)
    assert len(dues) == 0 and w.dropped_own == 2
    os.replace(lib / "mine.dll", lib / "cudnn64_9.dll")      # ours -> a name that is not
    settle(w, dues, 1)
