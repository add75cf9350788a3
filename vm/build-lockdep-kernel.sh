#!/bin/bash
# Build a kernel with lockdep's lock tracepoints (vm/lockdep.config) for tracedep,
# from Debian's linux-source-6.1, idempotently and cached outside the repository.
#
#   vm/build-lockdep-kernel.sh [--config-only] [--prove] [ARCH]  # ARCH: x86_64 (default) or arm64
#
# --prove builds a second kernel (its own cache directory, ARCH-prove) with lockdep's own
# checker on as well (PROVE_LOCKING, PROVE_RAW_LOCK_NESTING, DEBUG_ATOMIC_SLEEP): its
# console reports are what tracedep's findings on the same drivers are compared with.
#
# Tree, config, build log, timings and installed modules live in
#   ${TRACEDEP_CACHE:-$HOME/.cache/tracedep}/lockdep-kernel/ARCH/
# Steps (each skipped when its result is already there for the same inputs):
#   1. apt-get install linux-source-6.1 (/usr/src/linux-source-6.1.tar.xz) and the build tools
#   2. extract it into the cache (re-extracted when the package version changes)
#   3. <arch defconfig> + kvm_guest.config (when the arch has one) + vm/lockdep.config
#      + this script's own fragment (below), merged with merge_config.sh -m, then olddefconfig;
#      every CONFIG_...=y line of vm/lockdep.config and of our fragment must be =y in the
#      final .config, or the script fails and lists them
#   4. nice make -j$(nproc) <image> modules   (timed; log in build.log)
#   5. make modules_install INSTALL_MOD_PATH=<cache>/modules-install
# and prints the tracedep command line for that kernel.
#
# Environment: JOBS (default nproc), FORCE_BUILD=1 (run make even when the stamp says built),
# TRACEDEP_CACHE (cache location, as common/cache.py reads it).
# Only x86_64 has been built and run so far; arm64 is wired (cross compiler
# aarch64-linux-gnu-, defconfig, Image) but untested.
set -euo pipefail

CONFIG_ONLY=0
PROVE=0
ARCH_ARG=x86_64
for a in "$@"; do
    case "$a" in
        --config-only) CONFIG_ONLY=1 ;;
        --prove) PROVE=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        -*) echo "build-lockdep-kernel: unknown option $a" >&2; exit 2 ;;
        *) ARCH_ARG=$a ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCKDEP_FRAGMENT=$REPO/vm/lockdep.config
SRC_PKG=linux-source-6.1
TARBALL=/usr/src/$SRC_PKG.tar.xz
JOBS=${JOBS:-$(nproc)}

HOST_ARCH=$(uname -m)
case "$ARCH_ARG" in
    x86_64|amd64)
        ARCH_ARG=x86_64; KARCH=x86; DEFCONFIG=x86_64_defconfig
        IMAGE_TARGET=bzImage; IMAGE=arch/x86/boot/bzImage
        CROSS=""; [ "$HOST_ARCH" = x86_64 ] || CROSS=x86_64-linux-gnu-
        CROSS_PKG=gcc-x86-64-linux-gnu ;;
    arm64|aarch64)
        ARCH_ARG=arm64; KARCH=arm64; DEFCONFIG=defconfig
        IMAGE_TARGET=Image; IMAGE=arch/arm64/boot/Image
        CROSS=""; [ "$HOST_ARCH" = aarch64 ] || CROSS=aarch64-linux-gnu-
        CROSS_PKG=gcc-aarch64-linux-gnu ;;
    *) echo "build-lockdep-kernel: unsupported ARCH $ARCH_ARG (x86_64 or arm64)" >&2; exit 2 ;;
esac

CACHE_BASE=${TRACEDEP_CACHE:-$HOME/.cache/tracedep}
CACHE=$CACHE_BASE/lockdep-kernel/$ARCH_ARG
# --prove: a second kernel, apart, with lockdep's own checker on as well
[ "$PROVE" = 0 ] || CACHE=$CACHE-prove
SRC=$CACHE/$SRC_PKG
MODS_ROOT=$CACHE/modules-install
LOG=$CACHE/build.log
TIMES=$CACHE/build-time.txt
EXTRA_FRAGMENT=$CACHE/tracedep-extra.config
MAKE=(make -C "$SRC" ARCH="$KARCH")
[ -z "$CROSS" ] || MAKE+=(CROSS_COMPILE="$CROSS")

say() { echo "build-lockdep-kernel: $*"; }
die() { echo "build-lockdep-kernel: error: $*" >&2; exit 1; }

mkdir -p "$CACHE"
# one build per cache directory at a time
exec 9>"$CACHE/.lock"
flock -n 9 || { say "waiting for another build in $CACHE"; flock 9; }

# --- 1. packages ------------------------------------------------------------------------
need=()
for p in "$SRC_PKG" make gcc libc6-dev bc bison flex libelf-dev libssl-dev xz-utils kmod perl time; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ -n "$CROSS" ] && ! command -v "${CROSS}gcc" >/dev/null; then need+=("$CROSS_PKG"); fi
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    say "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -f "$TARBALL" ] || die "$TARBALL missing although $SRC_PKG is installed"
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")

# --- 2. source tree ---------------------------------------------------------------------
if [ ! -f "$SRC/.tracedep-source" ] || [ "$(cat "$SRC/.tracedep-source")" != "$SRC_VERSION" ]; then
    say "extracting $TARBALL ($SRC_PKG $SRC_VERSION) into $CACHE"
    tmp=$(mktemp -d "$CACHE/extract.XXXXXX")
    tar -xJf "$TARBALL" -C "$tmp"
    [ -d "$tmp/$SRC_PKG" ] || die "$TARBALL has no top directory $SRC_PKG"
    echo "$SRC_VERSION" >"$tmp/$SRC_PKG/.tracedep-source"
    rm -rf "$SRC" "$MODS_ROOT"
    mv "$tmp/$SRC_PKG" "$SRC"
    rmdir "$tmp"
fi

# --- 3. configuration -------------------------------------------------------------------
# Our own fragment: what vm/lockdep.config needs on top of a defconfig and does not say
# itself (dependencies kconfig would otherwise silently drop), plus a release suffix.
cat >"$EXTRA_FRAGMENT" <<'EOF'
# written by vm/build-lockdep-kernel.sh: dependencies of vm/lockdep.config's options
# that a defconfig lacks, and a release suffix naming this kernel
CONFIG_LOCALVERSION="-tracedep-lockdep"
# CONFIG_LOCALVERSION_AUTO is not set
# LOCK_STAT, LOCKDEP and KALLSYMS_ALL depend on DEBUG_KERNEL (x86_64_defconfig has it already)
CONFIG_DEBUG_KERNEL=y
# DYNAMIC_FTRACE depends on FUNCTION_TRACER, which no defconfig sets: without it
# olddefconfig drops DYNAMIC_FTRACE (and x86 kprobes lose KPROBES_ON_FTRACE)
CONFIG_FUNCTION_TRACER=y
EOF
if [ "$PROVE" = 1 ]; then
    cat >>"$EXTRA_FRAGMENT" <<'EOF'
# --prove: lockdep's own checker too (its console reports are what tracedep's findings
# are compared with), raw_spinlock_t/spinlock_t nesting as PREEMPT_RT sees it, and
# CONFIG_DEBUG_ATOMIC_SLEEP's might_sleep() checks
CONFIG_PROVE_LOCKING=y
CONFIG_PROVE_RAW_LOCK_NESTING=y
CONFIG_DEBUG_ATOMIC_SLEEP=y
CONFIG_LOCALVERSION="-tracedep-prove"
EOF
fi

# arm64's defconfig builds hundreds of SoC platform drivers (and ~600 modules) that QEMU's
# -M virt guest never uses.  After defconfig, and before the fragments are merged (so they
# win), arm64_trim turns off every platform of arch/arm64/Kconfig.platforms, every =m
# option (tracedep needs no in-tree module: virtio_pci, virtio_console and pvpanic-pci
# are =y through vm/lockdep.config) and the big subsystems listed below.  What -M virt
# needs stays =y and is checked like the rest (appended to our fragment below).
ARM64_TRIM_OFF=(DRM FB SOUND SND MEDIA_SUPPORT WLAN WIRELESS CFG80211 MAC80211 BT NFC CAN
    USB_SUPPORT USB_GADGET MMC MTD IIO STAGING VIRTUALIZATION KVM SCSI ATA MD BLK_DEV_NVME
    NETDEVICES NET_DSA SPI INPUT_TOUCHSCREEN CRYPTO_HW REMOTEPROC RPMSG SOUNDWIRE
    ARM_SMMU ARM_SMMU_V3 CHROME_PLATFORMS SURFACE_PLATFORMS)
arm64_trim() {
    local cfg=$SRC/.config off
    off=( $(sed -nE 's/^(menu)?config (ARCH_[A-Za-z0-9_]+)[[:space:]]*$/\2/p' "$SRC/arch/arm64/Kconfig.platforms")
          $(sed -nE 's/^CONFIG_([A-Za-z0-9_]+)=m$/\1/p' "$cfg")
          "${ARM64_TRIM_OFF[@]}" )
    echo "arm64_trim: disabling ${#off[@]} options"
    local args=()
    for o in "${off[@]}"; do args+=(--disable "$o"); done
    "$SRC/scripts/config" --file "$cfg" "${args[@]}"
}
if [ "$KARCH" = arm64 ]; then
    cat >>"$EXTRA_FRAGMENT" <<'EOF'
# arm64 (QEMU -M virt): kept through arm64_trim
CONFIG_PCI=y
CONFIG_PCI_HOST_GENERIC=y
CONFIG_SERIAL_AMBA_PL011=y
CONFIG_SERIAL_AMBA_PL011_CONSOLE=y
CONFIG_RTC_CLASS=y
CONFIG_RTC_DRV_PL031=y
CONFIG_VIRTIO=y
CONFIG_TMPFS=y
CONFIG_DEBUG_FS=y
EOF
fi

KVM_FRAGMENT=""
for f in "arch/$KARCH/configs/kvm_guest.config" kernel/configs/kvm_guest.config; do
    if [ -f "$SRC/$f" ]; then KVM_FRAGMENT=$SRC/$f; break; fi
done

config_key=$( {
    echo "$SRC_VERSION $KARCH $DEFCONFIG $CROSS"
    [ -z "$KVM_FRAGMENT" ] || cat "$KVM_FRAGMENT"
    cat "$LOCKDEP_FRAGMENT" "$EXTRA_FRAGMENT"
    if [ "$KARCH" = arm64 ]; then declare -f arm64_trim; echo "${ARM64_TRIM_OFF[*]}"; fi
} | sha256sum | cut -d' ' -f1)

if [ ! -f "$SRC/.config" ] || [ "$(cat "$SRC/.tracedep-config" 2>/dev/null)" != "$config_key" ]; then
    say "configuring: $DEFCONFIG + ${KVM_FRAGMENT:+$(basename "$KVM_FRAGMENT") + }lockdep.config + $(basename "$EXTRA_FRAGMENT")"
    rm -f "$SRC/.tracedep-config" "$SRC/.tracedep-built"
    {
        "${MAKE[@]}" "$DEFCONFIG"
        if [ "$KARCH" = arm64 ]; then arm64_trim; fi
        if [ -z "$KVM_FRAGMENT" ] && [ "$KARCH" = x86 ]; then
            "${MAKE[@]}" kvm_guest.config   # older trees: the make target only
        fi
        (cd "$SRC" && ARCH=$KARCH CROSS_COMPILE=$CROSS scripts/kconfig/merge_config.sh -m .config \
            ${KVM_FRAGMENT:+"$KVM_FRAGMENT"} "$LOCKDEP_FRAGMENT" "$EXTRA_FRAGMENT")
        "${MAKE[@]}" olddefconfig
    } >"$CACHE/config.log" 2>&1 || { tail -n 30 "$CACHE/config.log" >&2; die "configuration failed (see $CACHE/config.log)"; }
    [ -n "$KVM_FRAGMENT" ] || [ "$KARCH" != x86 ] || say "kvm_guest.config applied with make kvm_guest.config"
fi

# every CONFIG_...=y asked for must have survived olddefconfig
missing=()
while IFS= read -r line; do
    grep -qx -- "$line" "$SRC/.config" || missing+=("$line")
done < <(grep -hE '^CONFIG_[A-Za-z0-9_]+=y[[:space:]]*$' "$LOCKDEP_FRAGMENT" "$EXTRA_FRAGMENT" | sed 's/[[:space:]]*$//' | sort -u)
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-lockdep-kernel: these options are not =y in $SRC/.config:" >&2
    for line in "${missing[@]}"; do
        opt=${line%%=*}
        now=$(grep -E "^(# )?$opt[= ]" "$SRC/.config" || echo "(absent: its dependencies are not met)")
        echo "  $line    -> $now" >&2
    done
    rm -f "$SRC/.tracedep-config"
    die "add the missing dependencies to this script's fragment ($EXTRA_FRAGMENT is written from it)"
fi
# the "is not set" lines are wishes, not requirements (another option may select them)
while IFS= read -r line; do
    opt=$(sed -E 's/^# (CONFIG_[A-Za-z0-9_]+) is not set.*/\1/' <<<"$line")
    if grep -q "^$opt=" "$SRC/.config"; then say "note: $opt is set although vm/lockdep.config unsets it"; fi
done < <(grep -hE '^# CONFIG_[A-Za-z0-9_]+ is not set' "$LOCKDEP_FRAGMENT")
echo "$config_key" >"$SRC/.tracedep-config"
say "config checked: every CONFIG_...=y of vm/lockdep.config is set"
if [ "$CONFIG_ONLY" = 1 ]; then exit 0; fi

# --- 4. build ---------------------------------------------------------------------------
if [ "${FORCE_BUILD:-0}" = 1 ] || [ "$(cat "$SRC/.tracedep-built" 2>/dev/null)" != "$config_key" ] \
   || [ ! -f "$SRC/$IMAGE" ] || [ ! -f "$SRC/vmlinux" ]; then
    say "building $IMAGE_TARGET and modules with -j$JOBS (log: $LOG); this takes a while"
    start=$(date +%s)
    if ! /usr/bin/time -v -o "$CACHE/build-time.last" \
            nice "${MAKE[@]}" -j"$JOBS" "$IMAGE_TARGET" modules >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "build failed after $(( $(date +%s) - start )) s (see $LOG)"
    fi
    secs=$(( $(date +%s) - start ))
    {
        echo "$(date -Is) $ARCH_ARG $SRC_PKG $SRC_VERSION: make -j$JOBS $IMAGE_TARGET modules took ${secs} s ($((secs / 60)) min $((secs % 60)) s) on $(nproc) CPUs"
        grep -E 'Elapsed|User time|System time|Maximum resident' "$CACHE/build-time.last" | sed 's/^\s*/    /'
    } >>"$TIMES"
    echo "$config_key" >"$SRC/.tracedep-built"
    say "built in ${secs} s"
else
    say "already built for this config ($SRC/$IMAGE; FORCE_BUILD=1 to run make again)"
fi

RELEASE=$(cat "$SRC/include/config/kernel.release")
MODS=$MODS_ROOT/lib/modules/$RELEASE

# --- 5. modules_install -----------------------------------------------------------------
if [ ! -f "$MODS/modules.dep" ] || [ "$MODS/modules.dep" -ot "$SRC/.tracedep-built" ]; then
    say "installing modules into $MODS_ROOT"
    rm -rf "$MODS"
    "${MAKE[@]}" modules_install INSTALL_MOD_PATH="$MODS_ROOT" >"$CACHE/modules_install.log" 2>&1 \
        || { tail -n 20 "$CACHE/modules_install.log" >&2; die "modules_install failed"; }
    # the links back into the build tree are of no use to tracedep (--kernel-build says it)
    rm -f "$MODS/build" "$MODS/source"
fi

[ -f "$TIMES" ] && { say "build time(s) recorded in $TIMES:"; sed 's/^/  /' "$TIMES"; }
cat <<EOF

kernel release: $RELEASE
image:          $SRC/$IMAGE
modules:        $MODS
build tree:     $SRC
vmlinux:        $SRC/vmlinux

run tracedep on it with:
  cd $REPO && .venv/bin/tracedep run${ARCH_ARG:+ --arch $ARCH_ARG} --kernel $SRC/$IMAGE --kernel-modules $MODS --kernel-build $SRC --vmlinux $SRC/vmlinux --out runs/lockdep
EOF
