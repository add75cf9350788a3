// SPDX-License-Identifier: GPL-2.0
/*
 * td_provides - test-only module: exports td_provides_count(), which td_needs
 * calls.  Together they check that tracedep loads modules under test after the
 * ones they depend on (modinfo depends=), not in name order.
 */
#include <linux/export.h>
#include <linux/module.h>
#include <linux/spinlock.h>

static DEFINE_SPINLOCK(td_provides_lock);
static int td_provides_calls;

int td_provides_count(void)
{
	int n;

	spin_lock(&td_provides_lock);
	n = ++td_provides_calls;
	spin_unlock(&td_provides_lock);
	return n;
}
EXPORT_SYMBOL_GPL(td_provides_count);

static int __init td_provides_init(void)
{
	return 0;
}

static void __exit td_provides_exit(void)
{
}

module_init(td_provides_init);
module_exit(td_provides_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep test module: exports a symbol td_needs uses");
