// SPDX-License-Identifier: GPL-2.0
/*
 * td_wait_spin_clean - tracedep example driver, clean twin of td_wait_spin_bug.
 *
 * A toy device that must not be sent commands before its firmware is up: a
 * firmware-load work item signals fw->fw_ready with complete_all(), and the
 * command path waits for that completion.  The probe routine (run from a
 * work item) loads the firmware, then sends a few commands.
 *
 * Same work as td_wait_spin_bug, done correctly: td_fw_send_cmd() waits for
 * the firmware before taking fw->lock.  Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_FW_CMDS		4
#define TD_FW_TIMEOUT_MS	2000
#define TD_PROBE_TIMEOUT_MS	5000

struct td_fw_dev {
	spinlock_t lock;		/* protects cmd_seq, cmds_sent */
	u32 cmd_seq;
	unsigned int cmds_sent;
	u32 fw_version;
	u32 tag;

	struct work_struct fw_load_work;
	struct completion fw_ready;	/* complete_all() once loaded */
};

static struct td_fw_dev *td_fw_dev;
static int td_fw_probe_err;
static DECLARE_COMPLETION(td_fw_probed);

static void td_fw_load_work(struct work_struct *work)
{
	struct td_fw_dev *fw = container_of(work, struct td_fw_dev, fw_load_work);

	fw->fw_version = 0x20240101;
	complete_all(&fw->fw_ready);
}

static u32 td_fw_send_cmd(struct td_fw_dev *fw, u32 opcode)
{
	u32 seq;

	/* May sleep: wait before taking the spinlock. */
	wait_for_completion(&fw->fw_ready);
	spin_lock(&fw->lock);
	seq = ++fw->cmd_seq;
	fw->cmds_sent++;
	spin_unlock(&fw->lock);

	return seq ^ opcode;
}

static int td_fw_probe(void)
{
	struct td_fw_dev *fw;
	int i;

	fw = kzalloc(sizeof(*fw), GFP_KERNEL);
	if (!fw)
		return -ENOMEM;
	spin_lock_init(&fw->lock);
	INIT_WORK(&fw->fw_load_work, td_fw_load_work);
	init_completion(&fw->fw_ready);

	schedule_work(&fw->fw_load_work);
	if (!wait_for_completion_timeout(&fw->fw_ready,
					 msecs_to_jiffies(TD_FW_TIMEOUT_MS))) {
		pr_err("firmware load did not finish\n");
		cancel_work_sync(&fw->fw_load_work);
		kfree(fw);
		return -ETIMEDOUT;
	}
	flush_work(&fw->fw_load_work);

	for (i = 0; i < TD_FW_CMDS; i++)
		fw->tag ^= td_fw_send_cmd(fw, 0x10 + i);

	td_fw_dev = fw;
	return 0;
}

static void td_fw_remove(void)
{
	cancel_work_sync(&td_fw_dev->fw_load_work);
	kfree(td_fw_dev);
}

/* Probe asynchronously, from a work item. */
static void td_fw_probe_work_fn(struct work_struct *work)
{
	td_fw_probe_err = td_fw_probe();
	complete(&td_fw_probed);
}
static DECLARE_WORK(td_fw_probe_work, td_fw_probe_work_fn);

static int __init td_wait_spin_clean_init(void)
{
	schedule_work(&td_fw_probe_work);
	if (!wait_for_completion_timeout(&td_fw_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_fw_probe_work);
	if (td_fw_probe_err)
		return td_fw_probe_err;

	pr_info("scenario complete: fw %#x, %u commands, tag %#x\n",
		td_fw_dev->fw_version, td_fw_dev->cmds_sent, td_fw_dev->tag);
	return 0;
}

static void __exit td_wait_spin_clean_exit(void)
{
	td_fw_remove();
}

module_init(td_wait_spin_clean_init);
module_exit(td_wait_spin_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: wait_for_completion before taking a spinlock (clean twin)");
