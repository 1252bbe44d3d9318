"""The user's language: gettext catalogs (Babel-managed, see the README's "Translating"),
the rule that picks one, and ``_`` / ``ngettext`` / ``N_`` for every string a person reads.

English is the source. Machine output (``--json``, event names, metric names, log keys)
never goes through here: the CLI activates English for ``--json``. Only the stdlib's gettext
runs here (the catalogs are compiled to .mo when the wheel or the frozen app is built), so
no system locale has to be generated for a language to work.
"""

from __future__ import annotations

import gettext as _gettext
import os
from pathlib import Path

DOMAIN = "torchkeeper"
LOCALE_DIR = Path(__file__).parent / "locale"
SOURCE = "en"
LANGUAGES = ("en", "zh_TW", "zh_CN", "ja")   # English first: the source and the fallback

_active: _gettext.NullTranslations = _gettext.NullTranslations()
_code = SOURCE


def normalize(tag: str | None) -> str | None:
    """A language tag from any source ("zh-Hant-TW", "zh_TW.UTF-8", "ja-JP", "C", "en_US@x")
    as one of LANGUAGES, or None for a language without a catalog."""
    if not tag:
        return None
    t = tag.split(".")[0].split("@")[0].replace("-", "_").strip().lower()
    if t in ("c", "posix"):
        return SOURCE
    parts = t.split("_")
    if parts[0] == "en":
        return SOURCE
    if parts[0] == "ja":
        return "ja"
    if parts[0] == "zh":
        rest = set(parts[1:])
        # Traditional: the script says so, else Taiwan, Hong Kong and Macau write it
        if "hant" in rest or (rest & {"tw", "hk", "mo"} and "hans" not in rest):
            return "zh_TW"
        return "zh_CN"   # zh, zh_CN, zh_SG, zh_Hans
    return None


def choose(env_value: str | None, config_value: str | None, os_languages: list[str]) -> str:
    """TORCHKEEPER_LANG, else config's [ui] language, else the OS's languages in order of
    preference; "auto" or empty defers to the next; no known language at all is English."""
    for explicit in (env_value, config_value):
        if explicit and explicit.strip().lower() != "auto":
            return normalize(explicit) or SOURCE
    for tag in os_languages:
        code = normalize(tag)
        if code:
            return code
    return SOURCE


def setup(config_value: str | None, os_languages: list[str], machine: bool = False) -> str:
    """Activate the language the rule in :func:`choose` picks (TORCHKEEPER_LANG from the
    environment); ``machine`` output (``--json``) is always the source language."""
    if machine:
        return activate(SOURCE)
    return activate(choose(os.environ.get("TORCHKEEPER_LANG"), config_value, os_languages))


def activate(code: str) -> str:
    """Use the catalog of ``code`` from now on (a missing or unreadable catalog: English);
    returns the language in use."""
    global _active, _code
    code = normalize(code) or SOURCE
    tr: _gettext.NullTranslations = _gettext.NullTranslations()
    if code != SOURCE:
        try:
            tr = _gettext.translation(DOMAIN, str(LOCALE_DIR), languages=[code])
        except (OSError, ValueError):   # not built into this install, or a damaged .mo
            code = SOURCE
    _active, _code = tr, code
    return code


def current() -> str:
    return _code


def _(message: str) -> str:
    return _active.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _active.ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Marks a string for the catalog where it is defined (a module constant, translated
    where it is shown with ``_(name)``)."""
    return message
