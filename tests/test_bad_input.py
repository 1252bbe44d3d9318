"""Bad and hostile input, through the real CLI: config files, missing things, the state file,
hostile wheels (bundle archives: test_bad_archives.py).

Every case must give: the documented exit code, one `error: ` line on stderr that names
the file or target, a `hint: ` line, no Python traceback, and no change at all: the
TORCHKEEPER_HOME tree (paths + sha256, logs/ aside) and everything else under the test's
temporary folder are exactly as before, and cache/tmp holds no leftovers.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))

import pytest  # noqa: E402

from kit.badinput import Watch, bundle_list, check_error, home_with_a_bundle  # noqa: E402
from torchkeeper.engine.bundle import Store  # noqa: E402
from torchkeeper.home import get_home  # noqa: E402


@pytest.fixture
def home(build, tk_home, tmp_path):
    return home_with_a_bundle(build, tk_home, tmp_path)


# --------------------------------------------------------------------------- config files

@pytest.fixture
def config_file(tk_home):
    d = tk_home / "config"
    d.mkdir(exist_ok=True)
    return d / "config.toml"


CONFIGS = [
    ("invalid_toml", b"[agent]\nauto_reapply = true\nquiet_seconds = \n", "line 3"),
    ("unclosed_header", b"[agent\n", "line 1"),
    ("duplicate_key", b"[agent]\nauto_reapply = true\nauto_reapply = false\n", "line 3"),
    ("unknown_section", b"[agent]\nauto_reapply = true\n[webui]\nport = 1\n", "unknown section [webui]"),
    ("section_as_value", b"agent = 5\n", "'agent' must be a [section]"),
    ("newline_in_section_name", b'["a\\nb"]\nx = 1\n', "unknown section"),
    ("one_megabyte", b"# " + b"x" * (1 << 20) + b"\n", "too large"),
    ("not_utf8", b'[agent]\nfull_verify_at = "\xff\xfe04:00"\n', "not UTF-8"),
    ("nul_bytes", b"[agent]\x00\nauto_reapply = true\n", "line 1"),
    ("deep_arrays", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    ("deep_inline_tables", b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n", "nested too deeply"),
    # tomllib (3.11+) parses the header and the schema refuses it; tomli (3.10) recurses
    ("deep_table_header", b"[" + b".".join([b"a"] * 5000) + b"]\n",
     ("unknown section [a]", "nested too deeply")),
]


# a bad value or unknown key in a section only the agent reads: the CLI warns and goes on
# (the agent keeps its last good settings: tests/test_hostile_files.py)
AGENT_ONLY = [
    ("unknown_key", b"[agent]\nauto_reapply = true\nreapply_harder = 1\n", "line 3"),
    ("wrong_type", b'[agent]\nauto_reapply = "yes"\n', "line 2"),
    ("number_as_bool", b"[notifications]\ndedupe_seconds = true\n", "dedupe_seconds"),
    ("out_of_range", b"[agent]\ndriver_poll_seconds = 0\n", "line 2"),
    ("too_big", b"[agent]\nquiet_seconds = 61\n", "quiet_seconds = 61"),
    ("nan", b"[agent]\nquiet_seconds = nan\n", "quiet_seconds"),
    ("inf", b"[agent]\nmax_wait_seconds = inf\n", "max_wait_seconds"),
    ("bad_time", b'[agent]\nfull_verify_at = "25:00"\n', "full_verify_at"),
    ("huge_value", b'[agent]\nfull_verify_at = "' + b"x" * 200_000 + b'"\n', "full_verify_at"),
    ("huge_key", b"[agent]\n" + b"k" * 100_000 + b" = 1\n", "unknown setting"),
]


@pytest.mark.parametrize("data, says", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config_file(run_tk, tk_home, tmp_path, config_file, data, says):
    config_file.write_bytes(data)
    watch = Watch(tmp_path, tk_home)
    r = run_tk("status")
    line = check_error(r, 2, config_file)
    assert any(x in line for x in ((says,) if isinstance(says, str) else says)), line
    watch.unchanged()


def test_config_file_is_a_directory(run_tk, tk_home, tmp_path, config_file):
    config_file.mkdir()
    watch = Watch(tmp_path, tk_home)
    check_error(run_tk("status"), 2, config_file)
    watch.unchanged()


def test_config_file_is_a_dangling_link(run_tk, tk_home, tmp_path, config_file):
    config_file.symlink_to(config_file.with_name("gone.toml"))
    watch = Watch(tmp_path, tk_home)
    assert run_tk("status").rc == 0  # same as no file: the defaults
    watch.unchanged()


@pytest.mark.parametrize("data, says", [c[1:] for c in AGENT_ONLY], ids=[c[0] for c in AGENT_ONLY])
def test_bad_agent_only_setting_is_a_warning(run_tk, tk_home, tmp_path, config_file, data, says):
    config_file.write_bytes(data)
    watch = Watch(tmp_path, tk_home)
    r = run_tk("status")
    assert r.rc == 0 and "Traceback" not in r.err, str(r)
    warnings = [ln for ln in r.err.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and str(config_file) in warnings[0], str(r)
    assert says in warnings[0], warnings[0]
    watch.unchanged()


def test_config_error_stops_every_command(run_tk, tk_home, config_file, tmp_path):
    """A bad value in a section the CLI itself reads ([apply]) stops every command."""
    config_file.write_text("[apply]\nprogress = 1\n")
    watch = Watch(tmp_path, tk_home)
    for args in (["bundle", "list"], ["target", "list"], ["bundle", "create", tmp_path]):
        check_error(run_tk(*args), 2, config_file, "line 2")
    watch.unchanged()


@pytest.mark.parametrize("data", [b"", b"# only comments\n", b"\xef\xbb\xbf[agent]\nauto_reapply = false\n",
                                  b"[agent]\r\nquiet_seconds = 2\r\n"],
                         ids=["empty", "comments", "utf8_bom", "crlf"])
def test_config_near_misses_are_fine(run_tk, config_file, data):
    config_file.write_bytes(data)
    r = run_tk("status")
    assert r.rc == 0, str(r)
    assert "Traceback" not in r.err


# --------------------------------------------------------------------------- missing things

@pytest.fixture
def fresh(tk_home, tmp_path):
    return Watch(tmp_path, tk_home)


def test_target_add_nonexistent(run_tk, fresh):
    check_error(run_tk("target", "add", "/nonexistent/venv"), 2, "/nonexistent/venv")
    fresh.unchanged()


def test_target_add_a_file(run_tk, tk_home, tmp_path):
    f = tmp_path / "python.exe"
    f.write_bytes(b"MZ")
    watch = Watch(tmp_path, tk_home)
    check_error(run_tk("target", "add", f), 2, f)
    watch.unchanged()


def test_target_add_empty_dir(run_tk, tk_home, tmp_path):
    d = tmp_path / "empty env"
    d.mkdir()
    watch = Watch(tmp_path, tk_home)
    check_error(run_tk("target", "add", d), 2, d)
    watch.unchanged()


def test_bundle_import_nonexistent(run_tk, fresh):
    check_error(run_tk("bundle", "import", "/nonexistent.tar"), 2, "/nonexistent.tar")
    fresh.unchanged()


def test_apply_unknown_target(run_tk, tk_home):
    check_error(run_tk("apply", "nosuchtarget"), 2, "nosuchtarget")
    assert not (tk_home / "data" / "state.json").exists()
    # the lock file it leaves: test_unknown_target_leaves_no_lock_file


def test_use_unknown_bundle(run_tk, fresh):
    check_error(run_tk("use", "nosuchbundle"), 2, "nosuchbundle")
    fresh.unchanged()


def test_plan_without_targets(run_tk, fresh):
    check_error(run_tk("plan"), 2, "no targets")
    fresh.unchanged()


@pytest.mark.parametrize("args, name", [
    (["plan", "nosuchtarget"], "nosuchtarget"),
    (["verify", "nosuchtarget"], "no targets"),
    (["bundle", "show", "nosuchbundle"], "nosuchbundle"),
    (["bundle", "verify", "nosuchbundle"], "nosuchbundle"),
    (["bundle", "remove", "nosuchbundle"], "nosuchbundle"),
    (["bundle", "export", "nosuchbundle", "out.tar"], "nosuchbundle"),
    (["use", "nosuchbundle", "--target", "t"], "nosuchbundle"),
    (["bundle", "create", "/nonexistent/cudnn"], "/nonexistent/cudnn"),
])
def test_unknown_names(run_tk, fresh, args, name):
    check_error(run_tk(*args), 2, name)
    fresh.unchanged()


def test_unknown_names_with_a_bundle(run_tk, home, tmp_path):
    watch = Watch(tmp_path, home)
    check_error(run_tk("bundle", "export", "cudnn9.5.1-cu12-linux", tmp_path / "no" / "dir" / "b.tar"),
                2, tmp_path / "no" / "dir")
    check_error(run_tk("use", "cudnn9.5.1-cu12-linux", "--target", "nosuchtarget"), 2, "nosuchtarget")
    check_error(run_tk("bundle", "show", "ab"), 2, "ab")
    watch.unchanged()


@pytest.mark.parametrize("cmd", [["apply"], ["revert"], ["target", "remove"]])
def test_unknown_target_leaves_no_lock_file(run_tk, fresh, tmp_path, cmd):
    check_error(run_tk(*cmd, "../../escaped"), 2, "escaped")
    fresh.unchanged()


# --------------------------------------------------------------------------- state file

@pytest.mark.parametrize("data", [b"garbage{", b"\xff\xfe\x00 binary", b"", b"[]", b"null",
                                  b'{"schema": 99}'],
                         ids=["garbage", "binary", "empty", "list", "null", "future_schema"])
@pytest.mark.parametrize("cmd", [["status"], ["target", "list"], ["apply"], ["revert"]])
def test_corrupt_state_file(run_tk, tk_home, tmp_path, data, cmd):
    state = tk_home / "data" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(data)
    watch = Watch(tmp_path, tk_home)
    r = run_tk(*cmd)
    line = check_error(r, 2, state)
    assert "state file" in line
    assert "move" in r.err.splitlines()[1]  # the hint says what to do with it
    watch.unchanged()
    assert state.read_bytes() == data


def test_corrupt_state_file_bundle_remove(run_tk, home, tmp_path):
    state = home / "data" / "state.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"garbage{")
    watch = Watch(tmp_path, home)
    check_error(run_tk("bundle", "remove", "cudnn9.5.1-cu12-linux"), 2, state)
    watch.unchanged()
    assert len(bundle_list(run_tk)) == 1


def test_state_file_is_a_directory(run_tk, tk_home, tmp_path):
    state = tk_home / "data" / "state.json"
    state.mkdir(parents=True)
    watch = Watch(tmp_path, tk_home)
    check_error(run_tk("status"), 2, state)
    watch.unchanged()


@pytest.mark.parametrize("data", [b'{"schema": 1, "targets": []}', b'{"schema": 1, "targets": {"a": 1}}',
                                  b'{"schema": 1, "targets": {"a": {}}}'],
                         ids=["targets_list", "target_int", "target_empty"])
def test_wrong_shaped_state_file(run_tk, tk_home, tmp_path, data):
    state = tk_home / "data" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(data)
    watch = Watch(tmp_path, tk_home)
    check_error(run_tk("target", "list"), 2, state)
    watch.unchanged()


# --------------------------------------------------------------------------- hostile wheels

@pytest.mark.parametrize("evil", ["nvidia/cudnn/lib/../../../../evil/libcudnn.so.9",
                                  "/tmp/evil/libcudnn.so.9", "nvidia\\cudnn\\lib\\libcudnn.so.9"],
                         ids=["dotdot", "absolute", "backslash"])
def test_hostile_wheel_is_refused(run_tk, build, home, tmp_path, evil):
    import zipfile

    good_whl = build.nvidia_wheel(tmp_path / "whl", lib="cudnn", version="9.1.0.70", platform="linux")
    bad = tmp_path / "in" / good_whl.name
    bad.parent.mkdir()
    with zipfile.ZipFile(good_whl) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zi = zipfile.ZipInfo("placeholder")
        zi.filename = evil  # ZipInfo would normalise a leading '/' or '\\' away
        zout.writestr(zi, b"\x7fELF pwned")
    work = tmp_path / "work"
    work.mkdir()
    ids = sorted(m["id"] for m in Store(get_home()).all())
    watch = Watch(tmp_path, home)
    r = run_tk("bundle", "create", bad, cwd=work)
    check_error(r, 2, bad.name, "unsafe path")
    watch.unchanged()
    assert not Path("/tmp/evil/libcudnn.so.9").exists()
    assert bundle_list(run_tk) == ids
