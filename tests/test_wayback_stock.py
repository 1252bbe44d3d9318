"""The way back when RECORD cannot say what stock was, or when the file was not stock.

* a deleted RECORD, a RECORD without hashes, a conda env (conda-meta/*.json, with or without
  sha256): revert puts back the bytes that were there before the first overlay, and `plan`
  says where each stock hash came from (`RECORD`, `conda-meta`, `seen before the first overlay`);
* `apply --force` over a foreign file: revert puts the foreign bytes back and says so;
* target names: Unicode folder names give a valid default; hostile names are refused.
"""

from __future__ import annotations

import csv
import shutil
import unicodedata

from kit import builders
import pytest
from kit.wayback import (NAME, WIN_TORCH, Target, add_bundle, assert_error, assert_patched, assert_stock,
                     classify, ok, present_libs, state, status_of, win_sources, windows_target)

SEEN = "seen before the first overlay"
FOREIGN_FILE = "torch/lib/cudnn_ops_infer64_8.dll"


def stock_sources(run_tk) -> dict[str, str | None]:
    plan = ok(run_tk("plan", NAME, "--json")).json()
    return {f["rel"]: f["stock_source"] for f in plan["files"]}


def round_trip(t: Target, run_tk, source: str) -> None:
    """plan names the source of every stock hash; apply, then revert to the stock bytes."""
    ok(run_tk("use", "a"))
    assert set(stock_sources(run_tk).values()) == {source}
    text = ok(run_tk("plan", NAME)).out
    assert text.count(f"stock: {source}") == len(t.bundles["a"]["files"]), text
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    assert set(stock_sources(run_tk).values()) == {source}  # the overlay keeps it
    for f in state(t)["overlays"][NAME]["files"].values():
        assert f["stock_source"] == source, f
    r = ok(run_tk("revert", "--json"))
    assert r.json()[0]["action"] == "reverted", str(r)
    assert_stock(t, run_tk)


@pytest.mark.parametrize("how", ["deleted", "no hashes"])
def test_revert_without_record_hashes(how, build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    record = builders.dist_info(t.sp, "torch") / "RECORD"
    if how == "deleted":
        record.unlink()
    else:
        rows = list(csv.reader(record.read_text().splitlines()))
        record.write_text("".join(f"{row[0]},,\n" for row in rows))
    assert present_libs(t.sp) == t.stock
    round_trip(t, run_tk, SEEN)


def conda_target(build, tmp_path, run_tk, tk_home, sha256: bool) -> Target:
    wheel = build.torch_wheel(tmp_path / "wheels", **WIN_TORCH)
    env = builders.conda_env(tmp_path / "miniconda3" / "envs" / "sd", wheel, sha256=sha256)
    sp = env / "Lib" / "site-packages"
    ok(run_tk("target", "add", env, "--name", NAME))
    t = Target(env, sp, tk_home, [wheel], present_libs(sp))
    add_bundle(t, run_tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    return t


@pytest.mark.parametrize("sha256", [True, False], ids=["paths_data", "files only"])
def test_conda_env_round_trip(sha256, build, tmp_path, run_tk, tk_home):
    t = conda_target(build, tmp_path, run_tk, tk_home, sha256)
    round_trip(t, run_tk, "conda-meta" if sha256 else SEEN)


def test_conda_env_without_a_stock_copy_hints_conda(build, tmp_path, run_tk, tk_home):
    """The backups are gone (a cleared data folder): conda, not pip, gets the stock files back."""
    t = conda_target(build, tmp_path, run_tk, tk_home, sha256=True)
    ok(run_tk("use", "a"))
    ok(run_tk("apply"))
    shutil.rmtree(tk_home / "data" / "backups")
    hint = assert_error(run_tk("revert"), 4, "no stock copy", "torch/lib/")
    assert "conda install --force-reinstall pytorch" in hint and "pip" not in hint, hint
    classify(t, {"a": "a"})  # nothing was written


def test_conda_meta_hash_tells_foreign_bytes(build, tmp_path, run_tk, tk_home):
    """With conda-meta's sha256, a changed file is foreign (not taken for stock)."""
    t = conda_target(build, tmp_path, run_tk, tk_home, sha256=True)
    ok(run_tk("use", "a"))
    p = t.sp / FOREIGN_FILE
    p.write_bytes(p.read_bytes() + b"another tool")
    plan = ok(run_tk("plan", NAME, "--json")).json()
    (step,) = [f for f in plan["files"] if f["rel"] == FOREIGN_FILE]
    assert step["action"] == "foreign" and step["stock_source"] == "conda-meta", step


def make_foreign(t: Target) -> str:
    p = t.sp / FOREIGN_FILE
    p.write_bytes(p.read_bytes() + b"copied in by hand")
    return builders.sha256_file(p)


def test_revert_after_force_over_foreign_restores_it(build, tmp_path, run_tk, tk_home):
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    foreign = make_foreign(t)
    before = dict(t.stock, **{FOREIGN_FILE: foreign})
    assert_error(run_tk("apply"), 3, FOREIGN_FILE)
    ok(run_tk("apply", "--force"))
    classify(t, {"a": "a"})
    r = ok(run_tk("revert"))
    assert FOREIGN_FILE in r.out, str(r)  # the text says it too
    ok(run_tk("apply", "--force"))
    r = ok(run_tk("revert", "--json"))
    (res,) = r.json()
    assert res["action"] == "reverted" and res["foreign"] == [FOREIGN_FILE], str(r)
    assert FOREIGN_FILE in res["message"] and "foreign" in res["message"], str(r)
    now = {rel: builders.sha256_file(t.sp / rel) for rel in t.stock}
    assert now == before  # exactly what was there before the overlay
    tgt, r = status_of(run_tk)
    assert "applied" not in tgt and tgt["state"] == "drifted", str(r)  # as it was before


def test_reinstall_after_force_over_foreign_reverts_to_stock(build, tmp_path, run_tk, tk_home):
    """pip put the stock files back over the overlay: the foreign copy is gone for good, and
    a revert after the re-apply gives the stock bytes."""
    t = windows_target(build, tmp_path, run_tk, tk_home)
    ok(run_tk("use", "a"))
    make_foreign(t)
    ok(run_tk("apply", "--force"))
    builders.pip_install(t.venv, *t.wheels, force_reinstall=True)
    classify(t, {"stock": None})
    ok(run_tk("apply"))
    assert_patched(t, run_tk, "a")
    r = ok(run_tk("revert", "--json"))
    assert r.json()[0]["foreign"] == [], str(r)
    assert_stock(t, run_tk)


# ----------------------------------------------------------------------------- names


@pytest.fixture
def torch_sp(build, tmp_path):
    """A site-packages with a Windows torch, copied under the hostile folder names below."""
    sp = tmp_path / "proto" / "site-packages"
    builders.pip_install_target(sp, build.torch_wheel(tmp_path / "wheels", **WIN_TORCH))
    return sp


def add_default(run_tk, torch_sp, folder) -> str:
    """target add a copy of torch_sp under folder (relative to torch_sp's tmp), no --name."""
    dest = torch_sp.parent.parent / "apps" / folder / "site-packages"
    shutil.copytree(torch_sp, dest)
    r = ok(run_tk("target", "add", dest, "--json"))
    name = r.json()["name"]
    ok(run_tk("target", "remove", name))  # takes the target's lock: a file named after it
    return name


def test_default_name_from_a_unicode_folder(build, tmp_path, run_tk, tk_home):
    venv = builders.make_venv(tmp_path / "Jürgen Müller" / "ComfyUI 便携" / "venv")
    builders.pip_install(venv, build.torch_wheel(tmp_path / "wheels", **WIN_TORCH))
    r = ok(run_tk("target", "add", venv, "--json"))
    assert r.json()["name"] == "ComfyUI-便携", str(r)
    t = Target(venv, builders.site_packages(venv), tk_home, [], present_libs(builders.site_packages(venv)))
    add_bundle(t, run_tk, "a", *win_sources(build, tmp_path, "8.9.7.29"))
    ok(run_tk("use", "a"))
    ok(run_tk("apply", "ComfyUI-便携"))
    assert (tk_home / "data" / "locks" / "ComfyUI-便携.lock").is_file()
    classify(t, {"a": "a"})
    ok(run_tk("revert", "ComfyUI-便携"))
    classify(t, {"stock": None})


@pytest.mark.parametrize("folder, want", [
    ("Mu\u0308ller", "Müller"),             # decomposed (macOS) becomes one letter
    ("CON", None), ("nul.txt", None), ("com1", None), ("LPT9", None),
    ("a..b", None), ("...", None), ("-x-", "x"), ("a:b*c?", "a-b-c"),
    ("🚀 rocket", "rocket"), ("便" * 80, "便" * 64), ("\U00020000" * 3 + "ok", None),
    ("trailing.", "trailing"), ("tab\there", "tab-here"),
])
def test_default_names_are_valid(folder, want, torch_sp, run_tk, tk_home):
    name = add_default(run_tk, torch_sp, folder)
    if want is not None:
        assert name == want
    assert name == unicodedata.normalize("NFC", name) and ".." not in name and len(name) <= 64
    assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT9"}, name
    assert not any(c in name for c in '<>:"/\\|?*\t'), name
    assert list((tk_home / "data" / "locks").iterdir()) == [tk_home / "data" / "locks" / f"{name}.lock"]


@pytest.mark.parametrize("name", [
    "../evil", "a/b", "a\\b", "..", ".", ".hidden", "-flag", "CON", "con.txt", "Nul", "COM1",
    "lpt1.log", "a:b", "a<b", 'a"b', "a|b", "a?b", "a*b", "a\nb", "a\n", "a\x01b", "a b",
    "x" * 65, "trailing.", "a..b", "\U00020000",
])
def test_hostile_names_are_refused(name, torch_sp, run_tk, tk_home):
    r = run_tk("target", "add", torch_sp, f"--name={name}")
    hint = assert_error(r, 2, "not allowed")
    assert "letters" in hint
    assert ok(run_tk("target", "list", "--json")).json() == []
    assert not (tk_home / "data" / "locks").exists() or list((tk_home / "data" / "locks").iterdir()) == []


@pytest.mark.parametrize("name", ["Müller", "便携", "a1111", "ComfyUI-便携", "sd.next_2"])
def test_unicode_names_are_allowed(name, torch_sp, run_tk, tk_home):
    ok(run_tk("target", "add", torch_sp, "--name", name))
    ok(run_tk("target", "remove", name))
    assert list((tk_home / "data" / "locks").iterdir()) == [tk_home / "data" / "locks" / f"{name}.lock"]
