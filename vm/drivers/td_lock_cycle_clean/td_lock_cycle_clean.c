// SPDX-License-Identifier: GPL-2.0
/*
 * td_lock_cycle_clean - tracedep example driver, clean twin of td_lock_cycle_bug.
 *
 * A toy bus driver with three static mutexes: td_bus_mutex (bus topology),
 * td_port_mutex (per-port state) and td_fw_mutex (firmware image).  A work
 * item rescans the bus, loads port firmware and runs firmware recovery, a few
 * times.
 *
 * Same work as td_lock_cycle_bug, done correctly: every path follows the
 * order bus -> port -> fw (td_fw_recover() takes bus before fw).
 * Expected findings: none.
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
#define TD_BUS_TIMEOUT_MS	5000

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

	struct work_struct maint_work;
	struct completion maint_done;
};

static struct td_bus *td_bus;

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
	/* bus -> fw, consistent with bus -> port -> fw. */
	mutex_lock(&td_bus_mutex);
	mutex_lock(&td_fw_mutex);
	bus->fw_version++;
	mutex_unlock(&td_fw_mutex);
	bus->recoveries++;
	mutex_unlock(&td_bus_mutex);
}

static void td_bus_maint_work(struct work_struct *work)
{
	struct td_bus *bus = container_of(work, struct td_bus, maint_work);
	int i;

	for (i = 0; i < TD_BUS_ROUNDS; i++) {
		td_bus_rescan(bus);
		td_port_load_firmware(bus, i % TD_BUS_NR_PORTS);
		td_fw_recover(bus);
	}
	complete(&bus->maint_done);
}

static int __init td_lock_cycle_clean_init(void)
{
	struct td_bus *bus;

	bus = kzalloc(sizeof(*bus), GFP_KERNEL);
	if (!bus)
		return -ENOMEM;
	bus->fw_version = 0x100;
	INIT_WORK(&bus->maint_work, td_bus_maint_work);
	init_completion(&bus->maint_done);

	schedule_work(&bus->maint_work);
	if (!wait_for_completion_timeout(&bus->maint_done,
					 msecs_to_jiffies(TD_BUS_TIMEOUT_MS))) {
		pr_err("maintenance work did not finish\n");
		cancel_work_sync(&bus->maint_work);
		kfree(bus);
		return -ETIMEDOUT;
	}
	flush_work(&bus->maint_work);

	td_bus = bus;
	pr_info("scenario complete: %u rescans, %u recoveries, fw %#x\n",
		bus->rescans, bus->recoveries, bus->fw_version);
	return 0;
}

static void __exit td_lock_cycle_clean_exit(void)
{
	cancel_work_sync(&td_bus->maint_work);
	kfree(td_bus);
}

module_init(td_lock_cycle_clean_init);
module_exit(td_lock_cycle_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: three mutexes in a consistent order (clean twin)");
