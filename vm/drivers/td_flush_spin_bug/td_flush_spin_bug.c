// SPDX-License-Identifier: GPL-2.0
/*
 * td_flush_spin_bug - tracedep example driver with one planted bug.
 *
 * A toy network link: a status work item polls the link state under
 * lk->lock, and a reset path makes sure no status poll is in flight before
 * it resets the link.  The probe routine (run from a work item) does a few
 * rounds of "poll the status, wait for the poll, reset the link".
 *
 * PLANTED BUG (sleep-in-atomic, spinlock): td_link_reset() calls
 * flush_work(&lk->status_work) while holding lk->lock.  flush_work() may
 * sleep, and if the status work were running it would be waiting for
 * lk->lock itself: a deadlock.  Here the work item is always idle when
 * td_link_reset() runs (probe flushed it just before, outside the lock), so
 * flush_work() returns at once and nothing hangs.
 *
 * Clean twin: td_flush_spin_clean (flushes before taking the lock).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_LINK_ROUNDS		4
#define TD_PROBE_TIMEOUT_MS	5000

struct td_link {
	spinlock_t lock;		/* protects the fields below */
	bool up;
	unsigned int status_polls;
	unsigned int resets;
	u32 fake_status_reg;		/* stands in for a PHY register */

	struct work_struct status_work;
};

static struct td_link *td_link;
static int td_link_probe_err;
static DECLARE_COMPLETION(td_link_probed);

static void td_link_status_work(struct work_struct *work)
{
	struct td_link *lk = container_of(work, struct td_link, status_work);

	spin_lock(&lk->lock);
	lk->fake_status_reg ^= 0x4;
	lk->up = lk->fake_status_reg & 0x4;
	lk->status_polls++;
	spin_unlock(&lk->lock);
}

static void td_link_reset(struct td_link *lk)
{
	spin_lock(&lk->lock);
	/* BUG: flush_work() may sleep, but lk->lock is a spinlock. */
	flush_work(&lk->status_work);
	lk->up = false;
	lk->fake_status_reg = 0;
	lk->resets++;
	spin_unlock(&lk->lock);
}

static int td_link_probe(void)
{
	struct td_link *lk;
	int i;

	lk = kzalloc(sizeof(*lk), GFP_KERNEL);
	if (!lk)
		return -ENOMEM;
	spin_lock_init(&lk->lock);
	INIT_WORK(&lk->status_work, td_link_status_work);

	for (i = 0; i < TD_LINK_ROUNDS; i++) {
		schedule_work(&lk->status_work);
		/* Wait for the poll to finish: from here on the work is idle. */
		flush_work(&lk->status_work);
		td_link_reset(lk);
	}

	td_link = lk;
	return 0;
}

static void td_link_remove(void)
{
	cancel_work_sync(&td_link->status_work);
	kfree(td_link);
}

/* Probe asynchronously, from a work item. */
static void td_link_probe_work_fn(struct work_struct *work)
{
	td_link_probe_err = td_link_probe();
	complete(&td_link_probed);
}
static DECLARE_WORK(td_link_probe_work, td_link_probe_work_fn);

static int __init td_flush_spin_bug_init(void)
{
	schedule_work(&td_link_probe_work);
	if (!wait_for_completion_timeout(&td_link_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_link_probe_work);
	if (td_link_probe_err)
		return td_link_probe_err;

	pr_info("scenario complete: %u status polls, %u resets\n",
		td_link->status_polls, td_link->resets);
	return 0;
}

static void __exit td_flush_spin_bug_exit(void)
{
	td_link_remove();
}

module_init(td_flush_spin_bug_init);
module_exit(td_flush_spin_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: flush_work under a spinlock (planted bug)");
