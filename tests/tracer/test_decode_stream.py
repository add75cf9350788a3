"""tracer.decode_stream: a trace decoded a batch of pages at a time is the trace
decoded in one piece, row for row.

The reference is one batch holding every page: ``decode()`` over whole buffers, as
``decode_run`` did before it streamed.  On the recorded run directories
(tests/data/traces: tiny, classes, lockdep), whole and damaged: a file cut mid-page,
a page changed since it was recorded (its sum differs), pages out of time order,
compressed pages.  Batches of one page are the hardest case (every page edge is a
batch edge); 3 pages and the default too.  Both ways out are checked: the windows
(streaming) and ``whole()`` (what decode_run returns).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_RUN, tiny_run_copy

from tracedep.tracer import page_sums, ring_pages
from tracedep.tracer.decode_stream import StreamDecoder
from tracedep.tracer.ftrace_binary import Decoded

TRACES = Path(__file__).parents[1] / "data" / "traces"
RUNS = [TINY_RUN, TRACES / "classes" / "raw", TRACES / "lockdep" / "raw"]
PAGE = 4096
SAME = ("counts", "torn_pages", "missed_events", "total", "backwards_pages", "rejected",
        "damaged_pages", "missing_pages", "records_per_cpu")


def _stream(run: Path, batch: int) -> tuple[pd.DataFrame, Decoded, list[int]]:
    sd = StreamDecoder(run, batch_pages=batch)
    wins = list(sd.windows())
    ev = pd.concat([w.events.astype({c: object for c in w.events.columns if isinstance(
        w.events[c].dtype, pd.CategoricalDtype)}) for w in wins], ignore_index=True)
    return ev, sd.decoded(), [w.row0 for w in wins]


ONE_BATCH = 1 << 40


def _one_piece(run: Path) -> Decoded:
    return StreamDecoder(run, batch_pages=ONE_BATCH).whole()


def _same(run: Path, batch: int, lockdep_names: bool = True) -> None:
    whole = _one_piece(run)
    _same_frames(StreamDecoder(run, batch_pages=batch).whole(), whole, ("stack_id",))
    ev, d, _ = _stream(run, batch)
    d.events = ev
    # the windows' task names are those known when they leave (module docstring)
    _same_frames(d, whole, ("stack_id", "comm") + (() if lockdep_names else ("lock_name",)))


def _same_frames(d: Decoded, whole: Decoded, skip: tuple[str, ...]) -> None:
    ev = d.events
    we = whole.events
    assert len(ev) == len(we)
    for c in we.columns:
        if c in skip:
            continue
        want = we[c].astype(object) if isinstance(we[c].dtype, pd.CategoricalDtype) else we[c]
        assert (ev[c].to_numpy() == want.to_numpy()).all(), c
    # stack ids are numbered in the order stacks are read; the stacks are the same
    got = [d.stacks[i] if i >= 0 else () for i in ev["stack_id"]]
    assert got == [whole.stacks[i] if i >= 0 else () for i in we["stack_id"]]
    for k in SAME:
        assert getattr(d, k) == getattr(whole, k), k
    assert d.comms == whole.comms
    assert {k: v for k, v in d.calibration.items() if k != "_spin_votes"} == {
        k: v for k, v in whole.calibration.items() if k != "_spin_votes"}
    assert [vars(x) for x in d.module_loads] == [vars(x) for x in whole.module_loads]


@pytest.mark.parametrize("batch", [1, 3, 1024])
@pytest.mark.parametrize("run", RUNS[:2], ids=lambda p: p.parent.name + "/" + p.name)
def test_windows_are_the_whole_frame(run: Path, batch: int) -> None:
    _same(run, batch)


def test_windows_leave_in_time_order_and_more_than_one() -> None:
    sd = StreamDecoder(TINY_RUN, batch_pages=1)
    wins = list(sd.windows())
    assert len(wins) > 2
    ts = np.concatenate([w.events["ts_ns"].to_numpy() for w in wins])
    assert (np.diff(ts) >= 0).all()
    assert [w.row0 for w in wins] == np.cumsum([0] + [len(w.events) for w in wins[:-1]]
                                               ).tolist()


@pytest.mark.parametrize("batch", [1, 1024])
def test_lockdep_names_across_batches(batch: int) -> None:
    """On a lockdep kernel a probe row is named by the lockdep event after it; when
    that event opens the CPU's next batch the name is lost (module docstring): the
    rest is the same, and with whole batches the names too."""
    run = RUNS[2]
    _same(run, batch, lockdep_names=batch > 1)
    ev, d, _ = _stream(run, batch)
    named = (_one_piece(run).events["lock_name"].astype(str) != "").sum()
    assert named - 4 <= (ev["lock_name"].astype(str) != "").sum() <= named


def _pages(p: Path) -> int:
    return p.stat().st_size // PAGE


@pytest.mark.parametrize("batch", [1, 2, 1024])
def test_a_file_cut_mid_page(tmp_path: Path, batch: int) -> None:
    run = tiny_run_copy(tmp_path)
    raw = run / "trace" / "cpu0.raw"
    data = raw.read_bytes()
    raw.write_bytes(data[: len(data) - PAGE - 100])
    _same(run, batch)
    assert _one_piece(run).torn_pages >= 1


@pytest.mark.parametrize("batch", [1, 2, 1024])
def test_a_changed_page_and_pages_out_of_time_order(tmp_path: Path, batch: int) -> None:
    run = tiny_run_copy(tmp_path)
    for raw in (run / "trace").glob("cpu*.raw"):
        data = bytearray(raw.read_bytes())
        assert len(data) // PAGE >= 5
        struct.pack_into("<Q", data, 2 * PAGE, 1 << 60)  # page 2 claims the far future
        struct.pack_into("<Q", data, 4 * PAGE, 5)  # page 4 the far past
        raw.write_bytes(bytes(data))
        page_sums.write(raw, PAGE)  # as the run does (tracer.page_sums)
        data[PAGE + 200] ^= 0xFF  # page 1 changed since the run: its sum differs
        raw.write_bytes(bytes(data))
    whole = _one_piece(run)
    assert whole.damaged_pages and whole.backwards_pages == 2
    _same(run, batch)


def test_compressed_pages(tmp_path: Path) -> None:
    run = tiny_run_copy(tmp_path)
    for raw in (run / "trace").glob("cpu*.raw"):
        with gzip.open(raw.with_name(raw.name + ".gz"), "wb") as f:
            f.write(raw.read_bytes())
        raw.unlink()
    _same(run, 1)
    _same(run, 1024)


def test_both_walkers_carry_the_walk_across_batches() -> None:
    """Page by page with a cursor, the C and the Python walker give the whole walk's
    records and verdicts (one page from the past among them)."""
    from tracedep.tracer import control
    from tracedep.tracer.ftrace_formats import parse_header_page

    hp = parse_header_page(control.load(TINY_RUN / "control.log").header_page())
    data = bytearray((TINY_RUN / "trace" / "cpu0.raw").read_bytes())
    struct.pack_into("<Q", data, 3 * PAGE, 5)
    buf = bytes(data)
    lib = ring_pages._native()
    assert lib is not None  # cc is part of the set-up

    def walk(native: bool, batch: int) -> tuple[list[int], list[int]]:
        recs = ring_pages.RawRecords()
        statuses: list[int] = []
        cur = ring_pages.CpuCursor()
        for a in range(0, len(buf), batch * PAGE):
            part = buf[a:a + batch * PAGE]
            cur.lookahead = buf[a + batch * PAGE:a + (batch + 1) * PAGE]
            st = np.zeros(len(part) // PAGE, np.int8)
            walked = part + cur.lookahead
            if native:
                assert ring_pages.walk_native(lib, walked, a, 0, hp, recs, st, cur)
            else:
                ring_pages.walk_pages(walked, a, 0, hp, recs, st, cur)
            statuses += st.tolist()
        return recs.arrays()[1].tolist(), statuses

    whole = walk(False, 64)
    assert 2 in whole[1]  # the page from the past was found
    for native in (True, False):
        assert walk(native, 1) == whole
