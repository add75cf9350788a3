# tracedep default workload: load each module under test, let it run, unload it.
# Runs inside the guest's init, which provides td_insmod/td_rmmod and $TD_SETTLE.
for ko in /lib/modules/tracedep/*.ko; do
    [ -e "$ko" ] || continue
    name=${ko##*/}
    name=${name%.ko}
    name=${name//-/_}
    td_insmod "$ko" || echo "tracedep: insmod $name failed" > /dev/console
    sleep "$TD_SETTLE"
    td_rmmod "$name" 2>/dev/null
done
