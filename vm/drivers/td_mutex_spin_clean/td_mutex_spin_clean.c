// SPDX-License-Identifier: GPL-2.0
/*
 * td_mutex_spin_clean - tracedep example driver, clean twin of td_mutex_spin_bug.
 *
 * A toy controller whose configuration is serialised by a mutex in the
 * device structure, and whose global statistics are protected by a static
 * spinlock.  The probe routine (run from a work item) applies a few
 * configuration changes.
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
#define TD_PROBE_TIMEOUT_MS	5000

struct td_ctrl_cfg {
	u32 mtu;
	u32 flags;
};

struct td_ctrl {
	struct mutex cfg_mutex;		/* serialises configuration changes */
	struct td_ctrl_cfg cfg;
	unsigned int generation;
};

/* Statistics shared by every controller instance. */
static DEFINE_SPINLOCK(td_ctrl_stats_lock);
static struct {
	u64 applies;
	u32 last_mtu;
} td_ctrl_stats;

static struct td_ctrl *td_ctrl;
static int td_ctrl_probe_err;
static DECLARE_COMPLETION(td_ctrl_probed);

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

static int td_ctrl_probe(void)
{
	struct td_ctrl *ctrl;
	int i;

	ctrl = kzalloc(sizeof(*ctrl), GFP_KERNEL);
	if (!ctrl)
		return -ENOMEM;
	mutex_init(&ctrl->cfg_mutex);

	for (i = 0; i < TD_CTRL_ROUNDS; i++)
		td_ctrl_apply_config(ctrl, 1500 + 500 * i, i & 1);

	td_ctrl = ctrl;
	return 0;
}

static void td_ctrl_remove(void)
{
	mutex_destroy(&td_ctrl->cfg_mutex);
	kfree(td_ctrl);
}

/* Probe asynchronously, from a work item. */
static void td_ctrl_probe_work_fn(struct work_struct *work)
{
	td_ctrl_probe_err = td_ctrl_probe();
	complete(&td_ctrl_probed);
}
static DECLARE_WORK(td_ctrl_probe_work, td_ctrl_probe_work_fn);

static int __init td_mutex_spin_clean_init(void)
{
	schedule_work(&td_ctrl_probe_work);
	if (!wait_for_completion_timeout(&td_ctrl_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_ctrl_probe_work);
	if (td_ctrl_probe_err)
		return td_ctrl_probe_err;

	pr_info("scenario complete: %llu config changes, generation %u\n",
		td_ctrl_stats.applies, td_ctrl->generation);
	return 0;
}

static void __exit td_mutex_spin_clean_exit(void)
{
	td_ctrl_remove();
}

module_init(td_mutex_spin_clean_init);
module_exit(td_mutex_spin_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: mutex taken before a spinlock (clean twin)");
