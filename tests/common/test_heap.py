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


_FAULTS = """
import resource, sys
import numpy as np
from tracedep.common import heap
if sys.argv[1] == "reuse" and not heap.reuse_windows():
    print("skip"); raise SystemExit
def window():  # a stream's window: a few MB of arrays, freed before the next
    a = np.ones(1 << 20, np.int64); b = a * 2; return int(b[-1])
window()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    window()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def test_reused_windows_fault_no_pages_in_again() -> None:
    """After ``reuse_windows`` the next window's arrays take the pages the last one
    freed: no page faults, where by default glibc hands them back and faults them in
    again, ~1,000 a window here (in a child: the setting is for the whole process)."""
    import subprocess
    import sys

    got = {}
    for how in ("default", "reuse"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, how], capture_output=True,
                             text=True, check=True).stdout.strip()
        if out == "skip":
            pytest.skip("this libc has no mallopt")
        got[how] = int(out)
    assert got["default"] > 50 * 500, got  # of the two 8 MB arrays' 4,096 pages
    assert got["reuse"] < 1000, got
