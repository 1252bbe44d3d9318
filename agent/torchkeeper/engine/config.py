"""Configuration: the shipped, commented defaults merged with the user's config.toml.

A broken user file never takes effect: :func:`load` raises a UsageError that names the
file and line; the agent keeps its last good config, the CLI exits 2.
"""

from __future__ import annotations

import copy
import errno
import json
import re
import sys
from importlib import resources
from pathlib import Path

from ..errors import UsageError
from ..i18n import LANGUAGES, _, normalize
from .fsutil import atomic_write_bytes
from .records import Config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_BYTES = 256 * 1024

# key -> (type, check, description of what is allowed)
_NUM = (int, float)
SCHEMA = {
    "apply": {"progress": (bool, None, "true or false")},
    "agent": {
        "auto_reapply": (bool, None, "true or false"),
        "driver_poll_seconds": (_NUM, lambda v: 1 <= v <= 86400, "a number of seconds, 1 to 86400"),
        "verify_every_minutes": (_NUM, lambda v: 1 <= v <= 10080, "a number of minutes, 1 to 10080"),
        "full_verify_at": (str, lambda v: re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v) is not None,
                           'a time like "04:00"'),
        "quiet_seconds": (_NUM, lambda v: 0 <= v <= 60, "a number of seconds, 0 to 60"),
        "max_wait_seconds": (_NUM, lambda v: 0.1 <= v <= 600, "a number of seconds, 0.1 to 600"),
        "standby": (bool, None, "true or false"),
        "standby_copy": (bool, None, "true or false"),
        "standby_min_free_mb": (int, lambda v: 0 <= v <= 10**9, "a whole number of MB, 0 to 1000000000"),
    },
    "ui": {
        "language": (str, lambda v: v == "auto" or normalize(v) in LANGUAGES,
                     '"auto" (the system\'s language), "en", "zh_TW", "zh_CN" or "ja"'),
    },
    "dashboard": {
        "idle_minutes": (_NUM, lambda v: 0.05 <= v <= 1440, "a number of minutes, 0.05 to 1440"),
    },
    "metrics": {
        "textfile_dir": (str, lambda v: v == "" or Path(v).is_absolute(),
                         'an absolute folder path, or "" for none'),
    },
    "notifications": {
        "enabled": (bool, None, "true or false"),
        "dedupe_seconds": (_NUM, lambda v: 0 <= v <= 86400, "a number of seconds, 0 to 86400"),
        "backend": (str, lambda v: v in ("auto", "desktop-notifier", "plyer", "tray", "log"),
                    '"auto", "desktop-notifier", "plyer", "tray" or "log"'),
    },
}


def default_text() -> str:
    shipped = resources.files("torchkeeper").joinpath("_data/config.toml")
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    # a source checkout (editable install): the file in the repo's config/ folder
    return (Path(__file__).parents[3] / "config" / "config.toml").read_text(encoding="utf-8")


def write_default(path: Path) -> bool:
    """Writes the commented defaults to path if nothing is there; True when it wrote."""
    if path.exists() or path.is_symlink():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, default_text().encode("utf-8"))
    return True


def defaults() -> Config:
    return tomllib.loads(default_text())


def _line_of(text: str, section: str, key: str) -> int | None:
    cur = None
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[\s*([^\]]+?)\s*\]", s)
        if m:
            cur = m.group(1)
        elif cur == section and re.match(rf"^{re.escape(key)}\s*=", s):
            return i
    return None


def _clip(text: str, n: int = 40) -> str:
    """A user's name or value, shortened so an error stays one readable line."""
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= n else text[:n - 3] + "..."


def parse(text: str, origin: str, uses=None, warnings: list | None = None) -> Config:
    """Validate a user config's text and merge it over the defaults. With ``uses`` (the
    sections the caller reads) and a ``warnings`` list, a bad value or unknown key in any
    other section is a warning there and keeps its default: a bad agent-only setting does
    not stop the CLI."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(
            _("%(origin)s: %(e)s") % {"origin": origin, "e": e},
            _("fix that line, or delete the file to use the defaults"),
        ) from None
    except RecursionError:  # tomllib recurses once per nested array/table: 'a = [[[[...'
        raise UsageError(
            _("%(origin)s: values are nested too deeply to be a torchkeeper config") % {"origin": origin},
            _("fix the file, or delete it to use the defaults"),
        ) from None
    merged = copy.deepcopy(defaults())
    for section, values in data.items():
        if section not in SCHEMA:
            raise UsageError(
                _("%(origin)s: unknown section [%(section)s]")
                % {"origin": origin, "section": _clip(section)},
                _("known sections: %(join)s") % {"join": ", ".join("[" + s + "]" for s in SCHEMA)},
            )
        if not isinstance(values, dict):
            raise UsageError(
                _("%(origin)s: '%(section)s' must be a [section], not a value")
                % {"origin": origin, "section": section},
                _("see the commented default config for the layout"),
            )
        for key, value in values.items():
            spec = SCHEMA[section].get(key)
            line = _line_of(text, section, key)
            where = f"{origin}, line {line}" if line else origin
            if spec is None:
                e = UsageError(
                    _("%(where)s: unknown setting '%(key)s' in [%(section)s]")
                    % {"where": where, "key": _clip(key), "section": section},
                    _("known settings: %(join)s") % {"join": ", ".join(SCHEMA[section])},
                )
            else:
                typ, check, allowed = spec
                ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
                if ok and check is not None:
                    ok = bool(check(value))
                e = (
                    None
                    if ok
                    else UsageError(
                        _("%(where)s: %(section)s.%(key)s = %(value)s is not allowed")
                        % {"where": where, "section": section, "key": key, "value": _clip(repr(value))},
                        _("use %(allowed)s") % {"allowed": allowed},
                    )
                )
            if e is None:
                merged.setdefault(section, {})[key] = value
            elif uses is not None and warnings is not None and section not in uses:
                warnings.append(e)  # a section this caller does not read: its defaults stay
            else:
                raise e
    return merged


def load(path: Path, uses=None, warnings: list | None = None) -> Config:
    """The effective config; the defaults when the user has no file (``uses``,
    ``warnings``: see :func:`parse`)."""
    return parse(*read_text(path), uses=uses, warnings=warnings)


def read_text(path: Path) -> tuple[str, str]:
    """The user's config text and its name for messages ("" when there is no file). Only a
    regular file is read (a FIFO would block every command; a link to /dev/zero never ends)."""
    from .fsutil import NotARegularFile, read_file

    try:
        data = read_file(path, MAX_BYTES)
    except FileNotFoundError:
        return "", str(path)
    except NotARegularFile as e:
        raise UsageError(
            _("the config file %(path)s is %(strerror)s") % {"path": path, "strerror": e.strerror},
            _("replace it with a text file (see the commented default), or remove it to use the defaults"),
        ) from None
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise UsageError(
                _("the config file %(path)s is over %(MAX_BYTES)s bytes, too large to be a config")
                % {"path": path, "MAX_BYTES": format(MAX_BYTES, ",")},
                _("replace it with the commented default (see the README)"),
            ) from None
        raise UsageError(
            _("cannot read the config file %(path)s: %(strerror)s") % {"path": path, "strerror": e.strerror},
            _("fix its permissions, or delete it to use the defaults"),
        ) from None
    try:
        text = data.decode("utf-8-sig")  # Notepad writes a BOM
    except UnicodeDecodeError:
        raise UsageError(
            _("the config file %(path)s is not UTF-8 text") % {"path": path},
            _("save it as UTF-8, or delete it to use the defaults"),
        ) from None
    return text, str(path)


def _literal(section: str, key: str, raw: str):
    """raw as the type the schema gives section.key: a UsageError when it is not one."""
    spec = SCHEMA.get(section, {}).get(key)
    if spec is None:
        known = ", ".join(f"{s}.{k}" for s in SCHEMA for k in SCHEMA[s])
        raise UsageError(
            _("unknown setting '%(section)s.%(key)s'") % {"section": _clip(section), "key": _clip(key)},
            _("known settings: %(known)s") % {"known": known},
        )
    typ, check, allowed = spec
    value: object = raw
    if typ is bool:
        value = {"true": True, "false": False}.get(raw.strip().lower(), raw)
    elif typ is not str:
        try:
            value = int(raw) if re.fullmatch(r"-?\d+", raw.strip()) else float(raw)
        except ValueError:
            value = raw
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if not ok or (check is not None and not check(value)):
        raise UsageError(
            _("%(section)s.%(key)s = %(raw)r is not allowed")
            % {"section": section, "key": key, "raw": _clip(raw)},
            _("use %(allowed)s") % {"allowed": allowed},
        )
    return value


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string is a JSON string
    return repr(value)


def set_value(path: Path, section: str, key: str, raw: str, dry_run: bool = False) -> tuple[bool, object]:
    """Set one setting in the user's config file, keeping every other line (comments too);
    (whether it changed, the value). The new text is parsed before it is written: an edit
    that would not load is never written."""
    value = _literal(section, key, raw)
    text, origin = read_text(path)
    current = parse(text, origin) if text else defaults()
    mine = tomllib.loads(text) if text else {}
    if key in mine.get(section, {}) and current[section][key] == value:
        return False, value
    line = f"{key} = {_toml(value)}"
    lines = text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if re.match(rf"^\s*\[\s*{re.escape(section)}\s*\]", ln)), None
    )
    if start is None:
        lines += ([""] if lines and lines[-1].strip() else []) + [f"[{section}]", line]
    else:
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
        at = next(
            (i for i in range(start + 1, end) if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i])), None
        )
        if at is None:
            lines.insert(start + 1, line)
        else:
            lines[at] = line
    new = "\n".join(lines) + "\n"
    parse(new, origin)
    if not dry_run:
        from .fsutil import atomic_write_bytes

        atomic_write_bytes(Path(path), new.encode("utf-8"))
    return True, value
