// SPDX-License-Identifier: GPL-2.0
/*
 * td_broken - test-only module that deliberately FAILS TO COMPILE.
 *
 * Used by tracedep's tests of the module build step (a kbuild error must be
 * reported with the compiler's message, as a usage/input error).  The error
 * is on purpose: td_broken_init() uses an undeclared identifier.
 */
#include <linux/module.h>

static int __init td_broken_init(void)
{
	return td_broken_undeclared_symbol;	/* deliberate compile error */
}

module_init(td_broken_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep test module: does not compile");
