"""What fleet tools read (issue 20): `status --json` and `apply`/`revert --json` validated
against the JSON Schemas in schema/ (with jsonschema, on real outputs in several states), and
the `changed` fields a configuration tool's second run relies on: each command says whether
it changed anything, and a repeat says it did not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from kit import builders
from kit.agentkit import patched_target

ROOT = Path(__file__).resolve().parents[1]


def _schema(name):
    s = json.loads((ROOT / "schema" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def _ok(r):
    assert r.rc == 0, r
    return r.json()


def test_status_and_apply_outputs_match_their_schemas(tmp_path, build, run_tk, tk_home):
    status, apply = _schema("status"), _schema("apply")
    st = _ok(run_tk("status", "--json"))
    assert st["schema_version"] == 1
    status.validate(st)                                   # no targets yet
    venv, w, m = patched_target(tmp_path, build, run_tk)
    st = _ok(run_tk("status", "--json"))
    status.validate(st)
    assert st["targets"][0]["state"] == "patched"
    builders.pip_install(venv, w, force_reinstall=True)   # stock again: drifted
    st = run_tk("status", "--json")
    status.validate(st.json())
    assert st.json()["targets"][0]["state"] == "drifted"
    res = _ok(run_tk("apply", "--json"))
    apply.validate(res)
    res = _ok(run_tk("revert", "--json"))
    apply.validate(res)
    # a target whose environment is gone: missing, and apply's error object
    shutil.rmtree(venv)
    st = run_tk("status", "--json").json()
    status.validate(st)
    assert st["targets"][0]["state"] == "missing"
    res = run_tk("apply", "--json").json()
    apply.validate(res)
    assert res[0]["ok"] is False and res[0]["error"]["error"]
    # the schema is not a rubber stamp: an unknown state fails it
    st["targets"][0]["state"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        status.validate(st)


def test_every_setup_command_says_whether_it_changed_anything(tmp_path, build, run_tk, tk_home):
    venv, w, m = patched_target(tmp_path, build, run_tk, apply=False)
    # target add: the same environment under the same name again is no error, and no change
    other = builders.make_venv(tmp_path / "venv-b")
    builders.pip_install(other, w)
    assert _ok(run_tk("target", "add", other, "--name", "b", "--json"))["changed"] is True
    assert _ok(run_tk("target", "add", other, "--name", "b", "--json"))["changed"] is False
    r = run_tk("target", "add", other, "--name", "c")     # under another name it still is an error
    assert r.rc == 2 and "already target 'b'" in r.err, r
    # use
    assert _ok(run_tk("use", m["name"], "--target", "b", "--json"))["changed"] is True
    assert _ok(run_tk("use", m["name"], "--target", "b", "--json"))["changed"] is False
    # apply: the first applies, the second has nothing to do
    (a,) = _ok(run_tk("apply", "b", "--json"))
    assert a["changed"] is True and a["action"] == "applied"
    (a,) = _ok(run_tk("apply", "b", "--json"))
    assert a["changed"] is False and a["action"] == "already applied"
    # bundle import (and its dry run, which writes nothing)
    tar = tmp_path / "b.tar"
    assert run_tk("bundle", "export", m["name"], tar).rc == 0
    home2 = tmp_path / "home2"
    env = {"TORCHKEEPER_HOME": home2}
    d = _ok(run_tk("bundle", "import", tar, "--dry-run", "--json", extra_env=env))
    assert d["changed"] is True and d["id"] == m["id"]
    assert _ok(run_tk("bundle", "list", "--json", extra_env=env)) == []
    assert _ok(run_tk("bundle", "import", tar, "--json", extra_env=env))["changed"] is True
    assert _ok(run_tk("bundle", "import", tar, "--json", extra_env=env))["changed"] is False
    assert _ok(run_tk("bundle", "import", tar, "--dry-run", "--json", extra_env=env))["changed"] is False
    # autostart
    xdg = {"XDG_CONFIG_HOME": tmp_path / "xdg"}
    assert _ok(run_tk("autostart", "enable", "--json", extra_env=xdg))["changed"] is True
    assert _ok(run_tk("autostart", "enable", "--json", extra_env=xdg))["changed"] is False
    assert _ok(run_tk("autostart", "disable", "--json", extra_env=xdg))["changed"] is True
    assert _ok(run_tk("autostart", "disable", "--json", extra_env=xdg))["changed"] is False
    # config set: one setting, the other lines kept; a value its rules refuse changes nothing
    cfg = tk_home / "config" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("# mine\n[agent]\nquiet_seconds = 0.5\n", encoding="utf-8")
    folder = str(tmp_path / "prom")
    assert _ok(run_tk("config", "set", "metrics.textfile_dir", folder, "--dry-run", "--json"))["changed"] is True
    assert "textfile_dir" not in cfg.read_text()
    assert _ok(run_tk("config", "set", "metrics.textfile_dir", folder, "--json"))["changed"] is True
    assert _ok(run_tk("config", "set", "metrics.textfile_dir", folder, "--json"))["changed"] is False
    assert _ok(run_tk("config", "set", "agent.quiet_seconds", "2", "--json"))["changed"] is True
    text = cfg.read_text()
    assert text.startswith("# mine\n[agent]\nquiet_seconds = 2\n") and f'textfile_dir = "{folder}"' in text, text
    for bad in (("agent.quiet_seconds", "lots"), ("agent.nope", "1"), ("metrics.textfile_dir", "relative")):
        r = run_tk("config", "set", *bad)
        assert r.rc == 2 and r.err.startswith("error: ") and "\nhint: " in r.err, r
    assert cfg.read_text() == text
