// SPDX-License-Identifier: GPL-2.0
/*
 * td_needs - test-only module: its init calls td_provides_count() from
 * td_provides, so it loads only after td_provides.  It owns no lock: the driver
 * table must still show it, with its load result.
 */
#include <linux/module.h>

int td_provides_count(void);

static int __init td_needs_init(void)
{
	return td_provides_count() > 0 ? 0 : -EINVAL;
}

static void __exit td_needs_exit(void)
{
}

module_init(td_needs_init);
module_exit(td_needs_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep test module: depends on td_provides");
