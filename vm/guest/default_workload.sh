# tracedep default workload: load every module under test, let them run, unload them.
# Runs inside the guest's init, which provides td_insmod/td_load_dep/td_rmmod and
# $TD_SETTLE.  /etc/tracedep/load_order (from the host) lists each module once,
# after what it depends on: "test NAME PATH" (under test: reported) or "dep NAME
# PATH" (a kernel module one of them needs).  All are loaded before any is
# unloaded, so no two share an address during the run.
loaded=""
while read -r role name ko; do
    [ -n "$ko" ] || continue
    # a dependency loaded already (at boot, or as another's) is not ours to unload
    [ "$role" = dep ] && [ -e /sys/module/$name/initstate ] && continue
    if [ "$role" = test ]; then
        td_insmod "$ko"
    else
        td_load_dep "$ko"
    fi
    rc=$?
    if [ $rc = 0 ]; then
        loaded="$name $loaded"
    else
        echo "tracedep: insmod $name failed (errno $rc)" > /dev/console
    fi
done < /etc/tracedep/load_order
sleep "$TD_SETTLE"
for name in $loaded; do
    td_rmmod "$name" 2>/dev/null
done
