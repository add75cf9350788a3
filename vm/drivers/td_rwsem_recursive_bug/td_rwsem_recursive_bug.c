// SPDX-License-Identifier: GPL-2.0
/*
 * td_rwsem_recursive_bug - tracedep example driver with one planted bug.
 *
 * A toy key/value configuration store protected by an rw_semaphore: lookups
 * take it for read, updates for write.  A work item updates a few keys and
 * dumps the store after each update.
 *
 * PLANTED BUG (recursive-locking, rwsem read): td_cfg_dump() holds
 * cd->cfg_rwsem for read and calls td_cfg_lookup(), which takes it for read
 * again.  rwsems are fair: if a writer queues between the two down_read()
 * calls, the second one waits behind the writer, which waits for the first:
 * deadlock.  Here no writer ever runs concurrently (the only writer is the
 * same work item), so the second down_read() succeeds at once.
 *
 * Clean twin: td_rwsem_recursive_clean (td_cfg_dump() uses the _locked
 * lookup helper and takes the rwsem once).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/rwsem.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#define TD_CFG_NR_KEYS		8
#define TD_CFG_ROUNDS		3
#define TD_CFG_TIMEOUT_MS	5000

struct td_cfg_store {
	struct rw_semaphore cfg_rwsem;	/* protects keys[], vals[] */
	u32 keys[TD_CFG_NR_KEYS];
	u32 vals[TD_CFG_NR_KEYS];
	u64 dump_sum;

	struct work_struct cfg_work;
	struct completion cfg_done;
};

static struct td_cfg_store *td_cfg_store;

/* Caller holds cd->cfg_rwsem. */
static u32 __td_cfg_lookup(struct td_cfg_store *cd, u32 key)
{
	int i;

	for (i = 0; i < TD_CFG_NR_KEYS; i++)
		if (cd->keys[i] == key)
			return cd->vals[i];
	return 0;
}

static u32 td_cfg_lookup(struct td_cfg_store *cd, u32 key)
{
	u32 val;

	down_read(&cd->cfg_rwsem);
	val = __td_cfg_lookup(cd, key);
	up_read(&cd->cfg_rwsem);

	return val;
}

static void td_cfg_update(struct td_cfg_store *cd, u32 key, u32 val)
{
	down_write(&cd->cfg_rwsem);
	cd->keys[key % TD_CFG_NR_KEYS] = key;
	cd->vals[key % TD_CFG_NR_KEYS] = val;
	up_write(&cd->cfg_rwsem);
}

static u64 td_cfg_dump(struct td_cfg_store *cd)
{
	u64 sum = 0;
	int i;

	down_read(&cd->cfg_rwsem);
	for (i = 0; i < TD_CFG_NR_KEYS; i++) {
		if (!cd->keys[i])
			continue;
		/* BUG: td_cfg_lookup() takes cfg_rwsem for read again. */
		sum += td_cfg_lookup(cd, cd->keys[i]);
	}
	up_read(&cd->cfg_rwsem);

	return sum;
}

static void td_cfg_work(struct work_struct *work)
{
	struct td_cfg_store *cd = container_of(work, struct td_cfg_store, cfg_work);
	int i;

	for (i = 0; i < TD_CFG_ROUNDS; i++) {
		td_cfg_update(cd, 0x100 + i, 1000 * (i + 1));
		cd->dump_sum = td_cfg_dump(cd);
	}
	complete(&cd->cfg_done);
}

static int __init td_rwsem_recursive_bug_init(void)
{
	struct td_cfg_store *cd;

	cd = kzalloc(sizeof(*cd), GFP_KERNEL);
	if (!cd)
		return -ENOMEM;
	init_rwsem(&cd->cfg_rwsem);
	INIT_WORK(&cd->cfg_work, td_cfg_work);
	init_completion(&cd->cfg_done);

	schedule_work(&cd->cfg_work);
	if (!wait_for_completion_timeout(&cd->cfg_done,
					 msecs_to_jiffies(TD_CFG_TIMEOUT_MS))) {
		pr_err("config work did not finish\n");
		cancel_work_sync(&cd->cfg_work);
		kfree(cd);
		return -ETIMEDOUT;
	}
	flush_work(&cd->cfg_work);

	td_cfg_store = cd;
	pr_info("scenario complete: dump sum %llu, key 0x101 = %u\n",
		cd->dump_sum, td_cfg_lookup(cd, 0x101));
	return 0;
}

static void __exit td_rwsem_recursive_bug_exit(void)
{
	cancel_work_sync(&td_cfg_store->cfg_work);
	kfree(td_cfg_store);
}

module_init(td_rwsem_recursive_bug_init);
module_exit(td_rwsem_recursive_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: rw_semaphore taken for read twice by one task (planted bug)");
