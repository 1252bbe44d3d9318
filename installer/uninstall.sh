#!/usr/bin/env bash
# Removes what installer/install.sh installed: stops the agent, removes the start-at-login
# entry (your choice is remembered for a reinstall), the menu entry, the logs and the program.
#
#   installer/uninstall.sh [--remove-cache]
#
# Kept: your settings, the targets torchkeeper knows and the backups `torchkeeper revert`
# needs (run `torchkeeper revert` first for the stock files back), and the bundle cache
# unless --remove-cache. A target's files are never touched.
set -euo pipefail

say() { echo "uninstall.sh: $*" >&2; }
die() { echo "error: $1" >&2; echo "hint: $2" >&2; exit 2; }

remove_cache=()
for arg in "$@"; do
    case "$arg" in
        --remove-cache) remove_cache=(--remove-cache) ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $arg" "see installer/uninstall.sh --help" ;;
    esac
done

data=${XDG_DATA_HOME:-$HOME/.local/share}
marker=$data/torchkeeper/installed-by
[ -f "$marker" ] || die "torchkeeper was not installed by installer/install.sh here ($marker is missing)" \
    "a pip install is removed with pip uninstall torchkeeper"
read -r method cmd <"$marker"

if [ -x "$cmd" ]; then
    "$cmd" uninstall "${remove_cache[@]}"
else
    say "warning: $cmd is gone; removing the rest"
fi
rm -f "$data/applications/torchkeeper.desktop"
case "$method" in
    uv) uv tool uninstall torchkeeper >&2 || say "warning: uv tool uninstall torchkeeper failed" ;;
    pipx) pipx uninstall torchkeeper >&2 || say "warning: pipx uninstall torchkeeper failed" ;;
    venv)
        rm -rf "$data/torchkeeper/venv"
        link="$HOME/.local/bin/torchkeeper"
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$data/torchkeeper/venv/bin/torchkeeper" ]; then rm -f "$link"; fi ;;
esac
rm -f "$marker"
say "torchkeeper is uninstalled"
