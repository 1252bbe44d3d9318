import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))

import pytest  # noqa: E402

from torchkeeper.engine import discover as disc  # noqa: E402
from torchkeeper.engine.discover import Found, app_for, default_roots, discover  # noqa: E402
from torchkeeper.errors import NotFound, UsageError  # noqa: E402

V = "2.3.1+cu121"


# --- fake layouts (no real venvs: just the files the markers and resolve() look at) -----

def put_torch(sp: Path, version: str = V) -> None:
    t = sp / "torch"
    t.mkdir(parents=True)
    (t / "__init__.py").write_text("")
    (t / "version.py").write_text(f"__version__ = '{version}'\ncuda: Optional[str] = '12.1'\n")


def venv_posix(root: Path, version: str | None = V, py: str = "python3.10") -> Path:
    sp = root / "lib" / py / "site-packages"
    sp.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "python").write_text("")
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    if version:
        put_torch(sp, version)
    return sp


def venv_windows(root: Path, version: str | None = V) -> Path:
    sp = root / "Lib" / "site-packages"
    sp.mkdir(parents=True)
    (root / "Scripts").mkdir()
    (root / "Scripts" / "python.exe").write_text("")
    (root / "pyvenv.cfg").write_text("home = C:\\Python310\n")
    if version:
        put_torch(sp, version)
    return sp


def embedded(root: Path, version: str | None = V) -> Path:
    """A portable Python (python_embeded, Forge's system/python): python.exe, no bin/."""
    sp = root / "Lib" / "site-packages"
    sp.mkdir(parents=True)
    (root / "python.exe").write_text("")
    (root / "python310._pth").write_text("python310.zip\n.\nimport site\n")
    if version:
        put_torch(sp, version)
    return sp


def conda_posix(root: Path, version: str | None = V) -> Path:
    sp = root / "lib" / "python3.11" / "site-packages"
    sp.mkdir(parents=True)
    (root / "conda-meta").mkdir()
    (root / "conda-meta" / "history").write_text("")
    (root / "bin").mkdir()
    if version:
        put_torch(sp, version)
    return sp


def conda_windows(root: Path, version: str | None = V) -> Path:
    (root / "conda-meta").mkdir(parents=True)
    return embedded(root, version)


# rel path -> (app, torch version): everything discover() must find in the fake home
EXPECTED = {
    "stable-diffusion-webui/venv": ("AUTOMATIC1111", "2.1.2+cu121"),
    "AI/sd.webui/system/python": ("AUTOMATIC1111", V),
    "stable-diffusion-webui-forge/venv": ("Forge", V),
    "webui_forge_cu121_torch21/system/python": ("Forge", "2.1.2+cu121"),
    "StabilityMatrix/Data/Packages/Stable Diffusion WebUI Forge/venv": ("Forge (Stability Matrix)", V),
    "kohya_ss/venv": ("kohya_ss", "2.1.2+cu118"),
    "ComfyUI_windows_portable/python_embeded": ("ComfyUI portable", "2.4.0+cu124"),
    "ComfyUI/.venv": ("ComfyUI", V),
    "automatic/venv": ("SD.Next", V),
    "sdnext/venv": ("SD.Next", V),
    "invokeai/.venv": ("InvokeAI", V),
    "Fooocus_win64_2-1-831/python_embeded": ("Fooocus", "2.1.0+cu121"),
    "miniconda3": ("conda", V),
    "miniconda3/envs/sd": ("conda", V),
    "anaconda3/envs/torchwin": ("conda", V),
    "miniforge3/envs/mf": ("conda", V),
    ".conda/envs/dot": ("conda", V),
    "dev/proj/.venv": ("venv", V),
    "myapp/venv": ("venv", V),
}


def build_home(home: Path) -> None:
    venv_posix(home / "stable-diffusion-webui/venv", "2.1.2+cu121")
    embedded(home / "AI/sd.webui/system/python")
    venv_posix(home / "stable-diffusion-webui-forge/venv", py="python3.11")
    embedded(home / "webui_forge_cu121_torch21/system/python", "2.1.2+cu121")
    (home / "webui_forge_cu121_torch21/webui").mkdir()
    venv_windows(home / "StabilityMatrix/Data/Packages/Stable Diffusion WebUI Forge/venv")
    venv_windows(home / "kohya_ss/venv", "2.1.2+cu118")
    embedded(home / "ComfyUI_windows_portable/python_embeded", "2.4.0+cu124")
    (home / "ComfyUI_windows_portable/ComfyUI/custom_nodes").mkdir(parents=True)
    venv_posix(home / "ComfyUI/.venv")
    venv_posix(home / "automatic/venv")
    venv_posix(home / "sdnext/venv")
    venv_posix(home / "invokeai/.venv", py="python3.11")
    embedded(home / "Fooocus_win64_2-1-831/python_embeded", "2.1.0+cu121")
    conda_posix(home / "miniconda3")
    conda_posix(home / "miniconda3/envs/sd")
    conda_windows(home / "anaconda3/envs/torchwin")
    conda_posix(home / "miniforge3/envs/mf")
    conda_posix(home / ".conda/envs/dot")
    venv_posix(home / "dev/proj/.venv")
    # an app folder with a lib/ of its own code: the env is myapp/venv, not myapp
    (home / "myapp/lib/python3.10/site-packages").mkdir(parents=True)
    venv_posix(home / "myapp/venv")

    # decoys ------------------------------------------------------------------------
    venv_posix(home / "notorch/venv", None)                        # env without torch
    conda_posix(home / "miniconda3/envs/empty", None)
    # conda's package cache holds extracted packages that look like envs
    pkg = home / "miniconda3/pkgs/pytorch-2.3.1-py3.11_cuda12.1_cudnn8.9.2_0"
    put_torch(pkg / "lib/python3.11/site-packages")
    (pkg / "info").mkdir()
    venv_posix(home / "webapp/node_modules/somepkg/venv")          # node_modules
    venv_posix(home / "repo/.git/venv")                            # .git
    venv_posix(home / ".cache/pip/venv")                           # caches
    venv_posix(home / "AppData/Local/Temp/tmpab12/venv")
    venv_posix(home / "Library/Caches/thing/venv")
    embedded(home / "Program Files/Python310")
    venv_posix(home / "stable-diffusion-webui/models/Stable-diffusion/venv")   # model folder
    venv_posix(home / "ComfyUI/output/venv")
    venv_posix(home / "stray/site-packages/pkg/venv")              # inside a site-packages
    put_torch(home / "stable-diffusion-webui/venv/lib/python3.10/site-packages/vendored/venv/Lib/site-packages")
    (home / "stable-diffusion-webui/venv/lib/python3.10/site-packages/vendored/venv/pyvenv.cfg").write_text("")
    venv_posix(home / "deep/d2/d3/d4/d5/d6/venv")                  # depth 7 > max_depth 6
    # symlinks are never followed: a loop and a link to a real env
    (home / "loop").mkdir()
    os.symlink("..", home / "loop" / "up")
    os.symlink(".", home / "loop" / "self")
    os.symlink(home / "stable-diffusion-webui/venv", home / "linked-venv")
    os.symlink(home / "kohya_ss", home / "AI" / "kohya-link")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    h = tmp_path_factory.mktemp("home")
    build_home(h)
    return h


def _by_rel(found, home):
    return {f.path.relative_to(home).as_posix(): (f.app, f.torch_version) for f in found}


# --- the walk ----------------------------------------------------------------------------

def test_finds_every_app_and_no_decoy(home):
    found = discover([home])
    assert _by_rel(found, home) == EXPECTED
    assert not found.timed_out


def test_site_packages_is_the_envs_own(home):
    for f in discover([home]):
        assert (f.site_packages / "torch" / "version.py").is_file()
        assert f.site_packages.parent.name.lower() in ("lib",) or \
            f.site_packages.parent.name.startswith("python3")
        assert f.site_packages.is_relative_to(f.path.resolve())


def test_windows_layout_found_on_any_os(home):
    found = {f.path.relative_to(home).as_posix(): f for f in discover([home])}
    sp = found["ComfyUI_windows_portable/python_embeded"].site_packages
    assert sp == (home / "ComfyUI_windows_portable/python_embeded/Lib/site-packages").resolve()
    assert found["kohya_ss/venv"].site_packages.parts[-2:] == ("Lib", "site-packages")


def test_sorted_and_unique(home):
    found = discover([home])
    assert [f.path for f in found] == sorted(f.path for f in found)
    assert len({f.site_packages for f in found}) == len(found)


def test_overlapping_roots_are_deduplicated(home):
    roots = [home / "stable-diffusion-webui", home, home / "stable-diffusion-webui", home / "kohya_ss/venv"]
    found = discover(roots)
    assert sorted(_by_rel(found, home)) == sorted(EXPECTED)
    assert len(found) == len(EXPECTED)


def test_root_that_is_an_env(home):
    found = discover([home / "kohya_ss" / "venv"])
    assert [(f.path, f.app, f.torch_version) for f in found] == \
        [(home / "kohya_ss" / "venv", "kohya_ss", "2.1.2+cu118")]


def test_app_folder_as_root(home):
    found = discover([home / "ComfyUI_windows_portable"])
    assert _by_rel(found, home) == {"ComfyUI_windows_portable/python_embeded": ("ComfyUI portable", "2.4.0+cu124")}


def test_max_depth(home):
    assert "deep/d2/d3/d4/d5/d6/venv" not in _by_rel(discover([home]), home)
    assert _by_rel(discover([home / "deep"]), home) == {"deep/d2/d3/d4/d5/d6/venv": ("venv", V)}
    assert "deep/d2/d3/d4/d5/d6/venv" in _by_rel(discover([home], max_depth=7), home)
    shallow = _by_rel(discover([home], max_depth=2), home)
    assert "stable-diffusion-webui/venv" in shallow and "AI/sd.webui/system/python" not in shallow


def test_symlink_loops_do_not_hang(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink("..", tmp_path / "a" / "up")
    os.symlink("../..", tmp_path / "a" / "b" / "upup")
    os.symlink(tmp_path, tmp_path / "a" / "b" / "root")
    os.symlink("self", tmp_path / "self")        # dangling self-reference
    venv_posix(tmp_path / "a" / "b" / "venv")
    t = time.monotonic()
    found = discover([tmp_path], max_depth=50)
    assert time.monotonic() - t < 5
    assert [f.path for f in found] == [tmp_path / "a" / "b" / "venv"]
    assert not found.timed_out


def test_permission_error_is_skipped(tmp_path, monkeypatch):
    venv_posix(tmp_path / "locked" / "venv")
    venv_posix(tmp_path / "ok" / "venv")
    real = os.scandir

    def scandir(p="."):
        if Path(p).name == "locked":
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(disc.os, "scandir", scandir)
    assert [f.path for f in discover([tmp_path])] == [tmp_path / "ok" / "venv"]


def test_unreadable_folder_is_skipped(tmp_path):
    """A real permission error: as root, discovery runs without CAP_DAC_OVERRIDE."""
    import shutil
    import subprocess
    import sys

    venv_posix(tmp_path / "locked" / "venv")
    venv_posix(tmp_path / "ok" / "venv")
    (tmp_path / "locked").chmod(0)
    code = ("import sys; from pathlib import Path; from torchkeeper.engine.discover import discover; "
            "print([str(f.path) for f in discover([Path(sys.argv[1])])])")
    argv = [sys.executable, "-c", code, str(tmp_path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "as root this test needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
        argv = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "agent"))
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == str([str(tmp_path / "ok" / "venv")])


def test_deadline_returns_what_it_has(home):
    t = time.monotonic()
    found = discover([home], deadline_s=0)
    assert time.monotonic() - t < 1
    assert found.timed_out
    assert isinstance(found, list) and len(found) < len(EXPECTED)


def test_missing_or_file_root(tmp_path):
    with pytest.raises(NotFound):
        discover([tmp_path / "nope"])
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError):
        discover([tmp_path / "f"])


def test_default_roots_used(home, monkeypatch):
    monkeypatch.setattr(disc, "default_roots", lambda: [home, home / "gone"])  # gone: skipped
    assert _by_rel(discover(), home) == EXPECTED


def test_default_roots_has_home():
    roots = default_roots()
    assert roots[0] == Path.home()
    if os.name != "nt":
        assert roots == [Path.home()]


def test_to_dict_is_json(home):
    found = discover([home / "invokeai"])
    d = found[0].to_dict()
    assert json.loads(json.dumps(d)) == {
        "path": str(home / "invokeai/.venv"),
        "site_packages": str((home / "invokeai/.venv/lib/python3.11/site-packages").resolve()),
        "app": "InvokeAI", "torch_version": V}
    assert isinstance(found[0], Found)


@pytest.mark.parametrize("path,conda,app", [
    ("/h/stable-diffusion-webui/venv", False, "AUTOMATIC1111"),
    ("/h/automatic1111/venv", False, "AUTOMATIC1111"),
    ("/h/stable-diffusion-webui-forge/venv", False, "Forge"),
    ("/h/stable-diffusion-webui-reForge/venv", False, "Forge"),
    ("/h/webui_forge_cu121_torch231/system/python", False, "Forge"),
    ("/h/kohya_ss/venv", False, "kohya_ss"),
    ("/h/ComfyUI_windows_portable/python_embeded", False, "ComfyUI portable"),
    ("/h/ComfyUI/venv", False, "ComfyUI"),
    ("/h/pinokio/api/comfy.git/app/env", False, "ComfyUI (Pinokio)"),
    ("/h/pinokio/api/facefusion-pinokio.git/env", True, "facefusion-pinokio (Pinokio)"),
    ("/h/pinokio/api/swarmui.git/app/dlbackend/ComfyUI/venv", False, "SwarmUI (Pinokio)"),
    ("/h/pinokio/bin/miniconda/envs/x", True, "conda"),
    ("/h/StabilityMatrix/Data/Packages/ComfyUI/venv", False, "ComfyUI (Stability Matrix)"),
    ("/h/StabilityMatrix/Data/Packages/OneTrainer/venv", False, "OneTrainer (Stability Matrix)"),
    ("/h/SwarmUI/dlbackend/comfy/python_embeded", False, "SwarmUI"),
    ("/h/SwarmUI/dlbackend/ComfyUI/venv", False, "SwarmUI"),
    ("/h/Fooocus/fooocus_env", False, "Fooocus"),
    ("/h/automatic/venv", False, "SD.Next"),
    ("/h/SDNext/venv", False, "SD.Next"),
    ("/h/invokeai/.venv", False, "InvokeAI"),
    ("/h/Fooocus_win64_2-1-831/python_embeded", False, "Fooocus"),
    ("/h/miniconda3/envs/forge", True, "conda"),
    ("/h/anaconda3", True, "conda"),
    ("/h/text-gen/installer_files/env", True, "conda"),
    ("/h/Fooocus/installer_files/env", True, "Fooocus"),
    ("/h/projects/x/.venv", False, "venv"),
    ("/h/python_embeded", False, "venv"),
])
def test_app_names(path, conda, app):
    assert app_for(Path(path), conda=conda) == app


# --- a home of 100k files ----------------------------------------------------------------

def _touch_many(d: Path, n: int) -> None:
    """n empty files; hard links to one empty file are cheaper to make than new files
    (a fresh one every 1000: NTFS allows 1023 links per file)."""
    d.mkdir(parents=True, exist_ok=True)
    src = ""
    for i in range(n):
        p = os.path.join(d, f"f{i}.txt")
        if i % 1000 == 0:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
            src = p
        else:
            os.link(src, p)


def test_big_home_finds_the_envs(tmp_path):
    """100k files: 60k in walkable folders 4 levels deep, the rest where real homes keep
    them (inside envs, node_modules, .git, models); discovery must still find the envs."""
    h = tmp_path / "home"
    files = 0
    for a in range(10):
        for b in range(10):
            for c in range(6):
                _touch_many(h / f"docs{a}" / f"p{b}" / f"src{c}" / "x", 100)
                files += 100
    sp = venv_posix(h / "stable-diffusion-webui" / "venv")
    _touch_many(sp / "numpy" / "core", 10_000)
    files += 10_000
    sp = embedded(h / "docs3" / "p4" / "ComfyUI_windows_portable" / "python_embeded")
    _touch_many(sp / "scipy", 10_000)
    files += 10_000
    for i in range(10):
        _touch_many(h / "webapp" / "node_modules" / f"m{i}", 1000)
        _touch_many(h / "stable-diffusion-webui" / "models" / f"Lora{i}", 500)
        _touch_many(h / "docs1" / "repo" / ".git" / "objects" / f"{i:02x}", 500)
        files += 2000
    conda_windows(h / "docs7" / "p2" / "src1" / "miniconda3" / "envs" / "deep")  # depth 6
    assert files == 100_000

    found = discover([h])
    assert not found.timed_out
    assert _by_rel(found, h) == {
        "stable-diffusion-webui/venv": ("AUTOMATIC1111", V),
        "docs3/p4/ComfyUI_windows_portable/python_embeded": ("ComfyUI portable", V),
        "docs7/p2/src1/miniconda3/envs/deep": ("conda", V),
    }


# --- the launchers' own layouts: real envs with a torch wheel installed ------------------------
#
# Each layout is the one the launcher's source creates (see the comments in discover.py).

import shutil  # noqa: E402
import subprocess  # noqa: E402

from kit import builders  # noqa: E402
from torchkeeper.engine.discover import Launchers, launcher_folders  # noqa: E402
from kit.wayback import present_libs, record_libs  # noqa: E402

VL, VW = "2.5.1+cu124", "2.4.1+cu121"   # the Linux-layout and Windows-layout torch wheels


@pytest.fixture(scope="module")
def wheels(build, tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    return {"linux": build.torch_wheel(d / "l", version=VL, cuda="12.4", layout="linux-torchlib", cudnn="9.1.0.70"),
            "windows": build.torch_wheel(d / "w", version=VW, cuda="12.1", layout="windows", cudnn="8.9.7.29")}


def real_venv(path: Path, wheels) -> Path:
    builders.pip_install(builders.make_venv(path), wheels["linux"])
    return path


def uv_venv(path: Path, wheels) -> Path:
    """A venv as ComfyUI Desktop makes it: `uv venv`, then `uv pip install`."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is in the test extra (pyproject.toml): run ./run-tests to install it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never", UV_CACHE_DIR=str(path.parent / "uv-cache"))
    for cmd in ([uv, "venv", "--python", sys.executable, str(path)],
                [uv, "pip", "install", "--python", str(path / "bin" / "python"), "--offline", "--no-index",
                 "--no-deps", str(wheels["linux"])]):
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
    assert "uv = " in (path / "pyvenv.cfg").read_text()
    return path


def embedded_python(root: Path, wheels) -> Path:
    """A Windows embeddable Python (python_embeded) with torch put in by pip --target."""
    (root / "Lib" / "site-packages").mkdir(parents=True)
    (root / "python.exe").write_bytes(b"")
    (root / "python310._pth").write_text("python310.zip\n.\nLib/site-packages\n\nimport site\n")
    builders.pip_install_target(root / "Lib" / "site-packages", wheels["windows"])
    return root


# rel path -> (app, torch version)
LAUNCHERS = {
    # Stability Matrix, portable: Data/ beside the exe, a package the user renamed
    "StabilityMatrix-win-x64/Data/Packages/My Comfy/venv": ("ComfyUI (Stability Matrix)", VL),
    "StabilityMatrix-win-x64/Data/Packages/stable-diffusion-webui-forge/venv": ("Forge (Stability Matrix)", VL),
    # Pinokio: an app's venv in app/env, another's at the app's root
    "pinokio/api/comfy.git/app/env": ("ComfyUI (Pinokio)", VL),
    "pinokio/api/facefusion-pinokio.git/env": ("facefusion-pinokio (Pinokio)", VL),
    # ComfyUI Desktop: the user's ComfyUI folder with uv's .venv and uv-cache
    "Documents/ComfyUI/.venv": ("ComfyUI Desktop", VL),
    # Fooocus: the Windows package, unpacked to a folder of the user's choosing
    "AI/image-gen/python_embeded": ("Fooocus", VW),
    # SwarmUI: its ComfyUI backend on Windows and on Linux
    "SwarmUI/dlbackend/comfy/python_embeded": ("SwarmUI", VW),
    "StableSwarmUI/dlbackend/ComfyUI/venv": ("SwarmUI", VL),
}


@pytest.fixture(scope="module")
def launch_home(tmp_path_factory, wheels) -> Path:
    h = tmp_path_factory.mktemp("lhome")
    data = h / "StabilityMatrix-win-x64" / "Data"
    real_venv(data / "Packages" / "My Comfy" / "venv", wheels)
    real_venv(data / "Packages" / "stable-diffusion-webui-forge" / "venv", wheels)
    (data / ".sm-portable").write_text("")
    (data / "settings.json").write_text(json.dumps({"InstalledPackages": [
        {"DisplayName": "My Comfy", "PackageName": "ComfyUI", "LibraryPath": "Packages\\My Comfy"},
        {"DisplayName": "stable-diffusion-webui-forge", "PackageName": "stable-diffusion-webui-forge",
         "LibraryPath": "Packages\\stable-diffusion-webui-forge"}]}))
    (h / "StabilityMatrix-win-x64" / "StabilityMatrix.exe").write_bytes(b"")

    pin = h / "pinokio"
    real_venv(pin / "api" / "comfy.git" / "app" / "env", wheels)
    real_venv(pin / "api" / "facefusion-pinokio.git" / "env", wheels)
    (pin / "ENVIRONMENT").write_text("PINOKIO_DRIVE=./drive\n")
    put_torch(pin / "cache" / "PIP_CACHE_DIR" / "venv" / "Lib" / "site-packages")   # Pinokio's caches: never walked
    (pin / "cache" / "PIP_CACHE_DIR" / "venv" / "pyvenv.cfg").write_text("")

    desk = h / "Documents" / "ComfyUI"
    uv_venv(desk / ".venv", wheels)
    assert (desk / "uv-cache").is_dir()
    for d in ("models", "user", "input", "output", "custom_nodes"):
        (desk / d).mkdir(exist_ok=True)

    foo = h / "AI" / "image-gen"
    embedded_python(foo / "python_embeded", wheels)
    (foo / "Fooocus").mkdir()
    (foo / "Fooocus" / "entry_with_update.py").write_text("")
    (foo / "run.bat").write_text(".\\python_embeded\\python.exe -s Fooocus\\entry_with_update.py\npause\n")

    embedded_python(h / "SwarmUI" / "dlbackend" / "comfy" / "python_embeded", wheels)
    (h / "SwarmUI" / "dlbackend" / "comfy" / "ComfyUI").mkdir()
    real_venv(h / "StableSwarmUI" / "dlbackend" / "ComfyUI" / "venv", wheels)
    return h


def test_launcher_layouts_found_with_their_names(launch_home):
    found = discover([launch_home], launchers=Launchers())
    assert _by_rel(found, launch_home) == LAUNCHERS
    for f in found:   # the target is the env's own site-packages, with the stock libraries untouched
        assert f.site_packages == builders.site_packages(f.path).resolve()
        assert present_libs(f.site_packages).items() <= record_libs(f.site_packages).items()
    assert found.notes == []


def test_launcher_names_need_the_launcher(tmp_path, wheels):
    """The same shapes without the launcher's marks keep the plain names."""
    real_venv(tmp_path / "Work" / "Packages" / "ComfyUI" / "venv", wheels)   # no Stability Matrix library
    real_venv(tmp_path / "web" / "api" / "comfy.git" / "env", wheels)        # no Pinokio home
    comfy = tmp_path / "ComfyUI"
    uv_venv(comfy / ".venv", wheels)                                        # a ComfyUI checkout made with uv
    (comfy / "main.py").write_text("")
    assert _by_rel(discover([tmp_path], launchers=Launchers()), tmp_path) == {
        "Work/Packages/ComfyUI/venv": ("ComfyUI", VL),
        "web/api/comfy.git/env": ("ComfyUI", VL),
        "ComfyUI/.venv": ("ComfyUI", VL),
    }


# --- folders the launchers record in their config files ------------------------------------------

def _user(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A user home (HOME, its .config) and a drive outside it."""
    home, drive = tmp_path / "home", tmp_path / "drive"
    home.mkdir()
    drive.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("STABILITY_MATRIX_APPDATAHOME", raising=False)
    monkeypatch.delenv("PINOKIO_HOME", raising=False)
    monkeypatch.setattr(disc, "default_roots", lambda: [home])
    return home, drive


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_folders_from_launcher_configs(tmp_path, monkeypatch, wheels):
    """Installs outside the default roots, under names no rule knows: found through the configs."""
    home, drive = _user(tmp_path, monkeypatch)
    lib, base, pin = drive / "SM Library", drive / "my comfy", drive / "apps"
    real_venv(lib / "Packages" / "stable-diffusion-webui" / "venv", wheels)
    real_venv(base / ".venv", wheels)
    real_venv(pin / "api" / "roop.git" / "env", wheels)
    _write(home / ".config" / "StabilityMatrix" / "library.json", json.dumps({"LibraryPath": str(lib)}))
    _write(home / ".config" / "ComfyUI" / "config.json", json.dumps({"basePath": str(base), "installState": "installed"}))
    _write(home / ".pinokio" / "config.json", json.dumps({"home": str(pin), "theme": "dark"}))

    launchers = launcher_folders()
    assert (launchers.sm_libraries, launchers.comfy_desktop, launchers.pinokio_homes) == ([lib], [base], [pin])
    want = {
        "SM Library/Packages/stable-diffusion-webui/venv": ("AUTOMATIC1111 (Stability Matrix)", VL),
        "my comfy/.venv": ("ComfyUI Desktop", VL),
        "apps/api/roop.git/env": ("roop (Pinokio)", VL),
    }
    found = discover()
    assert _by_rel(found, drive) == want and found.notes == []
    # an explicit root is searched alone, but the configs still name what is found there
    assert discover([home]) == []
    assert _by_rel(discover([drive]), drive) == want


def test_broken_launcher_configs_are_ignored_with_a_note(tmp_path, monkeypatch, wheels, run_tk):
    home, drive = _user(tmp_path, monkeypatch)
    real_venv(home / "stable-diffusion-webui" / "venv", wheels)
    lib = home / "StabilityMatrix"                 # Stability Matrix's Linux default, its settings.json broken
    real_venv(lib / "Packages" / "ComfyUI" / "venv", wheels)
    bad = {
        home / ".config" / "StabilityMatrix" / "library.json": '{"LibraryPath": ',
        home / ".config" / "ComfyUI" / "config.json": '["basePath"]',
        home / ".pinokio" / "config.json": '{"home": 42}',
        lib / "settings.json": "{\x00",
    }
    for p, text in bad.items():
        _write(p, text)

    found = discover()
    assert _by_rel(found, home) == {"stable-diffusion-webui/venv": ("AUTOMATIC1111", VL),
                                    "StabilityMatrix/Packages/ComfyUI/venv": ("ComfyUI (Stability Matrix)", VL)}
    assert len(found.notes) == len(bad)
    for p, note in zip(sorted(bad), sorted(found.notes, key=lambda n: n.split(": ")[0])):
        assert note.startswith(f"ignored {p}: "), found.notes

    r = run_tk("discover", extra_env={"HOME": home})
    assert r.rc == 0 and "Traceback" not in r.err, r
    assert sum(line.startswith("note: ignored ") for line in r.out.splitlines()) == len(bad), r
    assert "ComfyUI (Stability Matrix)" in r.out, r
    d = run_tk("discover", "--add", "--json", extra_env={"HOME": home}).json()
    assert len(d["notes"]) == len(bad) and len(d["added"]) == 2
    for f in d["found"]:     # discover --add only records targets: every library is still stock
        sp = Path(f["site_packages"])
        assert present_libs(sp).items() <= record_libs(sp).items()
