// SPDX-License-Identifier: GPL-2.0
/*
 * td_mutex_spin_clean - tracedep example driver, clean twin of td_mutex_spin_bug.
 *
 * A toy controller whose configuration is serialised by a mutex in the
 * device structure, and whose global statistics are protected by a static
 * spinlock.  A work item applies a few configuration changes.
 *
 * Same work as td_mutex_spin_bug, done correctly: td_ctrl_apply_config()
 * takes the (sleeping) mutex first and the statistics spinlock inside it.
 * Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_CTRL_ROUNDS		4
#define TD_CTRL_TIMEOUT_MS	5000

struct td_ctrl_cfg {
	u32 mtu;
	u32 flags;
};

struct td_ctrl {
	struct mutex cfg_mutex;		/* serialises configuration changes */
	struct td_ctrl_cfg cfg;
	unsigned int generation;

	struct work_struct apply_work;
	struct completion applied;
};

/* Statistics shared by every controller instance. */
static DEFINE_SPINLOCK(td_ctrl_stats_lock);
static struct {
	u64 applies;
	u32 last_mtu;
} td_ctrl_stats;

static struct td_ctrl *td_ctrl;

static void td_ctrl_apply_config(struct td_ctrl *ctrl, u32 mtu, u32 flags)
{
	mutex_lock(&ctrl->cfg_mutex);
	ctrl->cfg.mtu = mtu;
	ctrl->cfg.flags = flags;
	ctrl->generation++;
	spin_lock(&td_ctrl_stats_lock);
	td_ctrl_stats.applies++;
	td_ctrl_stats.last_mtu = mtu;
	spin_unlock(&td_ctrl_stats_lock);
	mutex_unlock(&ctrl->cfg_mutex);
}

static void td_ctrl_apply_work(struct work_struct *work)
{
	struct td_ctrl *ctrl = container_of(work, struct td_ctrl, apply_work);
	int i;

	for (i = 0; i < TD_CTRL_ROUNDS; i++)
		td_ctrl_apply_config(ctrl, 1500 + 500 * i, i & 1);

	complete(&ctrl->applied);
}

static int __init td_mutex_spin_clean_init(void)
{
	struct td_ctrl *ctrl;
	u64 applies;

	ctrl = kzalloc(sizeof(*ctrl), GFP_KERNEL);
	if (!ctrl)
		return -ENOMEM;
	mutex_init(&ctrl->cfg_mutex);
	INIT_WORK(&ctrl->apply_work, td_ctrl_apply_work);
	init_completion(&ctrl->applied);

	schedule_work(&ctrl->apply_work);
	if (!wait_for_completion_timeout(&ctrl->applied,
					 msecs_to_jiffies(TD_CTRL_TIMEOUT_MS))) {
		pr_err("apply work did not finish\n");
		cancel_work_sync(&ctrl->apply_work);
		kfree(ctrl);
		return -ETIMEDOUT;
	}
	flush_work(&ctrl->apply_work);

	spin_lock(&td_ctrl_stats_lock);
	applies = td_ctrl_stats.applies;
	spin_unlock(&td_ctrl_stats_lock);

	td_ctrl = ctrl;
	pr_info("scenario complete: %llu config changes, generation %u\n",
		applies, ctrl->generation);
	return 0;
}

static void __exit td_mutex_spin_clean_exit(void)
{
	cancel_work_sync(&td_ctrl->apply_work);
	mutex_destroy(&td_ctrl->cfg_mutex);
	kfree(td_ctrl);
}

module_init(td_mutex_spin_clean_init);
module_exit(td_mutex_spin_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: mutex taken before a spinlock (clean twin)");
