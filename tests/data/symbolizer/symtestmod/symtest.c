// SPDX-License-Identifier: GPL-2.0
/*
 * Symbolizer test module: inline chains, a cold path and init-only code, so
 * that addresses land in .text, .text.unlikely and .init.text.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

static DEFINE_SPINLOCK(symtest_lock);
static DEFINE_MUTEX(symtest_mutex);
static int symtest_counter;

struct symtest_obj {
	spinlock_t lock;
	int value;
};

static __always_inline int symtest_leaf(int x)
{
	symtest_counter += x;
	return symtest_counter * 3;
}

static __always_inline int symtest_middle(int x)
{
	int r;

	spin_lock(&symtest_lock);
	r = symtest_leaf(x + 1);
	spin_unlock(&symtest_lock);
	return r;
}

static noinline __cold void symtest_report(int v)
{
	pr_info("symtest: value %d\n", v);
}

noinline int symtest_outer(int x)
{
	int r = symtest_middle(x);

	if (unlikely(r > 1000))
		symtest_report(r);
	return r + symtest_middle(r & 7);
}
EXPORT_SYMBOL_GPL(symtest_outer);

static noinline struct symtest_obj *symtest_alloc(int v)
{
	struct symtest_obj *o = kmalloc(sizeof(*o), GFP_KERNEL);

	if (!o)
		return NULL;
	spin_lock_init(&o->lock);
	spin_lock(&o->lock);
	o->value = symtest_leaf(v);
	spin_unlock(&o->lock);
	return o;
}

static int __init symtest_init(void)
{
	struct symtest_obj *o;

	mutex_lock(&symtest_mutex);
	o = symtest_alloc(symtest_outer(2));
	mutex_unlock(&symtest_mutex);
	kfree(o);
	return 0;
}

static void __exit symtest_exit(void)
{
	mutex_lock(&symtest_mutex);
	symtest_counter = symtest_middle(0);
	mutex_unlock(&symtest_mutex);
}

module_init(symtest_init);
module_exit(symtest_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep symbolizer test module");
