"""Bad and hostile input, through the real CLI.

Every case must give: the documented exit code, one `error: ` line on stderr that names
the file or target, a `hint: ` line, no Python traceback, and no change at all: the
TORCHKEEPER_HOME tree (paths + sha256, logs/ aside) and everything else under the test's
temporary folder are exactly as before, and cache/tmp holds no leftovers.
"""

import hashlib
import io
import json
import os
import random
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))

import pytest  # noqa: E402

from torchkeeper.engine import archive  # noqa: E402
from torchkeeper.engine.bundle import Store, bundle_id  # noqa: E402
from torchkeeper.home import Home, get_home  # noqa: E402

CUDNN = "9.5.1.17"


# --------------------------------------------------------------------------- helpers

def sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def snapshot(root: Path, skip: tuple = ()) -> dict:
    """{relative path: sha256 | 'link -> target'} of every file and link under root.

    Directories count through what they hold: an empty folder made on the way (cache/tmp)
    is no change.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif not p.is_dir():
                out[rel] = sha(p)
    return out


class Watch:
    """Snapshots the test's whole temporary folder: the home (its logs/ and the one state
    lock file aside, which a read-modify-write leaves by design) and everything beside it."""

    def __init__(self, tmp_path: Path, home: Path):
        self.root, self.home = tmp_path, home
        h = home.relative_to(tmp_path).as_posix()
        self.skip = (f"{h}/logs", f"{h}/data/state.lock")
        self.before = snapshot(tmp_path, self.skip)

    def unchanged(self) -> None:
        after = snapshot(self.root, self.skip)
        added = sorted(set(after) - set(self.before))
        gone = sorted(set(self.before) - set(after))
        changed = sorted(k for k in set(after) & set(self.before) if after[k] != self.before[k])
        assert (added, gone, changed) == ([], [], []), f"added {added}, removed {gone}, changed {changed}"
        tmp = self.home / "cache" / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []


def check_error(r, code: int, *names: str) -> str:
    """The one-line error of a failed command; returns that line."""
    assert r.rc == code, str(r)
    assert "Traceback" not in r.err, str(r)
    lines = r.err.splitlines()
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1, str(r)
    assert [x[:6] for x in lines] == ["error:", "hint: "], str(r)  # one line each, nothing else
    for n in names:
        assert str(n) in errors[0], f"{n!r} not in {errors[0]!r}"
    assert len(errors[0]) < 400, errors[0]
    return errors[0]


# --------------------------------------------------------------------------- a good export

@pytest.fixture(scope="module")
def good(build, tmp_path_factory):
    """A good bundle export (.tar and .tar.gz), its manifest and its members."""
    root = tmp_path_factory.mktemp("exporter")
    src = build.cudnn_archive(root / "dl", version=CUDNN, cuda_major=12, platform="windows")
    h = root / "home"
    store = Store(Home(h / "config", h / "data", h / "cache", h / "logs"))
    m, _ = store.create([str(src)])
    tar = archive.export(store, m, root / "good.tar")
    tgz = archive.export(store, m, root / "good.tar.gz")
    txz = archive.export(store, m, root / "good.tar.xz")
    with tarfile.open(tar) as t:
        members = [(ti.name, t.extractfile(ti).read()) for ti in t]
    assert members[0][0] == "manifest.json"
    manifest = json.loads(members[0][1])
    return {"tar": tar, "tgz": tgz, "txz": txz, "manifest": manifest, "members": members}


@pytest.fixture
def home(build, tk_home, tmp_path):
    """tk_home holding one (Linux) bundle, so 'the bundle list is unchanged' means something."""
    src = build.cudnn_archive(tmp_path / "dl", version=CUDNN, cuda_major=12, platform="linux")
    Store(get_home()).create([str(src)])
    return tk_home


def bundle_list(run_tk) -> list:
    r = run_tk("bundle", "list", "--json")
    assert r.rc == 0, str(r)
    return sorted(m["id"] for m in r.json())


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
           link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.linkname = link
    ti.mode = 0o444
    return ti, data


def write_tar(path: Path, items) -> Path:
    """items: (name, bytes) for regular files, or member(...) for any kind."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name_or_ti, data in items:
            ti = name_or_ti if isinstance(name_or_ti, tarfile.TarInfo) else member(name_or_ti, data)[0]
            t.addfile(ti, io.BytesIO(data) if ti.isfile() else None)
    return path


def manifest_bytes(m: dict) -> bytes:
    return json.dumps(m, indent=1, sort_keys=True).encode()


def resigned(m: dict) -> dict:
    """A manifest edited by someone who also recomputed its id."""
    m = json.loads(json.dumps(m))
    m["id"] = bundle_id(m)
    return m


EVIL_ABS = f"/tmp/tk-evil-{os.getpid()}-{random.randrange(1 << 30)}"


# Each case: (id, build(good, path) -> archive path, message fragment). All must exit 3.
def _members(g):
    return list(g["members"])


def _files(g):
    return _members(g)[1:]


def _with_manifest(g, m):
    return [("manifest.json", manifest_bytes(m))] + _files(g)


def case_traversal(g, p):
    return write_tar(p, _members(g) + [("files/../../evil", b"pwned")])


def case_dotdot(g, p):
    return write_tar(p, _members(g) + [("../x", b"pwned")])


def case_traversal_first(g, p):
    return write_tar(p, [("../x", b"pwned")] + _members(g))


def case_absolute(g, p):
    return write_tar(p, _members(g) + [(EVIL_ABS, b"pwned")])


def case_symlink(g, p):
    items = _members(g)
    items[1] = member(items[1][0], kind=tarfile.SYMTYPE, link="/etc/passwd")
    return write_tar(p, items)


def case_hardlink(g, p):
    items = _members(g)
    items[1] = member(items[1][0], kind=tarfile.LNKTYPE, link="manifest.json")
    return write_tar(p, items)


def case_directory(g, p):
    return write_tar(p, _members(g)[:1] + [member("files", kind=tarfile.DIRTYPE)] + _files(g))


def case_device(g, p):
    return write_tar(p, _members(g) + [member("files/cudnn64_9.dll", kind=tarfile.CHRTYPE)])


def case_duplicate(g, p):
    items = _members(g)
    return write_tar(p, items + [items[1]])


def case_manifest_twice(g, p):
    items = _members(g)
    return write_tar(p, items[:2] + [items[0]] + items[2:])


def case_unlisted_library(g, p):
    return write_tar(p, _members(g) + [("files/cudnn_ext64_9.dll", b"MZ extra")])


def case_unlisted_other(g, p):
    return write_tar(p, _members(g) + [("notes.txt", b"hello")])


def case_missing_file(g, p):
    return write_tar(p, _members(g)[:-1])


def case_truncated(g, p):
    data = g["tar"].read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _offsets(g):
    with tarfile.open(g["tar"]) as t:
        return [(ti.offset, ti.offset_data) for ti in t]


def case_cut_inside_a_file(g, p):
    p.write_bytes(g["tar"].read_bytes()[: _offsets(g)[3][1] + 100])
    return p


def case_cut_between_members(g, p):
    p.write_bytes(g["tar"].read_bytes()[: _offsets(g)[-1][0]])
    return p


def case_sha_mismatch(g, p):
    items = _members(g)
    name, data = items[2]
    items[2] = (name, data[:-1] + bytes([data[-1] ^ 0xFF]))
    return write_tar(p, items)


def case_bigger(g, p):
    items = _members(g)
    name, data = items[2]
    items[2] = (name, data + b"\0")
    return write_tar(p, items)


def case_smaller(g, p):
    items = _members(g)
    name, data = items[2]
    items[2] = (name, data[:-1])
    return write_tar(p, items)


def case_edited_manifest(g, p):
    m = dict(g["manifest"], cudnn="9.6.0.1")
    return write_tar(p, _with_manifest(g, m))


def case_resigned_manifest_bad_hash(g, p):
    m = json.loads(json.dumps(g["manifest"]))
    m["files"][0]["sha256"] = "0" * 64
    return write_tar(p, _with_manifest(g, resigned(m)))


def case_manifest_unsafe_file_name(g, p):
    m = json.loads(json.dumps(g["manifest"]))
    m["files"][0]["name"] = "../../cudnn64_9.dll"
    return write_tar(p, _with_manifest(g, resigned(m)))


def case_manifest_unsafe_bundle_name(g, p):
    m = dict(json.loads(json.dumps(g["manifest"])), name="../../evil")
    return write_tar(p, _with_manifest(g, resigned(m)))


def case_manifest_unknown_format(g, p):
    m = dict(json.loads(json.dumps(g["manifest"])), format=99)
    return write_tar(p, _with_manifest(g, m))


def case_manifest_lists_nothing(g, p):
    m = dict(json.loads(json.dumps(g["manifest"])), files=[])
    return write_tar(p, [("manifest.json", manifest_bytes(m))])


def case_manifest_huge_size(g, p):
    m = json.loads(json.dumps(g["manifest"]))
    m["files"][0]["size"] = 1 << 60
    return write_tar(p, _with_manifest(g, resigned(m)))


def case_manifest_not_json(g, p):
    return write_tar(p, [("manifest.json", b"{not json")] + _files(g))


def case_manifest_not_a_dict(g, p):
    return write_tar(p, [("manifest.json", b"[1, 2, 3]")] + _files(g))


def case_manifest_oversize(g, p):
    return write_tar(p, [("manifest.json", b" " * (archive.MAX_MANIFEST + 1))] + _files(g))


def case_manifest_not_first(g, p):
    items = _members(g)
    return write_tar(p, items[1:] + items[:1])


def case_only_files(g, p):
    return write_tar(p, _files(g))


def case_empty_tar(g, p):
    return write_tar(p, [])


def case_empty_file(g, p):
    p.write_bytes(b"")
    return p


def case_random_bytes(g, p):
    p.write_bytes(random.Random(1234).randbytes(64 * 1024))
    return p


def case_tgz_cut_short(g, p):
    data = g["tgz"].read_bytes()
    p = p.with_name(p.name + ".gz")
    p.write_bytes(data[: len(data) * 2 // 3])
    return p


def _flipped(data: bytes, start: int, n: int = 16) -> bytes:
    b = bytearray(data)
    for i in range(start, start + n):
        b[i] ^= 0x55
    return bytes(b)


def case_txz_cut_short(g, p):
    data = g["txz"].read_bytes()
    p = p.with_name(p.name + ".xz")
    p.write_bytes(data[: len(data) * 2 // 3])
    return p


def case_txz_corrupt(g, p):
    data = g["txz"].read_bytes()
    p = p.with_name(p.name + ".xz")
    p.write_bytes(_flipped(data, len(data) - 100))
    return p


def case_tgz_corrupt(g, p):
    data = g["tgz"].read_bytes()
    p = p.with_name(p.name + ".gz")
    p.write_bytes(_flipped(data, len(data) // 2))
    return p


def case_tbz2_corrupt(g, p):
    import bz2

    data = bz2.compress(g["tar"].read_bytes())
    p = p.with_name(p.name + ".bz2")
    p.write_bytes(_flipped(data, len(data) // 2))
    return p


def case_gzip_of_garbage(g, p):
    import gzip

    p = p.with_name(p.name + ".gz")
    p.write_bytes(gzip.compress(random.Random(5).randbytes(10000)))
    return p


CASES = [
    (case_traversal, "climbs out"),
    (case_dotdot, "climbs out"),
    (case_traversal_first, "climbs out"),
    (case_absolute, "absolute path"),
    (case_symlink, "is a link"),
    (case_hardlink, "is a link"),
    (case_directory, "non-file"),
    (case_device, "non-file"),
    (case_duplicate, "appears twice"),
    (case_manifest_twice, "unknown member"),
    (case_unlisted_library, "unknown member"),
    (case_unlisted_other, "unknown member"),
    (case_missing_file, "missing"),
    (case_truncated, ""),  # where half falls: inside a file or between two
    (case_cut_inside_a_file, "truncated or corrupt"),
    (case_cut_between_members, "missing"),
    (case_sha_mismatch, "does not match its sha256"),
    (case_bigger, "the manifest says"),
    (case_smaller, "the manifest says"),
    (case_edited_manifest, "does not match its bundle id"),
    (case_resigned_manifest_bad_hash, "does not match its sha256"),
    (case_manifest_unsafe_file_name, "not a managed library name"),
    (case_manifest_unsafe_bundle_name, "unsafe bundle name"),
    (case_manifest_unknown_format, "format 1"),
    (case_manifest_lists_nothing, "lists no files"),
    (case_manifest_huge_size, "impossible size"),
    (case_manifest_not_json, "not valid JSON"),
    (case_manifest_not_a_dict, "not a torchkeeper bundle manifest"),
    (case_manifest_oversize, "oversize"),
    (case_manifest_not_first, "first member is not manifest.json"),
    (case_only_files, "first member is not manifest.json"),
    (case_empty_tar, "empty"),
    (case_empty_file, "not a tar"),
    (case_random_bytes, "not a tar"),
    (case_tgz_cut_short, ""),
    (case_gzip_of_garbage, "not a tar"),
    (case_txz_cut_short, "truncated or corrupt"),
    (case_txz_corrupt, "truncated or corrupt"),
    (case_tgz_corrupt, ""),
    (case_tbz2_corrupt, ""),
]


@pytest.mark.parametrize("make, says", CASES, ids=[c[0].__name__[5:] for c in CASES])
def test_tampered_archive_is_refused(run_tk, good, home, tmp_path, make, says):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "in").mkdir()
    bad = make(good, tmp_path / "in" / "bad.tar")
    ids = sorted(m["id"] for m in Store(get_home()).all())
    watch = Watch(tmp_path, home)

    r = run_tk("bundle", "import", bad, cwd=work)

    line = check_error(r, 3, bad)
    assert says in line
    assert "nothing was imported" in line or "not a readable bundle archive" in line
    watch.unchanged()
    assert not Path(EVIL_ABS).exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x").exists()
    assert bundle_list(run_tk) == ids


def test_the_untampered_archive_imports(run_tk, good, home):
    """The control: the good export imports into the same kind of home."""
    r = run_tk("bundle", "import", good["tar"], "--json")
    assert r.rc == 0, str(r)
    assert r.json()["id"] == good["manifest"]["id"]
    assert list((home / "cache" / "tmp").iterdir()) == []


def test_import_of_a_folder(run_tk, home, tmp_path):
    d = tmp_path / "afolder.tar"
    d.mkdir()
    watch = Watch(tmp_path, home)
    check_error(run_tk("bundle", "import", d), 2, d)
    watch.unchanged()


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
