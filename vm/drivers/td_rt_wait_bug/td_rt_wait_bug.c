// SPDX-License-Identifier: GPL-2.0
/*
 * td_rt_wait_bug - tracedep example driver with two planted bugs that only
 * break on PREEMPT_RT.
 *
 * A toy DMA engine: a submit path records statistics under a global raw
 * spinlock and queues a descriptor on the device's request queue; the
 * hardware path programs a descriptor ring under the device's raw spinlock.
 *
 * PLANTED BUG 1 (invalid-wait-context): td_rt_account() takes the device's
 * queue_lock, a spinlock_t, while holding td_rt_stats_lock, a raw_spinlock_t
 * (static).  On PREEMPT_RT a spinlock_t is a sleeping lock (rt_mutex) and a
 * raw_spinlock_t still disables preemption: lockdep says "BUG: Invalid wait
 * context" (CONFIG_PROVE_RAW_LOCK_NESTING).
 *
 * PLANTED BUG 2 (invalid-wait-context): td_rt_hw_submit() allocates a
 * descriptor with kmalloc(GFP_ATOMIC) while holding dev->hw_lock, a
 * raw_spinlock_t in a heap object.  On PREEMPT_RT the slab allocator takes
 * sleeping locks: no allocation, not even GFP_ATOMIC, under a raw spinlock.
 *
 * On a kernel without PREEMPT_RT both are fine: spin_lock() and
 * raw_spin_lock() are the same function there, and GFP_ATOMIC never sleeps.
 *
 * Clean twin: td_rt_wait_clean (the raw spinlocks innermost, the
 * allocation before the raw spinlock is taken).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#define TD_RT_ROUNDS	4

struct td_rt_desc {
	struct list_head node;
	u32 seq;
	u32 len;
};

struct td_rt_dev {
	raw_spinlock_t hw_lock;		/* protects ring, hw_seq */
	spinlock_t queue_lock;		/* protects queue, queued */
	struct list_head ring;
	struct list_head queue;
	unsigned int queued;
	u32 hw_seq;
};

static DEFINE_RAW_SPINLOCK(td_rt_stats_lock);	/* protects td_rt_submitted */
static unsigned long td_rt_submitted;
static struct td_rt_dev *td_rt_dev;

static noinline void td_rt_account(struct td_rt_dev *dev, struct td_rt_desc *d)
{
	raw_spin_lock(&td_rt_stats_lock);
	td_rt_submitted++;
	/* BUG (PREEMPT_RT): a spinlock_t inside a raw_spinlock_t. */
	spin_lock(&dev->queue_lock);
	list_add_tail(&d->node, &dev->queue);
	dev->queued++;
	spin_unlock(&dev->queue_lock);
	raw_spin_unlock(&td_rt_stats_lock);
}

static noinline int td_rt_hw_submit(struct td_rt_dev *dev, u32 len)
{
	struct td_rt_desc *d;
	unsigned long flags;

	raw_spin_lock_irqsave(&dev->hw_lock, flags);
	/* BUG (PREEMPT_RT): no allocation under a raw spinlock, even GFP_ATOMIC. */
	d = kmalloc(sizeof(*d), GFP_ATOMIC);
	if (!d) {
		raw_spin_unlock_irqrestore(&dev->hw_lock, flags);
		return -ENOMEM;
	}
	d->seq = dev->hw_seq++;
	d->len = len;
	raw_spin_unlock_irqrestore(&dev->hw_lock, flags);

	td_rt_account(dev, d);
	return 0;
}

static void td_rt_purge(struct td_rt_dev *dev)
{
	struct td_rt_desc *d, *tmp;
	LIST_HEAD(purge);

	spin_lock(&dev->queue_lock);
	list_splice_init(&dev->queue, &purge);
	dev->queued = 0;
	spin_unlock(&dev->queue_lock);

	list_for_each_entry_safe(d, tmp, &purge, node) {
		list_del(&d->node);
		kfree(d);
	}
}

static int __init td_rt_wait_bug_init(void)
{
	struct td_rt_dev *dev;
	int i, err = 0;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	raw_spin_lock_init(&dev->hw_lock);
	spin_lock_init(&dev->queue_lock);
	INIT_LIST_HEAD(&dev->ring);
	INIT_LIST_HEAD(&dev->queue);

	for (i = 0; i < TD_RT_ROUNDS && !err; i++)
		err = td_rt_hw_submit(dev, 64u << i);
	if (err) {
		td_rt_purge(dev);
		kfree(dev);
		return err;
	}
	td_rt_dev = dev;
	pr_info("scenario complete: %u descriptors\n", dev->queued);
	return 0;
}

static void __exit td_rt_wait_bug_exit(void)
{
	td_rt_purge(td_rt_dev);
	kfree(td_rt_dev);
}

module_init(td_rt_wait_bug_init);
module_exit(td_rt_wait_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: spinlock_t and GFP_ATOMIC under a raw_spinlock_t (planted bugs, PREEMPT_RT only)");
