#!/usr/bin/env bash
# A fresh Debian 12 root for the package test (tests/e2e/test_deb.py): debootstrap --variant=minbase
# of bookworm, plus the Debian packages the .deb depends on (named as arguments: the test passes the
# package's Depends), into the git-ignored .cache/debootstrap-bookworm. Only the first run (or a
# changed list) downloads (about a minute here); later runs find it and return at once. The test
# copies it before installing anything, so the cache stays fresh.
#
#   .cache/debootstrap-bookworm            the root
#   .cache/debootstrap-bookworm.packages   the packages it was made with (a different list remakes it)
#   .cache/debootstrap-bookworm.status     why there is no root (read by the test's skip message)
#   .cache/debootstrap-bookworm.log        debootstrap's output
#
# DEBIAN_MIRROR picks the mirror (default http://deb.debian.org/debian). As root.
set -uo pipefail
cd "$(dirname "$0")/.."

CACHE=$PWD/.cache
ROOT=$CACHE/debootstrap-bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
want=$(printf '%s\n' "$@" | sort -u | paste -sd, -)
mkdir -p "$CACHE"

if [ -x "$ROOT/usr/bin/dpkg" ] && [ "$(cat "$ROOT.packages" 2>/dev/null)" = "$want" ]; then
  rm -f "$ROOT.status"
  exit 0
fi

tmp=$ROOT.tmp
unmount_under() {  # debootstrap mounts /proc (and more) in the target; a failed run can leave them
  findmnt -rn -o TARGET | grep -F "$1/" | sort -r | while read -r m; do umount -l "$m"; done
}
give_up() {
  echo "debroot: no Debian 12 root: $1" >&2
  echo "$1" > "$ROOT.status"
  unmount_under "$tmp"
  rm -rf "$tmp"
  exit 1
}

command -v debootstrap >/dev/null || give_up "debootstrap is not installed: run make setup"
[ "$(id -u)" = 0 ] || give_up "debootstrap needs root"
unmount_under "$tmp"
unmount_under "$ROOT"
rm -rf "$tmp" "$ROOT" "$ROOT.packages"
echo "debroot: debootstrap bookworm (minbase${want:+ + $want}) from $MIRROR into .cache/debootstrap-bookworm (first time only)"
start=$SECONDS
if ! debootstrap --variant=minbase ${want:+--include="$want"} bookworm "$tmp" "$MIRROR" >"$ROOT.log" 2>&1; then
  give_up "debootstrap of bookworm from $MIRROR failed (see .cache/debootstrap-bookworm.log): $(grep -m1 -E '^E:|Failure|Couldn.t' "$ROOT.log")"
fi
unmount_under "$tmp"
rm -rf "$tmp"/var/cache/apt/archives/*.deb
mv "$tmp" "$ROOT"
echo "$want" > "$ROOT.packages"
rm -f "$ROOT.status"
echo "debroot: done in $((SECONDS - start)) s ($(du -sxh "$ROOT" | cut -f1))"
