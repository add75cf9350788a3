# tracedep real-world scenario: Debian's own block, swap, filesystem and network
# drivers under about a minute of load.  Run it with the kernel package's modules:
#
#   tracedep run --workload scenarios/debian-drivers.sh \
#       --kernel-module null_blk --kernel-module zram --kernel-module loop \
#       --kernel-module configfs --kernel-module vfat --kernel-module dummy \
#       --kernel-module veth --kernel-module nls_cp437 --kernel-module nls_ascii \
#       --out runs/debian
#
# Sourced by the guest's init (busybox sh): $T is tracefs.  Every step is bounded
# by counts, not time, and a step that fails says so on the console and the run
# goes on: a missing feature must not hide the rest.
say() { echo "tracedep-scenario: $*" > /dev/console; echo "tracedep: scenario $*" > $T/trace_marker; }
try() { "$@" || say "failed ($?): $*"; }
# fill: N MiB of compressible but not same-filled data (zram stores zero pages apart)
fill() { i=0; while [ $i -lt "$2" ]; do cat /bin/busybox; i=$((i + 1)); done | head -c "$(( $2 * 1048576 ))" > "$1"; }

say start
mkdir -p /mnt/a /mnt/b /mnt/shm /sys/kernel/config /sys/fs/cgroup

# -- null_blk: a module-parameter device and a configfs one, parallel I/O, discard, ext2
say null_blk
try modprobe null_blk nr_devices=1 queue_mode=2 irqmode=1 gb=1
try modprobe configfs
mount -t configfs none /sys/kernel/config 2>/dev/null
d=/sys/kernel/config/nullb/nullb1
if try mkdir $d; then
    echo 64 > $d/size; echo 1 > $d/memory_backed; echo 1 > $d/discard
    echo 2 > $d/irqmode 2>/dev/null; try sh -c "echo 1 > $d/power"
fi
for bs in 512 4096 65536 1048576; do
    n=$(( 33554432 / bs ))
    dd if=/dev/zero of=/dev/nullb0 bs=$bs count=$n oflag=direct 2>/dev/null &
    dd if=/dev/nullb0 of=/dev/null bs=$bs count=$n 2>/dev/null &
    [ -b /dev/nullb1 ] && dd if=/dev/zero of=/dev/nullb1 bs=$bs count=$n 2>/dev/null &
    wait
done
if [ -b /dev/nullb1 ]; then
    try blkdiscard /dev/nullb1
    try mke2fs -q /dev/nullb1
    if try mount -t ext2 /dev/nullb1 /mnt/a; then
        for f in 1 2 3 4; do fill /mnt/a/f$f 4 & done; wait
        sync; cat /mnt/a/f* > /dev/null; try rm /mnt/a/f1; fstrim /mnt/a 2>/dev/null
        try umount /mnt/a
    fi
    echo 0 > $d/power; try rmdir $d
fi

# -- zram as swap, pushed by memory.reclaim of a memory cgroup
say zram
try modprobe zram num_devices=1
if [ -e /sys/block/zram0/disksize ]; then
    # the first compressor this kernel has built in (6.12: lz4 backend; 6.1's
    # default lzo-rle and lz4 are crypto modules, deflate is built in); a failed
    # disksize write leaves the device unset, so the next one can be tried
    for alg in lz4 lzo-rle deflate; do
        echo $alg > /sys/block/zram0/comp_algorithm 2>/dev/null || continue
        echo 64M > /sys/block/zram0/disksize 2>/dev/null && break
    done
    try mkswap /dev/zram0 > /dev/null
    try swapon /dev/zram0
    mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
    echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    mkdir -p /sys/fs/cgroup/td
    mount -t tmpfs -o size=96m tmpfs /mnt/shm
    # shmem pages are charged to the cgroup of the task that writes them: a subshell
    # moves itself there ("0" is the writer) and keeps the shell's functions
    ( echo 0 > /sys/fs/cgroup/td/cgroup.procs && for k in 1 2 3; do fill /mnt/shm/s$k 12; done ) \
        2>/dev/null || say "failed: cgroup fill"
    # 3 x 10 of the 36 MiB charged: memory.reclaim fails (EAGAIN) when it cannot
    # reclaim all it was asked for
    for k in 1 2 3; do
        echo 10M > /sys/fs/cgroup/td/memory.reclaim 2>/dev/null || say "memory.reclaim refused"
    done
    cat /mnt/shm/s* > /dev/null  # swap them back in
    rm -f /mnt/shm/s*; umount /mnt/shm
    try swapoff /dev/zram0
    echo 1 > /sys/block/zram0/reset
    rmdir /sys/fs/cgroup/td 2>/dev/null
fi

# -- loop devices on tmpfs files: ext2 and vfat
say loop
try modprobe loop
try modprobe vfat
# vfat's default codepage and iocharset (Debian: 437, ascii); the guest has no
# usermode modprobe for the kernel's own request_module()
try modprobe nls_cp437
try modprobe nls_ascii
dd if=/dev/zero of=/tmp/ext2.img bs=1M count=16 2>/dev/null
dd if=/dev/zero of=/tmp/vfat.img bs=1M count=16 2>/dev/null
if try losetup /dev/loop0 /tmp/ext2.img && try losetup /dev/loop1 /tmp/vfat.img; then
    try mke2fs -q /dev/loop0
    try mkdosfs /dev/loop1 > /dev/null
    try mount -t ext2 /dev/loop0 /mnt/a
    try mount -t vfat /dev/loop1 /mnt/b
    for f in 1 2 3 4; do fill /mnt/a/g$f 2 & fill /mnt/b/g$f 2 & done; wait
    mkdir /mnt/a/d /mnt/b/d; mv /mnt/a/g1 /mnt/a/d/; mv /mnt/b/g1 /mnt/b/d/
    sync; cat /mnt/a/g* /mnt/b/g* > /dev/null
    try umount /mnt/a; try umount /mnt/b
    losetup -d /dev/loop0; losetup -d /dev/loop1
fi
rm -f /tmp/ext2.img /tmp/vfat.img

# -- dummy and veth into a network namespace, with traffic
say net
try modprobe dummy
ip link set dummy0 up 2>/dev/null && ip addr add 10.9.0.1/24 dev dummy0
ping -c 100 -i 0.01 -W 1 10.9.0.2 > /dev/null 2>&1
try modprobe veth
if try ip link add tdv0 type veth peer name tdv1; then
    # busybox ip names the peer itself (vethN): find it by tdv0's link index
    peer=""
    for n in /sys/class/net/*; do
        [ "$(cat $n/ifindex)" = "$(cat /sys/class/net/tdv0/iflink)" ] && peer=${n##*/}
    done
    unshare -n sleep 60 &
    ns=$!
    sleep 0.2
    try ip link set "$peer" netns $ns
    nsenter -t $ns -n sh -c "ip link set lo up; ip addr add 10.8.0.2/24 dev $peer; ip link set $peer up; nc -l -p 5000 > /dev/null &" \
        || say "failed: netns setup"
    ip addr add 10.8.0.1/24 dev tdv0; ip link set tdv0 up
    try ping -c 200 -i 0.01 -W 1 10.8.0.2 > /dev/null
    dd if=/bin/busybox bs=64k count=30 2>/dev/null | nc -w 2 10.8.0.2 5000 || say "failed: nc"
    # veth's own code takes no lock on this path (its xmit is RCU only without XDP or
    # GRO): its counters, read through veth_get_stats64(), show that it carried the traffic
    say "veth packets $(cat /sys/class/net/tdv0/statistics/tx_packets) $(cat /sys/class/net/tdv0/statistics/rx_packets)"
    ip link del tdv0
    kill $ns 2>/dev/null
fi

say unload
for m in veth dummy vfat fat nls_cp437 nls_ascii loop zram null_blk configfs; do
    rmmod $m 2>/dev/null
done
say done
