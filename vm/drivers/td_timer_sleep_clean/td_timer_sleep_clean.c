// SPDX-License-Identifier: GPL-2.0
/*
 * td_timer_sleep_clean - tracedep example driver, clean twin of td_timer_sleep_bug.
 *
 * A toy watchdog: a timer_list callback (softirq context) fires a few times
 * and logs an event record for each tick onto a list; process context drains
 * the list afterwards.  The probe routine runs from a work item.
 *
 * Same work as td_timer_sleep_bug, done correctly: td_wdog_log_event() runs
 * from the timer callback (softirq), so it allocates with GFP_ATOMIC.
 * Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/workqueue.h>

#define TD_WDOG_TICKS		4
#define TD_WDOG_TIMEOUT_MS	2000
#define TD_PROBE_TIMEOUT_MS	5000

struct td_wdog_event {
	struct list_head node;
	unsigned int tick;
	unsigned long stamp;		/* jiffies */
};

struct td_wdog {
	spinlock_t evt_lock;		/* protects events, nr_events; softirq */
	struct list_head events;
	unsigned int nr_events;
	unsigned int ticks;		/* only touched by the timer */
	unsigned int drained;

	struct timer_list timer;
	struct completion expired;
};

static struct td_wdog *td_wdog;
static int td_wdog_probe_err;
static DECLARE_COMPLETION(td_wdog_probed);

static void td_wdog_log_event(struct td_wdog *wd, unsigned int tick)
{
	struct td_wdog_event *ev;

	/* Called from a timer callback (softirq): must not sleep. */
	ev = kmalloc(sizeof(*ev), GFP_ATOMIC);
	if (!ev)
		return;
	ev->tick = tick;
	ev->stamp = jiffies;

	spin_lock(&wd->evt_lock);
	list_add_tail(&ev->node, &wd->events);
	wd->nr_events++;
	spin_unlock(&wd->evt_lock);
}

static void td_wdog_timer_fn(struct timer_list *t)
{
	struct td_wdog *wd = from_timer(wd, t, timer);

	td_wdog_log_event(wd, ++wd->ticks);
	if (wd->ticks < TD_WDOG_TICKS)
		mod_timer(&wd->timer, jiffies + 1);
	else
		complete(&wd->expired);
}

/* Free all logged events; returns how many there were. */
static unsigned int td_wdog_drain_events(struct td_wdog *wd)
{
	struct td_wdog_event *ev, *tmp;
	unsigned int n = 0;
	LIST_HEAD(drain);

	spin_lock_bh(&wd->evt_lock);
	list_splice_init(&wd->events, &drain);
	wd->nr_events = 0;
	spin_unlock_bh(&wd->evt_lock);

	list_for_each_entry_safe(ev, tmp, &drain, node) {
		list_del(&ev->node);
		kfree(ev);
		n++;
	}
	return n;
}

static int td_wdog_probe(void)
{
	struct td_wdog *wd;

	wd = kzalloc(sizeof(*wd), GFP_KERNEL);
	if (!wd)
		return -ENOMEM;
	spin_lock_init(&wd->evt_lock);
	INIT_LIST_HEAD(&wd->events);
	timer_setup(&wd->timer, td_wdog_timer_fn, 0);
	init_completion(&wd->expired);

	mod_timer(&wd->timer, jiffies + 1);
	if (!wait_for_completion_timeout(&wd->expired,
					 msecs_to_jiffies(TD_WDOG_TIMEOUT_MS))) {
		pr_err("watchdog timer did not expire\n");
		timer_shutdown_sync(&wd->timer);
		td_wdog_drain_events(wd);
		kfree(wd);
		return -ETIMEDOUT;
	}
	timer_delete_sync(&wd->timer);
	wd->drained = td_wdog_drain_events(wd);

	td_wdog = wd;
	return 0;
}

static void td_wdog_remove(void)
{
	timer_shutdown_sync(&td_wdog->timer);
	td_wdog_drain_events(td_wdog);
	kfree(td_wdog);
}

/* Probe asynchronously, from a work item. */
static void td_wdog_probe_work_fn(struct work_struct *work)
{
	td_wdog_probe_err = td_wdog_probe();
	complete(&td_wdog_probed);
}
static DECLARE_WORK(td_wdog_probe_work, td_wdog_probe_work_fn);

static int __init td_timer_sleep_clean_init(void)
{
	schedule_work(&td_wdog_probe_work);
	if (!wait_for_completion_timeout(&td_wdog_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_wdog_probe_work);
	if (td_wdog_probe_err)
		return td_wdog_probe_err;

	pr_info("scenario complete: %u ticks, %u events logged\n",
		td_wdog->ticks, td_wdog->drained);
	return 0;
}

static void __exit td_timer_sleep_clean_exit(void)
{
	td_wdog_remove();
}

module_init(td_timer_sleep_clean_init);
module_exit(td_timer_sleep_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: GFP_ATOMIC allocation in a timer callback (clean twin)");
