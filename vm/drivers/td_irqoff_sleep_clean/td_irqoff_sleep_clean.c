// SPDX-License-Identifier: GPL-2.0
/*
 * td_irqoff_sleep_clean - tracedep example driver, clean twin of td_irqoff_sleep_bug.
 *
 * A toy device whose status registers must be read as a consistent set, so
 * the driver reads them with local interrupts disabled.  The probe routine
 * (run from a work item) takes a few register snapshots into freshly
 * allocated records.
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
#define TD_PROBE_TIMEOUT_MS	5000

struct td_regs_snapshot {
	u32 regs[TD_HW_NR_REGS];
	u64 ts_ns;
};

struct td_hw {
	u32 regs[TD_HW_NR_REGS];	/* stands in for MMIO registers */
	struct td_regs_snapshot *last;
	unsigned int snapshots;
};

static struct td_hw *td_hw;
static int td_hw_probe_err;
static DECLARE_COMPLETION(td_hw_probed);

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

static int td_hw_probe(void)
{
	struct td_regs_snapshot *snap;
	struct td_hw *hw;
	int i;

	hw = kzalloc(sizeof(*hw), GFP_KERNEL);
	if (!hw)
		return -ENOMEM;

	for (i = 0; i < TD_HW_ROUNDS; i++) {
		WRITE_ONCE(hw->regs[i % TD_HW_NR_REGS], 0xa5a50000u | i);
		snap = td_hw_snapshot_regs(hw);
		if (!snap)
			break;
		kfree(hw->last);
		hw->last = snap;
		hw->snapshots++;
	}

	td_hw = hw;
	return 0;
}

static void td_hw_remove(void)
{
	kfree(td_hw->last);
	kfree(td_hw);
}

/* Probe asynchronously, from a work item. */
static void td_hw_probe_work_fn(struct work_struct *work)
{
	td_hw_probe_err = td_hw_probe();
	complete(&td_hw_probed);
}
static DECLARE_WORK(td_hw_probe_work, td_hw_probe_work_fn);

static int __init td_irqoff_sleep_clean_init(void)
{
	schedule_work(&td_hw_probe_work);
	if (!wait_for_completion_timeout(&td_hw_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_hw_probe_work);
	if (td_hw_probe_err)
		return td_hw_probe_err;

	pr_info("scenario complete: %u snapshots, reg0 %#x\n", td_hw->snapshots,
		td_hw->last ? td_hw->last->regs[0] : 0);
	return 0;
}

static void __exit td_irqoff_sleep_clean_exit(void)
{
	td_hw_remove();
}

module_init(td_irqoff_sleep_clean_init);
module_exit(td_irqoff_sleep_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: GFP_KERNEL allocation before local_irq_save() (clean twin)");
