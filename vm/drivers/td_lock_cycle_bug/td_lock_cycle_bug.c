// SPDX-License-Identifier: GPL-2.0
/*
 * td_lock_cycle_bug - tracedep example driver with one planted bug.
 *
 * A toy bus driver with three static mutexes: td_bus_mutex (bus topology),
 * td_port_mutex (per-port state) and td_fw_mutex (firmware image).  The probe
 * routine (run from a work item) rescans the bus, loads port firmware and
 * runs firmware recovery, a few times.
 *
 * PLANTED BUG (lock-order-inversion, three-lock cycle):
 *   td_bus_rescan()          bus  -> port
 *   td_port_load_firmware()  port -> fw
 *   td_fw_recover()          fw   -> bus     <- closes the cycle
 * No two of these functions invert a pair directly; the deadlock needs three
 * tasks.  Here the functions run one after the other, so nothing hangs.
 *
 * Clean twin: td_lock_cycle_clean (td_fw_recover() takes bus before fw).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#define TD_BUS_NR_PORTS		4
#define TD_BUS_ROUNDS		3
#define TD_PROBE_TIMEOUT_MS	5000

static DEFINE_MUTEX(td_bus_mutex);	/* A: bus topology */
static DEFINE_MUTEX(td_port_mutex);	/* B: port state */
static DEFINE_MUTEX(td_fw_mutex);	/* C: firmware image */

struct td_port {
	bool present;
	u32 fw_version;
};

struct td_bus {
	struct td_port ports[TD_BUS_NR_PORTS];
	unsigned int rescans;
	unsigned int recoveries;
	u32 fw_version;			/* protected by td_fw_mutex */
};

static struct td_bus *td_bus;
static int td_bus_probe_err;
static DECLARE_COMPLETION(td_bus_probed);

/* bus -> port */
static void td_bus_rescan(struct td_bus *bus)
{
	int i;

	mutex_lock(&td_bus_mutex);
	bus->rescans++;
	mutex_lock(&td_port_mutex);
	for (i = 0; i < TD_BUS_NR_PORTS; i++)
		bus->ports[i].present = true;
	mutex_unlock(&td_port_mutex);
	mutex_unlock(&td_bus_mutex);
}

/* port -> fw */
static void td_port_load_firmware(struct td_bus *bus, int port)
{
	mutex_lock(&td_port_mutex);
	if (bus->ports[port].present) {
		mutex_lock(&td_fw_mutex);
		bus->ports[port].fw_version = bus->fw_version;
		mutex_unlock(&td_fw_mutex);
	}
	mutex_unlock(&td_port_mutex);
}

/* Roll the firmware forward and re-enumerate. */
static void td_fw_recover(struct td_bus *bus)
{
	mutex_lock(&td_fw_mutex);
	bus->fw_version++;
	/* BUG: fw -> bus closes the cycle bus -> port -> fw -> bus. */
	mutex_lock(&td_bus_mutex);
	bus->recoveries++;
	mutex_unlock(&td_bus_mutex);
	mutex_unlock(&td_fw_mutex);
}

static int td_bus_probe(void)
{
	struct td_bus *bus;
	int i;

	bus = kzalloc(sizeof(*bus), GFP_KERNEL);
	if (!bus)
		return -ENOMEM;
	bus->fw_version = 0x100;

	for (i = 0; i < TD_BUS_ROUNDS; i++) {
		td_bus_rescan(bus);
		td_port_load_firmware(bus, i % TD_BUS_NR_PORTS);
		td_fw_recover(bus);
	}

	td_bus = bus;
	return 0;
}

static void td_bus_remove(void)
{
	kfree(td_bus);
}

/* Probe asynchronously, from a work item. */
static void td_bus_probe_work_fn(struct work_struct *work)
{
	td_bus_probe_err = td_bus_probe();
	complete(&td_bus_probed);
}
static DECLARE_WORK(td_bus_probe_work, td_bus_probe_work_fn);

static int __init td_lock_cycle_bug_init(void)
{
	schedule_work(&td_bus_probe_work);
	if (!wait_for_completion_timeout(&td_bus_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_bus_probe_work);
	if (td_bus_probe_err)
		return td_bus_probe_err;

	pr_info("scenario complete: %u rescans, %u recoveries, fw %#x\n",
		td_bus->rescans, td_bus->recoveries, td_bus->fw_version);
	return 0;
}

static void __exit td_lock_cycle_bug_exit(void)
{
	td_bus_remove();
}

module_init(td_lock_cycle_bug_init);
module_exit(td_lock_cycle_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: three-mutex lock-order cycle (planted bug)");
