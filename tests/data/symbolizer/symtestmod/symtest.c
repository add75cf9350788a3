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

static LIST_HEAD(symtest_list);

struct symtest_item {
	struct list_head node;
	int v;
};

noinline int symtest_fill(int n)
{
	struct symtest_item *it, *tmp;
	int i, sum = 0;

	for (i = 0; i < n; i++) {
		it = kzalloc(sizeof(*it), GFP_KERNEL);
		if (!it)
			break;
		it->v = symtest_leaf(i);
		spin_lock(&symtest_lock);
		list_add_tail(&it->node, &symtest_list);
		spin_unlock(&symtest_lock);
	}
	spin_lock(&symtest_lock);
	list_for_each_entry_safe(it, tmp, &symtest_list, node) {
		sum += it->v;
		list_del(&it->node);
		kfree(it);
	}
	spin_unlock(&symtest_lock);
	return sum;
}
EXPORT_SYMBOL_GPL(symtest_fill);

static int __init symtest_init(void)
{
	struct symtest_obj *o;

	mutex_lock(&symtest_mutex);
	o = symtest_alloc(symtest_outer(2) + symtest_fill(4));
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
