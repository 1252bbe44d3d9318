"""Torch installs laid out as a first run finds them.

Shared by several test modules (it was in test_first_run.py)."""

from __future__ import annotations

import subprocess
import sys

from kit import builders


def installs(build, home) -> dict:
    """An A1111 venv and a ComfyUI portable python_embeded under home, both with torch-shaped
    wheels installed by the real pip; returns {app folder: site-packages}."""
    wh = home.parent / "wheels"
    a1111 = build.torch_wheel(wh / "a", version="2.1.2+cu121", cuda="12.1", layout="windows", cudnn="8.8.1.3")
    comfy = build.torch_wheel(wh / "c", version="2.4.1+cu124", cuda="12.4", layout="windows", cudnn="9.1.0.70")
    venv = builders.make_venv(home / "stable-diffusion-webui" / "venv")
    builders.pip_install(venv, a1111)
    pe = builders.portable_python(home / "ComfyUI_windows_portable")
    sp = pe / "Lib" / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(sp), str(comfy)], check=True)
    return {"a1111": builders.site_packages(venv), "comfy": sp}
