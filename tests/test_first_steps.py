"""What a new user tripped over: `use` that binds what the gate refuses, a status that shows
the chosen bundle as if applied, drift lists cut short without a count, a driver state lost
in `status --json`."""

from __future__ import annotations

from kit import builders
import pytest


@pytest.fixture
def two_targets(tmp_path, build, run_tk):
    """'old' runs torch 2.3.1+cu121 (cuDNN 8.8), 'new' torch 2.4.1+cu124 (cuDNN 9.1), both Windows."""
    for name, version, cuda, cudnn in (("old", "2.3.1+cu121", "12.1", "8.8.1.3"),
                                       ("new", "2.4.1+cu124", "12.4", "9.1.0.70")):
        w = build.torch_wheel(tmp_path / "w" / name, version=version, cuda=cuda, layout="windows",
                              cudnn=cudnn)
        venv = builders.make_venv(tmp_path / name)
        builders.pip_install(venv, w)
        assert run_tk("target", "add", venv, "--name", name).rc == 0
    return tmp_path


def _bundle(run_tk, build, tmp_path, cudnn: str) -> str:
    arch = build.cudnn_archive(tmp_path / "src" / cudnn, version=cudnn, cuda_major=12, platform="windows")
    return run_tk("bundle", "create", arch, "--json").json()["name"]


def test_use_binds_only_where_the_gate_accepts(two_targets, tmp_path, build, run_tk):
    b8 = _bundle(run_tk, build, tmp_path, "8.9.7.29")
    r = run_tk("use", b8)
    assert r.rc == 0, str(r)
    assert "old will use" in r.out and "skipped new:" in r.out and "cuDNN" in r.out
    j = run_tk("use", b8, "--json").json()
    assert j["targets"] == ["old"] and list(j["skipped"]) == ["new"]
    st = {t["name"]: t for t in run_tk("status", "--json").json()["targets"]}
    assert st["old"]["bundle"]["name"] == b8 and st["new"]["bundle"] is None
    # one target, refused: exit 3, the gate's words, nothing bound
    r = run_tk("use", b8, "--target", "new")
    assert r.rc == 3 and "error: target 'new': the compatibility gate refuses" in r.err, str(r)
    assert r.err.count("hint: ") == 1 and "Traceback" not in r.err
    assert {t["name"]: t["bundle"] for t in run_tk("status", "--json").json()["targets"]}["new"] is None


def test_a_target_added_later_gets_the_default_only_where_it_fits(tmp_path, build, run_tk):
    b8 = _bundle(run_tk, build, tmp_path, "8.9.7.29")
    assert run_tk("use", b8).rc == 0                   # no targets yet: the default for later ones
    for name, version, cuda, cudnn in (("old", "2.3.1+cu121", "12.1", "8.8.1.3"),
                                       ("new", "2.4.1+cu124", "12.4", "9.1.0.70")):
        w = build.torch_wheel(tmp_path / "w" / name, version=version, cuda=cuda, layout="windows", cudnn=cudnn)
        venv = builders.make_venv(tmp_path / name)
        builders.pip_install(venv, w)
        assert run_tk("target", "add", venv, "--name", name).rc == 0
    st = {t["name"]: t for t in run_tk("status", "--json").json()["targets"]}
    assert st["old"]["bundle"]["name"] == b8
    assert st["new"]["bundle"] is None                # cuDNN 8 for a cuDNN 9 torch: not bound
    r = run_tk("apply")
    assert "old" in r.out and "new" in r.err and "no bundle chosen" in r.err, str(r)


def test_status_shows_applied_and_chosen_when_they_differ(two_targets, tmp_path, build, run_tk):
    a = _bundle(run_tk, build, tmp_path, "8.9.7.29")
    b = _bundle(run_tk, build, tmp_path, "8.9.5.30")
    assert run_tk("use", a, "--target", "old").rc == 0
    assert run_tk("apply", "old").rc == 0
    assert f"applied {a}" in run_tk("status").out
    assert run_tk("use", b, "--target", "old").rc == 0
    line = next(ln for ln in run_tk("status").out.splitlines() if ln.startswith("old"))
    assert f"applied {a}, chosen {b} (not applied yet" in line, line
    j = {t["name"]: t for t in run_tk("status", "--json").json()["targets"]}["old"]
    assert j["applied"]["bundle_name"] == a and j["bundle"]["name"] == b
    line = next(ln for ln in run_tk("status").out.splitlines() if ln.startswith("new"))
    assert "no bundle chosen" in line


def test_drift_lists_say_how_many_more(two_targets, tmp_path, build, run_tk):
    a = _bundle(run_tk, build, tmp_path, "8.9.7.29")
    assert run_tk("use", a, "--target", "old").rc == 0
    assert run_tk("apply", "old").rc == 0
    sp = builders.site_packages(two_targets / "old")
    for p in sorted((sp / "torch" / "lib").glob("cudnn*.dll")):   # 7 files undone by hand
        p.write_bytes(p.read_bytes() + b"x")
    r = run_tk("verify", "old")
    assert r.rc == 1 and "(+3 more)" in r.out, str(r)
    out = run_tk("status").out
    assert "(+4 more: `torchkeeper verify old --json`)" in out, out
    assert len(run_tk("verify", "old", "--json").json()[0]["problems"]) == 7


def test_status_json_keeps_the_driver_state(run_tk, tmp_path):
    empty = tmp_path / "nolib"
    empty.mkdir()
    d = run_tk("status", "--json", extra_env={"LD_LIBRARY_PATH": empty}).json()["driver"]
    assert d["state"] == "no_driver" and "no NVIDIA driver" in d["message"] and d["hint"]
    assert "driver: no NVIDIA driver found" in run_tk("status", extra_env={"LD_LIBRARY_PATH": empty}).out


def test_doctor_lists_every_folder(run_tk, tk_home):
    r = run_tk("doctor")
    assert r.rc == 0, str(r)
    block = r.out[r.out.index("Folders torchkeeper uses:"):].splitlines()[1:5]
    assert [ln.split()[0] for ln in block] == ["config", "state", "cache", "logs"]
    assert block[3].split()[1] == str(tk_home / "logs")
    assert set(run_tk("doctor", "--json").json()["home"]) == {"config", "data", "cache", "logs"}


def test_status_and_doctor_say_why_a_cudnn_version_is_unknown(tmp_path, build, run_tk):
    """Mid-reinstall (pip has removed the cuDNN DLLs and not yet written the new ones): no
    `?` or `None`, but what is unknown and why."""
    from kit.agentkit import patched_target

    venv, _, _ = patched_target(tmp_path, build, run_tk)
    lib = builders.site_packages(venv) / "torch" / "lib"
    for dll in lib.glob("cudnn*.dll"):
        dll.unlink()
    st = run_tk("status")
    assert st.rc == 0, st
    assert "cuDNN unknown" in st.out and "has no cuDNN library right now (pip reinstalling?" in st.out, st.out
    assert " ?" not in st.out and "None" not in st.out, st.out
    j = run_tk("status", "--json").json()
    assert j["targets"][0]["cudnn_now"] is None and "pip reinstalling" in j["targets"][0]["cudnn_unknown"]
    doc = run_tk("doctor")
    assert "None" not in doc.out and "cuDNN unknown" in doc.out, doc.out
