"""The prefix of a run still being written (tracer.live_prefix) decodes to the whole
trace's events up to its time, row for row, however far the file has grown.

The run is the recorded real trace of tests/data/traces/tiny/ (one CPU); a copy's
``trace/cpu0.raw`` grows a few pages at a time (half a page at the end, as a live
stream leaves it).  The guest test (tests/cli/test_live_guest.py) does the same on
the bundled drivers' two-CPU run and analyses it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracedep.common import run_manifest
from tracedep.tracer import control
from tracedep.tracer.decode_stream import Prefix, StreamDecoder, decode_run
from tracedep.tracer.ftrace_formats import parse_header_page
from tracedep.tracer.live_prefix import readable_prefix

TINY = Path(__file__).parents[1] / "data" / "traces" / "tiny"
COLS = ["ts_ns", "cpu", "pid", "kind", "event", "lock_addr", "ip", "preempt_depth", "stack_id"]


def _frame(dec: StreamDecoder) -> pd.DataFrame:
    parts = [w.events[COLS].astype({"kind": str, "event": str}) for w in dec.windows()]
    return (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame({c: [] for c in COLS}))


def test_the_prefix_is_the_whole_trace_up_to_its_time(tmp_path: Path) -> None:
    info = run_manifest.read(TINY)
    whole = decode_run(TINY, info).events
    whole = whole[COLS].astype({"kind": str, "event": str})
    hp = parse_header_page(control.load(TINY / "control.log").header_page() or "")
    data = (TINY / "trace" / "cpu0.raw").read_bytes()
    pages = len(data) // hp.page_size
    run = tmp_path / "run"
    (run / "trace").mkdir(parents=True)
    assert readable_prefix(run) is None  # not even the ring buffer's header yet
    for f in ("control.log", "manifest.json"):
        shutil.copy(TINY / f, run / f)
    out = run / "trace" / "cpu0.raw"
    seen = []
    for upto in (1, pages // 3, 2 * pages // 3, pages):
        out.write_bytes(data[:upto * hp.page_size + (hp.page_size // 2 if upto < pages else 0)])
        pre = readable_prefix(run)
        assert pre is not None and pre.limits == {0: upto * hp.page_size}
        want = whole[whole["ts_ns"] <= pre.until_ns].reset_index(drop=True)
        assert len(want)
        # the growing file, and the finished one read only as far as the limits
        for src in (run, TINY):
            got = _frame(StreamDecoder(src, info, batch_pages=2, prefix=pre))
            pd.testing.assert_frame_equal(got, want, check_dtype=False)
        seen.append(pre.until_ns)
    assert seen == sorted(seen) and seen[-1] == int(whole["ts_ns"].max())


def test_a_cpu_not_in_the_prefix_gives_nothing() -> None:
    info = run_manifest.read(TINY)
    got = _frame(StreamDecoder(TINY, info, prefix=Prefix({}, 1 << 62)))
    assert got.empty


@pytest.mark.parametrize("cut", [0, 1])
def test_no_event_after_the_prefix_time(cut: int) -> None:
    info = run_manifest.read(TINY)
    ts = np.sort(decode_run(TINY, info).events["ts_ns"].to_numpy())
    until = int(ts[len(ts) // 2]) - cut
    size = (TINY / "trace" / "cpu0.raw").stat().st_size
    got = _frame(StreamDecoder(TINY, info, prefix=Prefix({0: size}, until)))
    assert len(got) == int((ts <= until).sum()) and int(got["ts_ns"].max()) <= until
