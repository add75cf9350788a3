// SPDX-License-Identifier: GPL-2.0
/*
 * td_waitdep_clean - clean twin of td_waitdep_bug: the same device, the same
 * waits, none of them a deadlock.
 *
 *  1. td_wd_reset(): cancels reset_work after dropping td_wd_cfg_mutex, and
 *     flushes it holding td_wd_other_mutex, which its function never takes.
 *  2. td_wd_stop_poll(): del_timer_sync() after the unlock.
 *  3. td_wd_ready_fn() completes ready after dropping state_lock.
 *  4. the poller looks for its stop without its lock held.
 *  5. td_wd_flush_stats(): flushes td_wd_wq after dropping td_wd_stats_mutex.
 *
 * Must stay silent.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/workqueue.h>

static DEFINE_MUTEX(td_wd_cfg_mutex);
static DEFINE_MUTEX(td_wd_stats_mutex);
static DEFINE_SPINLOCK(td_wd_poll_lock);
static DEFINE_MUTEX(td_wd_other_mutex);

struct td_wd_chan {
	struct mutex lock;
	u32 polls;
};

struct td_wd_dev {
	struct work_struct reset_work;
	struct work_struct ready_work;
	struct work_struct stats_work;
	struct timer_list poll_timer;
	struct mutex state_lock;
	struct completion ready;
	struct completion timer_fired;
	struct td_wd_chan *chan[2];
	struct task_struct *poller;
	u32 resets, timer_runs, stats;
	bool is_ready;
};

static struct workqueue_struct *td_wd_wq;

static void td_wd_reset_fn(struct work_struct *work)
{
	struct td_wd_dev *dev = container_of(work, struct td_wd_dev, reset_work);

	mutex_lock(&td_wd_cfg_mutex);
	dev->resets++;
	mutex_unlock(&td_wd_cfg_mutex);
}

static void td_wd_poll_timer_fn(struct timer_list *t)
{
	struct td_wd_dev *dev = from_timer(dev, t, poll_timer);

	spin_lock(&td_wd_poll_lock);
	dev->timer_runs++;
	spin_unlock(&td_wd_poll_lock);
	complete(&dev->timer_fired);
}

static void td_wd_ready_fn(struct work_struct *work)
{
	struct td_wd_dev *dev = container_of(work, struct td_wd_dev, ready_work);

	mutex_lock(&dev->state_lock);
	dev->is_ready = true;
	mutex_unlock(&dev->state_lock);
	complete_all(&dev->ready);	/* signalled without the lock */
}

static void td_wd_stats_fn(struct work_struct *work)
{
	struct td_wd_dev *dev = container_of(work, struct td_wd_dev, stats_work);

	mutex_lock(&td_wd_stats_mutex);
	dev->stats++;
	mutex_unlock(&td_wd_stats_mutex);
}

static int td_wd_poller_fn(void *data)
{
	struct td_wd_chan *c = data;
	bool stop;

	for (;;) {
		mutex_lock(&c->lock);
		c->polls++;
		mutex_unlock(&c->lock);
		stop = kthread_should_stop();	/* without the lock */
		if (stop)
			break;
		msleep(5);
	}
	return 0;
}

static struct td_wd_chan *td_wd_chan_new(void)
{
	struct td_wd_chan *c = kzalloc(sizeof(*c), GFP_KERNEL);

	if (c)
		mutex_init(&c->lock);
	return c;
}

/* the wait after the unlock; a wait under a lock the work never takes */
static noinline void td_wd_reset(struct td_wd_dev *dev)
{
	mutex_lock(&td_wd_cfg_mutex);
	dev->resets++;
	mutex_unlock(&td_wd_cfg_mutex);
	cancel_work_sync(&dev->reset_work);
	mutex_lock(&td_wd_other_mutex);
	flush_work(&dev->reset_work);
	mutex_unlock(&td_wd_other_mutex);
}

static noinline void td_wd_stop_poll(struct td_wd_dev *dev)
{
	spin_lock_bh(&td_wd_poll_lock);
	dev->timer_runs++;
	spin_unlock_bh(&td_wd_poll_lock);
	del_timer_sync(&dev->poll_timer);
}

/* its completer no longer holds state_lock when it signals */
static noinline void td_wd_wait_ready(struct td_wd_dev *dev)
{
	mutex_lock(&dev->state_lock);
	wait_for_completion(&dev->ready);
	mutex_unlock(&dev->state_lock);
}

/* the poller looks for its stop without the lock */
static noinline void td_wd_stop_thread(struct td_wd_dev *dev)
{
	mutex_lock(&dev->chan[1]->lock);
	kthread_stop(dev->poller);
	mutex_unlock(&dev->chan[1]->lock);
}

static noinline void td_wd_flush_stats(struct td_wd_dev *dev)
{
	mutex_lock(&td_wd_stats_mutex);
	dev->stats++;
	mutex_unlock(&td_wd_stats_mutex);
	flush_workqueue(td_wd_wq);
}

static struct td_wd_dev *td_wd_dev;

static int __init td_waitdep_clean_init(void)
{
	struct td_wd_dev *dev;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	td_wd_wq = alloc_workqueue("td_wdc_wq", 0, 0);
	dev->chan[0] = td_wd_chan_new();
	dev->chan[1] = td_wd_chan_new();
	if (!td_wd_wq || !dev->chan[0] || !dev->chan[1])
		goto fail;
	INIT_WORK(&dev->reset_work, td_wd_reset_fn);
	INIT_WORK(&dev->ready_work, td_wd_ready_fn);
	INIT_WORK(&dev->stats_work, td_wd_stats_fn);
	timer_setup(&dev->poll_timer, td_wd_poll_timer_fn, 0);
	mutex_init(&dev->state_lock);
	init_completion(&dev->ready);
	init_completion(&dev->timer_fired);

	/* each other side runs once, unopposed */
	schedule_work(&dev->reset_work);
	flush_work(&dev->reset_work);
	mod_timer(&dev->poll_timer, jiffies + 1);
	if (!wait_for_completion_timeout(&dev->timer_fired, msecs_to_jiffies(5000)))
		pr_err("poll timer did not fire\n");
	schedule_work(&dev->ready_work);
	queue_work(td_wd_wq, &dev->stats_work);
	flush_work(&dev->ready_work);
	flush_work(&dev->stats_work);
	dev->poller = kthread_run(td_wd_poller_fn, dev->chan[0], "td_wdc_poller");
	if (IS_ERR(dev->poller))
		goto fail;
	msleep(20);

	/* then each wait, on an idle object */
	td_wd_reset(dev);
	td_wd_stop_poll(dev);
	td_wd_wait_ready(dev);
	td_wd_stop_thread(dev);
	td_wd_flush_stats(dev);

	td_wd_dev = dev;
	pr_info("scenario complete: %u resets, %u timer runs, %u stats, %u polls\n",
		dev->resets, dev->timer_runs, dev->stats, dev->chan[0]->polls);
	return 0;
fail:
	if (td_wd_wq)
		destroy_workqueue(td_wd_wq);
	kfree(dev->chan[0]);
	kfree(dev->chan[1]);
	kfree(dev);
	return -ENOMEM;
}

static void __exit td_waitdep_clean_exit(void)
{
	destroy_workqueue(td_wd_wq);
	kfree(td_wd_dev->chan[0]);
	kfree(td_wd_dev->chan[1]);
	kfree(td_wd_dev);
}

module_init(td_waitdep_clean_init);
module_exit(td_waitdep_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: waits on work, timer, completion, kthread, workqueue without deadlocks (clean twin)");
