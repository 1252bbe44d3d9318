"""The languages the user's OS is set to, most preferred first, as tags ("zh-TW",
"zh_CN.UTF-8", "ja"); i18n.choose turns them into a catalog. Nothing here needs the
language's locale to be installed."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping


def posix_languages(env: Mapping[str, str]) -> list[str]:
    """GNU gettext's rule: the first set of LC_ALL, LC_MESSAGES, LANG is the locale; in the
    "C" locale the language is English whatever LANGUAGE says; otherwise LANGUAGE (a
    colon-separated list) comes first."""
    locale = next((env[k] for k in ("LC_ALL", "LC_MESSAGES", "LANG") if env.get(k)), "")
    if locale.split(".")[0] in ("C", "POSIX"):
        return ["C"]
    return [t for t in env.get("LANGUAGE", "").split(":") if t] + ([locale] if locale else [])


def windows_languages() -> list[str]:
    """The user's UI languages (Settings > Language), e.g. ["zh-TW", "en-US"]."""
    import ctypes
    from ctypes import wintypes

    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    MUI_LANGUAGE_NAME = 0x8
    num, size = wintypes.ULONG(), wintypes.ULONG(0)
    f = k32.GetUserPreferredUILanguages
    f.argtypes = [
        wintypes.DWORD,
        ctypes.POINTER(wintypes.ULONG),
        wintypes.LPWSTR,
        ctypes.POINTER(wintypes.ULONG),
    ]
    f.restype = wintypes.BOOL
    if f(MUI_LANGUAGE_NAME, ctypes.byref(num), None, ctypes.byref(size)) and size.value:
        buf = ctypes.create_unicode_buffer(size.value)
        if f(MUI_LANGUAGE_NAME, ctypes.byref(num), buf, ctypes.byref(size)):
            # a double-NUL-terminated list
            return [t for t in ctypes.wstring_at(ctypes.addressof(buf), size.value).split("\0") if t]
    # older systems: the one UI language, as a LANGID made a name
    langid = k32.GetUserDefaultUILanguage()
    name = ctypes.create_unicode_buffer(85)
    if k32.LCIDToLocaleName(langid, name, 85, 0):
        return [name.value]
    return []


def macos_languages() -> list[str]:
    """System Settings' preferred languages, e.g. ["zh-Hant-TW", "en-US"]."""
    import plistlib
    import subprocess

    try:
        out = subprocess.run(["defaults", "export", "-g", "-"], capture_output=True, timeout=5).stdout
        return [str(t) for t in plistlib.loads(out).get("AppleLanguages", [])]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def os_languages(env: Mapping[str, str] | None = None) -> list[str]:
    """This OS's languages: Windows' UI languages; on macOS the POSIX variables when a shell
    set one, else the preferred languages; elsewhere the POSIX variables."""
    env = os.environ if env is None else env
    if sys.platform == "win32":
        try:
            return windows_languages()
        except (OSError, AttributeError, ValueError):
            return []
    if sys.platform == "darwin" and not any(
        env.get(k) for k in ("LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE")
    ):
        return macos_languages()
    return posix_languages(env)
