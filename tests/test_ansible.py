"""The Ansible role (installer/ansible/roles/torchkeeper, issue 20), run for real by
ansible-core against two hosts of one inventory that are both this machine
(`ansible_connection: local`, two TORCHKEEPER_HOMEs, two torchkeeper venvs, two torch-shaped
target venvs): the first run installs, imports, adds, binds and applies; the second reports
changed=0; after a pip reinstall `--check --diff` reports the one change and writes nothing;
a real run repairs; a bundle the gate refuses fails the play with the gate's words and
changes nothing. The run times are printed (-s shows them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit import builders
from kit.agentkit import WIN

pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "installer" / "ansible" / "roles"
HOSTS = ("box1", "box2")


def _tk(home: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchkeeper", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "TORCHKEEPER_HOME": str(home),
                               "PYTHONPATH": str(ROOT / "agent")})


def _state(home: Path) -> dict:
    r = _tk(home, "status", "--json")
    assert r.returncode == 0, r.stderr
    return {t["name"]: t for t in json.loads(r.stdout)["targets"]}


class Lab:
    def __init__(self, tmp: Path, build):
        self.tmp = tmp
        wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist",
                                ROOT], capture_output=True, text=True)
        assert wheel.returncode == 0, wheel.stderr
        (self.package,) = (tmp / "dist").glob("torchkeeper-*.whl")
        self.torch = build.torch_wheel(tmp / "w", **WIN)
        scratch = tmp / "scratch-home"
        self.tars = {}
        for name, version in (("cudnn-a", "8.9.7.29"), ("cudnn-9", "9.1.0.70")):
            src = build.cudnn_archive(tmp / "src" / name, version=version, cuda_major=12, platform="windows")
            assert _tk(scratch, "bundle", "create", src, "--name", name).returncode == 0
            self.tars[name] = tmp / f"{name}.tar"
            assert _tk(scratch, "bundle", "export", name, self.tars[name]).returncode == 0
        self.env = {h: builders.make_venv(tmp / f"{h}-webui") for h in HOSTS}
        for v in self.env.values():
            builders.pip_install(v, self.torch)
        self.home = {h: tmp / f"{h}-home" for h in HOSTS}
        inv = ["[lab]"] + [
            f"{h} ansible_connection=local torchkeeper_home={self.home[h]} "
            f"torchkeeper_venv={tmp / (h + '-tk')} xdg={tmp / (h + '-xdg')} "
            f"torchkeeper_textfile_dir={tmp / (h + '-textfile')} webui={self.env[h]}" for h in HOSTS]
        inv += ["[lab:vars]", f"ansible_python_interpreter={sys.executable}"]
        (tmp / "inventory.ini").write_text("\n".join(inv) + "\n")
        for h in HOSTS:
            (tmp / f"{h}-textfile").mkdir()
        (tmp / "site.yml").write_text(f"""
- hosts: lab
  environment:
    XDG_CONFIG_HOME: "{{{{ xdg }}}}"
  roles:
    - role: torchkeeper
      vars:
        torchkeeper_package: {self.package}
        torchkeeper_bundles: "{{{{ bundles | default(['{self.tars['cudnn-a']}']) }}}}"
        torchkeeper_targets:
          - {{name: sd, path: "{{{{ webui }}}}", bundle: "{{{{ bundle | default('cudnn-a') }}}}"}}
        torchkeeper_autostart: true
""")

    def play(self, *args) -> tuple[subprocess.CompletedProcess, dict, float]:
        env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROLES), "ANSIBLE_HOME": str(self.tmp / "ansible-home"),
               "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_DEPRECATION_WARNINGS": "0"}
        t0 = time.monotonic()
        r = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                            str(self.tmp / "inventory.ini"), str(self.tmp / "site.yml"), *args],
                           capture_output=True, text=True, env=env, timeout=900)
        took = time.monotonic() - t0
        recap = {m.group(1): {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
                 for m in re.finditer(r"^(box\d)\s+:\s+(.*)$", r.stdout, re.M)}
        return r, recap, took


@pytest.fixture
def lab(tmp_path, build):
    if not (Path(sys.executable).parent / "ansible-playbook").exists():
        pytest.fail("ansible-core is missing from the test environment (pyproject's [test] extra)")
    return Lab(tmp_path, build)


def test_the_role_applies_is_idempotent_checks_and_refuses_with_the_gates_words(lab):
    r, recap, first = lab.play()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    for h in HOSTS:
        assert recap[h]["failed"] == 0 and recap[h]["changed"] >= 4, recap
        t = _state(lab.home[h])["sd"]
        assert t["state"] == "patched" and t["applied"]["bundle_name"] == "cudnn-a", t
        assert (lab.tmp / f"{h}-xdg" / "autostart" / "torchkeeper.desktop").is_file()
        cfg = (lab.home[h] / "config" / "config.toml").read_text()  # torchkeeper config set, by the role
        assert f'textfile_dir = "{lab.tmp / (h + "-textfile")}"' in cfg, cfg

    r, recap, second = lab.play()
    assert r.returncode == 0, r.stdout[-4000:]
    assert {h: recap[h]["changed"] for h in HOSTS} == {"box1": 0, "box2": 0}, r.stdout[-4000:]
    print(f"\nrole: first run {first:.1f} s, second run {second:.1f} s (two hosts)")

    # a pip reinstall on box1 undoes its overlay: --check --diff says so and writes nothing
    builders.pip_install(lab.env["box1"], lab.torch, force_reinstall=True)
    before = {p: p.read_bytes() for p in builders.site_packages(lab.env["box1"]).joinpath("torch", "lib").iterdir()}
    r, recap, _ = lab.play("--check", "--diff")
    assert r.returncode == 0, r.stdout[-4000:]
    assert {h: recap[h]["changed"] for h in HOSTS} == {"box1": 1, "box2": 0}, r.stdout[-4000:]
    assert "sd: drifted" in r.stdout and "bundle cudnn-a" in r.stdout, r.stdout[-4000:]   # the diff
    assert {p: p.read_bytes() for p in before} == before, "--check wrote a file"
    assert _state(lab.home["box1"])["sd"]["state"] == "drifted"

    r, recap, _ = lab.play()
    assert r.returncode == 0 and recap["box1"]["changed"] == 1 and recap["box2"]["changed"] == 0, r.stdout[-4000:]
    assert _state(lab.home["box1"])["sd"]["state"] == "patched"

    # a bundle the gate refuses (cuDNN 9 for a torch built against cuDNN 8): the play fails
    # with the gate's words; nothing on the host changes
    r, recap, _ = lab.play("-e", json.dumps({"bundles": [str(lab.tars["cudnn-9"])], "bundle": "cudnn-9"}))
    assert r.returncode != 0 and recap["box1"]["failed"] == 1, r.stdout[-4000:]
    assert "compatibility gate refuses bundle 'cudnn-9'" in r.stdout, r.stdout[-4000:]
    for h in HOSTS:
        t = _state(lab.home[h])["sd"]
        assert t["state"] == "patched" and t["applied"]["bundle_name"] == "cudnn-a", t
