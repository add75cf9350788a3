// SPDX-License-Identifier: GPL-2.0
/*
 * td_panic - test-only module: panics the guest as soon as it is loaded.
 *
 * Used by tracedep's tests of a run whose guest dies mid-trace (exit code 3,
 * partial trace kept).  Never bundled with the example drivers.
 */
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/panic.h>

static int __init td_panic_init(void)
{
	panic("td_panic: planted panic");
	return 0;
}

module_init(td_panic_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("tracedep test module: panics on load");
