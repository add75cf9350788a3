// SPDX-License-Identifier: GPL-2.0
/*
 * td_abba_clean - tracedep example driver, clean twin of td_abba_bug.
 *
 * A toy transfer engine: transfers are submitted onto a pending queue
 * (td_xfer_queue_lock) and accounted in counters (td_xfer_stats_lock).  The
 * probe routine (run from a work item) submits a few transfers, then kicks a
 * separate completion work item that completes them.
 *
 * Same work as td_abba_bug, done correctly: both paths take
 * td_xfer_queue_lock before td_xfer_stats_lock.  Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_XFER_ROUNDS		4
#define TD_PROBE_TIMEOUT_MS	5000

static DEFINE_SPINLOCK(td_xfer_queue_lock);	/* A: protects td_xfer_dev.pending */
static DEFINE_SPINLOCK(td_xfer_stats_lock);	/* B: protects the counters */

struct td_xfer {
	struct list_head node;
	u32 id;
	u32 len;
};

struct td_xfer_dev {
	struct list_head pending;
	u32 submitted;
	u32 completed;
	u64 bytes;

	struct td_xfer xfers[TD_XFER_ROUNDS];
	struct work_struct complete_work;
	struct completion all_done;
};

static struct td_xfer_dev *td_xfer_dev;
static int td_xfer_probe_err;
static DECLARE_COMPLETION(td_xfer_probed);

/* Submit path: A then B. */
static void td_xfer_submit(struct td_xfer_dev *xd, struct td_xfer *x)
{
	spin_lock(&td_xfer_queue_lock);
	list_add_tail(&x->node, &xd->pending);
	spin_lock(&td_xfer_stats_lock);
	xd->submitted++;
	spin_unlock(&td_xfer_stats_lock);
	spin_unlock(&td_xfer_queue_lock);
}

/* Completion path: returns false when nothing was pending. */
static bool td_xfer_complete_one(struct td_xfer_dev *xd)
{
	struct td_xfer *x;

	/* A then B, as in td_xfer_submit(). */
	spin_lock(&td_xfer_queue_lock);
	x = list_first_entry_or_null(&xd->pending, struct td_xfer, node);
	if (x)
		list_del_init(&x->node);
	spin_lock(&td_xfer_stats_lock);
	if (x) {
		xd->completed++;
		xd->bytes += x->len;
	}
	spin_unlock(&td_xfer_stats_lock);
	spin_unlock(&td_xfer_queue_lock);

	return x != NULL;
}

static void td_xfer_complete_work(struct work_struct *work)
{
	struct td_xfer_dev *xd = container_of(work, struct td_xfer_dev, complete_work);

	while (td_xfer_complete_one(xd))
		;
	complete(&xd->all_done);
}

static int td_xfer_probe(void)
{
	struct td_xfer_dev *xd;
	int i;

	xd = kzalloc(sizeof(*xd), GFP_KERNEL);
	if (!xd)
		return -ENOMEM;
	INIT_LIST_HEAD(&xd->pending);
	INIT_WORK(&xd->complete_work, td_xfer_complete_work);
	init_completion(&xd->all_done);

	for (i = 0; i < TD_XFER_ROUNDS; i++) {
		xd->xfers[i].id = i;
		xd->xfers[i].len = 512u << i;
		td_xfer_submit(xd, &xd->xfers[i]);
	}

	schedule_work(&xd->complete_work);
	if (!wait_for_completion_timeout(&xd->all_done,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("completion work is taking too long\n");
	flush_work(&xd->complete_work);

	td_xfer_dev = xd;
	return 0;
}

static void td_xfer_remove(void)
{
	cancel_work_sync(&td_xfer_dev->complete_work);
	kfree(td_xfer_dev);
}

/* Probe asynchronously, from a work item. */
static void td_xfer_probe_work_fn(struct work_struct *work)
{
	td_xfer_probe_err = td_xfer_probe();
	complete(&td_xfer_probed);
}
static DECLARE_WORK(td_xfer_probe_work, td_xfer_probe_work_fn);

static int __init td_abba_clean_init(void)
{
	schedule_work(&td_xfer_probe_work);
	if (!wait_for_completion_timeout(&td_xfer_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_xfer_probe_work);
	if (td_xfer_probe_err)
		return td_xfer_probe_err;

	pr_info("scenario complete: %u submitted, %u completed, %llu bytes\n",
		td_xfer_dev->submitted, td_xfer_dev->completed, td_xfer_dev->bytes);
	return 0;
}

static void __exit td_abba_clean_exit(void)
{
	td_xfer_remove();
}

module_init(td_abba_clean_init);
module_exit(td_abba_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: consistent spinlock order (clean twin)");
