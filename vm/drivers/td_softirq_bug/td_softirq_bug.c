// SPDX-License-Identifier: GPL-2.0
/*
 * td_softirq_bug - tracedep example driver with one planted bug.
 *
 * A toy polled sensor: a timer_list callback (softirq context) samples the
 * "hardware" into counters protected by pd->lock; process context reads the
 * counters back.  The probe routine (run from a work item) does a few rounds
 * of "let the poll timer fire once, then read the statistics".
 *
 * PLANTED BUG (irq-lock-inversion, softirq; lockdep's "inconsistent
 * {IN-SOFTIRQ-W} -> {SOFTIRQ-ON-W} usage"): td_poll_read_stats() takes
 * pd->lock with plain spin_lock(), softirqs enabled.  If the poll timer
 * fires on the same CPU while it holds the lock, the timer spins on it for
 * ever.  Here every round waits for the timer to finish and deletes it
 * (timer_delete_sync) before reading, so nothing hangs.
 *
 * Clean twin: td_softirq_clean (spin_lock_bh() in process context).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/workqueue.h>

#define TD_POLL_ROUNDS		4
#define TD_POLL_TIMEOUT_MS	2000
#define TD_PROBE_TIMEOUT_MS	5000

struct td_poll_stats {
	u64 samples;
	u32 last;
	u32 max;
};

struct td_poll_dev {
	spinlock_t lock;		/* protects stats; taken in softirq */
	struct td_poll_stats stats;
	u32 fake_reg;			/* stands in for a device register */
	struct td_poll_stats snap;	/* last value read by process context */

	struct timer_list poll_timer;
	struct completion polled;
};

static struct td_poll_dev *td_poll_dev;
static int td_poll_probe_err;
static DECLARE_COMPLETION(td_poll_probed);

static void td_poll_timer_fn(struct timer_list *t)
{
	struct td_poll_dev *pd = from_timer(pd, t, poll_timer);
	u32 val = READ_ONCE(pd->fake_reg) * 7 + 3;

	WRITE_ONCE(pd->fake_reg, val);

	spin_lock(&pd->lock);
	pd->stats.samples++;
	pd->stats.last = val & 0xffff;
	if (pd->stats.last > pd->stats.max)
		pd->stats.max = pd->stats.last;
	spin_unlock(&pd->lock);

	complete(&pd->polled);
}

static void td_poll_read_stats(struct td_poll_dev *pd, struct td_poll_stats *out)
{
	/* BUG: pd->lock is taken in softirq; softirqs must be off here. */
	spin_lock(&pd->lock);
	*out = pd->stats;
	spin_unlock(&pd->lock);
}

static int td_poll_probe(void)
{
	struct td_poll_dev *pd;
	int i;

	pd = kzalloc(sizeof(*pd), GFP_KERNEL);
	if (!pd)
		return -ENOMEM;
	spin_lock_init(&pd->lock);
	pd->fake_reg = 1;
	timer_setup(&pd->poll_timer, td_poll_timer_fn, 0);
	init_completion(&pd->polled);

	for (i = 0; i < TD_POLL_ROUNDS; i++) {
		mod_timer(&pd->poll_timer, jiffies + 1);
		if (!wait_for_completion_timeout(&pd->polled,
						 msecs_to_jiffies(TD_POLL_TIMEOUT_MS))) {
			pr_err("poll timer did not fire\n");
			timer_shutdown_sync(&pd->poll_timer);
			kfree(pd);
			return -ETIMEDOUT;
		}
		/* The callback may still be returning: wait for it. */
		timer_delete_sync(&pd->poll_timer);
		td_poll_read_stats(pd, &pd->snap);
	}

	td_poll_dev = pd;
	return 0;
}

static void td_poll_remove(void)
{
	timer_shutdown_sync(&td_poll_dev->poll_timer);
	kfree(td_poll_dev);
}

/* Probe asynchronously, from a work item. */
static void td_poll_probe_work_fn(struct work_struct *work)
{
	td_poll_probe_err = td_poll_probe();
	complete(&td_poll_probed);
}
static DECLARE_WORK(td_poll_probe_work, td_poll_probe_work_fn);

static int __init td_softirq_bug_init(void)
{
	schedule_work(&td_poll_probe_work);
	if (!wait_for_completion_timeout(&td_poll_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_poll_probe_work);
	if (td_poll_probe_err)
		return td_poll_probe_err;

	pr_info("scenario complete: %llu samples, max %u\n",
		td_poll_dev->snap.samples, td_poll_dev->snap.max);
	return 0;
}

static void __exit td_softirq_bug_exit(void)
{
	td_poll_remove();
}

module_init(td_softirq_bug_init);
module_exit(td_softirq_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: softirq-safe lock taken with softirqs enabled (planted bug)");
