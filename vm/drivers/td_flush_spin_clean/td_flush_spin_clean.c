// SPDX-License-Identifier: GPL-2.0
/*
 * td_flush_spin_clean - tracedep example driver, clean twin of td_flush_spin_bug.
 *
 * A toy network link: a status work item polls the link state under
 * lk->lock, and a reset path makes sure no status poll is in flight before
 * it resets the link.  Module init runs a few rounds of "poll the status,
 * wait for the poll, reset the link".
 *
 * Same work as td_flush_spin_bug, done correctly: td_link_reset() flushes the
 * status work before taking lk->lock.  Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_LINK_ROUNDS		4

struct td_link {
	spinlock_t lock;		/* protects the fields below */
	bool up;
	unsigned int status_polls;
	unsigned int resets;
	u32 fake_status_reg;		/* stands in for a PHY register */

	struct work_struct status_work;
};

static struct td_link *td_link;

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
	/* May sleep, and the work takes lk->lock: flush before locking. */
	flush_work(&lk->status_work);
	spin_lock(&lk->lock);
	lk->up = false;
	lk->fake_status_reg = 0;
	lk->resets++;
	spin_unlock(&lk->lock);
}

static int __init td_flush_spin_clean_init(void)
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
	pr_info("scenario complete: %u status polls, %u resets\n",
		lk->status_polls, lk->resets);
	return 0;
}

static void __exit td_flush_spin_clean_exit(void)
{
	cancel_work_sync(&td_link->status_work);
	kfree(td_link);
}

module_init(td_flush_spin_clean_init);
module_exit(td_flush_spin_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: flush_work before taking a spinlock (clean twin)");
