// SPDX-License-Identifier: GPL-2.0
/*
 * td_trylock_clean - tracedep example driver, clean twin of td_trylock_bug.
 *
 * A toy transmit queue with two spinlocks in its structure: tx_lock
 * (serialises transmitters) and ring_lock (descriptor ring indices).  The
 * probe routine (run from a work item) transmits a few packets, then kicks a
 * reclaim work item that reclaims them.
 *   td_txq_xmit()     tx_lock -> ring_lock
 *   td_txq_reclaim()  ring_lock -> spin_trylock(tx_lock), backing off if busy
 *
 * NOT A BUG: the reclaim path nests in the opposite order, but only with
 * spin_trylock(), which never waits, so no cycle can block (lockdep does not
 * add a dependency for a trylock either).  Expected findings: none.
 *
 * Bug twin: td_trylock_bug (td_txq_reclaim() uses spin_lock(tx_lock)).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_TXQ_ROUNDS		4
#define TD_TXQ_RING_SIZE	64
#define TD_PROBE_TIMEOUT_MS	5000

struct td_txq {
	spinlock_t tx_lock;		/* A: serialises transmitters */
	u32 tx_bytes;

	spinlock_t ring_lock;		/* B: protects head, tail */
	u32 head;
	u32 tail;
	u32 ring[TD_TXQ_RING_SIZE];

	unsigned int reclaimed;
	unsigned int reclaim_busy;
	struct work_struct reclaim_work;
	struct completion reclaim_done;
};

static struct td_txq *td_txq;
static int td_txq_probe_err;
static DECLARE_COMPLETION(td_txq_probed);

/* tx_lock -> ring_lock */
static void td_txq_xmit(struct td_txq *q, u32 len)
{
	spin_lock(&q->tx_lock);
	q->tx_bytes += len;
	spin_lock(&q->ring_lock);
	q->ring[q->head++ % TD_TXQ_RING_SIZE] = len;
	spin_unlock(&q->ring_lock);
	spin_unlock(&q->tx_lock);
}

/* Reclaim one completed descriptor; false when the ring is empty or busy. */
static bool td_txq_reclaim(struct td_txq *q)
{
	bool done = false;

	spin_lock(&q->ring_lock);
	if (q->tail == q->head)
		goto out;
	/* Opposite order to td_txq_xmit(): only try, never wait. */
	if (!spin_trylock(&q->tx_lock)) {
		q->reclaim_busy++;
		goto out;
	}
	q->tx_bytes -= q->ring[q->tail++ % TD_TXQ_RING_SIZE];
	q->reclaimed++;
	done = true;
	spin_unlock(&q->tx_lock);
out:
	spin_unlock(&q->ring_lock);
	return done;
}

static void td_txq_reclaim_work(struct work_struct *work)
{
	struct td_txq *q = container_of(work, struct td_txq, reclaim_work);

	while (td_txq_reclaim(q))
		;
	complete(&q->reclaim_done);
}

static int td_txq_probe(void)
{
	struct td_txq *q;
	int i;

	q = kzalloc(sizeof(*q), GFP_KERNEL);
	if (!q)
		return -ENOMEM;
	spin_lock_init(&q->tx_lock);
	spin_lock_init(&q->ring_lock);
	INIT_WORK(&q->reclaim_work, td_txq_reclaim_work);
	init_completion(&q->reclaim_done);

	for (i = 0; i < TD_TXQ_ROUNDS; i++)
		td_txq_xmit(q, 60 + 100 * i);

	schedule_work(&q->reclaim_work);
	if (!wait_for_completion_timeout(&q->reclaim_done,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("reclaim work is taking too long\n");
	flush_work(&q->reclaim_work);

	td_txq = q;
	return 0;
}

static void td_txq_remove(void)
{
	cancel_work_sync(&td_txq->reclaim_work);
	kfree(td_txq);
}

/* Probe asynchronously, from a work item. */
static void td_txq_probe_work_fn(struct work_struct *work)
{
	td_txq_probe_err = td_txq_probe();
	complete(&td_txq_probed);
}
static DECLARE_WORK(td_txq_probe_work, td_txq_probe_work_fn);

static int __init td_trylock_clean_init(void)
{
	schedule_work(&td_txq_probe_work);
	if (!wait_for_completion_timeout(&td_txq_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_txq_probe_work);
	if (td_txq_probe_err)
		return td_txq_probe_err;

	pr_info("scenario complete: %u reclaimed, %u busy, %u bytes in flight\n",
		td_txq->reclaimed, td_txq->reclaim_busy, td_txq->tx_bytes);
	return 0;
}

static void __exit td_trylock_clean_exit(void)
{
	td_txq_remove();
}

module_init(td_trylock_clean_init);
module_exit(td_trylock_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: reverse nesting with spin_trylock, not a bug (clean)");
