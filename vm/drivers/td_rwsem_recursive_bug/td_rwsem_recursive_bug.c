// SPDX-License-Identifier: GPL-2.0
/*
 * td_rwsem_recursive_bug - tracedep example driver with one planted bug.
 *
 * A toy key/value configuration store protected by an rw_semaphore: lookups
 * take it for read, updates for write.  The probe routine (run from a work
 * item) updates a few keys and dumps the store after each update.
 *
 * PLANTED BUG (recursive-locking, rwsem read): td_cfg_dump() holds
 * cs->cfg_rwsem for read and calls td_cfg_lookup(), which takes it for read
 * again.  rwsems are fair: if a writer queues between the two down_read()
 * calls, the second one waits behind the writer, which waits for the first:
 * deadlock.  Here no writer ever runs concurrently (the only writer is the
 * same task), so the second down_read() succeeds at once.
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
#define TD_PROBE_TIMEOUT_MS	5000

struct td_cfg_store {
	struct rw_semaphore cfg_rwsem;	/* protects keys[], vals[] */
	u32 keys[TD_CFG_NR_KEYS];
	u32 vals[TD_CFG_NR_KEYS];
	u64 dump_sum;
	u32 probe_val;
};

static struct td_cfg_store *td_cfg_store;
static int td_cfg_probe_err;
static DECLARE_COMPLETION(td_cfg_probed);

/* Caller holds cs->cfg_rwsem. */
static u32 __td_cfg_lookup(struct td_cfg_store *cs, u32 key)
{
	int i;

	for (i = 0; i < TD_CFG_NR_KEYS; i++)
		if (cs->keys[i] == key)
			return cs->vals[i];
	return 0;
}

static u32 td_cfg_lookup(struct td_cfg_store *cs, u32 key)
{
	u32 val;

	down_read(&cs->cfg_rwsem);
	val = __td_cfg_lookup(cs, key);
	up_read(&cs->cfg_rwsem);

	return val;
}

static void td_cfg_update(struct td_cfg_store *cs, u32 key, u32 val)
{
	down_write(&cs->cfg_rwsem);
	cs->keys[key % TD_CFG_NR_KEYS] = key;
	cs->vals[key % TD_CFG_NR_KEYS] = val;
	up_write(&cs->cfg_rwsem);
}

static u64 td_cfg_dump(struct td_cfg_store *cs)
{
	u64 sum = 0;
	int i;

	down_read(&cs->cfg_rwsem);
	for (i = 0; i < TD_CFG_NR_KEYS; i++) {
		if (!cs->keys[i])
			continue;
		/* BUG: td_cfg_lookup() takes cfg_rwsem for read again. */
		sum += td_cfg_lookup(cs, cs->keys[i]);
	}
	up_read(&cs->cfg_rwsem);

	return sum;
}

static int td_cfg_probe(void)
{
	struct td_cfg_store *cs;
	int i;

	cs = kzalloc(sizeof(*cs), GFP_KERNEL);
	if (!cs)
		return -ENOMEM;
	init_rwsem(&cs->cfg_rwsem);

	for (i = 0; i < TD_CFG_ROUNDS; i++) {
		td_cfg_update(cs, 0x100 + i, 1000 * (i + 1));
		cs->dump_sum = td_cfg_dump(cs);
	}
	cs->probe_val = td_cfg_lookup(cs, 0x101);

	td_cfg_store = cs;
	return 0;
}

static void td_cfg_remove(void)
{
	kfree(td_cfg_store);
}

/* Probe asynchronously, from a work item. */
static void td_cfg_probe_work_fn(struct work_struct *work)
{
	td_cfg_probe_err = td_cfg_probe();
	complete(&td_cfg_probed);
}
static DECLARE_WORK(td_cfg_probe_work, td_cfg_probe_work_fn);

static int __init td_rwsem_recursive_bug_init(void)
{
	schedule_work(&td_cfg_probe_work);
	if (!wait_for_completion_timeout(&td_cfg_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_cfg_probe_work);
	if (td_cfg_probe_err)
		return td_cfg_probe_err;

	pr_info("scenario complete: dump sum %llu, key 0x101 = %u\n",
		td_cfg_store->dump_sum, td_cfg_store->probe_val);
	return 0;
}

static void __exit td_rwsem_recursive_bug_exit(void)
{
	td_cfg_remove();
}

module_init(td_rwsem_recursive_bug_init);
module_exit(td_rwsem_recursive_bug_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: rw_semaphore taken for read twice by one task (planted bug)");
