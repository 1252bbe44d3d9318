"""Bad and hostile bundle archives (`bundle import`), through the real CLI: links, traversal,
duplicates, truncation, forged manifests, wrong hashes, every compression cut short.

Every case must give the documented exit code, one `error: ` line naming the archive, a `hint: `
line, no Python traceback, and no change at all (kit/badinput.py's Watch).
"""

import io
import json
import os
import random
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))

import pytest  # noqa: E402

from kit.badinput import CUDNN, Watch, bundle_list, check_error, home_with_a_bundle  # noqa: E402
from torchkeeper.engine import archive  # noqa: E402
from torchkeeper.engine.bundle import Store, bundle_id  # noqa: E402
from torchkeeper.home import Home, get_home  # noqa: E402


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
    return home_with_a_bundle(build, tk_home, tmp_path)


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


