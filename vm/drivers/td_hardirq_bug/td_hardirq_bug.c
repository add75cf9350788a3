// SPDX-License-Identifier: GPL-2.0
/*
 * td_hardirq_bug - tracedep example driver with one planted bug.
 *
 * A toy sampler: an hrtimer started in HRTIMER_MODE_REL_HARD (its callback
 * runs in hardirq context, standing in for a device interrupt handler)
 * accumulates samples under s->lock; process context reads them back.  The
 * probe routine (run from a work item) does a few rounds of "fire the
 * sampler once, then read".
 *
 * PLANTED BUG (irq-lock-inversion, hardirq; lockdep's "inconsistent
 * {IN-HARDIRQ-W} -> {HARDIRQ-ON-W} usage"): td_sampler_read() takes s->lock
 * with plain spin_lock(), interrupts enabled.  If the hrtimer fires on the
 * same CPU while it holds the lock, the callback spins on it for ever.  Here
 * every round waits for the callback and cancels the timer (hrtimer_cancel)
 * before reading, so nothing hangs.
 *
 * Clean twin: td_hardirq_clean (spin_lock_irqsave() in process context).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/hrtimer.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_SAMPLER_ROUNDS	4
#define TD_SAMPLER_PERIOD_NS	(200 * NSEC_PER_USEC)
#define TD_SAMPLER_TIMEOUT_MS	2000
#define TD_PROBE_TIMEOUT_MS	5000

struct td_sampler {
	spinlock_t lock;		/* protects sum, nr; taken in hardirq */
	u64 sum;
	u32 nr;
	u64 read_sum;			/* last values read by process context */
	u32 read_nr;

	struct hrtimer timer;
	struct completion fired;
};

static struct td_sampler *td_sampler;
static int td_sampler_probe_err;
static DECLARE_COMPLETION(td_sampler_probed);

static enum hrtimer_restart td_sampler_hrtimer_fn(struct hrtimer *t)
{
	struct td_sampler *s = container_of(t, struct td_sampler, timer);
	u64 now = ktime_get_ns();

	spin_lock(&s->lock);
	s->sum += now & 0xfff;
	s->nr++;
	spin_unlock(&s->lock);

	complete(&s->fired);
	return HRTIMER_NORESTART;
}

static u32 td_sampler_read(struct td_sampler *s, u64 *sum)
{
	u32 nr;

	/* BUG: s->lock is taken in hardirq; interrupts must be off here. */
	spin_lock(&s->lock);
	*sum = s->sum;
	nr = s->nr;
	spin_unlock(&s->lock);

	return nr;
}

static int td_sampler_probe(void)
{
	struct td_sampler *s;
	int i;

	s = kzalloc(sizeof(*s), GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	spin_lock_init(&s->lock);
	init_completion(&s->fired);
	hrtimer_init(&s->timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL_HARD);
	s->timer.function = td_sampler_hrtimer_fn;

	for (i = 0; i < TD_SAMPLER_ROUNDS; i++) {
		hrtimer_start(&s->timer, ns_to_ktime(TD_SAMPLER_PERIOD_NS),
			      HRTIMER_MODE_REL_HARD);
		if (!wait_for_completion_timeout(&s->fired,
						 msecs_to_jiffies(TD_SAMPLER_TIMEOUT_MS))) {
			pr_err("sampler hrtimer did not fire\n");
			hrtimer_cancel(&s->timer);
			kfree(s);
			return -ETIMEDOUT;
		}
		/* The callback may still be returning: wait for it. */
		hrtimer_cancel(&s->timer);
		s->read_nr = td_sampler_read(s, &s->read_sum);
	}

	td_sampler = s;
	return 0;
}

static void td_sampler_remove(void)
{
	hrtimer_cancel(&td_sampler->timer);
	kfree(td_sampler);
}

/* Probe asynchronously, from a work item. */
static void td_sampler_probe_work_fn(struct work_struct *work)
{
	td_sampler_probe_err = td_sampler_probe();
	complete(&td_sampler_probed);
}
static DECLARE_WORK(td_sampler_probe_work, td_sampler_probe_work_fn);

static int __init td_hardirq_bug_init(void)
{
	schedule_work(&td_sampler_probe_work);
	if (!wait_for_completion_timeout(&td_sampler_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_sampler_probe_work);
	if (td_sampler_probe_err)
		return td_sampler_probe_err;

	pr_info("scenario complete: %u samples, sum %llu\n",
		td_sampler->read_nr, td_sampler->read_sum);
	return 0;
}

static void __exit td_hardirq_bug_exit(void)
{
	td_sampler_remove();
}

module_init(td_hardirq_bug_init);
module_exit(td_hardirq_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: hardirq-safe lock taken with interrupts enabled (planted bug)");
