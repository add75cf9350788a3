#!/bin/sh
# Prepare a Debian 12 host for tracedep, idempotently: the Debian packages it
# runs, the virtualenv at .venv with the tracedep command, and (unless
# TRACEDEP_NO_PREFETCH=1) the default kernel packages in ~/.cache/tracedep.
set -eu
cd "$(dirname "$0")/.."

PKGS="qemu-system-x86 qemu-system-arm busybox-static gcc make libc6-dev libelf-dev kmod \
binutils cpio xz-utils zstd gcc-aarch64-linux-gnu libc6-dev-arm64-cross python3-venv \
dpkg-dev"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "tracedep setup: installing$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# arm64 guests (--arch arm64): their kernel, headers and busybox are Debian arm64
# packages, downloaded (never installed) with apt-get download, which needs the
# arm64 package lists
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "tracedep setup: adding the arm64 package architecture (for arm64 guests)"
    $SUDO dpkg --add-architecture arm64
fi
if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi

if [ ! -x .venv/bin/tracedep ] || [ pyproject.toml -nt .venv/.installed ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/tracedep --help >/dev/null
    touch .venv/.installed
fi

if [ "${TRACEDEP_NO_PREFETCH:-0}" != 1 ]; then
    .venv/bin/tracedep fetch ${TRACEDEP_FETCH_ARGS:-}
fi
