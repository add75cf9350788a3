// SPDX-License-Identifier: GPL-2.0
/*
 * td_alloc_spin_bug - tracedep example driver with one planted bug.
 *
 * A toy event ring: the device's probe routine (run from a work item, as an
 * asynchronously probed driver's would be) appends a few entries to a list
 * protected by a spinlock in the device structure.
 *
 * PLANTED BUG (sleep-in-atomic): td_ring_add_entry() allocates the new entry
 * with kmalloc(GFP_KERNEL) while holding ring->lock.  GFP_KERNEL may enter
 * direct reclaim and sleep.  In this scenario it never does (the guest has
 * plenty of free memory and the object is small), so nothing hangs, and the
 * kernel's own check only fires with CONFIG_DEBUG_ATOMIC_SLEEP.
 *
 * Clean twin: td_alloc_spin_clean (GFP_ATOMIC under the lock).
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
#define TD_PROBE_TIMEOUT_MS	5000

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
};

static struct td_ring *td_ring;
static int td_ring_probe_err;
static DECLARE_COMPLETION(td_ring_probed);

static int td_ring_add_entry(struct td_ring *ring, u32 len)
{
	struct td_ring_entry *e;

	spin_lock(&ring->lock);
	/* BUG: GFP_KERNEL may sleep, but ring->lock is a spinlock. */
	e = kmalloc(sizeof(*e), GFP_KERNEL);
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

static int td_ring_probe(void)
{
	struct td_ring *ring;
	int i, err = 0;

	ring = kzalloc(sizeof(*ring), GFP_KERNEL);
	if (!ring)
		return -ENOMEM;
	spin_lock_init(&ring->lock);
	INIT_LIST_HEAD(&ring->entries);

	for (i = 0; i < TD_RING_ROUNDS && !err; i++)
		err = td_ring_add_entry(ring, 64u << i);
	if (err) {
		td_ring_purge(ring);
		kfree(ring);
		return err;
	}

	td_ring = ring;
	return 0;
}

static void td_ring_remove(void)
{
	td_ring_purge(td_ring);
	kfree(td_ring);
}

/* Probe asynchronously, from a work item. */
static void td_ring_probe_work_fn(struct work_struct *work)
{
	td_ring_probe_err = td_ring_probe();
	complete(&td_ring_probed);
}
static DECLARE_WORK(td_ring_probe_work, td_ring_probe_work_fn);

static int __init td_alloc_spin_bug_init(void)
{
	schedule_work(&td_ring_probe_work);
	if (!wait_for_completion_timeout(&td_ring_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_ring_probe_work);
	if (td_ring_probe_err)
		return td_ring_probe_err;

	pr_info("scenario complete: %u entries\n", td_ring->nr_entries);
	return 0;
}

static void __exit td_alloc_spin_bug_exit(void)
{
	td_ring_remove();
}

module_init(td_alloc_spin_bug_init);
module_exit(td_alloc_spin_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: GFP_KERNEL allocation under a spinlock (planted bug)");
