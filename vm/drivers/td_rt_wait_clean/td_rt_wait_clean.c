// SPDX-License-Identifier: GPL-2.0
/*
 * td_rt_wait_clean - clean twin of td_rt_wait_bug.
 *
 * The same toy DMA engine, nested the way PREEMPT_RT allows: a raw spinlock
 * is only ever the innermost lock.  td_rt_clean_account() takes the static
 * raw_spinlock_t td_rt_clean_stats_lock inside the device's spinlock_t
 * queue_lock; td_rt_clean_hw_submit() allocates its descriptor (GFP_ATOMIC,
 * under the spinlock_t td_rt_clean_submit_lock, which is fine on RT too:
 * a spinlock_t is a sleeping lock there) before taking dev->hw_lock, a
 * raw_spinlock_t in a heap object.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#define TD_RT_ROUNDS	4

struct td_rt_clean_desc {
	struct list_head node;
	u32 seq;
	u32 len;
};

struct td_rt_clean_dev {
	raw_spinlock_t hw_lock;		/* protects hw_seq */
	spinlock_t queue_lock;		/* protects queue, queued */
	struct list_head queue;
	unsigned int queued;
	u32 hw_seq;
};

static DEFINE_RAW_SPINLOCK(td_rt_clean_stats_lock);	/* protects td_rt_clean_submitted */
static DEFINE_SPINLOCK(td_rt_clean_submit_lock);	/* serializes submitters */
static unsigned long td_rt_clean_submitted;
static struct td_rt_clean_dev *td_rt_clean_dev;

static noinline void td_rt_clean_account(struct td_rt_clean_dev *dev,
					 struct td_rt_clean_desc *d)
{
	spin_lock(&dev->queue_lock);
	list_add_tail(&d->node, &dev->queue);
	dev->queued++;
	/* fine on PREEMPT_RT: the raw spinlock is the inner one */
	raw_spin_lock(&td_rt_clean_stats_lock);
	td_rt_clean_submitted++;
	raw_spin_unlock(&td_rt_clean_stats_lock);
	spin_unlock(&dev->queue_lock);
}

static noinline int td_rt_clean_hw_submit(struct td_rt_clean_dev *dev, u32 len)
{
	struct td_rt_clean_desc *d;
	unsigned long flags;

	spin_lock(&td_rt_clean_submit_lock);
	/* fine on PREEMPT_RT: allocated before the raw spinlock is taken */
	d = kmalloc(sizeof(*d), GFP_ATOMIC);
	if (!d) {
		spin_unlock(&td_rt_clean_submit_lock);
		return -ENOMEM;
	}
	d->len = len;
	raw_spin_lock_irqsave(&dev->hw_lock, flags);
	d->seq = dev->hw_seq++;
	raw_spin_unlock_irqrestore(&dev->hw_lock, flags);
	spin_unlock(&td_rt_clean_submit_lock);

	td_rt_clean_account(dev, d);
	return 0;
}

static void td_rt_clean_purge(struct td_rt_clean_dev *dev)
{
	struct td_rt_clean_desc *d, *tmp;
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

static int __init td_rt_wait_clean_init(void)
{
	struct td_rt_clean_dev *dev;
	int i, err = 0;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	raw_spin_lock_init(&dev->hw_lock);
	spin_lock_init(&dev->queue_lock);
	INIT_LIST_HEAD(&dev->queue);

	for (i = 0; i < TD_RT_ROUNDS && !err; i++)
		err = td_rt_clean_hw_submit(dev, 64u << i);
	if (err) {
		td_rt_clean_purge(dev);
		kfree(dev);
		return err;
	}
	td_rt_clean_dev = dev;
	pr_info("scenario complete: %u descriptors\n", dev->queued);
	return 0;
}

static void __exit td_rt_wait_clean_exit(void)
{
	td_rt_clean_purge(td_rt_clean_dev);
	kfree(td_rt_clean_dev);
}

module_init(td_rt_wait_clean_init);
module_exit(td_rt_wait_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: raw spinlocks innermost, allocation outside them (clean twin of td_rt_wait_bug)");
