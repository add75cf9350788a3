// SPDX-License-Identifier: GPL-2.0
/*
 * td_alloc_spin_clean - tracedep example driver, clean twin of td_alloc_spin_bug.
 *
 * A toy event ring: a work item appends a few entries to a list that is
 * protected by a spinlock in the device structure.
 *
 * Same work as td_alloc_spin_bug, done correctly: the allocation under
 * ring->lock uses GFP_ATOMIC, which never sleeps.  Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_RING_ROUNDS		4
#define TD_RING_TIMEOUT_MS	5000

struct td_ring_entry {
	struct list_head node;
	u32 seq;
	u32 len;
};

struct td_ring {
	spinlock_t lock;		/* protects entries, nr_entries, next_seq */
	struct list_head entries;
	unsigned int nr_entries;
	u32 next_seq;

	struct work_struct fill_work;
	struct completion fill_done;
	int fill_err;
};

static struct td_ring *td_ring;

static int td_ring_add_entry(struct td_ring *ring, u32 len)
{
	struct td_ring_entry *e;

	spin_lock(&ring->lock);
	/* Atomic context: this allocation must not sleep. */
	e = kmalloc(sizeof(*e), GFP_ATOMIC);
	if (!e) {
		spin_unlock(&ring->lock);
		return -ENOMEM;
	}
	e->seq = ring->next_seq++;
	e->len = len;
	list_add_tail(&e->node, &ring->entries);
	ring->nr_entries++;
	spin_unlock(&ring->lock);

	return 0;
}

static void td_ring_fill_work(struct work_struct *work)
{
	struct td_ring *ring = container_of(work, struct td_ring, fill_work);
	int i, err = 0;

	for (i = 0; i < TD_RING_ROUNDS && !err; i++)
		err = td_ring_add_entry(ring, 64u << i);

	ring->fill_err = err;
	complete(&ring->fill_done);
}

static void td_ring_purge(struct td_ring *ring)
{
	struct td_ring_entry *e, *tmp;
	LIST_HEAD(purge);

	spin_lock(&ring->lock);
	list_splice_init(&ring->entries, &purge);
	ring->nr_entries = 0;
	spin_unlock(&ring->lock);

	list_for_each_entry_safe(e, tmp, &purge, node) {
		list_del(&e->node);
		kfree(e);
	}
}

static int __init td_alloc_spin_clean_init(void)
{
	struct td_ring *ring;
	unsigned int nr;

	ring = kzalloc(sizeof(*ring), GFP_KERNEL);
	if (!ring)
		return -ENOMEM;
	spin_lock_init(&ring->lock);
	INIT_LIST_HEAD(&ring->entries);
	INIT_WORK(&ring->fill_work, td_ring_fill_work);
	init_completion(&ring->fill_done);

	schedule_work(&ring->fill_work);
	if (!wait_for_completion_timeout(&ring->fill_done,
					 msecs_to_jiffies(TD_RING_TIMEOUT_MS))) {
		pr_err("fill work did not finish\n");
		cancel_work_sync(&ring->fill_work);
		td_ring_purge(ring);
		kfree(ring);
		return -ETIMEDOUT;
	}
	flush_work(&ring->fill_work);

	spin_lock(&ring->lock);
	nr = ring->nr_entries;
	spin_unlock(&ring->lock);

	td_ring = ring;
	pr_info("scenario complete: %u entries, err=%d\n", nr, ring->fill_err);
	return 0;
}

static void __exit td_alloc_spin_clean_exit(void)
{
	cancel_work_sync(&td_ring->fill_work);
	td_ring_purge(td_ring);
	kfree(td_ring);
}

module_init(td_alloc_spin_clean_init);
module_exit(td_alloc_spin_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: GFP_ATOMIC allocation under a spinlock (clean twin)");
