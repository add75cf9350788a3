// SPDX-License-Identifier: GPL-2.0
/*
 * td_rwlock_read_clean - tracedep example driver, clean twin of td_rwlock_write_bug.
 *
 * A toy neighbour cache with two static rwlocks: td_route_lock (route table)
 * and td_neigh_lock (neighbour table).  A garbage-collection timer (timer_list,
 * softirq context) alternates between two read-side paths:
 *   td_route_lookup()  read_lock(route) -> read_lock(neigh)
 *   td_neigh_sync()    read_lock(neigh) -> read_lock(route)
 * and process context (the probe routine, run from a work item) then flushes
 * the route table with write_lock_bh().
 *
 * NOT A BUG: the two nestings are opposite, but both are read-read and run
 * in softirq context, where rwlock readers are recursive (a reader in
 * interrupt context only waits for a writer that *holds* the lock, never for
 * one that is merely queued), so no cycle can block.  lockdep agrees: in
 * interrupt context read_lock() is a recursive read, and a cycle made only
 * of read->read edges is not reported.  Expected findings: none.
 *
 * Beware: the same opposite read-read nesting in *process* context is a
 * real deadlock on queued-rwlock kernels once a writer queues on either
 * lock (process-context readers wait behind queued writers), and lockdep
 * reports it there: since Linux kernel commit e918188611f0 ("locking: More
 * accurate annotations for read_lock()") (in v5.10), read_lock() is a
 * recursive read only when in_interrupt().
 *
 * Bug twin: td_rwlock_write_bug (td_neigh_sync() takes both write locks).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/workqueue.h>

#define TD_NBR_SLOTS		4
#define TD_NBR_TICKS		6	/* alternate the two paths, 3 times each */
#define TD_NBR_TIMEOUT_MS	2000
#define TD_PROBE_TIMEOUT_MS	5000

static DEFINE_RWLOCK(td_route_lock);	/* R1: protects td_nbr_cache.routes */
static DEFINE_RWLOCK(td_neigh_lock);	/* R2: protects td_nbr_cache.neigh */

struct td_nbr_cache {
	u32 routes[TD_NBR_SLOTS];	/* route slot -> neighbour index */
	u32 neigh[TD_NBR_SLOTS];	/* neighbour index -> hw address */
	unsigned int ticks;		/* only touched by the timer */
	u64 hits;			/* only touched by the timer */
	unsigned int stale;		/* only touched by the timer */

	struct timer_list gc_timer;
	struct completion gc_done;
};

static struct td_nbr_cache *td_nbr_cache;
static int td_nbr_probe_err;
static DECLARE_COMPLETION(td_nbr_probed);

/* route -> neigh */
static u32 td_route_lookup(struct td_nbr_cache *nc, u32 dst)
{
	u32 hw;

	read_lock(&td_route_lock);
	read_lock(&td_neigh_lock);
	hw = nc->neigh[nc->routes[dst % TD_NBR_SLOTS] % TD_NBR_SLOTS];
	read_unlock(&td_neigh_lock);
	read_unlock(&td_route_lock);

	return hw;
}

/* Check that every neighbour is still routed; returns the stale count. */
static unsigned int td_neigh_sync(struct td_nbr_cache *nc)
{
	unsigned int i, j, stale = 0;

	/* neigh -> route: opposite to td_route_lookup(), but read-read. */
	read_lock(&td_neigh_lock);
	read_lock(&td_route_lock);
	for (i = 0; i < TD_NBR_SLOTS; i++) {
		for (j = 0; j < TD_NBR_SLOTS; j++)
			if (nc->routes[j] == i)
				break;
		if (j == TD_NBR_SLOTS && nc->neigh[i])
			stale++;
	}
	read_unlock(&td_route_lock);
	read_unlock(&td_neigh_lock);

	return stale;
}

static void td_nbr_gc_timer_fn(struct timer_list *t)
{
	struct td_nbr_cache *nc = from_timer(nc, t, gc_timer);

	if (nc->ticks & 1)
		nc->stale += td_neigh_sync(nc);
	else
		nc->hits += td_route_lookup(nc, nc->ticks) != 0;

	if (++nc->ticks < TD_NBR_TICKS)
		mod_timer(&nc->gc_timer, jiffies + 1);
	else
		complete(&nc->gc_done);
}

/* Process context: point every route at neighbour 0. */
static void td_route_flush(struct td_nbr_cache *nc)
{
	int i;

	write_lock_bh(&td_route_lock);
	for (i = 0; i < TD_NBR_SLOTS; i++)
		nc->routes[i] = 0;
	write_unlock_bh(&td_route_lock);
}

static int td_nbr_probe(void)
{
	struct td_nbr_cache *nc;
	int i;

	nc = kzalloc(sizeof(*nc), GFP_KERNEL);
	if (!nc)
		return -ENOMEM;
	for (i = 0; i < TD_NBR_SLOTS; i++) {
		nc->routes[i] = i;
		nc->neigh[i] = 0x5e0000 + i;
	}
	timer_setup(&nc->gc_timer, td_nbr_gc_timer_fn, 0);
	init_completion(&nc->gc_done);

	mod_timer(&nc->gc_timer, jiffies + 1);
	if (!wait_for_completion_timeout(&nc->gc_done,
					 msecs_to_jiffies(TD_NBR_TIMEOUT_MS))) {
		pr_err("gc timer did not finish\n");
		timer_shutdown_sync(&nc->gc_timer);
		kfree(nc);
		return -ETIMEDOUT;
	}
	timer_delete_sync(&nc->gc_timer);
	td_route_flush(nc);

	td_nbr_cache = nc;
	return 0;
}

static void td_nbr_remove(void)
{
	timer_shutdown_sync(&td_nbr_cache->gc_timer);
	kfree(td_nbr_cache);
}

/* Probe asynchronously, from a work item. */
static void td_nbr_probe_work_fn(struct work_struct *work)
{
	td_nbr_probe_err = td_nbr_probe();
	complete(&td_nbr_probed);
}
static DECLARE_WORK(td_nbr_probe_work, td_nbr_probe_work_fn);

static int __init td_rwlock_read_clean_init(void)
{
	schedule_work(&td_nbr_probe_work);
	if (!wait_for_completion_timeout(&td_nbr_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_nbr_probe_work);
	if (td_nbr_probe_err)
		return td_nbr_probe_err;

	pr_info("scenario complete: %u gc ticks, %llu hits, %u stale\n",
		td_nbr_cache->ticks, td_nbr_cache->hits, td_nbr_cache->stale);
	return 0;
}

static void __exit td_rwlock_read_clean_exit(void)
{
	td_nbr_remove();
}

module_init(td_rwlock_read_clean_init);
module_exit(td_rwlock_read_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: opposite read-read rwlock nesting in softirq, not a bug (clean)");
