"""The XDG autostart entry read the way GNOME's launcher reads it: GLib's key file (which
undoes the string escapes first), then GDesktopAppInfo's quoting and field codes, then the
process really started (python3-gi, Debian's). For every awkward path a user can have: spaces,
quotes, `$`, backticks, backslashes, `%` and non-ASCII. (Debian's dex 0.8 skips the
string-escape pass, so it cannot judge a spec-correct entry.)"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from torchkeeper.platform.posix import XdgAutostart

GI = "/usr/bin/python3"
NAMES = ["ComfyUI portable", 'say "hi"', "cost $HOME", "back`tick`", "back\\slash", "100% sure",
         "Jürgen 便携", "it's", "tab\there"]
# GLib: g_key_file_get_string (the string escapes), then g_shell_parse_argv, then the field
# codes ("%%" is "%"): what g_desktop_app_info does with Exec before it spawns anything
PARSE = """import json, sys, gi
gi.require_version("GLib", "2.0")
from gi.repository import GLib
k = GLib.KeyFile()
k.load_from_file(sys.argv[1], GLib.KeyFileFlags.NONE)
ok, argv = GLib.shell_parse_argv(k.get_string("Desktop Entry", "Exec"))
print(json.dumps([a.replace("%%", "%") for a in argv]))
"""


def _gio_ok() -> bool:
    return subprocess.run([GI, "-c", "import gi; gi.require_version('Gio', '2.0'); "
                           "from gi.repository import Gio"], capture_output=True).returncode == 0


@pytest.mark.parametrize("name", NAMES)
def test_gnome_starts_the_entry_with_exactly_our_arguments(tmp_path, name):
    assert _gio_ok(), "python3-gi is missing: run tests/setup-system.sh"
    # GLib looks for the program before it expands "%%": a program path with "%" can never be
    # started by GNOME (README, Known limits), so "%" goes into the argument only
    folder = tmp_path / name.replace("%", "pct")
    folder.mkdir()
    exe = folder / "torchkeeper"
    record = tmp_path / "argv.txt"
    exe.write_text(f"#!/bin/sh\nfor a in \"$0\" \"$@\"; do printf '%s\\0' \"$a\"; done > '{record}'\n")
    exe.chmod(0o755)
    argv = [str(exe), "run", "--home", str(tmp_path / f"home {name}")]
    entry = XdgAutostart(tmp_path / "xdg", icon=None)
    st = entry.enable(argv)
    assert st.state == "enabled"
    parsed = subprocess.run([GI, "-c", PARSE, str(entry.path)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr + entry.path.read_text()
    assert json.loads(parsed.stdout) == argv, entry.path.read_text()
    launched = subprocess.run(
        [GI, "-c", "import sys, gi; gi.require_version('Gio', '2.0'); from gi.repository import Gio; "
         "info = Gio.DesktopAppInfo.new_from_filename(sys.argv[1]); "
         "assert info is not None, 'GLib rejected the entry'; print(info.launch([], None))",
         str(entry.path)],
        capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "DISPLAY"})
    assert launched.returncode == 0 and launched.stdout.strip() == "True", launched.stderr + entry.path.read_text()
    deadline = time.monotonic() + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    got = record.read_bytes().decode().split("\0")[:-1]
    assert got == argv, (got, entry.path.read_text())
