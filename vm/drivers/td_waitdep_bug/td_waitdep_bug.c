// SPDX-License-Identifier: GPL-2.0
/*
 * td_waitdep_bug - tracedep example driver: deadlocks through waits, five of them.
 *
 * A toy device with a reset work item, a poll timer, a "ready" completion, a
 * polling kthread and a private workqueue.  Each of them is waited for by a
 * path that holds a lock the other side needs: on two CPUs at the wrong moment
 * each one hangs.  Here every wait finds its object idle, so nothing hangs: the
 * dependency is what is planted, as lockdep reports it whether or not the
 * deadlock happened.
 *
 * PLANTED BUGS (lock-order-inversion through a wait):
 *  1. td_wd_reset(): holds td_wd_cfg_mutex and cancel_work_sync()s reset_work,
 *     whose function takes td_wd_cfg_mutex: (work_completion)(&dev->reset_work).
 *  2. td_wd_stop_poll(): holds td_wd_poll_lock and del_timer_sync()s poll_timer,
 *     whose callback takes td_wd_poll_lock: (timer)(&dev->poll_timer).
 *  3. td_wd_wait_ready(): holds state_lock and waits for the ready completion,
 *     which td_wd_ready_fn() completes while holding state_lock:
 *     (completion)(&dev->ready).
 *  4. td_wd_stop_thread(): holds a td_wd_chan lock and kthread_stop()s the
 *     poller, which looks for its stop holding a td_wd_chan lock (another
 *     instance of the same class, so this run does not hang): (kthread).
 *  5. td_wd_flush_stats(): holds td_wd_stats_mutex and flushes td_wd_wq, whose
 *     work item takes td_wd_stats_mutex: (wq_completion)td_wd_wq.
 *
 * Clean twin: td_waitdep_clean (each wait after the unlock, or on an object
 * whose other side never takes the lock held).
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
	complete_all(&dev->ready);	/* signalled with state_lock held */
	mutex_unlock(&dev->state_lock);
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
		stop = kthread_should_stop();	/* looks for the stop holding c->lock */
		c->polls++;
		mutex_unlock(&c->lock);
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

/* BUG 1: waits for reset_work holding the mutex its function takes. */
static noinline void td_wd_reset(struct td_wd_dev *dev)
{
	mutex_lock(&td_wd_cfg_mutex);
	cancel_work_sync(&dev->reset_work);
	mutex_unlock(&td_wd_cfg_mutex);
}

/* BUG 2: waits for the poll timer's callback holding the lock it takes. */
static noinline void td_wd_stop_poll(struct td_wd_dev *dev)
{
	spin_lock_bh(&td_wd_poll_lock);
	del_timer_sync(&dev->poll_timer);
	spin_unlock_bh(&td_wd_poll_lock);
}

/* BUG 3: waits for ready holding the lock its completer holds. */
static noinline void td_wd_wait_ready(struct td_wd_dev *dev)
{
	mutex_lock(&dev->state_lock);
	wait_for_completion(&dev->ready);
	mutex_unlock(&dev->state_lock);
}

/* BUG 4: stops the poller holding a lock of the class it polls under. */
static noinline void td_wd_stop_thread(struct td_wd_dev *dev)
{
	mutex_lock(&dev->chan[1]->lock);
	kthread_stop(dev->poller);
	mutex_unlock(&dev->chan[1]->lock);
}

/* BUG 5: flushes the workqueue holding the mutex its work item takes. */
static noinline void td_wd_flush_stats(struct td_wd_dev *dev)
{
	mutex_lock(&td_wd_stats_mutex);
	dev->stats++;
	flush_workqueue(td_wd_wq);
	mutex_unlock(&td_wd_stats_mutex);
}

static struct td_wd_dev *td_wd_dev;

static int __init td_waitdep_bug_init(void)
{
	struct td_wd_dev *dev;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	td_wd_wq = alloc_workqueue("td_wd_wq", 0, 0);
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
	dev->poller = kthread_run(td_wd_poller_fn, dev->chan[0], "td_wd_poller");
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

static void __exit td_waitdep_bug_exit(void)
{
	destroy_workqueue(td_wd_wq);
	kfree(td_wd_dev->chan[0]);
	kfree(td_wd_dev->chan[1]);
	kfree(td_wd_dev);
}

module_init(td_waitdep_bug_init);
module_exit(td_waitdep_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: deadlocks through waits on work, timer, completion, kthread, workqueue (planted bugs)");
