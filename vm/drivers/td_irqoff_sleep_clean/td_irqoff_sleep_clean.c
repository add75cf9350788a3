// SPDX-License-Identifier: GPL-2.0
/*
 * td_irqoff_sleep_clean - tracedep example driver, clean twin of td_irqoff_sleep_bug.
 *
 * A toy device whose status registers must be read as a consistent set, so
 * the driver reads them with local interrupts disabled.  A work item takes a
 * few register snapshots into freshly allocated records.
 *
 * Same work as td_irqoff_sleep_bug, done correctly: td_hw_snapshot_regs()
 * allocates the record with GFP_KERNEL before local_irq_save(), and only
 * reads the registers with interrupts disabled.  Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/irqflags.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#define TD_HW_ROUNDS		4
#define TD_HW_NR_REGS		4
#define TD_HW_TIMEOUT_MS	5000

struct td_regs_snapshot {
	u32 regs[TD_HW_NR_REGS];
	u64 ts_ns;
};

struct td_hw {
	u32 regs[TD_HW_NR_REGS];	/* stands in for MMIO registers */
	struct td_regs_snapshot *last;
	unsigned int snapshots;

	struct work_struct snap_work;
	struct completion snap_done;
};

static struct td_hw *td_hw;

static struct td_regs_snapshot *td_hw_snapshot_regs(struct td_hw *hw)
{
	struct td_regs_snapshot *snap;
	unsigned long flags;
	int i;

	snap = kmalloc(sizeof(*snap), GFP_KERNEL);
	if (!snap)
		return NULL;

	local_irq_save(flags);
	for (i = 0; i < TD_HW_NR_REGS; i++)
		snap->regs[i] = READ_ONCE(hw->regs[i]);
	snap->ts_ns = ktime_get_ns();
	local_irq_restore(flags);

	return snap;
}

static void td_hw_snap_work(struct work_struct *work)
{
	struct td_hw *hw = container_of(work, struct td_hw, snap_work);
	struct td_regs_snapshot *snap;
	int i;

	for (i = 0; i < TD_HW_ROUNDS; i++) {
		WRITE_ONCE(hw->regs[i % TD_HW_NR_REGS], 0xa5a50000u | i);
		snap = td_hw_snapshot_regs(hw);
		if (!snap)
			break;
		kfree(hw->last);
		hw->last = snap;
		hw->snapshots++;
	}
	complete(&hw->snap_done);
}

static int __init td_irqoff_sleep_clean_init(void)
{
	struct td_hw *hw;

	hw = kzalloc(sizeof(*hw), GFP_KERNEL);
	if (!hw)
		return -ENOMEM;
	INIT_WORK(&hw->snap_work, td_hw_snap_work);
	init_completion(&hw->snap_done);

	schedule_work(&hw->snap_work);
	if (!wait_for_completion_timeout(&hw->snap_done,
					 msecs_to_jiffies(TD_HW_TIMEOUT_MS))) {
		pr_err("snapshot work did not finish\n");
		cancel_work_sync(&hw->snap_work);
		kfree(hw->last);
		kfree(hw);
		return -ETIMEDOUT;
	}
	flush_work(&hw->snap_work);

	td_hw = hw;
	pr_info("scenario complete: %u snapshots, reg0 %#x\n", hw->snapshots,
		hw->last ? hw->last->regs[0] : 0);
	return 0;
}

static void __exit td_irqoff_sleep_clean_exit(void)
{
	cancel_work_sync(&td_hw->snap_work);
	kfree(td_hw->last);
	kfree(td_hw);
}

module_init(td_irqoff_sleep_clean_init);
module_exit(td_irqoff_sleep_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: GFP_KERNEL allocation before local_irq_save() (clean twin)");
