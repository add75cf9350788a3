# tracedep benchmark workload: lock/allocation traffic as fast as the guest can.
# Loads bench/drivers/td_bench_load (one spinning kthread per CPU) for
# $TD_BENCH_SECONDS seconds (default 10), then unloads it.  The benchmarks
# prepend "TD_BENCH_SECONDS=N" to a copy of this file to change the length
# ("TD_BENCH_ATOMIC_SLEEP=1": every round also sleeps in atomic context, on purpose).
# Runs inside the guest's init, which provides td_insmod/td_rmmod.
S=${TD_BENCH_SECONDS:-10}
td_insmod /lib/modules/tracedep/td_bench_load.ko seconds="$S" atomic_sleep="${TD_BENCH_ATOMIC_SLEEP:-0}"
sleep "$S"
td_rmmod td_bench_load
# the module prints its round count on unload (loglevel hides it from the console)
dmesg | grep 'td_bench_load:' > /dev/console
