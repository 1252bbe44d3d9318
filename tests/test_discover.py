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
    "StabilityMatrix/Data/Packages/Stable Diffusion WebUI Forge/venv": ("Forge", V),
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
    ("/h/pinokio/api/comfy.git/app/env", False, "ComfyUI"),
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
