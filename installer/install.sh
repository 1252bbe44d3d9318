#!/usr/bin/env bash
# Installs torchkeeper for this user (no root), turns on start at login and adds a menu entry.
#
#   installer/install.sh [--no-autostart] [--no-start] [--method uv|pipx|venv] [SOURCE]
#
# SOURCE: a wheel, an sdist or a checkout (default: the checkout this script is in; PyPI has
# no torchkeeper yet). With uv: `uv tool install`; else pipx; else a venv in
# $XDG_DATA_HOME/torchkeeper/venv with `torchkeeper` linked into ~/.local/bin.
# Start at login is on unless --no-autostart, and never switched back on if you turned it off
# before (`torchkeeper autostart enable` turns it on, `disable` off). installer/uninstall.sh undoes it.
set -euo pipefail

say() { echo "install.sh: $*" >&2; }
die() { echo "error: $1" >&2; echo "hint: $2" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_arg="" autostart=1 start=1 method=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-autostart) autostart=0 ;;
        --no-start) start=0 ;;
        --method) method=${2:-}; shift ;;
        --method=*) method=${1#--method=} ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" "see installer/install.sh --help" ;;
        *) source_arg=$1 ;;
    esac
    shift
done
src=$(realpath -m "${source_arg:-$here/..}")
[ -e "$src" ] || die "no such wheel, sdist or folder: $src" "give the path of a torchkeeper wheel, sdist or checkout"
if [ -d "$src" ] && [ ! -f "$src/pyproject.toml" ]; then
    die "$src is not a torchkeeper checkout (no pyproject.toml)" "give the checkout's folder, or a wheel or sdist"
fi

data=${XDG_DATA_HOME:-$HOME/.local/share}
bindir=$HOME/.local/bin
venv=$data/torchkeeper/venv
marker=$data/torchkeeper/installed-by
if [ -z "$method" ]; then
    if command -v uv >/dev/null 2>&1; then method=uv
    elif command -v pipx >/dev/null 2>&1; then method=pipx
    else method=venv; fi
fi

case "$method" in
    uv)
        say "installing $src with uv tool install (step 1/3)"
        uv tool install --force --reinstall "$src" >&2
        cmd="$(uv tool dir --bin)/torchkeeper" linked=$cmd ;;
    pipx)
        say "installing $src with pipx (step 1/3)"
        pipx install --force "$src" >&2
        cmd="${PIPX_BIN_DIR:-$bindir}/torchkeeper" linked=$cmd ;;
    venv)
        py=$(command -v python3 || true)
        [ -n "$py" ] || die "no python3 on PATH" "install Python 3.10 or newer (Debian: apt install python3-venv)"
        say "making a venv in $venv and installing $src there with pip (step 1/3)"
        rm -rf "$venv"
        "$py" -m venv "$venv" >&2 || die "python3 -m venv $venv failed" "Debian/Ubuntu: apt install python3-venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar on "$src" >&2
        mkdir -p "$bindir"
        ln -sfn "$venv/bin/torchkeeper" "$bindir/torchkeeper"
        cmd="$venv/bin/torchkeeper" linked="$bindir/torchkeeper" ;;
    *) die "unknown --method $method" "one of: uv, pipx, venv" ;;
esac
[ -x "$cmd" ] || die "the install left no torchkeeper command at $cmd" "run the $method step by hand to see why"
mkdir -p "$(dirname "$marker")"
echo "$method $cmd" >"$marker"

# the interpreter behind the command: it knows where the installed package keeps its icon
python=$(head -1 "$cmd" | sed 's/^#! *//')
icon=$("$python" -c 'from torchkeeper.home import app_icon; print(app_icon())' 2>/dev/null || echo torchkeeper)
# the Exec value as the Desktop Entry spec wants it (quoting, then the string escapes): the
# same code as the autostart entry, for a path with spaces, quotes, $ or backslashes
exec_value=$("$python" -c 'import sys; from torchkeeper.platform.posix import exec_value; print(exec_value(sys.argv[1:]))' "$cmd" run)

say "adding the menu entry $data/applications/torchkeeper.desktop (step 2/3)"
mkdir -p "$data/applications"
cat >"$data/applications/torchkeeper.desktop" <<DESKTOP
[Desktop Entry]
Type=Application
Name=torchkeeper
Comment=Keeps a newer CUDA runtime, cuBLAS and cuDNN overlaid on PyTorch
Exec=$exec_value
Icon=$icon
Terminal=false
Categories=Utility;
DESKTOP

if [ $autostart -eq 1 ]; then
    say "turning on start at login (step 3/3; --no-autostart leaves it off)"
    "$cmd" autostart enable --if-not-declined --by installer
else
    say "start at login left off (--no-autostart); \`torchkeeper autostart enable\` turns it on"
fi
if [ $start -eq 1 ]; then
    setsid "$cmd" run </dev/null >/dev/null 2>&1 &
    say "started the agent"
fi
# what the user types: the command in the folder it was linked into, not the venv behind it
say "installed: $linked (uninstall: installer/uninstall.sh)"
case ":$PATH:" in
    *":$(dirname "$linked"):"*) ;;
    *) say "note: $(dirname "$linked") is not on your PATH: run $linked, or add the folder to PATH" \
           "(e.g. echo 'export PATH=\"$(dirname "$linked"):\$PATH\"' >> ~/.profile, then log in again)" ;;
esac
