// SPDX-License-Identifier: GPL-2.0
/*
 * td_initfail_bug - test-only module: a planted sleep-in-atomic bug in an init
 * that then fails, as a driver's probe does when its device is missing.  The
 * module is freed before its load returns, so /sys/module never shows its
 * sections: the finding must still be this module's, symbolized to this file
 * (tracer/module_sections.py).  Its twin is td_initfail (takes its spinlock in
 * a failing init, sleeps nowhere).
 */
#include <linux/errno.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>

static DEFINE_SPINLOCK(td_initfail_bug_lock);
static DEFINE_MUTEX(td_initfail_bug_cfg);
static int td_initfail_bug_probed;

/* out of line and in .text, not .init.text: both kinds of section must be known */
static noinline void td_initfail_bug_read_config(void)
{
	/* BUG: mutex_lock() may sleep, and td_initfail_bug_lock is held. */
	mutex_lock(&td_initfail_bug_cfg);
	td_initfail_bug_probed++;
	mutex_unlock(&td_initfail_bug_cfg);
}

static int __init td_initfail_bug_init(void)
{
	spin_lock(&td_initfail_bug_lock);
	td_initfail_bug_read_config();
	spin_unlock(&td_initfail_bug_lock);
	pr_info("td_initfail_bug: no device, giving up\n");
	return -ENODEV;
}

module_init(td_initfail_bug_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep test module: sleep-in-atomic in an init that fails");
