"""Bundle export and import: one tar file holding ``manifest.json`` and ``files/<name>``.

Import trusts nothing in the archive: every member must be a regular file named exactly
``manifest.json`` or ``files/<a name the manifest lists>``, once; sizes and hashes must
match the manifest; the manifest's id must match its content. Everything is unpacked
into a temporary folder that is removed on any failure; only a complete, verified bundle
is moved into the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from pathlib import Path

from . import libs, versions
from .bundle import FORMAT, NAME_RX, Store, _rmtree, bundle_id, public
from ..errors import BadArchive, NotFound
from .fsutil import parse_json
from .records import JsonObject, Manifest, ManifestFile
from ..i18n import _

MAX_MANIFEST = 1 << 20
MAX_FILES = 64
MAX_FILE_SIZE = 8 << 30


def _mode_for(path: Path) -> str:
    n = path.name.lower()
    if n.endswith((".tar.gz", ".tgz")):
        return "gz"
    if n.endswith((".tar.xz", ".txz")):
        return "xz"
    return ""


def export(store: Store, m: Manifest, dest: Path) -> Path:
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{m['name']}.tkbundle.tar"
    if not dest.parent.is_dir():
        raise NotFound(
            _("folder %(parent)s does not exist") % {"parent": dest.parent},
            _("create it or choose another path"),
        )
    mode = _mode_for(dest)
    tmp = dest.with_name(f".{dest.name}.part")
    manifest = json.dumps(_shareable(m), indent=1, sort_keys=True).encode()
    try:
        with tarfile.open(tmp, "w:" + mode if mode else "w", format=tarfile.PAX_FORMAT) as tar:
            ti = tarfile.TarInfo("manifest.json")
            ti.size = len(manifest)
            ti.mode = 0o444
            tar.addfile(ti, io.BytesIO(manifest))
            for f in m["files"]:
                p = store.file_path(m, f["name"])
                ti = tar.gettarinfo(str(p), arcname=f"files/{f['name']}")
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                with open(p, "rb") as fh:
                    tar.addfile(ti, fh)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _shareable(m: Manifest) -> JsonObject:
    """The manifest without this machine's folder names (sources keep their last part)."""
    out = json.loads(json.dumps(public(m)))
    for src in out.get("sources", []):
        src["path"] = Path(src.get("path", "")).name
    for f in out["files"]:
        if "from" in f:
            f["from"] = Path(f["from"]).name
    return out


def _bad(archive: Path, what: str) -> BadArchive:
    return BadArchive(
        _("%(archive)s: %(what)s; nothing was imported") % {"archive": archive, "what": what},
        _(
            "get the archive again from its source (`torchkeeper bundle export` "
            "on the machine that has the bundle)"
        ),
    )


def _check_manifest(archive: Path, raw: bytes) -> Manifest:
    try:
        m = parse_json(raw)  # 100,000 nested brackets are a ValueError too
    except ValueError:
        raise _bad(archive, "manifest.json is not valid JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _bad(archive, "manifest.json is not a torchkeeper bundle manifest (format 1)")
    files = m.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_FILES:
        raise _bad(archive, "manifest.json lists no files, or too many")
    if m.get("platform") not in libs.PLATFORMS:
        raise _bad(archive, f"manifest.json names an unknown platform {m.get('platform')!r}")
    seen = set()
    for f in files:
        if not isinstance(f, dict):
            raise _bad(archive, "manifest.json has a malformed file entry")
        name, size, digest = f.get("name"), f.get("size"), f.get("sha256")
        if not isinstance(name, str) or libs.parse(name) is None or libs.parse(name).key != name:
            raise _bad(archive, f"manifest.json lists {name!r}, which is not a managed library name")
        if name in seen:
            raise _bad(archive, f"manifest.json lists {name} twice")
        seen.add(name)
        if not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
            raise _bad(archive, f"manifest.json gives {name} an impossible size")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _bad(archive, f"manifest.json gives {name} a malformed sha256")
    if not isinstance(m.get("id"), str) or bundle_id(m) != m["id"]:
        raise _bad(archive, "manifest.json does not match its bundle id (edited?)")
    if not isinstance(m.get("name"), str) or not NAME_RX.match(m["name"]):
        raise _bad(archive, "manifest.json has a missing or unsafe bundle name")
    return m


def peek(archive: Path) -> Manifest:
    """The archive's manifest alone, with the same checks as import (it must be the first
    member, a regular file, not oversize, matching its id); nothing is written. What a dry run
    (`bundle import --dry-run`: would it add a bundle?) needs; the files are checked on import."""
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise NotFound(
            _("%(archive)s does not exist") % {"archive": archive},
            _("give the path of a file made by `bundle export`"),
        )
    try:
        with tarfile.open(archive, "r:*") as tar:
            ti = tar.next()
            if ti is None:
                raise _bad(archive, "the archive is empty")
            if ti.name != "manifest.json" or not ti.isfile():
                raise _bad(archive, "the first member is not manifest.json")
            if ti.size > MAX_MANIFEST:
                raise _bad(archive, "manifest.json is oversize")
            return _check_manifest(archive, tar.extractfile(ti).read())
    except (tarfile.TarError, EOFError, *codec_errors()) as e:
        why = " ".join(str(e).split())
        raise _bad(archive, f"the archive is truncated or corrupt ({why})") from None
    except OSError as e:
        raise BadArchive(
            _("%(archive)s is not a readable bundle archive (%(value)s)")
            % {"archive": archive, "value": e.strerror or e},
            _("give a file made by `torchkeeper bundle export`"),
        ) from None


def import_(store: Store, archive: Path) -> tuple[Manifest, bool]:
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise NotFound(
            _("%(archive)s does not exist") % {"archive": archive},
            _("give the path of a file made by `bundle export`"),
        )
    store.root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"import-{os.getpid()}-", dir=store.home.tmp_dir()))
    try:
        stage = tmp / "bundle"
        (stage / "files").mkdir(parents=True)
        try:
            tar = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError) as e:
            # tarfile's own message lists every method it tried, one per line
            why = (
                e.strerror if isinstance(e, OSError) and e.strerror else "not a tar, .tar.gz or .tar.xz file"
            )
            raise BadArchive(
                _("%(archive)s is not a readable bundle archive (%(why)s)")
                % {"archive": archive, "why": why},
                _("give a file made by `torchkeeper bundle export`"),
            ) from None
        m = None
        got: dict[str, str] = {}
        try:
            with tar:
                for i, ti in enumerate(tar):
                    name = ti.name
                    if not ti.isfile():
                        kind = "link" if (ti.issym() or ti.islnk()) else "non-file"
                        raise _bad(archive, f"member {name!r} is a {kind}")
                    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
                        raise _bad(archive, f"member {name!r} has an absolute path")
                    parts = name.replace("\\", "/").split("/")
                    if ".." in parts:
                        raise _bad(archive, f"member {name!r} climbs out of the archive (..)")
                    if i == 0:
                        if name != "manifest.json":
                            raise _bad(archive, "the first member is not manifest.json")
                        if ti.size > MAX_MANIFEST:
                            raise _bad(archive, "manifest.json is oversize")
                        m = _check_manifest(archive, tar.extractfile(ti).read())
                        want = {f["name"]: f for f in m["files"]}
                        continue
                    if len(parts) != 2 or parts[0] != "files" or parts[1] not in want:
                        raise _bad(archive, f"unknown member {name!r}")
                    key = parts[1]
                    if key in got:
                        raise _bad(archive, f"member {name!r} appears twice")
                    got[key] = _extract_file(
                        archive, tar, ti, want[key], stage / "files" / key, m.get("platform") == libs.WINDOWS
                    )
        except (tarfile.TarError, EOFError, OSError, *codec_errors()) as e:
            if isinstance(e, OSError) and not isinstance(e, (EOFError,)) and e.errno is not None:
                raise
            why = " ".join(str(e).split())
            raise _bad(archive, f"the archive is truncated or corrupt ({why})") from None
        if m is None:
            raise _bad(archive, "the archive is empty")
        missing = sorted(set(want) - set(got))
        if missing:
            raise _bad(archive, f"missing {', '.join(missing)}")
        m = dict(m)
        m.pop("_dir", None)
        # the name is not part of the id: a local bundle with the same name keeps it
        m["name"] = store._free_name(m["name"], m["id"])
        return store._commit(stage, m)
    finally:
        _rmtree(tmp)


def _extract_file(
    archive: Path, tar: tarfile.TarFile, ti: tarfile.TarInfo, f: ManifestFile, dest: Path, windows: bool
) -> str:
    """One library out of the archive, checked against its manifest entry ``f`` while it is
    written: never more bytes than it says, its sha256, and a real library. Returns the sha256."""
    key = f["name"]
    if ti.size != f["size"]:
        raise _bad(archive, f"{key} is {ti.size} bytes, the manifest says {f['size']}")
    h = hashlib.sha256()
    src = tar.extractfile(ti)
    with open(dest, "xb") as out:
        n = 0
        while chunk := src.read(1 << 20):
            n += len(chunk)
            if n > f["size"]:
                raise _bad(archive, f"{key} is oversize")
            h.update(chunk)
            out.write(chunk)
    if n != f["size"]:
        raise _bad(archive, f"{key} is truncated")
    if h.hexdigest() != f["sha256"]:
        raise _bad(archive, f"{key} does not match its sha256 in the manifest")
    # a forged manifest can hash anything: the bytes must be a real library
    if not (versions.is_pe if windows else versions.is_elf)(dest):
        raise _bad(archive, f"{key} is not a {'64-bit PE DLL' if windows else '64-bit ELF library'}")
    return h.hexdigest()


def codec_errors() -> tuple:
    """What a damaged .tar.gz / .tar.xz raises while it is read (not OSError subclasses)."""
    import zlib

    errors = [zlib.error]
    try:
        import lzma
    except ImportError:  # Python built without lzma: tarfile cannot open .xz either
        pass
    else:
        errors.append(lzma.LZMAError)
    return tuple(errors)
