"""XDG desktops (GNOME, KDE, Xfce, ...; systemd >= 246 turns these entries into user units)."""

from __future__ import annotations

import os
from pathlib import Path

from .autostart_interface import APP_ID, DISABLED, ENABLED, TURNED_OFF, AutostartStatus, FileEntry


def _exec_quote(arg: str) -> str:
    """One argument of an Exec= line (Desktop Entry Specification, "The Exec key")."""
    arg = arg.replace("%", "%%")
    if not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`'):
        return arg
    inner = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{inner}"'


def exec_line(argv: list[str]) -> str:
    """The command as the Exec key means it (after the string unescaping: see exec_value)."""
    return " ".join(_exec_quote(a) for a in argv)


def exec_value(argv: list[str]) -> str:
    """What goes after ``Exec=`` in the file. The spec's Exec key is of type string, so its
    general escapes (\\s \\n \\t \\r \\\\) are undone first by every reader (GLib's
    g_key_file_get_string, KDE's KConfig) and only then is the quoting of exec_line read: each
    backslash of the quoting is written twice."""
    return _string_escape(exec_line(argv))


def _string_escape(value: str) -> str:
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "\\s" + out[1:] if out.startswith(" ") else out


def _string_unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append({"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}.get(value[i + 1],
                                                                                   "\\" + value[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _entry(text: str) -> dict[str, str]:
    """The [Desktop Entry] group's keys (later duplicates win, as desktops read them)."""
    out, group = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            group = line
            continue
        if group == "[Desktop Entry]" and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


class XdgAutostart(FileEntry):
    """``$XDG_CONFIG_HOME/autostart/torchkeeper.desktop``."""

    def __init__(self, config_home: str | os.PathLike | None = None, icon: str | None = None):
        base = config_home or os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
        self.path = Path(base) / "autostart" / f"{APP_ID}.desktop"
        self.icon = icon

    def status(self) -> AutostartStatus:
        try:
            e = _entry(self._read().decode("utf-8"))
        except FileNotFoundError:
            return AutostartStatus(DISABLED, str(self.path))
        except (OSError, UnicodeDecodeError):  # unreadable: as if absent; enable replaces it
            return AutostartStatus(DISABLED, str(self.path))
        if e.get("Hidden", "").lower() == "true" or e.get("X-GNOME-Autostart-enabled", "").lower() == "false":
            return AutostartStatus(TURNED_OFF, str(self.path), _string_unescape(e.get("Exec", "")),
                                   "turn torchkeeper on again in your desktop's startup settings "
                                   f"(or delete {self.path})")
        return AutostartStatus(ENABLED, str(self.path), _string_unescape(e["Exec"]) if "Exec" in e else None)

    def enable(self, argv: list[str]) -> AutostartStatus:
        lines = ["[Desktop Entry]", "Type=Application", "Name=torchkeeper",
                 "Comment=Keeps your PyTorch installs on the CUDA and cuDNN you chose",
                 f"Exec={exec_value(argv)}", "Terminal=false", "X-GNOME-Autostart-enabled=true"]
        if self.icon:
            lines.append(f"Icon={self.icon}")
        return self._write(("\n".join(lines) + "\n").encode("utf-8"))
