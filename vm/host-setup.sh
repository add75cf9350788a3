#!/bin/sh
# Prepare a Debian 12 host for tracedep, idempotently: the Debian packages it
# runs, the virtualenv at .venv with the tracedep command, and (unless
# TRACEDEP_NO_PREFETCH=1) the default kernel packages in ~/.cache/tracedep.
set -eu
cd "$(dirname "$0")/.."

PKGS="qemu-system-x86 qemu-system-arm busybox-static gcc make libc6-dev libelf-dev kmod \
binutils cpio xz-utils zstd trace-cmd gcc-aarch64-linux-gnu libc6-dev-arm64-cross python3-venv \
dpkg-dev dwarves"
# trace-cmd: the peer decoder of tests/tracer/test_trace_dat.py and bench/bench_peer_decode.py
# dwarves: pahole, which kbuild runs ("BTF [M]") for kernels whose headers ship a BTF vmlinux (6.12)

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
# The kernel is resolved from the apt lists (vm/debian_kernels.py): lists older than a
# day may name packages the archive has already replaced.
fresh=$(find /var/lib/apt/lists -maxdepth 1 -name '*_InRelease' -mmin -1440 2>/dev/null | head -1)
if [ -z "$fresh" ] || ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
# Linux 6.12 (Debian 13's kernel) reaches bookworm through bookworm-security; where this
# host's sources do not carry it, bookworm-backports does (priority 100: nothing installed
# changes, tracedep only downloads from it).
if [ -z "$(apt-cache pkgnames linux-image-6.12 | head -1)" ] && grep -qs bookworm /etc/os-release; then
    echo "tracedep setup: adding bookworm-backports (for Linux 6.12 kernel packages)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $SUDO tee /etc/apt/sources.list.d/tracedep-backports.sources >/dev/null
    $SUDO apt-get update -qq
fi

if [ ! -x .venv/bin/tracedep ] || [ pyproject.toml -nt .venv/.installed ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    # setuptools warns at length about the driver folders it (rightly) leaves out
    .venv/bin/pip install -q -e '.[dev]' 2>&1 | grep -E '^(ERROR|error):' || true
    .venv/bin/tracedep --help >/dev/null
    touch .venv/.installed
fi

if [ "${TRACEDEP_NO_PREFETCH:-0}" != 1 ]; then
    .venv/bin/tracedep fetch ${TRACEDEP_FETCH_ARGS:-}
fi
