"""A CPU that changes task with no context switch traced gets a gap (tracer.unseen_switches).

On real recorded runs (tests/data/traces): none has such a change; a ``sched_switch``
record discarded from the ring-buffer pages (made padding, as the kernel discards a
record) leaves one, found at the next task's first record, in one decode or in batches
of one page, and said in the analysis's report; a torn page already is a gap and
adds none."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracedep import cli
from tracedep.tracer import control, ring_pages, unseen_switches
from tracedep.tracer.decode_stream import StreamDecoder, decode_run
from tracedep.tracer.ftrace_binary import Decoded
from tracedep.tracer.ftrace_formats import parse_header_page

DATA = Path(__file__).parents[1] / "data" / "traces"
TINY = DATA / "tiny"
RUNS = [TINY, DATA / "classes" / "raw", DATA / "lockdep" / "raw"]


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.relative_to(DATA).as_posix())
def test_real_runs_have_none(run: Path) -> None:
    d = decode_run(run)
    assert (d.events["kind"] == "sched_switch").sum() > 0
    assert d.unseen_switches == 0 and d.unseen_switch_first is None
    assert not (d.events["kind"] == "gap").any()


def _switch_records(raw: bytes) -> list[tuple[int, int]]:
    """(offset of the record's header, data length) of each sched_switch record."""
    ctl = control.load(TINY / "control.log")
    hp = parse_header_page(ctl.header_page() or "")
    sw_id = next(int(line.split()[1]) for line in
                 ctl.formats()["sched/sched_switch"].splitlines() if line.startswith("ID:"))
    out = ring_pages.RawRecords()
    for page in range(len(raw) // hp.page_size):
        ring_pages.walk_pages(raw[page * hp.page_size:(page + 1) * hp.page_size],
                              page * hp.page_size, 0, hp, out)
    return [(o - 4, n) for o, n in zip(out.off, out.length, strict=True)
            if struct.unpack_from("<H", raw, o)[0] == sw_id]


def _discard(raw: bytes, header: int, length: int) -> bytes:
    """The pages with one record discarded: padding of its length, as the kernel's
    ring buffer leaves a discarded event (type_len 29, its length in array[0])."""
    b = bytearray(raw)
    (word,) = struct.unpack_from("<I", b, header)
    assert 1 <= word & 31 <= 28  # a short record: the length is in type_len
    struct.pack_into("<II", b, header, ((word >> 5) or 1) << 5 | 29, length)
    return bytes(b)


def _run_with(tmp_path: Path, raw: bytes) -> Path:
    run = tmp_path / "run"
    shutil.copytree(TINY, run)
    (run / "trace" / "cpu0.raw").write_bytes(raw)
    return run


def _without(events: pd.DataFrame, rows: list[int]) -> pd.DataFrame:
    return events.drop(index=rows)[["cpu", "pid", "kind"]].astype(
        {"kind": object}).reset_index(drop=True)


@pytest.fixture(scope="module")
def whole() -> Decoded:
    return decode_run(TINY)


# the tiny run's six context switches; before the first, which task runs is unknown
SWITCHES = range(1, 6)


def test_before_a_cpus_first_switch_no_task_is_known(tmp_path: Path) -> None:
    raw = (TINY / "trace" / "cpu0.raw").read_bytes()
    d = decode_run(_run_with(tmp_path, _discard(raw, *_switch_records(raw)[0])))
    assert d.unseen_switches == 0 and not (d.events["kind"] == "gap").any()


@pytest.mark.parametrize("nth", SWITCHES)
@pytest.mark.parametrize("batch_pages", [None, 1], ids=["whole", "page-by-page"])
def test_a_discarded_switch_is_a_gap_before_the_next_tasks_first_record(
        tmp_path: Path, whole: Decoded, nth: int, batch_pages: int | None) -> None:
    raw = (TINY / "trace" / "cpu0.raw").read_bytes()
    header, length = _switch_records(raw)[nth]
    run = _run_with(tmp_path, _discard(raw, header, length))
    d = decode_run(run) if batch_pages is None else StreamDecoder(run, batch_pages=1).whole()
    ev = whole.events
    at = int(np.nonzero((ev["kind"] == "sched_switch").to_numpy())[0][nth])
    prev, nxt = int(ev["pid"].iat[at]), int(ev["target_pid"].iat[at])
    first = at + 1 + int(np.argmax(ev["pid"].to_numpy()[at + 1:] == nxt))
    assert d.unseen_switches == 1
    u = d.unseen_switch_first
    assert u is not None and (u.cpu, u.from_pid, u.to_pid) == (0, prev, nxt)
    gaps = np.nonzero((d.events["kind"] == "gap").to_numpy())[0]
    # the gap is the row before the next task's first; the rest is the whole decode
    # less the switch (its time deltas aside: a discarded record's is lost)
    assert gaps.tolist() == [first - 1]
    assert int(d.events["pid"].iat[first]) == nxt and u.ts_ns == int(d.events["ts_ns"].iat[first])
    pd.testing.assert_frame_equal(_without(d.events, gaps.tolist()), _without(ev, [at]))


def test_a_torn_page_is_the_gap_and_adds_no_unseen_switch(whole: Decoded) -> None:
    raw = (TINY / "trace" / "cpu0.raw").read_bytes()
    header, _ = _switch_records(raw)[2]
    page = header // 4096
    b = bytearray(raw)
    struct.pack_into("<II", b, page * 4096 + 16, 7 << 5, 0xFFFF_FFF0)  # a length past the page
    ctl = control.load(TINY / "control.log")
    info = json.loads((TINY / "manifest.json").read_text())
    from tracedep.tracer.ftrace_binary import decode
    d = decode({0: bytes(b)}, ctl.header_page() or "", ctl.formats(),
               int(info["call_insn_size"]), False,
               ctl.file("/sys/kernel/tracing/saved_cmdlines") or "")
    assert d.torn_pages == 1 and int((d.events["kind"] == "gap").sum()) == 1
    assert d.unseen_switches == 0


def _arrays(d: Decoded) -> dict[str, np.ndarray]:
    ev = d.events
    real = (ev["kind"] != "gap").to_numpy()
    return {"cpu": ev["cpu"].to_numpy()[real], "pid": ev["pid"].to_numpy()[real],
            "ts": ev["ts_ns"].to_numpy()[real],
            "is_switch": (ev["kind"] == "sched_switch").to_numpy()[real],
            "target": ev["target_pid"].to_numpy()[real]}


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_found_the_same_in_batches_of_any_size(tmp_path: Path, size: int) -> None:
    """The state a batch leaves to the next (SwitchState) makes batches find what the
    whole does: two switches discarded, and a torn page between them."""
    raw = (TINY / "trace" / "cpu0.raw").read_bytes()
    recs = _switch_records(raw)
    damaged = _discard(_discard(raw, *recs[1]), *recs[4])
    cols = _arrays(decode_run(_run_with(tmp_path, damaged)))
    # the records as they were read (the decode's gap rows are what is to be found),
    # with one place events are missing, between the two switches (after it, which
    # task runs is known again at the next switch, before the second discarded one)
    gaps = cols["ts"][[int(np.nonzero(cols["is_switch"])[0][1]) + 2]]
    whole = unseen_switches.find(cols["cpu"], cols["pid"], cols["ts"], cols["is_switch"],
                                 cols["target"], np.zeros(len(gaps), np.int16), gaps)
    assert len(whole) == 2
    state = unseen_switches.SwitchState()
    got: list[unseen_switches.UnseenSwitch] = []
    n = len(cols["ts"])
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        after = cols["ts"][lo - 1] if lo else -1
        mine = gaps[(gaps > after) & (gaps <= cols["ts"][hi - 1])]
        got += unseen_switches.find(*(cols[k][lo:hi] for k in
                                      ("cpu", "pid", "ts", "is_switch", "target")),
                                    np.zeros(len(mine), np.int16), mine, state)
    assert got == whole


def test_the_report_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = (TINY / "trace" / "cpu0.raw").read_bytes()
    run = _run_with(tmp_path, _discard(raw, *_switch_records(raw)[3]))
    out = tmp_path / "out"
    assert cli.main(["analyze", str(run), "--no-dwarf", "--out", str(out)]) in (0, 1)
    health = json.loads((out / "analysis.json").read_text())["health"]
    said = [w for w in health["warnings"] if w.startswith("1 time(s) a CPU went from one task")]
    assert len(said) == 1 and "pid 14, then pid 313" in said[0], health["warnings"]
    assert health["lost"] >= 1
    assert "no context switch traced" in (out / "report.txt").read_text()
