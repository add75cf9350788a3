// SPDX-License-Identifier: GPL-2.0
/*
 * td_initfail - test-only module: its init fails, as a driver's probe does when
 * its device is missing.  The module is loaded and freed again; tracedep's
 * report must say that its code was not exercised rather than call it clean.
 */
#include <linux/errno.h>
#include <linux/module.h>
#include <linux/spinlock.h>

static DEFINE_SPINLOCK(td_initfail_lock);
static int td_initfail_probed;

static int __init td_initfail_init(void)
{
	spin_lock(&td_initfail_lock);
	td_initfail_probed++;
	spin_unlock(&td_initfail_lock);
	pr_info("td_initfail: no device, giving up\n");
	return -ENODEV;
}

module_init(td_initfail_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep test module: init fails with -ENODEV");
