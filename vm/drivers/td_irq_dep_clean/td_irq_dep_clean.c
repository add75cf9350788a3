// SPDX-License-Identifier: GPL-2.0
/*
 * td_irq_dep_clean - tracedep example driver, clean twin of td_irq_dep_bug.
 *
 * A toy DMA device: its "interrupt handler" (an hrtimer in
 * HRTIMER_MODE_REL_HARD, so hardirq context) advances the hardware head under
 * dd->irq_lock.  Process context copies the head into a mapping table
 * protected by the static td_dma_map_lock, nesting it inside dd->irq_lock, and
 * a garbage-collection pass cleans the mapping table on its own.  The probe
 * routine (run from a work item) does a few rounds of "interrupt, update,
 * gc".
 *
 * Same work as td_irq_dep_bug, done correctly: td_dma_map_lock nests inside
 * the HARDIRQ-safe dd->irq_lock, so td_dma_map_gc() also takes it with
 * interrupts disabled (spin_lock_irqsave); it is never HARDIRQ-unsafe.
 * Expected findings: none.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/hrtimer.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_DMA_ROUNDS		4
#define TD_DMA_MAP_SLOTS	8
#define TD_DMA_IRQ_DELAY_NS	(200 * NSEC_PER_USEC)
#define TD_DMA_IRQ_TIMEOUT_MS	2000
#define TD_PROBE_TIMEOUT_MS	5000

/* Mapping table shared by all td_dma devices. */
static DEFINE_SPINLOCK(td_dma_map_lock);
static u32 td_dma_map[TD_DMA_MAP_SLOTS];
static unsigned int td_dma_map_used;

struct td_dma_dev {
	spinlock_t irq_lock;		/* protects hw_head; taken in hardirq */
	u32 hw_head;
	unsigned int irqs;
	unsigned int dropped;

	struct hrtimer irq_timer;	/* stands in for the device interrupt */
	struct completion irq_seen;
};

static struct td_dma_dev *td_dma_dev;
static int td_dma_probe_err;
static DECLARE_COMPLETION(td_dma_probed);

static enum hrtimer_restart td_dma_irq_fn(struct hrtimer *t)
{
	struct td_dma_dev *dd = container_of(t, struct td_dma_dev, irq_timer);

	spin_lock(&dd->irq_lock);
	dd->hw_head += 4;
	dd->irqs++;
	spin_unlock(&dd->irq_lock);

	complete(&dd->irq_seen);
	return HRTIMER_NORESTART;
}

/* Publish the current hardware head in the mapping table. */
static void td_dma_map_update(struct td_dma_dev *dd, unsigned int slot)
{
	unsigned long flags;

	spin_lock_irqsave(&dd->irq_lock, flags);
	spin_lock(&td_dma_map_lock);
	td_dma_map[slot % TD_DMA_MAP_SLOTS] = dd->hw_head;
	td_dma_map_used++;
	spin_unlock(&td_dma_map_lock);
	spin_unlock_irqrestore(&dd->irq_lock, flags);
}

/* Drop mappings older than @keep; returns how many were dropped. */
static unsigned int td_dma_map_gc(u32 keep)
{
	unsigned int i, dropped = 0;
	unsigned long flags;

	/* td_dma_map_lock nests inside a hardirq-safe lock: IRQs off. */
	spin_lock_irqsave(&td_dma_map_lock, flags);
	for (i = 0; i < TD_DMA_MAP_SLOTS; i++) {
		if (td_dma_map[i] && td_dma_map[i] < keep) {
			td_dma_map[i] = 0;
			dropped++;
		}
	}
	td_dma_map_used -= min(dropped, td_dma_map_used);
	spin_unlock_irqrestore(&td_dma_map_lock, flags);

	return dropped;
}

static int td_dma_probe(void)
{
	struct td_dma_dev *dd;
	int i;

	dd = kzalloc(sizeof(*dd), GFP_KERNEL);
	if (!dd)
		return -ENOMEM;
	spin_lock_init(&dd->irq_lock);
	init_completion(&dd->irq_seen);
	hrtimer_init(&dd->irq_timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL_HARD);
	dd->irq_timer.function = td_dma_irq_fn;

	for (i = 0; i < TD_DMA_ROUNDS; i++) {
		hrtimer_start(&dd->irq_timer, ns_to_ktime(TD_DMA_IRQ_DELAY_NS),
			      HRTIMER_MODE_REL_HARD);
		if (!wait_for_completion_timeout(&dd->irq_seen,
						 msecs_to_jiffies(TD_DMA_IRQ_TIMEOUT_MS))) {
			pr_err("interrupt timer did not fire\n");
			hrtimer_cancel(&dd->irq_timer);
			kfree(dd);
			return -ETIMEDOUT;
		}
		/* The callback may still be returning: wait for it. */
		hrtimer_cancel(&dd->irq_timer);
		td_dma_map_update(dd, i);
		dd->dropped += td_dma_map_gc(dd->hw_head);
	}

	td_dma_dev = dd;
	return 0;
}

static void td_dma_remove(void)
{
	hrtimer_cancel(&td_dma_dev->irq_timer);
	kfree(td_dma_dev);
}

/* Probe asynchronously, from a work item. */
static void td_dma_probe_work_fn(struct work_struct *work)
{
	td_dma_probe_err = td_dma_probe();
	complete(&td_dma_probed);
}
static DECLARE_WORK(td_dma_probe_work, td_dma_probe_work_fn);

static int __init td_irq_dep_clean_init(void)
{
	schedule_work(&td_dma_probe_work);
	if (!wait_for_completion_timeout(&td_dma_probed,
					 msecs_to_jiffies(TD_PROBE_TIMEOUT_MS)))
		pr_err("probe is taking too long\n");
	flush_work(&td_dma_probe_work);
	if (td_dma_probe_err)
		return td_dma_probe_err;

	pr_info("scenario complete: %u interrupts, %u mappings dropped\n",
		td_dma_dev->irqs, td_dma_dev->dropped);
	return 0;
}

static void __exit td_irq_dep_clean_exit(void)
{
	td_dma_remove();
}

module_init(td_irq_dep_clean_init);
module_exit(td_irq_dep_clean_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: lock nested in a HARDIRQ-safe lock, always IRQs off (clean twin)");
