# tracedep scenario: locktorture, every lock type it tortures, one after another
# in one boot.  Debian's kernels do not build locktorture; vm/torture_modules.py
# makes it from Debian's own source of the kernel:
#
#   tracedep run --module-src "$(python -m tracedep.vm.torture_modules)" \
#       --workload scenarios/locktorture.sh --out runs/lt
#
# Sourced by the guest's init (busybox sh): $T is tracefs, td_insmod/td_rmmod
# report each load.  TD_LT_TYPES / TD_LT_SECS (set before this text, e.g. by a
# wrapper workload) choose the types and how long each runs.  locktorture
# prints its own totals when it is unloaded ("Writes:  Total: N ..." then
# "<type>-torture:--- End of test: SUCCESS: ..."): tests/tracer/test_locktorture.py
# compares them with the trace.
say() { echo "tracedep-scenario: $*" > /dev/console; echo "tracedep: scenario $*" > $T/trace_marker; }
types=${TD_LT_TYPES:-"spin_lock spin_lock_irq raw_spin_lock raw_spin_lock_irq rw_lock rw_lock_irq mutex_lock ww_mutex_lock rtmutex_lock rwsem_lock percpu_rwsem_lock"}
secs=${TD_LT_SECS:-3}
mods=/lib/modules/tracedep
td_insmod $mods/torture.ko || say "insmod torture failed"
for t in $types; do
    say "locktorture $t"
    # no periodic stats, shuffling, stuttering, CPU hotplug or shutdown: the
    # writers and readers only lock and unlock until rmmod
    if td_insmod $mods/locktorture.ko torture_type=$t nwriters_stress=2 nreaders_stress=2 \
            stat_interval=0 shuffle_interval=0 stutter=0 onoff_interval=0 shutdown_secs=0; then
        sleep "$secs"
        td_rmmod locktorture || say "rmmod locktorture failed ($t)"
    else
        say "insmod locktorture torture_type=$t failed"
    fi
done
td_rmmod torture
say end
