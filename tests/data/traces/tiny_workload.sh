# The workload of the tiny/ fixture: load td_tiny, let it settle, unload it.
# Plain insmod/rmmod on purpose: the guest must still report the module.
insmod /lib/modules/tracedep/td_tiny.ko
sleep 0.2
rmmod td_tiny
