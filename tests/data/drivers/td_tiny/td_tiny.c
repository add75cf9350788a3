// SPDX-License-Identifier: GPL-2.0
/*
 * td_tiny - test-only module: a few lock, allocation and sleep events, no bug.
 *
 * Used to record the small binary-trace fixture of tracedep's decoder tests
 * (tests/data/traces/tiny/) and as the cheap module of the fault tests.
 */
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

static DEFINE_SPINLOCK(td_tiny_lock);
static DEFINE_MUTEX(td_tiny_mutex);
static void *td_tiny_objs[4];

static noinline void td_tiny_fill(int i)
{
	void *p = kmalloc(64 + i, GFP_ATOMIC);

	spin_lock(&td_tiny_lock);
	td_tiny_objs[i] = p;
	spin_unlock(&td_tiny_lock);
}

static int __init td_tiny_init(void)
{
	int i;

	mutex_lock(&td_tiny_mutex);
	for (i = 0; i < ARRAY_SIZE(td_tiny_objs); i++)
		td_tiny_fill(i);
	mutex_unlock(&td_tiny_mutex);
	msleep(1);
	return 0;
}

static void __exit td_tiny_exit(void)
{
	int i;

	mutex_lock(&td_tiny_mutex);
	for (i = 0; i < ARRAY_SIZE(td_tiny_objs); i++)
		kfree(td_tiny_objs[i]);
	mutex_unlock(&td_tiny_mutex);
}

module_init(td_tiny_init);
module_exit(td_tiny_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep test module: a few clean lock/alloc/sleep events");
