"""`torchkeeper bundle ...` through the real CLI, on real files made by the builders.

Every source is a real artefact: PE DLLs with version resources, ELF objects with sonames,
wheels pip accepts, folders laid out like NVIDIA's archives and toolkits.
"""

import hashlib
import os
import shutil
import stat
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))

import pytest  # noqa: E402

from kit import builders  # noqa: E402
from torchkeeper.engine import libs  # noqa: E402

WIN, LINUX = libs.WINDOWS, libs.LINUX
CUDNN = "9.5.1.17"
ARCHIVE_WIN = f"cudnn-windows-x86_64-{CUDNN}_cuda12-archive"
ARCHIVE_LINUX = f"cudnn-linux-x86_64-{CUDNN}_cuda12-archive"


def sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def error_line(r) -> str:
    lines = [x for x in r.err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, str(r)
    assert "Traceback" not in r.err, str(r)
    assert any(x.startswith("hint: ") for x in r.err.splitlines()), str(r)
    return lines[0]


def create(run_tk, *args, **kw):
    r = run_tk("bundle", "create", *map(str, args), "--json", **kw)
    assert r.rc == 0, str(r)
    return r.json()


def names(m) -> set:
    return {f["name"] for f in m["files"]}


def bundle_ids(run_tk, **kw) -> list:
    r = run_tk("bundle", "list", "--json", **kw)
    assert r.rc == 0, str(r)
    return sorted(m["id"] for m in r.json())


@pytest.fixture
def win_archive(build, tmp_path):
    return build.cudnn_archive(tmp_path / "dl", version=CUDNN, cuda_major=12, platform=WIN)


@pytest.fixture
def linux_archive(build, tmp_path):
    return build.cudnn_archive(tmp_path / "dl", version=CUDNN, cuda_major=12, platform=LINUX)


# --------------------------------------------------------------------------- cuDNN archives

def test_windows_cudnn_archive(run_tk, win_archive, tk_home):
    m = create(run_tk, win_archive)
    assert m["created_now"] is True
    assert m["platform"] == WIN
    assert m["cudnn"] == CUDNN
    assert m["cudnn_cuda_major"] == 12
    assert m["cuda"] is None  # no CUDA runtime / cuBLAS in a cuDNN archive
    assert names(m) == set(libs.cudnn_keys(9, WIN))
    assert not any("cudnn.lib" in n or "LICENSE" in n for n in names(m))
    assert m["name"] == "cudnn9.5.1-cu12-win"
    assert [s["kind"] for s in m["sources"]] == ["cuDNN archive"]

    show = run_tk("bundle", "show", m["name"], "--json")
    assert show.rc == 0, str(show)
    s = show.json()
    assert s["id"] == m["id"] and len(s["id"]) == 64
    assert len(s["files"]) == 8
    for f in s["files"]:
        src = win_archive / "bin" / f["name"]
        assert f["size"] == src.stat().st_size
        assert f["sha256"] == sha(src)
        assert sha(tk_home / "cache" / "bundles" / m["id"] / "files" / f["name"]) == f["sha256"]
    by_name = {f["name"]: f for f in s["files"]}
    assert by_name["cudnn64_9.dll"]["version"] == CUDNN         # read from the PE resource
    assert "version" not in by_name["cudnn_graph64_9.dll"]      # it has none, as the real one
    read = "\n".join(s["read"])
    assert f"cuDNN 9.5.1 from {ARCHIVE_WIN}/include/cudnn_version.h" in read
    assert f"cuDNN {CUDNN} from folder name {ARCHIVE_WIN}" in read
    assert f"cuDNN built for CUDA 12 from folder name {ARCHIVE_WIN}" in read

    text = run_tk("bundle", "show", m["id"][:10])
    assert text.rc == 0 and "cudnn_version.h" in text.out and "cudnn_ops64_9.dll" in text.out


def test_linux_cudnn_archive_keys_are_sonames(run_tk, linux_archive, tk_home):
    m = create(run_tk, linux_archive)
    assert m["platform"] == LINUX
    assert m["cudnn"] == CUDNN and m["cudnn_cuda_major"] == 12
    keys = [f["name"] for f in m["files"]]
    assert sorted(keys) == sorted(libs.cudnn_keys(9, LINUX))  # libcudnn.so.9, ... each once
    assert len(keys) == len(set(keys))
    for f in m["files"]:
        real = linux_archive / "lib" / (f["name"] + ".5.1")  # libcudnn_ops.so.9 -> .so.9.5.1
        assert real.is_file() and not real.is_symlink()
        assert f["sha256"] == sha(real) and f["size"] == real.stat().st_size
        stored = tk_home / "cache" / "bundles" / m["id"] / "files" / f["name"]
        assert not stored.is_symlink() and sha(stored) == f["sha256"]
    # libcudnn.so (the dev symlink) is the same library: not reported as left out
    assert not [x for x in m["left_out"] if x.endswith(".so")], m["left_out"]
    assert not any(".a" in k for k in keys)


# --------------------------------------------------------------------------- toolkits

def test_toolkit_plus_cudnn_archive_is_one_bundle(run_tk, build, tmp_path, win_archive):
    tk = build.cuda_toolkit(tmp_path / "sdk", version="12.4.127", platform=WIN)
    m = create(run_tk, tk, win_archive)
    assert m["cuda"] == "12.4" and m["cuda_full"] == "12.4.127" and m["cuda_major"] == 12
    assert m["cudnn"] == CUDNN and m["cudnn_cuda_major"] == 12
    assert names(m) == set(libs.cuda_keys(12, WIN)) | set(libs.cudnn_keys(9, WIN))
    assert any(x.endswith("cufft64_11.dll") for x in m["left_out"]), m["left_out"]
    assert "cufft64_11.dll" not in names(m) and "nvcc.exe" not in names(m)
    assert {s["kind"] for s in m["sources"]} == {"CUDA toolkit", "cuDNN archive"}
    assert any("cuda_runtime_api.h" in r for r in m["read"])
    assert m["name"] == "cuda12.4-cudnn9.5.1-win"
    from_ = {f["name"]: f["from"] for f in m["files"]}
    assert from_["cudart64_12.dll"] == str(tk) and from_["cudnn64_9.dll"] == str(win_archive)


def test_create_says_what_it_left_out_and_logs_an_event(run_tk, build, tmp_path, win_archive, tk_home):
    """A count of every file left out (nvcc.exe, headers, cufft...), the names with --verbose,
    and a `bundle created` event (once: the same files again create nothing)."""
    import json

    tk = build.cuda_toolkit(tmp_path / "sdk", version="12.4.127", platform=WIN)
    r = run_tk("bundle", "create", tk, win_archive)
    assert r.rc == 0, r
    line = next(ln for ln in r.out.splitlines() if "left out" in ln)
    assert "--verbose names each" in line and "other libraries" in line and "other files" in line
    assert "cufft64_11.dll" in r.out and "nvcc.exe" not in r.out
    r = run_tk("bundle", "create", tk, win_archive, "--verbose")
    assert r.rc == 0 and "nvcc.exe" in r.out and "cufft64_11.dll" in r.out, r
    events = [json.loads(x) for x in (tk_home / "logs" / "events.jsonl").read_text().splitlines()]
    made = [e for e in events if e["event"] == "bundle created"]
    assert len(made) == 1 and made[0]["bundle_name"] == "cuda12.4-cudnn9.5.1-win"
    assert made[0]["left_out"] >= 2 and made[0]["files"] > 0
    assert "bundle created" in run_tk("log").out


def test_linux_toolkit_soname_keys(run_tk, build, tmp_path):
    tk = build.cuda_toolkit(tmp_path / "sdk", version="12.4.127", platform=LINUX)
    m = create(run_tk, tk)
    assert names(m) == set(libs.cuda_keys(12, LINUX))
    assert m["cuda"] == "12.4"
    assert any(x.endswith("libcufft.so.11") for x in m["left_out"])


# --------------------------------------------------------------------------- nvidia wheels

@pytest.mark.parametrize("platform", [LINUX, WIN])
def test_nvidia_cudnn_wheel_and_its_unpacked_folder(run_tk, build, tmp_path, platform):
    whl = build.nvidia_wheel(tmp_path / "whl", lib="cudnn", cuda_major=12, version="9.1.0.70",
                             platform=platform)
    assert whl.name == "nvidia_cudnn_cu12-9.1.0.70-py3-none-any.whl"
    m = create(run_tk, whl)
    assert m["platform"] == platform
    assert m["cudnn"] == "9.1.0.70" and m["cudnn_cuda_major"] == 12
    assert names(m) == set(libs.cudnn_keys(9, platform))
    read = "\n".join(m["read"])
    assert "METADATA" in read and "cudnn_version.h" in read
    assert f"cuDNN built for CUDA 12 from wheel name {whl.name}" in read
    assert m["sources"] == [{"path": str(whl), "kind": "nvidia wheel"}]
    with zipfile.ZipFile(whl) as z:
        sub = "bin" if platform == WIN else "lib"
        for f in m["files"]:
            assert f["sha256"] == hashlib.sha256(z.read(f"nvidia/cudnn/{sub}/{f['name']}")).hexdigest()

    unz = tmp_path / "unpacked"
    with zipfile.ZipFile(whl) as z:
        z.extractall(unz)
    other = tmp_path / "other-home"
    other.mkdir()
    m2 = create(run_tk, unz, extra_env={"TORCHKEEPER_HOME": other})
    assert m2["created_now"] is True
    assert m2["id"] == m["id"]  # the same files and versions: the same bundle
    assert m2["cudnn"] == "9.1.0.70" and m2["cudnn_cuda_major"] == 12
    assert any("METADATA" in r for r in m2["read"])
    again = run_tk("bundle", "create", unz)
    assert again.rc == 0 and "already in the cache" in again.out, str(again)


def test_wheel_temporaries_are_cleaned(run_tk, build, tmp_path, tk_home):
    whl = build.nvidia_wheel(tmp_path / "whl", lib="cudnn", version="9.1.0.70", platform=LINUX)
    create(run_tk, whl)
    assert list((tk_home / "cache" / "tmp").iterdir()) == []


# --------------------------------------------------------------------------- plain folders

@pytest.fixture
def plain_dlls(win_archive, tmp_path):
    """The archive's DLLs alone, in a folder whose name says nothing."""
    d = tmp_path / "some dlls"
    d.mkdir()
    for p in (win_archive / "bin").iterdir():
        shutil.copy2(p, d / p.name)
    return d


def test_plain_folder_needs_cudnn_flag(run_tk, plain_dlls, tk_home):
    r = run_tk("bundle", "create", plain_dlls)
    assert r.rc == 2, str(r)
    assert "cuDNN version" in error_line(r)
    assert "--cudnn" in r.err
    assert bundle_ids(run_tk) == []
    assert list((tk_home / "cache" / "tmp").iterdir()) == []


def test_plain_folder_with_cudnn_flag_infers_cuda_major_from_binaries(run_tk, plain_dlls):
    assert b"cublasLt64_12.dll" in (plain_dlls / "cudnn64_9.dll").read_bytes()
    m = create(run_tk, plain_dlls, "--cudnn", "9.5.1")
    assert m["cudnn"] == "9.5.1"
    assert m["cudnn_cuda_major"] == 12
    assert any("cuBLAS name inside the binary" in r for r in m["read"]), m["read"]
    assert any(r == "cuDNN 9.5.1 from --cudnn" for r in m["read"])
    assert [s["kind"] for s in m["sources"]] == ["library folder"]


def test_plain_folder_cuda11_build_is_recognised(run_tk, build, tmp_path):
    arch = build.cudnn_archive(tmp_path / "dl", version="9.1.0.70", cuda_major=11, platform=WIN)
    d = tmp_path / "renamed"
    shutil.copytree(arch / "bin", d)
    m = create(run_tk, d, "--cudnn", "9.1.0")
    assert m["cudnn_cuda_major"] == 11


def test_cudnn_flag_contradicting_the_header(run_tk, win_archive, tmp_path):
    d = tmp_path / "mylibs"
    shutil.copytree(win_archive / "bin", d / "bin")
    shutil.copytree(win_archive / "include", d / "include")
    r = run_tk("bundle", "create", d, "--cudnn", "9.6.0")
    assert r.rc == 2, str(r)
    line = error_line(r)
    assert "9.6.0" in line and "cudnn_version.h" in line
    assert bundle_ids(run_tk) == []
    m = create(run_tk, d, "--cudnn", "9.5.1")  # agreeing with the header is fine
    assert m["cudnn"] == "9.5.1"


def test_cudnn_flag_contradiction_cites_the_cudnn_source(run_tk, build, tmp_path, win_archive):
    tk = build.cuda_toolkit(tmp_path / "sdk", platform=WIN)
    r = run_tk("bundle", "create", tk, win_archive, "--cudnn", "9.6.0")
    assert r.rc == 2, str(r)
    line = error_line(r)
    assert "cuDNN 9.5.1" in line and "CUDA 12.4" not in line, line


@pytest.mark.parametrize("bad", ["abc", "9", "9.x.1"])
def test_cudnn_flag_must_be_a_version(run_tk, plain_dlls, bad):
    r = run_tk("bundle", "create", plain_dlls, "--cudnn", bad)
    assert r.rc == 2, str(r)
    assert "--cudnn" in error_line(r)


# --------------------------------------------------------------------------- refusals

def test_mixing_windows_and_linux_libraries(run_tk, win_archive, linux_archive):
    r = run_tk("bundle", "create", win_archive, linux_archive)
    assert r.rc == 2, str(r)
    assert "mix Windows DLLs and Linux" in error_line(r)
    assert bundle_ids(run_tk) == []


def test_missing_source(run_tk, tmp_path):
    missing = tmp_path / "not" / "here"
    r = run_tk("bundle", "create", missing)
    assert r.rc == 2, str(r)
    assert str(missing) in error_line(r)


def test_text_file_source(run_tk, tmp_path):
    txt = tmp_path / "readme.txt"
    txt.write_text("cudnn\n")
    r = run_tk("bundle", "create", txt)
    assert r.rc == 2, str(r)
    assert "readme.txt" in error_line(r)


def test_folder_without_libraries(run_tk, tmp_path):
    d = tmp_path / "nothing"
    (d / "include").mkdir(parents=True)
    r = run_tk("bundle", "create", d)
    assert r.rc == 2, str(r)
    assert str(d) in error_line(r)


def test_dll_name_on_a_non_pe_file(run_tk, plain_dlls):
    (plain_dlls / "cudnn_ops64_9.dll").write_bytes(b"not a dll at all")
    r = run_tk("bundle", "create", plain_dlls, "--cudnn", "9.5.1")
    assert r.rc == 2, str(r)
    assert "cudnn_ops64_9.dll" in error_line(r)


def test_not_a_zip_wheel(run_tk, tmp_path):
    whl = tmp_path / "nvidia_cudnn_cu12-9.1.0.70-py3-none-any.whl"
    whl.write_bytes(b"PK\x03\x04 truncated")
    r = run_tk("bundle", "create", whl)
    assert r.rc == 2, str(r)
    assert whl.name in error_line(r)


# --------------------------------------------------------------------------- ids and names

def test_same_sources_twice_same_id(run_tk, win_archive):
    m1 = create(run_tk, win_archive)
    r = run_tk("bundle", "create", win_archive)
    assert r.rc == 0, str(r)
    assert "already in the cache" in r.out
    m2 = create(run_tk, win_archive)
    assert m2["id"] == m1["id"] and m2["created_now"] is False
    assert bundle_ids(run_tk) == [m1["id"]]


def test_clashing_name_refused(run_tk, win_archive, linux_archive):
    m1 = create(run_tk, win_archive, "--name", "mine")
    r = run_tk("bundle", "create", linux_archive, "--name", "mine")
    assert r.rc == 2, str(r)
    assert "'mine'" in error_line(r)
    assert "--name" in r.err
    assert bundle_ids(run_tk) == [m1["id"]]


def test_default_name_clash_gets_a_suffix(run_tk, win_archive, plain_dlls):
    # same files, but "9.5.1" from --cudnn instead of "9.5.1.17": another bundle, same default name
    m1 = create(run_tk, win_archive)
    m2 = create(run_tk, plain_dlls, "--cudnn", "9.5.1")
    assert m1["id"] != m2["id"]
    assert m1["name"] == "cudnn9.5.1-cu12-win" and m2["name"] == "cudnn9.5.1-cu12-win-2"


@pytest.mark.parametrize("bad", ["../x", "a/b", "-x", "x" * 65, ""])
def test_bad_bundle_names(run_tk, win_archive, bad):
    r = run_tk("bundle", "create", win_archive, f"--name={bad}")
    assert r.rc == 2, str(r)
    assert "not allowed" in error_line(r)
    assert bundle_ids(run_tk) == []


# --------------------------------------------------------------------------- store and verify

def test_store_is_read_only_and_verify_finds_corruption(run_tk, win_archive, tk_home):
    m = create(run_tk, win_archive)
    d = tk_home / "cache" / "bundles" / m["id"]
    for p in [d / "manifest.json", *(d / "files").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o222 == 0, p
    ok = run_tk("bundle", "verify")
    assert ok.rc == 0 and f"{m['name']}: ok" in ok.out, str(ok)

    victim = d / "files" / "cudnn_ops64_9.dll"
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = run_tk("bundle", "verify", m["name"])
    assert bad.rc == 1, str(bad)
    assert "cudnn_ops64_9.dll does not match its sha256" in bad.out
    assert "DAMAGED" in bad.out and "hint:" in bad.out
    js = run_tk("bundle", "verify", "--json").json()
    assert js[0]["problems"] == ["cudnn_ops64_9.dll does not match its sha256"]

    victim.write_bytes(b"short")
    assert "cudnn_ops64_9.dll has size 5" in run_tk("bundle", "verify").out
    victim.unlink()
    assert "cudnn_ops64_9.dll is missing" in run_tk("bundle", "verify").out


def test_verify_notices_an_extra_file(run_tk, win_archive, tk_home):
    m = create(run_tk, win_archive)
    files = tk_home / "cache" / "bundles" / m["id"] / "files"
    (files / "evil64_9.dll").write_bytes(b"MZ")
    r = run_tk("bundle", "verify")
    assert r.rc == 1 and "unexpected file evil64_9.dll" in r.out, str(r)


# --------------------------------------------------------------------------- export / import

@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.xz"])
def test_export_import_round_trip(run_tk, win_archive, tmp_path, suffix):
    m = create(run_tk, win_archive)
    out = tmp_path / f"bundle{suffix}"
    r = run_tk("bundle", "export", m["name"], out, "--json")
    assert r.rc == 0, str(r)
    assert r.json()["file"] == str(out) and out.is_file()
    assert not list(tmp_path.glob(".*.part"))

    fresh = tmp_path / "fresh-home"
    fresh.mkdir()
    env = {"TORCHKEEPER_HOME": fresh}
    imp = run_tk("bundle", "import", out, "--json", extra_env=env)
    assert imp.rc == 0, str(imp)
    got = imp.json()
    assert got["id"] == m["id"] and got["name"] == m["name"] and got["created_now"] is True
    assert [(f["name"], f["sha256"], f["size"]) for f in got["files"]] == \
        [(f["name"], f["sha256"], f["size"]) for f in m["files"]]
    for f in m["files"]:
        assert sha(fresh / "cache" / "bundles" / m["id"] / "files" / f["name"]) == f["sha256"]
    assert run_tk("bundle", "verify", extra_env=env).rc == 0
    assert list((fresh / "cache" / "tmp").iterdir()) == []

    again = run_tk("bundle", "import", out, extra_env=env)
    assert again.rc == 0 and "already in the cache" in again.out, str(again)


def test_export_into_a_folder_names_the_file(run_tk, win_archive, tmp_path):
    m = create(run_tk, win_archive)
    dest = tmp_path / "exports"
    dest.mkdir()
    r = run_tk("bundle", "export", m["name"], dest)
    assert r.rc == 0, str(r)
    assert (dest / f"{m['name']}.tkbundle.tar").is_file()


def test_import_keeps_a_local_bundle_with_the_same_name(run_tk, win_archive, linux_archive, tmp_path):
    m = create(run_tk, win_archive, "--name", "shared")
    out = tmp_path / "b.tar"
    assert run_tk("bundle", "export", "shared", out).rc == 0
    other = tmp_path / "other-home"
    other.mkdir()
    env = {"TORCHKEEPER_HOME": other}
    create(run_tk, linux_archive, "--name", "shared", extra_env=env)
    imp = run_tk("bundle", "import", out, "--json", extra_env=env)
    assert imp.rc == 0, str(imp)
    assert imp.json()["id"] == m["id"] and imp.json()["name"] == "shared-2"
    assert len(bundle_ids(run_tk, extra_env=env)) == 2


# --------------------------------------------------------------------------- remove

def test_remove_unused_bundle(run_tk, win_archive, tk_home):
    m = create(run_tk, win_archive)
    r = run_tk("bundle", "remove", m["name"])
    assert r.rc == 0, str(r)
    assert bundle_ids(run_tk) == []
    assert not (tk_home / "cache" / "bundles" / m["id"]).exists()
    assert list((tk_home / "cache" / "tmp").iterdir()) == []


def test_remove_applied_bundle_needs_force(run_tk, build, tmp_path, win_archive, tk_home):
    whl = build.torch_wheel(tmp_path / "whl", version="2.4.1+cu124", cuda="12.4", cudnn="9.1.0.70",
                            layout="windows")
    venv = builders.make_venv(tmp_path / "venv")
    builders.pip_install(venv, whl)
    m = create(run_tk, win_archive)
    assert run_tk("target", "add", venv, "--name", "sd").rc == 0
    assert run_tk("use", m["name"]).rc == 0
    ap = run_tk("apply")
    assert ap.rc == 0, str(ap)

    r = run_tk("bundle", "remove", m["name"])
    assert r.rc == 2, str(r)
    line = error_line(r)
    assert m["name"] in line and "sd" in line
    assert "--force" in r.err
    assert bundle_ids(run_tk) == [m["id"]]
    assert run_tk("bundle", "verify").rc == 0

    f = run_tk("bundle", "remove", m["name"], "--force")
    assert f.rc == 0, str(f)
    assert bundle_ids(run_tk) == []
    # the stock backups are kept: revert still restores torch's own files
    rv = run_tk("revert", "sd")
    assert rv.rc == 0, str(rv)
    lib = builders.site_packages(venv) / "torch" / "lib"
    stock = builders.record_hashes(builders.site_packages(venv), "torch")
    assert sha(lib / "cudnn64_9.dll") == stock["torch/lib/cudnn64_9.dll"][0]


def test_version_flags_for_libraries_not_in_the_sources(run_tk, build, tmp_path, win_archive):
    tk = build.cuda_toolkit(tmp_path / "sdk", platform=WIN)
    r = run_tk("bundle", "create", tk, "--cudnn", "9.1.0")
    assert r.rc == 2, str(r)
    assert "--cudnn 9.1.0" in error_line(r)
    r = run_tk("bundle", "create", win_archive, "--cuda", "12.4")
    assert r.rc == 2, str(r)
    assert "--cuda 12.4" in error_line(r)
    assert bundle_ids(run_tk) == []


def test_damaged_manifest_in_the_cache(run_tk, win_archive, tk_home):
    m = create(run_tk, win_archive)
    mf = tk_home / "cache" / "bundles" / m["id"] / "manifest.json"
    for junk in ("garbage", "[]", '{"name": "x"}'):
        os.chmod(mf, 0o644)
        mf.write_text(junk)
        r = run_tk("bundle", "list")
        assert r.rc == 0 and "Traceback" not in r.err, str(r)
    # creating it again repairs it
    m2 = create(run_tk, win_archive)
    assert m2["id"] == m["id"] and m2["created_now"] is True
    assert run_tk("bundle", "verify").rc == 0
    assert list((tk_home / "cache" / "tmp").iterdir()) == []
