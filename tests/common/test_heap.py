"""common.heap: the free heap pages a window-by-window decode leaves go back to the system."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracedep.common import heap


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_free_window_arrays_leave_the_process_once_given_back() -> None:
    # what decode_stream.whole does: a large array freed (glibc then serves arrays of
    # a few hundred kB from its heap), then many window-sized arrays, most freed, a
    # few kept between them, so the heap cannot shrink from its top
    big = np.ones(64 << 20, np.uint8)
    del big
    arrays = [np.ones(400_000 // 8, np.int64) for _ in range(800)]  # ~320 MB
    kept = arrays[15::16]
    del arrays
    before = _rss_mb()
    if not heap.give_back():
        pytest.skip("this libc has no malloc_trim")
    after = _rss_mb()
    assert before - after > 150, (before, after)
    assert all(int(a.sum()) == len(a) for a in kept)  # what is kept stays intact
