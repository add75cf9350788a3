// SPDX-License-Identifier: GPL-2.0
/*
 * td_nesting_clean - tracedep example driver.
 *
 * A toy device tree: struct td_node objects, each with its own spinlock,
 * all allocated by td_node_alloc().  Linking a child under its parent updates
 * both nodes' counters with both locks held, parent first.
 *
 * Clean twin of td_nesting_bug: td_node_link() takes the child's lock with
 * spin_lock_nested(..., SINGLE_DEPTH_NESTING), which tells lockdep the
 * parent-before-child nesting of one lock class is deliberate.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define TD_NODES	4

struct td_node {
	spinlock_t lock;		/* protects nr_children, parent */
	struct td_node *parent;
	unsigned int nr_children;
	unsigned int id;
};

static struct td_node *td_nodes[TD_NODES];
static DECLARE_COMPLETION(td_tree_built);
static unsigned int nr_nodes = TD_NODES;
module_param(nr_nodes, uint, 0444);

static noinline struct td_node *td_node_alloc(unsigned int id)
{
	struct td_node *n = kzalloc(sizeof(*n), GFP_KERNEL);

	if (!n)
		return NULL;
	spin_lock_init(&n->lock);
	n->id = id;
	return n;
}

static noinline void td_node_link(struct td_node *parent, struct td_node *child)
{
	spin_lock(&parent->lock);
	spin_lock_nested(&child->lock, SINGLE_DEPTH_NESTING);
	child->parent = parent;
	parent->nr_children++;
	spin_unlock(&child->lock);
	spin_unlock(&parent->lock);
}

static void td_tree_build_fn(struct work_struct *work)
{
	unsigned int i, n = min_t(unsigned int, nr_nodes, TD_NODES);

	for (i = 0; i < n; i++)
		td_nodes[i] = td_node_alloc(i);
	for (i = 1; i < n; i++)
		if (td_nodes[0] && td_nodes[i])
			td_node_link(td_nodes[0], td_nodes[i]);
	complete(&td_tree_built);
}
static DECLARE_WORK(td_tree_build_work, td_tree_build_fn);

static int __init td_nesting_init(void)
{
	schedule_work(&td_tree_build_work);
	wait_for_completion(&td_tree_built);
	pr_info("scenario complete: %u children linked\n", td_nodes[0] ? td_nodes[0]->nr_children : 0);
	return 0;
}

static void __exit td_nesting_exit(void)
{
	unsigned int i;

	flush_work(&td_tree_build_work);
	for (i = 0; i < TD_NODES; i++)
		kfree(td_nodes[i]);
}

module_init(td_nesting_init);
module_exit(td_nesting_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep example: nested locks of one class");
