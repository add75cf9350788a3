# Records tests/data/text/trace_sym_offset_mutex.txt (see README.md).
#
# A tracedep workload (runs inside the guest's init, which provides $T and
# report_module).  One ftrace instance with options/sym-offset on (and sym-addr
# off) records tracedep's events around the load of td_mutex_spin_bug: its
# mutex_lock() gives kretprobe (lr_) lines, and a stacktrace trigger on
# lk_mutex_lock in atomic context gives "name+0xoff/0xsize" stacks without
# addresses.  The `trace` file is read while the module is loaded.
MOD=/lib/modules/tracedep/td_mutex_spin_bug.ko
MODSPACE=0xffffffffc0000000
I=$T/instances/txm
mkdir $I
echo 0 > $I/tracing_on
echo global > $I/trace_clock
echo 256 > $I/buffer_size_kb
for p in $(cat /tmp/pumps); do echo "$p" >> $I/set_event_notrace_pid; done
echo 1 > $I/options/sym-offset
for e in $I/events/tracedep/*/; do
    [ -e "$e/format" ] || continue
    if grep -q "field:u64 ret;" "$e/format"; then
        echo "ret >= $MODSPACE" > "$e/filter"
    else
        echo "__probe_ret_ip >= $MODSPACE" > "$e/filter"
    fi
done
echo 1 > $I/events/tracedep/enable
for ev in kmem/kmalloc kmem/kfree; do
    echo "call_site >= $MODSPACE" > $I/events/$ev/filter
    echo 1 > $I/events/$ev/enable
done
for ev in sched/sched_switch module/module_load; do
    echo 1 > $I/events/$ev/enable
done
echo 'stacktrace if common_preempt_count & 0xf || common_flags & 0x99' > $I/events/tracedep/lk_mutex_lock/trigger

echo 1 > $I/tracing_on
echo "record_text: insmod" > $I/trace_marker
echo "tracedep: insmod td_mutex_spin_bug" > $T/trace_marker
insmod $MOD
echo "record_text: insmod done" > $I/trace_marker
echo 0 > $I/tracing_on
report_module td_mutex_spin_bug
{
    echo "=====RECORD-TEXT kallsyms BEGIN====="
    grep '\[td_mutex_spin_bug\]' /proc/kallsyms
    echo "=====RECORD-TEXT kallsyms END====="
    echo "=====RECORD-TEXT trace BEGIN====="
    cat $I/trace
    echo "=====RECORD-TEXT trace END====="
} > /dev/console
