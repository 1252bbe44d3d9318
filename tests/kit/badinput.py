"""What every bad-input test checks: one `error:` line naming the file or target, one `hint:`
line, no traceback, and nothing changed under the test's folder (test_bad_input.py,
test_bad_archives.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from torchkeeper.engine.bundle import Store
from torchkeeper.home import get_home

CUDNN = "9.5.1.17"


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


def home_with_a_bundle(build, tk_home: Path, tmp_path: Path) -> Path:
    """tk_home holding one (Linux) bundle, so 'the bundle list is unchanged' means something."""
    src = build.cudnn_archive(tmp_path / "dl", version=CUDNN, cuda_major=12, platform="linux")
    Store(get_home()).create([str(src)])
    return tk_home


def bundle_list(run_tk) -> list:
    r = run_tk("bundle", "list", "--json")
    assert r.rc == 0, str(r)
    return sorted(m["id"] for m in r.json())
