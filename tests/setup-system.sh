#!/usr/bin/env bash
# Installs the system tools torchkeeper's tests need, when they are missing (idempotent).
#   gcc (+ libc6-dev)            real ELF .so files          (tests/kit/builders.py build_so)
#   x86_64-w64-mingw32-gcc/-windres  real PE DLLs with version resources (build_dll)
#   python3-venv                 only when python3 cannot make a venv with pip (ensurepip)
#   xvfb, trayer                 an X server and a system-tray host for the tray's screen test
#   dbus-daemon, dbus-bin        a private session bus (dbus-run-session) for notification tests
#   libnotify-bin                notify-send: plyer's Linux notifier when dbus-python is absent
#   dex                          runs XDG autostart entries the way a desktop session does (autostart tests)
#   nsis                         makensis: builds the Windows installer (tests/windows/test_wine_installer.py)
#   prometheus                   promtool: checks the metrics' text format (tests/test_metrics.py)
#   chromium, chromium-driver    a real browser for the dashboard (tests/test_dashboard_browser.py)
#   python3-gi, gir1.2-glib-2.0  GLib's key file and launcher, how GNOME reads an autostart entry
#                                (tests/test_autostart_exec.py, run with Debian's /usr/bin/python3)
#   locales + zh_TW.UTF-8        Wine takes a Windows program's UI language from LANG only when that
#                                Linux locale exists (tests/windows: a Traditional Chinese Windows);
#                                torchkeeper itself needs no locale generated
# As root: apt-get update + install. Otherwise: says what to install and exits 1.
set -euo pipefail

missing=()

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'int tk_probe(void) { return 1; }\n' >"$tmp/t.c"

# gcc that can link a shared object (needs libc6-dev's crt files, not just the compiler)
if ! command -v gcc >/dev/null 2>&1 || ! gcc -shared -fPIC -o "$tmp/t.so" "$tmp/t.c" >/dev/null 2>&1; then
    missing+=(gcc libc6-dev)
fi
# mingw: compiler (+ mingw-w64-x86-64-dev, a dependency) and windres (binutils)
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 \
    || ! x86_64-w64-mingw32-gcc -shared -nostdlib -o "$tmp/t.dll" "$tmp/t.c" -lkernel32 >/dev/null 2>&1; then
    missing+=(gcc-mingw-w64-x86-64-win32 binutils-mingw-w64-x86-64)
elif ! command -v x86_64-w64-mingw32-windres >/dev/null 2>&1; then
    missing+=(binutils-mingw-w64-x86-64)
fi
# run-tests makes .venv with `python3 -m venv` (needs ensurepip; Debian ships it in python3-venv)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

# the agent's tests: X server + tray host, private D-Bus session, notify-send
for tool in Xvfb:xvfb trayer:trayer dbus-daemon:dbus-daemon dbus-run-session:dbus-bin notify-send:libnotify-bin dex:dex makensis:nsis promtool:prometheus chromium:chromium chromedriver:chromium-driver; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done

if ! /usr/bin/python3 -c 'import gi; gi.require_version("Gio", "2.0"); from gi.repository import Gio' \
        >/dev/null 2>&1; then
    missing+=(python3-gi gir1.2-glib-2.0)
fi

command -v localedef >/dev/null 2>&1 || missing+=(locales)
make_locale() {   # zh_TW.UTF-8 for Wine (see above)
    locale -a 2>/dev/null | grep -qix 'zh_TW.utf8' && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/setup-system.sh: the zh_TW.UTF-8 locale is missing: sudo localedef -i zh_TW -f UTF-8 zh_TW.UTF-8" >&2
        return 1
    fi
    echo "tests/setup-system.sh: generating the zh_TW.UTF-8 locale (for Wine)" >&2
    localedef -i zh_TW -f UTF-8 zh_TW.UTF-8
}

if [ ${#missing[@]} -eq 0 ]; then
    make_locale
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/setup-system.sh: missing system packages: ${missing[*]}" >&2
    echo "install them with:  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "tests/setup-system.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# another apt (an unattended upgrade, a second test run) may hold the lock for a while: wait for it
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
make_locale
