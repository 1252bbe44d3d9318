"""torchkeeper's message catalogs, with Babel: the README's "Translating" says when to run which.

    python installer/catalogs.py update    # extract every _()/ngettext()/N_() message into
                                           # torchkeeper.pot and merge it into each .po
    python installer/catalogs.py compile   # .po -> .mo beside it (the build hook and the tests do this)
    python installer/catalogs.py stats     # messages per catalog, translated and not

The .mo files are build outputs (git ignores them): the wheel's build hook (hatch_build.py),
the frozen app's spec and the test suite compile them from the .po sources.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "agent" / "torchkeeper"
LOCALE = PKG / "locale"
DOMAIN = "torchkeeper"
POT = LOCALE / f"{DOMAIN}.pot"


def po_files() -> list[Path]:
    return sorted(LOCALE.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def compile_all(quiet: bool = True) -> list[Path]:
    """Each .po to its .mo (in one rename: a test or build beside this one never reads half
    a file); a .mo newer than its .po is kept."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    out = []
    for po in po_files():
        mo = po.with_suffix(".mo")
        out.append(mo)
        if mo.exists() and mo.stat().st_mtime_ns >= po.stat().st_mtime_ns:
            continue
        with po.open("rb") as f:
            cat = read_po(f, locale=po.parts[-3])
        fd, tmp = tempfile.mkstemp(dir=mo.parent, prefix=".mo-")
        with os.fdopen(fd, "wb") as f:
            write_mo(f, cat, use_fuzzy=False)
        os.replace(tmp, mo)
        if not quiet:
            print(f"compiled {mo.relative_to(ROOT)}")
    return out


def extract(pot: Path) -> None:
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "--quiet", "extract",
                    "--project", "torchkeeper", "--copyright-holder", "torchkeeper's authors",
                    "--msgid-bugs-address", "https://github.com/torchkeeper/torchkeeper/issues",
                    "--no-wrap", "--sort-by-file", "-o", str(pot), str(PKG.relative_to(ROOT))],
                   check=True, cwd=ROOT)


def _languages() -> tuple[str, ...]:
    """The catalogs to keep: i18n.LANGUAGES without the source (one list, in the package)."""
    sys.path.insert(0, str(ROOT / "agent"))
    try:
        from torchkeeper import i18n
    finally:
        sys.path.pop(0)
    return tuple(c for c in i18n.LANGUAGES if c != i18n.SOURCE)


def update() -> None:
    extract(POT)
    for lang in _languages():   # a new language: its .po, to translate
        if not (LOCALE / lang / "LC_MESSAGES" / f"{DOMAIN}.po").exists():
            subprocess.run([sys.executable, "-m", "babel.messages.frontend", "--quiet", "init", "--no-wrap",
                            "-D", DOMAIN, "-l", lang, "-i", str(POT), "-d", str(LOCALE)], check=True, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "--quiet", "update",
                    "--no-wrap", "--ignore-obsolete", "--no-fuzzy-matching", "-D", DOMAIN,
                    "-i", str(POT), "-d", str(LOCALE)], check=True, cwd=ROOT)


def stats() -> None:
    from babel.messages.pofile import read_po

    for po in po_files():
        with po.open("rb") as f:
            cat = read_po(f)
        msgs = [m for m in cat if m.id]
        done = [m for m in msgs if m.string and all(m.string if isinstance(m.string, tuple) else [m.string])
                and "fuzzy" not in m.flags]
        print(f"{po.parts[-3]}: {len(msgs)} messages, {len(done)} translated")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "update":
        update()
    elif cmd == "compile":
        compile_all(quiet=False)
    elif cmd == "stats":
        stats()
    else:
        print(__doc__)
        sys.exit(2)
