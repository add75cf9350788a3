# tracedep default workload: load every module under test, let them run, unload them.
# Runs inside the guest's init, which provides td_insmod/td_rmmod and $TD_SETTLE.
# All are loaded before any is unloaded, so no two share an address during the run.
loaded=""
for ko in /lib/modules/tracedep/*.ko; do
    [ -e "$ko" ] || continue
    name=${ko##*/}
    name=${name%.ko}
    name=${name//-/_}
    if td_insmod "$ko"; then
        loaded="$name $loaded"
    else
        echo "tracedep: insmod $name failed" > /dev/console
    fi
done
sleep "$TD_SETTLE"
for name in $loaded; do
    td_rmmod "$name" 2>/dev/null
done
