#!/bin/sh
# tracedep guest init (busybox sh).  Arms tracing, runs the workload, streams the
# trace to the host over virtio-serial ports and powers off.
#
# Everything the host needs to know is written to the control port as framed
# blocks: "@@TD <tag> [args]" ... "@@TD end <tag>".  Trace data never goes through
# this script: tdpump moves each CPU's binary ring buffer to its own port.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
. /etc/tracedep/config

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
T=/sys/kernel/tracing
[ -d $T/events ] || T=/sys/kernel/debug/tracing

say() { echo "tracedep-init: $*" > /dev/console; }

while read -r m; do
    [ -n "$m" ] && insmod "/lib/modules/boot/$m.ko" 2>/dev/null
done < /etc/tracedep/kmods

# virtio ports appear asynchronously after virtio_console probes
port_dev() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return 0; }
    done
    return 1
}
i=0
while ! CTL=$(port_dev tracedep.ctl) || [ ! -c "$CTL" ]; do
    i=$((i + 1))
    if [ $i -gt 200 ]; then say "no control port; powering off"; poweroff -f; fi
    sleep 0.05
done
# read and write: the host writes "stop" here to end the workload early (below)
exec 3<>"$CTL"

block() { echo "@@TD $*" >&3; }
endblock() { echo "@@TD end $1" >&3; }
sendfile() { block file "$1"; cat "$1" >&3 2>/dev/null; echo >&3; endblock file; }

block hello
echo "release=$(uname -r)" >&3
echo "machine=$(uname -m)" >&3
echo "ncpus=$(grep -c ^processor /proc/cpuinfo)" >&3
echo "cmdline=$(cat /proc/cmdline)" >&3
echo "uptime=$(cut -d' ' -f1 /proc/uptime)" >&3
endblock hello

if [ "$TD_MODE" = discover ]; then
    # One boot per kernel: what can be probed, and where .sched.text lies.
    sendfile /proc/kallsyms
    sendfile $T/available_filter_functions
    sendfile /sys/kernel/debug/kprobes/blacklist
    block done discover
    sync
    poweroff -f
fi

# The KASLR offset: the host compares this with the link-time address.
block kaslr
grep -m1 " $TD_TEXT_SYMBOL\$" /proc/kallsyms >&3
endblock kaslr

echo 0 > $T/tracing_on
echo > $T/trace
# Everything a trace needs armed: probes, events, stack triggers, formats, pumps.
arm_tracing() {
    # Mid-function kprobes (inlined locks) must all run the way the calibration's did:
    # x86's optimizer would turn some into jumps, with other context flags, at a time
    # of its choosing (tracer.calibration).  No such file: no optimized kprobes (arm64).
    OPTPROBES=none
    if [ -w /proc/sys/debug/kprobes-optimization ]; then
        echo 0 > /proc/sys/debug/kprobes-optimization 2>/dev/null
        OPTPROBES=$(cat /proc/sys/debug/kprobes-optimization)
    fi
    block kprobes_optimization
    echo "value=$OPTPROBES" >&3
    endblock kprobes_optimization
    echo "$TD_BUFFER_KB" > $T/buffer_size_kb
    echo global > $T/trace_clock
    # wake the pumps when a CPU's ring is 5 % full (they also look every 250 ms)
    echo 5 > $T/buffer_percent 2>/dev/null
    echo 4096 > $T/saved_cmdlines_size 2>/dev/null
    echo 0 > $T/options/event-fork 2>/dev/null

    # A refused probe's reason is in tracefs' error_log (its last 8 errors): sent with
    # the failure and cleared, so each failure gets its own.
    echo > $T/error_log 2>/dev/null
    block probes
    while IFS= read -r def; do
        [ -z "$def" ] && continue
        if ! echo "$def" >> $T/kprobe_events 2>/dev/null; then
            echo "FAIL $def" >&3
            while IFS= read -r why; do echo "WHY $why" >&3; done < $T/error_log 2>/dev/null
            echo > $T/error_log 2>/dev/null
        fi
    done < /etc/tracedep/kprobes
    endblock probes

    block events
    while IFS= read -r ev; do
        [ -z "$ev" ] && continue
        if [ -e "$T/events/$ev/enable" ]; then
            echo 1 > "$T/events/$ev/enable" && echo "ON $ev" >&3
        else
            echo "MISSING $ev" >&3
        fi
    done < /etc/tracedep/events
    # Witness stacks only where a finding can come from: events in atomic context.
    while IFS= read -r trig; do
        [ -z "$trig" ] && continue
        ev=${trig%% *}
        cond=${trig#* }
        if [ -e "$T/events/$ev/trigger" ]; then
            echo "stacktrace $cond" > "$T/events/$ev/trigger" 2>/dev/null || echo "NOTRIGGER $ev" >&3
        fi
    done < /etc/tracedep/stack_triggers
    # Probes last: enabling a tracepoint patches kernel text, and doing that while
    # hundreds of lock probes already fire on every CPU is the riskiest order.
    [ -d $T/events/tracedep ] && echo 1 > $T/events/tracedep/enable
    endblock events

    block formats
    cat $T/events/header_page >&3
    endblock formats
    block file header_event
    cat $T/events/header_event >&3
    endblock file
    for f in $T/events/*/*/format; do
        ev=${f%/format}
        ev=${ev#$T/events/}
        case "$ev" in
            tracedep/*|kmem/*|sched/sched_switch|irq/*|module/*|ftrace/kernel_stack|ftrace/print|lock/*|timer/timer_expire_*) ;;
            workqueue/workqueue_queue_work|workqueue/workqueue_execute_*|sched/sched_kthread_stop) ;;
            *) continue ;;
        esac
        block format "$ev"
        cat "$f" >&3
        endblock format
    done

    # One pump per CPU, each to its own port.
    ncpu=0
    for d in $T/per_cpu/cpu*; do
        n=${d##*/cpu}
        P=$(port_dev "tracedep.cpu$n") || { say "no port for cpu$n"; continue; }
        /bin/tdpump "$d/trace_pipe_raw" "$P" 2>/dev/console &
        echo $! >> /tmp/pumps
        ncpu=$((ncpu + 1))
    done
    # Reading the trace must not feed the trace: the pumps' own process-context events
    # are filtered out (the analysis knows their pids).  Not with set_event_notrace_pid:
    # that drops everything on a CPU while a pump runs there, interrupts and softirqs
    # included (a driver's timer callback firing then would vanish).  common_flags:
    # hardirq 0x08 | softirq 0x10 | nmi 0x40.  sched_switch stays whole: the
    # replay needs the pumps' switches.
    pf=""
    while read -r p; do pf="${pf:+$pf && }common_pid != $p"; done < /tmp/pumps
    if [ -n "$pf" ]; then
        for s in tracedep kmem lock; do
            [ -e $T/events/$s/filter ] || continue
            echo "($pf) || (common_flags & 88)" > $T/events/$s/filter 2>/dev/null \
                || echo "tracedep: cannot filter $s events" > /dev/console
        done
    fi
}
if [ "$TD_MODE" = untraced ]; then
    # tracedep trace --untraced: this same guest and workload with nothing armed (no
    # probe, event, trigger, ring buffer resize or pump), to measure what tracing
    # costs the guest.  tracing_on stays 0: the trace_marker lines go nowhere.
    : > /tmp/pumps
else
    arm_tracing
fi

# Loaded modules and their section addresses, as the symbolizer needs them.
# The poller and td_insmod may race: mkdir makes one of them the reporter, and
# the block goes out in a single write so blocks never interleave on the port.
report_module() {
    name=$1
    # builtins only on the common path: every fork here would be traced
    [ -d /sys/module/$name/sections ] || return 0
    [ -d /tmp/reported.$name ] && return 0
    mkdir /tmp/reported.$name 2>/dev/null || return 0
    text="@@TD module $name"
    while read -r line; do
        case "$line" in "$name "*) text="$text
$line" ;; esac
    done < /proc/modules
    # one cat for all: a section file only answers a read at offset 0, so the
    # shell's byte-wise read builtin cannot be used
    files=""
    for s in /sys/module/$name/sections/.[!.]* /sys/module/$name/sections/[!.]*; do
        [ -e "$s" ] && files="$files $s"
    done
    set -- $files
    for v in $(cat "$@"); do
        text="$text
section ${1##*/} $v"
        shift
    done
    printf '%s\n@@TD end module\n' "$text" >&3
}
# Loads go through tdinsmod: one finit_module(), never busybox's init_module()
# retry that runs a failing init a second time.  Its exit code is the errno.
td_insmod() {
    ko=$1
    shift
    name=${ko##*/}
    name=${name%.ko}
    name=${name//-/_}
    echo "tracedep: insmod $name" > $T/trace_marker
    /bin/tdinsmod "$ko" "$@"
    rc=$?
    report_module "$name"
    # a module whose init failed was loaded and freed: its load is in the trace, and
    # without this the report could not tell it from a clean driver
    printf '@@TD insmod %s %s\n@@TD end insmod\n' "$name" "$rc" >&3
    return $rc
}
# A dependency of a module under test: loaded (once), its addresses reported for the
# symbolizer, but no insmod result: it is not what the run tests.
td_load_dep() {
    local name rc
    name=${1##*/}
    name=${name%.ko}
    name=${name//-/_}
    [ -e /sys/module/$name/initstate ] && return 0
    echo "tracedep: insmod dependency $name" > $T/trace_marker
    /bin/tdinsmod "$1"
    rc=$?
    report_module "$name"
    return $rc
}
td_rmmod() {
    echo "tracedep: rmmod $1" > $T/trace_marker
    command rmmod "$1" && rmdir /tmp/reported.$1 2>/dev/null
}
# A workload's plain insmod/rmmod report the module at once too: the poller
# below misses a module loaded and unloaded within its period.
insmod() { td_insmod "$@"; }
rmmod() { td_rmmod "$@"; }
# modprobe NAME [PARAMS]: the dependencies from modules.dep, then NAME with its
# parameters, all through tdinsmod (busybox modprobe would retry a failing init);
# an option (-r, -a …) or a name not in modules.dep goes to busybox's modprobe.
modprobe() {
    # busybox sh scopes dynamically: report_module (run by td_load_dep) sets $line
    local want kdir depline l p n rev d
    case "$1" in ""|-*) command modprobe "$@"; return ;; esac
    want=${1//-/_}
    shift
    kdir=/lib/modules/$(uname -r)
    depline=""
    if [ -e "$kdir/modules.dep" ]; then
        while IFS= read -r l; do
            p=${l%%:*}
            n=${p##*/}
            n=${n%.ko}
            [ "${n//-/_}" = "$want" ] && { depline=$l; break; }
        done < "$kdir/modules.dep"
    fi
    [ -z "$depline" ] && { command modprobe "$want" "$@"; return; }
    rev=""
    for d in ${depline#*:}; do rev="$d $rev"; done
    for d in $rev; do td_load_dep "$kdir/$d" || return; done
    # modprobe's meaning: loaded already is success
    [ -e /sys/module/$want/initstate ] && return 0
    td_insmod "$kdir/${depline%%:*}" "$@"
}
# the pids of $1's descendants, each before its own children (PPid from /proc)
descendants() {
    local st k v kids=""
    for st in /proc/[0-9]*/status; do
        while read -r k v; do
            [ "$k" = PPid: ] || continue
            [ "$v" = "$1" ] && { kids="$kids ${st%/status}"; }
            break
        done < "$st" 2>/dev/null
    done
    for k in $kids; do
        echo "${k#/proc/}"
        descendants "${k#/proc/}"
    done
}
# end the process $1 and everything it started: TERM, then KILL what is left
stop_tree() {
    local all p
    all="$1 $(descendants "$1")"
    for p in $all; do kill -TERM "$p" 2>/dev/null; done
    sleep 2
    for p in $all; do kill -KILL "$p" 2>/dev/null; done
}
# misses counted before tracing starts are not lost trace events: keep a baseline
if [ "$TD_MODE" != untraced ]; then
    block file kprobe_profile_start
    cat $T/kprobe_profile >&3
    endblock file
fi
# one write: the module poller and td_insmod write blocks on this port too
printf '@@TD start\nuptime=%s\nuntraced_pids=%s\n@@TD end start\n' \
    "$(cut -d' ' -f1 /proc/uptime)" "$(cat /tmp/pumps | tr '\n' ' ')" >&3
# Modules loaded by a custom workload with plain insmod are caught by this poller.
POLLER=
if [ "$TD_POLL" = 1 ]; then
    (
        while :; do
            while read -r m _; do report_module "$m"; done < /proc/modules
            sleep 1
        done
    ) &
    POLLER=$!
fi

[ "$TD_MODE" = untraced ] || echo 1 > $T/tracing_on
# calibration (tracer.calibration): sync's syscall entry runs in a known context
echo "tracedep: calibrate" > $T/trace_marker
sync
echo "tracedep: workload start" > $T/trace_marker

# a subshell, so a workload that calls exit does not kill init
( . /workload.sh ) &
WL=$!
# The host ends a workload early (tracedep run, on SIGINT or SIGTERM: tracer.early_stop)
# with "stop" on the control port; the rest of this script then runs as after any
# workload, so the trace ends at one instant on every CPU and reaches the host whole.
(
    while read -r cmd <&3; do
        [ "$cmd" = stop ] || continue
        : > /tmp/stopped
        echo "tracedep: workload stopped by the host" > $T/trace_marker
        stop_tree "$WL"
        break
    done
) &
STOPPER=$!
wait $WL
rc=$?
kill $STOPPER 2>/dev/null

echo "tracedep: workload end rc=$rc" > $T/trace_marker
echo 0 > $T/tracing_on
[ -n "$POLLER" ] && kill $POLLER 2>/dev/null
while read -r m _; do report_module "$m"; done < /proc/modules

block workload
echo "rc=$rc" >&3
[ -e /tmp/stopped ] && echo "stopped=host" >&3
echo "uptime=$(cut -d' ' -f1 /proc/uptime)" >&3
endblock workload

for p in $(cat /tmp/pumps); do kill -USR1 "$p"; done
for p in $(cat /tmp/pumps); do wait "$p"; done

if [ "$TD_MODE" = untraced ]; then
    block done untraced
else
    for d in $T/per_cpu/cpu*; do
        block stats "${d##*/}"
        cat "$d/stats" >&3
        endblock stats
    done
    sendfile $T/saved_cmdlines
    sendfile $T/saved_tgids
    # per probe: hits and misses (a kprobe that fired while another ran is lost)
    sendfile $T/kprobe_profile
    block done trace
fi
exec 3>&-
sync
poweroff -f
