// SPDX-License-Identifier: GPL-2.0
/*
 * td_percpu_sleep_clean - tracedep example driver, clean twin of td_percpu_sleep_bug.
 *
 * A toy per-CPU scratch-buffer cache: each CPU has a slot holding a scratch
 * buffer, and the probe routine (run from a work item) replaces the local
 * CPU's buffer with a fresh one a few times.  The slot is pinned with
 * get_cpu()/put_cpu(), as drivers doing per-CPU work do.
 *
 * Same work as td_percpu_sleep_bug, done correctly: td_pcpu_refill_local()
 * allocates the new buffer with GFP_KERNEL *before* get_cpu(), and only
 * swaps pointers with preemption disabled.  Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/workqueue.h>

#define TD_PCPU_ROUNDS		4
#define TD_PCPU_SCRATCH_SIZE	256
#define TD_PROBE_TIMEOUT_MS	5000

struct td_pcpu_slot {
	void *scratch;
	unsigned int refills;
};

struct td_pcpu_cache {
	struct td_pcpu_slot __percpu *slots;
	unsigned int refills;
};

static struct td_pcpu_cache *td_pcpu_cache;
static int td_pcpu_probe_err;
static DECLARE_COMPLETION(td_pcpu_probed);

/* Replace this CPU's scratch buffer; returns 0 or -ENOMEM. */
static int td_pcpu_refill_local(struct td_pcpu_cache *pc)
{
	struct td_pcpu_slot *slot;
	void *buf, *old;

	/* Allocate while we may still sleep, then pin the CPU. */
	buf = kmalloc(TD_PCPU_SCRATCH_SIZE, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;

	slot = per_cpu_ptr(pc->slots, get_cpu());
	old = slot->scratch;
	slot->scratch = buf;
	slot->refills++;
	put_cpu();

	kfree(old);
	return 0;
}

static void td_pcpu_cache_free(struct td_pcpu_cache *pc)
{
	int cpu;

	for_each_possible_cpu(cpu)
		kfree(per_cpu_ptr(pc->slots, cpu)->scratch);
	free_percpu(pc->slots);
	kfree(pc);
}

static int td_pcpu_probe(void)
{
	struct td_pcpu_cache *pc;
	int i;

	pc = kzalloc(sizeof(*pc), GFP_KERNEL);
	if (!pc)
		return -ENOMEM;
	pc->slots = alloc_percpu(struct td_pcpu_slot);
	if (!pc->slots) {
		kfree(pc);
		return -ENOMEM;
	}

	for (i = 0; i < TD_PCPU_ROUNDS; i++)
		if (!td_pcpu_refill_local(pc))
			pc->refills++;

	td_pcpu_cache = pc;
	return 0;
}

static void td_pcpu_remove(void)
{
	td_pcpu_cache_free(td_pcpu_cache);
}

/* Probe asynchronously, from a work item. */
static void td_pcpu_probe_work_fn(struct work_struct *work)
{
	td_pcpu_probe_err = td_pcpu_probe();
	complete(&td_pcpu_probed);
}
static DECLARE_WORK(td_pcpu_probe_work, td_pcpu_probe_work_fn);

static int __init td_percpu_sleep_clean_init(void)
{
	schedule_work(&td_pcpu_probe_work);
	if (!wait_for_completion_timeout(&td_pcpu_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_pcpu_probe_work);
	if (td_pcpu_probe_err)
		return td_pcpu_probe_err;

	pr_info("scenario complete: %u refills\n", td_pcpu_cache->refills);
	return 0;
}

static void __exit td_percpu_sleep_clean_exit(void)
{
	td_pcpu_remove();
}

module_init(td_percpu_sleep_clean_init);
module_exit(td_percpu_sleep_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: GFP_KERNEL allocation before get_cpu() (clean twin)");
