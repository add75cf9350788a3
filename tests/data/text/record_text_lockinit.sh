# Records tests/data/text/trace_lock_init.txt (see README.md).
#
# A tracedep workload (runs inside the guest's init, which provides $T and
# report_module).  One ftrace instance with options/sym-offset and sym-addr
# records tracedep's lock-initializer and re-key events (li_*, lc_*:
# tracer.lock_init) around the load of td_mutex_spin_bug (its mutex_init()) and
# a mkdir/touch on a tmpfs (inode re-keying); the `trace` file is read while the
# module is loaded.
MOD=/lib/modules/tracedep/td_mutex_spin_bug.ko
I=$T/instances/txl
mkdir $I
echo 0 > $I/tracing_on
echo global > $I/trace_clock
echo 256 > $I/buffer_size_kb
for p in $(cat /tmp/pumps); do echo "$p" >> $I/set_event_notrace_pid; done
echo 1 > $I/options/sym-offset
echo 1 > $I/options/sym-addr
for e in $I/events/tracedep/li_* $I/events/tracedep/lc_*; do
    [ -e "$e/enable" ] && echo 1 > "$e/enable"
done
echo 1 > $I/events/module/module_load/enable

echo 1 > $I/tracing_on
echo "tracedep: insmod td_mutex_spin_bug" > $T/trace_marker
insmod $MOD
mkdir -p /tmp/txl.d/sub && : > /tmp/txl.d/sub/file
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
echo "tracedep: rmmod td_mutex_spin_bug" > $T/trace_marker
rmmod td_mutex_spin_bug
