// SPDX-License-Identifier: GPL-2.0
/*
 * td_heap_class_clean - tracedep example driver, clean twin of td_heap_class_bug.
 *
 * A toy DMA engine with two or more channels (module parameter nr_chans).
 * Each channel is a separately kmalloc'd struct td_chan, all allocated by the
 * single kzalloc() in td_chan_create() (the channel count is not a constant,
 * so the compiler cannot unroll that loop into several allocation sites).  A
 * channel holds two spinlocks: state_lock (channel state machine) and
 * fifo_lock (descriptor FIFO).  The probe routine (run from a work item)
 * starts channel 0, and posts to and drains channel 1, a few times.
 *
 * Same work as td_heap_class_bug, done correctly: td_chan_start() and
 * td_chan_drain() both take ->state_lock before ->fifo_lock, so the two lock
 * classes are always nested the same way.  Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/jiffies.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_MAX_CHANS		4
#define TD_CHAN_ROUNDS		4
#define TD_CHAN_FIFO_DEPTH	16
#define TD_PROBE_TIMEOUT_MS	5000

enum td_chan_state {
	TD_CHAN_IDLE,
	TD_CHAN_RUNNING,
};

struct td_chan {
	unsigned int id;
	spinlock_t state_lock;		/* protects state, starts */
	enum td_chan_state state;
	unsigned int starts;

	spinlock_t fifo_lock;		/* protects the descriptor FIFO */
	unsigned int fifo_head;
	unsigned int fifo_tail;
	u32 fifo[TD_CHAN_FIFO_DEPTH];
};

struct td_dma {
	unsigned int nr_chans;
	struct td_chan *chans[TD_MAX_CHANS];
	unsigned int drained;
};

static unsigned int nr_chans = 2;
module_param(nr_chans, uint, 0444);
MODULE_PARM_DESC(nr_chans, "number of DMA channels to create (2-4)");

static struct td_dma *td_dma;
static int td_dma_probe_err;
static DECLARE_COMPLETION(td_dma_probed);

static struct td_chan *td_chan_create(unsigned int id)
{
	struct td_chan *c;

	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return NULL;
	c->id = id;
	spin_lock_init(&c->state_lock);
	spin_lock_init(&c->fifo_lock);
	c->state = TD_CHAN_IDLE;
	return c;
}

/* Start the channel and post one descriptor: state_lock -> fifo_lock. */
static void td_chan_start(struct td_chan *c, u32 desc)
{
	spin_lock(&c->state_lock);
	c->state = TD_CHAN_RUNNING;
	c->starts++;
	spin_lock(&c->fifo_lock);
	c->fifo[c->fifo_head++ % TD_CHAN_FIFO_DEPTH] = desc;
	spin_unlock(&c->fifo_lock);
	spin_unlock(&c->state_lock);
}

/* Queue one descriptor on a channel that is already running: fifo_lock only. */
static void td_chan_post(struct td_chan *c, u32 desc)
{
	spin_lock(&c->fifo_lock);
	c->fifo[c->fifo_head++ % TD_CHAN_FIFO_DEPTH] = desc;
	spin_unlock(&c->fifo_lock);
}

/* Drain the FIFO and idle the channel; returns the descriptors drained. */
static unsigned int td_chan_drain(struct td_chan *c)
{
	unsigned int n;

	/* state_lock -> fifo_lock, as in td_chan_start(). */
	spin_lock(&c->state_lock);
	spin_lock(&c->fifo_lock);
	n = c->fifo_head - c->fifo_tail;
	c->fifo_tail = c->fifo_head;
	spin_unlock(&c->fifo_lock);
	c->state = TD_CHAN_IDLE;
	spin_unlock(&c->state_lock);

	return n;
}

static void td_dma_free(struct td_dma *dma)
{
	int i;

	for (i = 0; i < dma->nr_chans; i++)
		kfree(dma->chans[i]);
	kfree(dma);
}

static int td_dma_probe(void)
{
	struct td_dma *dma;
	int i;

	dma = kzalloc(sizeof(*dma), GFP_KERNEL);
	if (!dma)
		return -ENOMEM;
	/* Every channel comes from the one allocation in td_chan_create(). */
	for (i = 0; i < clamp(nr_chans, 2u, (unsigned int)TD_MAX_CHANS); i++) {
		dma->chans[i] = td_chan_create(i);
		if (!dma->chans[i]) {
			td_dma_free(dma);
			return -ENOMEM;
		}
		dma->nr_chans++;
	}

	for (i = 0; i < TD_CHAN_ROUNDS; i++) {
		td_chan_start(dma->chans[0], 0x1000 + i);
		td_chan_post(dma->chans[1], 0x2000 + i);
		dma->drained += td_chan_drain(dma->chans[1]);
	}

	td_dma = dma;
	return 0;
}

static void td_dma_remove(void)
{
	td_dma_free(td_dma);
}

/* Probe asynchronously, from a work item. */
static void td_dma_probe_work_fn(struct work_struct *work)
{
	td_dma_probe_err = td_dma_probe();
	complete(&td_dma_probed);
}
static DECLARE_WORK(td_dma_probe_work, td_dma_probe_work_fn);

static int __init td_heap_class_clean_init(void)
{
	schedule_work(&td_dma_probe_work);
	if (!wait_for_completion_timeout(&td_dma_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_dma_probe_work);
	if (td_dma_probe_err)
		return td_dma_probe_err;

	pr_info("scenario complete: chan0 started %u times, chan1 drained %u\n",
		td_dma->chans[0]->starts, td_dma->drained);
	return 0;
}

static void __exit td_heap_class_clean_exit(void)
{
	td_dma_remove();
}

module_init(td_heap_class_clean_init);
module_exit(td_heap_class_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: consistent lock-class order across heap instances (clean twin)");
