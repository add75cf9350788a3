// SPDX-License-Identifier: GPL-2.0
/*
 * td_bench_load - lock/allocation traffic generator for tracedep's benchmarks.
 *
 * Not a test driver: it has no planted bug and no expect.json (but for
 * `atomic_sleep=1`, below).  On load it
 * starts one kthread per online CPU (or `threads`); each loops for `seconds`
 * taking and releasing spinlocks (plain, irqsave, bh, nested pair), a mutex,
 * and allocating and freeing under it, as fast as the CPU allows, calling
 * cond_resched() once per round so the pumps that move the trace still run.
 * The loops also end on rmmod.  Every round is ~14 traced events (lock entry
 * probes, mutex return probe, kmalloc/kfree tracepoints, __cond_resched).
 *
 * `atomic_sleep=1` adds, to every round, a mutex_lock() under a spinlock: a
 * sleep in atomic context as a buggy driver in a loop makes it, millions of
 * times (the benchmark of what a stream keeps of them).  That mutex is only ever
 * taken under that spinlock, so it is never contended and never really sleeps.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/cpumask.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

static unsigned int seconds = 10;
module_param(seconds, uint, 0444);
MODULE_PARM_DESC(seconds, "how long each thread runs");
static unsigned int threads;
module_param(threads, uint, 0444);
MODULE_PARM_DESC(threads, "thread count (default: one per online CPU)");

static unsigned int atomic_sleep;
module_param(atomic_sleep, uint, 0444);
MODULE_PARM_DESC(atomic_sleep, "1: each round also takes a mutex under a spinlock");

#define TD_MAX_THREADS 64

static DEFINE_SPINLOCK(td_bench_outer_lock);
static DEFINE_SPINLOCK(td_bench_inner_lock);
static DEFINE_SPINLOCK(td_bench_irq_lock);
static DEFINE_MUTEX(td_bench_mutex);
static DEFINE_SPINLOCK(td_bench_atomic_lock);
static DEFINE_MUTEX(td_bench_atomic_mutex);
static struct task_struct *td_bench_tasks[TD_MAX_THREADS];
static atomic64_t td_bench_rounds = ATOMIC64_INIT(0);
static unsigned long td_bench_sink;

static void td_bench_round(void)
{
	unsigned long flags;
	void *p;

	spin_lock(&td_bench_outer_lock);
	spin_lock(&td_bench_inner_lock);
	td_bench_sink++;
	spin_unlock(&td_bench_inner_lock);
	spin_unlock(&td_bench_outer_lock);

	spin_lock_irqsave(&td_bench_irq_lock, flags);
	td_bench_sink++;
	spin_unlock_irqrestore(&td_bench_irq_lock, flags);

	spin_lock_bh(&td_bench_irq_lock);
	td_bench_sink++;
	spin_unlock_bh(&td_bench_irq_lock);

	mutex_lock(&td_bench_mutex);
	p = kmalloc(64, GFP_KERNEL);
	if (p) {
		*(unsigned long *)p = td_bench_sink;
		kfree(p);
	}
	mutex_unlock(&td_bench_mutex);

	if (atomic_sleep) {
		spin_lock(&td_bench_atomic_lock);
		mutex_lock(&td_bench_atomic_mutex);	/* may sleep: the bug, on purpose */
		mutex_unlock(&td_bench_atomic_mutex);
		spin_unlock(&td_bench_atomic_lock);
	}
}

static int td_bench_thread(void *data)
{
	unsigned long end = jiffies + (unsigned long)seconds * HZ;
	u64 n = 0;

	while (!kthread_should_stop() && time_before(jiffies, end)) {
		td_bench_round();
		n++;
		cond_resched();
	}
	atomic64_add(n, &td_bench_rounds);
	/* wait for rmmod's kthread_stop() */
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

static int __init td_bench_load_init(void)
{
	unsigned int i, n = threads ? threads : num_online_cpus();

	if (n > TD_MAX_THREADS)
		n = TD_MAX_THREADS;
	for (i = 0; i < n; i++) {
		struct task_struct *t = kthread_run(td_bench_thread, NULL, "td_bench/%u", i);

		if (IS_ERR(t))
			break;
		td_bench_tasks[i] = t;
	}
	pr_info("%u threads for %u s\n", i, seconds);
	return 0;
}

static void __exit td_bench_load_exit(void)
{
	unsigned int i;

	for (i = 0; i < TD_MAX_THREADS; i++)
		if (td_bench_tasks[i])
			kthread_stop(td_bench_tasks[i]);
	pr_info("rounds=%lld\n", (long long)atomic64_read(&td_bench_rounds));
}

module_init(td_bench_load_init);
module_exit(td_bench_load_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep benchmark: lock and allocation traffic generator");
