# Records the text-trace fixtures of tests/analysis/test_ftrace_text.py (see README.md).
#
# A tracedep workload: runs inside the guest's init, which provides $T (tracefs)
# and td_insmod.  Two extra ftrace instances record tracedep's events as text
# while the top-level buffer records them in binary as usual, so the text parse
# can be compared with the binary decode of the same run:
#
#   txt   default trace options, around the module load; its `trace` file
#         (header and all) is read while the module is still loaded
#   txta  options/sym-addr and sym-offset on; read through `trace_pipe` three
#         times: after its small ring was overrun by markers (-> "CPU:n [LOST m
#         EVENTS]"), after the module load, and after the module's unload (its
#         addresses then print raw: the symbols are gone)
#
# The pumps that move the binary trace are not traced (as in the top-level
# buffer).  Lock and sleep probes and kmem events are filtered to module space (x86_64:
# 0xffffffffc0000000 and up) so that the text fits through the serial console.
MOD=/lib/modules/tracedep/td_alloc_spin_bug.ko
MODSPACE=0xffffffffc0000000
STACK_IF='gfp_flags & 0x400 && (common_preempt_count & 0xf || common_flags & 0x99)'

setup_instance() {
    I=$T/instances/$1
    mkdir "$I" || return 1
    echo 0 > "$I/tracing_on"
    echo global > "$I/trace_clock"
    echo "$2" > "$I/buffer_size_kb"
    # tracedep's own pumps stay out of it, as they do in the binary trace
    for p in $(cat /tmp/pumps); do echo "$p" >> "$I/set_event_notrace_pid"; done
    for e in "$I"/events/tracedep/*/; do
        [ -e "$e/format" ] || continue
        if grep -q "field:u64 ret;" "$e/format"; then
            echo "ret >= $MODSPACE" > "$e/filter"
        else
            echo "__probe_ret_ip >= $MODSPACE" > "$e/filter"
        fi
    done
    echo 1 > "$I/events/tracedep/enable"
    for ev in kmem/kmalloc kmem/kfree kmem/kmem_cache_alloc kmem/kmem_cache_free; do
        echo "call_site >= $MODSPACE" > "$I/events/$ev/filter"
        echo 1 > "$I/events/$ev/enable"
    done
    for ev in sched/sched_switch irq/irq_handler_entry irq/irq_handler_exit \
              irq/softirq_entry irq/softirq_exit module/module_load module/module_free; do
        echo 1 > "$I/events/$ev/enable"
    done
    echo "stacktrace if $STACK_IF" > "$I/events/kmem/kmalloc/trigger"
}

setup_instance txt 256
setup_instance txta 8
echo 1 > $T/instances/txta/options/sym-addr
echo 1 > $T/instances/txta/options/sym-offset

# txta, part 1: overrun the small ring with markers, then drain it
A=$T/instances/txta
echo 1 > $A/tracing_on
i=0
while [ $i -lt 600 ]; do
    echo "record_text: filler $i" > $A/trace_marker
    i=$((i + 1))
done
echo 0 > $A/tracing_on
cat $A/trace_pipe > /tmp/txta.txt
echo 64 > $A/buffer_size_kb

# both instances around the module load
on() { echo 1 > $T/instances/txt/tracing_on; echo 1 > $A/tracing_on; }
off() { echo 0 > $A/tracing_on; echo 0 > $T/instances/txt/tracing_on; }
mark() { echo "record_text: $*" > $T/instances/txt/trace_marker; echo "record_text: $*" > $A/trace_marker; }
on
mark insmod
# plain insmod (td_insmod's module report is slow under TCG: it runs after)
echo "tracedep: insmod td_alloc_spin_bug" > $T/trace_marker
insmod $MOD
# a line on the serial console: its UART interrupt shows as irq_handler_entry/exit
echo "record_text: loaded" > /dev/console
mark insmod done
off
report_module td_alloc_spin_bug
# read while the module is loaded: its addresses print as symbols
grep '\[td_alloc_spin_bug\]' /proc/kallsyms > /tmp/kallsyms.mod
cat $T/instances/txt/trace > /tmp/txt.trace
cat $A/trace_pipe >> /tmp/txta.txt

# txta only, around the unload; read after it: the module's addresses print raw
echo 1 > $A/tracing_on
echo "record_text: rmmod" > $A/trace_marker
echo "tracedep: rmmod td_alloc_spin_bug" > $T/trace_marker
rmmod td_alloc_spin_bug
echo "record_text: rmmod done" > $A/trace_marker
echo 0 > $A/tracing_on
cat $A/trace_pipe >> /tmp/txta.txt

{
    echo "=====RECORD-TEXT kallsyms BEGIN====="
    cat /tmp/kallsyms.mod
    echo "=====RECORD-TEXT kallsyms END====="
    echo "=====RECORD-TEXT trace BEGIN====="
    cat /tmp/txt.trace
    echo "=====RECORD-TEXT trace END====="
    echo "=====RECORD-TEXT trace_pipe BEGIN====="
    cat /tmp/txta.txt
    echo "=====RECORD-TEXT trace_pipe END====="
} > /dev/console
