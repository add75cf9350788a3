"""The binary ring-buffer decoder on recorded guest output (tests/data/traces/tiny/).

The fixture is a crop of a real ``tracedep trace`` of tests/data/drivers/td_tiny
(see tests/data/traces/README.md).  Expected counts live in
tests/data/traces/tiny/expected.json; after an intended decoder change,
regenerate them with ``TRACEDEP_RENDER=1 .venv/bin/python -m pytest -q
tests/tracer/test_ftrace_binary.py`` and read the diff.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tracedep.tracer import control, ring_pages
from tracedep.tracer.decode_stream import decode_run
from tracedep.tracer.ftrace_binary import Decoded, decode
from tracedep.tracer.ftrace_formats import parse_header_page

TINY = Path(__file__).parents[1] / "data" / "traces" / "tiny"
EXPECTED = TINY / "expected.json"
RENDER = os.environ.get("TRACEDEP_RENDER") == "1"
GFP_ATOMIC = 0xA20
PAGE = 4096


@pytest.fixture(scope="module")
def raw() -> bytes:
    return (TINY / "trace" / "cpu0.raw").read_bytes()


@pytest.fixture(scope="module")
def ctl() -> control.Control:
    return control.load(TINY / "control.log")


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TINY / "module.json").read_text())
    return data


def run_decode(buf: bytes, ctl: control.Control, native: bool) -> Decoded:
    info = json.loads((TINY / "manifest.json").read_text())
    return decode({0: buf}, ctl.header_page() or "", ctl.formats(),
                  int(info["call_insn_size"]), False,
                  ctl.file("/sys/kernel/tracing/saved_cmdlines") or "", native=native)


def real(events: pd.DataFrame) -> pd.DataFrame:
    """The events less the gap rows a damaged trace gets (tracer.schema ``gap``), with
    the categories only those rows used dropped."""
    out = events[events["kind"] != "gap"].reset_index(drop=True)
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(object)
    return out


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(real(a), real(b))


def n_gaps(d: Decoded) -> int:
    return int((d.events["kind"] == "gap").sum())


def test_header_page(ctl: control.Control) -> None:
    hp = parse_header_page(ctl.header_page() or "")
    assert (hp.timestamp_size, hp.commit_offset, hp.commit_size) == (8, 8, 8)
    assert hp.data_offset == 16 and hp.page_size == PAGE


def test_counts_by_event_and_kind() -> None:
    d = decode_run(TINY)
    got = {
        "events": d.total,
        "by_event": dict(sorted(d.counts.items())),
        "by_kind": {k: int(v) for k, v in sorted(
            d.events["kind"].astype(str).value_counts().items()) if v},
        "stacks": len(d.stacks),
        "torn_pages": d.torn_pages,
        "missed_events": d.missed_events,
    }
    if RENDER:
        EXPECTED.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(EXPECTED.read_text())
    # every record is one of ours or a kernel tracepoint we enabled: no unknown ids
    assert not [e for e in d.counts if e.startswith("unknown/")]
    assert d.torn_pages == 0 and d.missed_events == 0


def test_known_events_of_the_module(facts: dict[str, Any]) -> None:
    """td_tiny's init, as its source says: mutex, then 4 × (kmalloc GFP_ATOMIC, lock/unlock)."""
    ev = decode_run(TINY).events
    (load,) = ev[ev["kind"] == "module_load"].itertuples()
    assert load.func == "td_tiny" and load.ts_ns == facts["module_load_ts"]
    lo, hi = facts["td_tiny_fill"]
    fill = ev[(ev["ip"] >= lo) & (ev["ip"] < hi)]
    allocs = fill[fill["kind"] == "alloc"]
    assert allocs["bytes"].tolist() == [64, 96, 96, 96]  # kmalloc(64 + i): 64, then kmalloc-96
    assert (allocs["gfp"] == GFP_ATOMIC).all()
    assert (allocs["func"] == "kmalloc").all()
    ptrs = [int(x) for x in allocs["ptr"]]
    assert all(x >= 1 << 63 and x % 8 == 0 for x in ptrs) and len(set(ptrs)) == 4  # kernel heap
    spins = fill[fill["kind"] == "lock_acquire"]
    assert len(spins) == 4
    assert (spins["lock_addr"] == facts["td_tiny_lock"]).all()
    assert (spins["event"] == "tracedep/lk__raw_spin_lock").all()
    assert (spins["lock_type"] == "spinlock").all() and (spins["preempt_depth"] == 0).all()
    # the whole init ran in one task, in process context, nested in the mutex
    task = ev[ev["pid"] == spins["pid"].iloc[0]]
    assert task["comm"].iloc[0] == "insmod"
    lk = task[task["lock_addr"].isin([facts["td_tiny_lock"], facts["td_tiny_mutex"]])]
    seq = [(k, "m" if a == facts["td_tiny_mutex"] else "s")
           for k, a in zip(lk["kind"], lk["lock_addr"], strict=True)]
    assert seq == ([("lock_acquire", "m")] + [("lock_acquire", "s"), ("lock_release", "s")] * 4
                   + [("lock_release", "m")])
    # spin_unlock is a tail call: its return address is td_tiny_init's, still the module's
    rel = lk[(lk["kind"] == "lock_release") & (lk["lock_addr"] == facts["td_tiny_lock"])]
    assert ((rel["ip"] < lo) | (rel["ip"] >= hi)).all()
    # held for the duration: the release comes after the acquire, in the same task
    assert (rel["ts_ns"].to_numpy() > spins["ts_ns"].to_numpy()).all()
    sleep = task[(task["kind"] == "sleep_call") & (task["func"] == "msleep")]
    assert len(sleep) == 1 and sleep["preempt_depth"].iloc[0] == 0
    assert not sleep["irqs_off"].iloc[0]


def test_native_and_python_walkers_agree(raw: bytes, ctl: control.Control) -> None:
    assert ring_pages._native() is not None, "the C walker did not build (is cc missing?)"
    fast, slow = run_decode(raw, ctl, True), run_decode(raw, ctl, False)
    pd.testing.assert_frame_equal(fast.events, slow.events)
    assert fast.stacks == slow.stacks and fast.counts == slow.counts
    assert (fast.torn_pages, fast.missed_events) == (slow.torn_pages, slow.missed_events)
    assert len(fast.events) == decode_run(TINY).total


def cut(raw: bytes, whole_pages: int, extra: int) -> bytes:
    return raw[:whole_pages * PAGE + extra]


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
def test_truncated_mid_page_decodes_the_whole_pages(raw: bytes, ctl: control.Control,
                                                    native: bool) -> None:
    whole = run_decode(cut(raw, 3, 0), ctl, native)
    torn = run_decode(cut(raw, 3, 1500), ctl, native)
    assert 0 < len(torn.events) < len(run_decode(raw, ctl, native).events)
    pd.testing.assert_frame_equal(torn.events, whole.events)


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
def test_truncated_mid_page_counts_the_torn_page(raw: bytes, ctl: control.Control,
                                                 native: bool) -> None:
    assert run_decode(cut(raw, 3, 1500), ctl, native).torn_pages == 1


def patch_commit(raw: bytes, page: int, value: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into("<Q", b, page * PAGE + 8, value)
    return bytes(b)


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
def test_overwritten_page_is_counted_and_skipped(raw: bytes, ctl: control.Control,
                                                 native: bool) -> None:
    """A page whose header was overwritten (a ringbuf transport wrapping) is torn; the
    others still decode."""
    bad = run_decode(patch_commit(raw, 2, 0x3FFF_FFFF), ctl, native)
    assert bad.torn_pages == 1
    without = run_decode(raw[:2 * PAGE] + raw[3 * PAGE:], ctl, native)
    same(bad.events, without.events)
    assert n_gaps(bad) == 1 and n_gaps(without) == 0  # where the page's events are missing


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
def test_lost_events_recorded_in_a_page_are_counted(raw: bytes, ctl: control.Control,
                                                    native: bool) -> None:
    """Bit 31 of ``commit``: events were lost before this page; bit 30: their count follows
    the data."""
    page = next(p for p in range(len(raw) // PAGE)
                if (struct.unpack_from("<Q", raw, p * PAGE + 8)[0] & 0xFFFFF) + 16 + 8 <= PAGE)
    commit = struct.unpack_from("<Q", raw, page * PAGE + 8)[0]
    length = commit & 0x3FFF_FFFF
    b = bytearray(patch_commit(raw, page, commit | (1 << 31) | (1 << 30)))
    struct.pack_into("<Q", b, page * PAGE + 16 + length, 12345)
    d = run_decode(bytes(b), ctl, native)
    assert d.missed_events == 12345
    assert d.torn_pages == 0
    same(d.events, run_decode(raw, ctl, native).events)
    # the gap sits just before the page's first event: the lost ones came before it
    assert n_gaps(d) == 1


def test_empty_and_garbage_input(ctl: control.Control) -> None:
    for native in (True, False):
        assert run_decode(b"", ctl, native).total == 0
        junk = run_decode(b"\xff" * (2 * PAGE), ctl, native)
        assert junk.total == 0 and junk.torn_pages == 2


# --- damaged input: every offset and length from the guest is checked (issue 12) -----------


def test_a_header_page_pointing_outside_a_page_is_refused(ctl: control.Control) -> None:
    """``commit`` at 32 MiB made the C walker read outside its buffer (SIGSEGV); the
    layout is now checked before any page is read, with one clear error."""
    from tracedep.errors import TraceFormatError

    hp = ctl.header_page() or ""
    for bad in (hp.replace("offset:8;", "offset:33554432;", 1),
                hp.replace("offset:8;", "offset:1099511627776;", 1),
                hp.replace("size:4080;", "size:0;"), hp.replace("size:4080;", "size:4081;"),
                hp.replace("offset:16;", "offset:100000;")):
        assert bad != hp
        for native in (True, False):
            with pytest.raises(TraceFormatError, match="header_page"):
                decode({0: b"\0" * PAGE}, bad, ctl.formats(), 5, native=native)


def test_the_c_walker_refuses_an_impossible_layout_itself(raw: bytes) -> None:
    """Defence in depth: the C side checks the layout it is given too."""
    from tracedep.errors import TraceFormatError
    from tracedep.tracer.ftrace_formats import PageHeader

    lib = ring_pages._native()
    assert lib is not None
    out = ring_pages.RawRecords()
    with pytest.raises(TraceFormatError):
        ring_pages.walk_native(lib, raw, 0, 0, PageHeader(8, 1 << 30, 8, 16, 4080), out)


def _records_of(page: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each data record of a real page, in order."""
    out = ring_pages.RawRecords()
    ring_pages.walk_pages(page, 0, 0, parse_header_page(
        control.load(TINY / "control.log").header_page() or ""), out)
    return list(zip(out.off, out.length, strict=True))


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
@pytest.mark.parametrize("how", ["huge", "short", "padding"])
def test_a_record_length_past_its_page_tears_only_that_page(raw: bytes, ctl: control.Control,
                                                            native: bool, how: str) -> None:
    page = 2
    recs = _records_of(raw[page * PAGE:(page + 1) * PAGE])
    assert len(recs) > 3
    b = bytearray(raw)
    hdr = page * PAGE + 16  # the page's first event header, made a long one (type_len 0)
    if how == "padding":
        struct.pack_into("<II", b, hdr, (7 << 5) | 29, 0xFFFF_FFF0)
    else:
        struct.pack_into("<II", b, hdr, 7 << 5, 0xFFFF_FFF0 if how == "huge" else 2)
    d = run_decode(bytes(b), ctl, native)
    good = run_decode(raw, ctl, native)
    assert d.torn_pages == 1
    # what survives is the undamaged decode less that page
    without = run_decode(raw[:page * PAGE] + raw[(page + 1) * PAGE:], ctl, native)
    same(d.events, without.events)
    assert len(good.events) > len(real(d.events)) and n_gaps(d) == 1


def _set_page_ts(raw: bytes, page: int, ts: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into("<Q", b, page * PAGE, ts)
    return bytes(b)


@pytest.mark.parametrize("native", [True, False], ids=["C", "Python"])
def test_one_page_from_the_far_future_does_not_hide_the_rest(raw: bytes, ctl: control.Control,
                                                              native: bool) -> None:
    """A page stamped 2^64-1 used to make every later page look old: all dropped."""
    n_pages = len(raw) // PAGE
    assert n_pages >= 5
    for ts in ((1 << 64) - 1, (1 << 62)):
        d = run_decode(_set_page_ts(raw, 2, ts), ctl, native)
        without = run_decode(raw[:2 * PAGE] + raw[3 * PAGE:], ctl, native)
        assert d.torn_pages + d.backwards_pages == 1
        same(d.events, without.events)
        assert n_gaps(d) == 1


def test_walkers_agree_on_damaged_pages(raw: bytes, ctl: control.Control) -> None:
    """Random byte flips in a real trace: the C and Python walkers see the same records
    and the same damage, and nothing but the project's own errors is raised."""
    import random

    from tracedep.errors import TracedepError

    rng = random.Random(12)
    for _ in range(60):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 40)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        try:
            fast, slow = run_decode(bytes(b), ctl, True), run_decode(bytes(b), ctl, False)
        except TracedepError:
            continue
        assert (fast.torn_pages, fast.backwards_pages, fast.missed_events) == (
            slow.torn_pages, slow.backwards_pages, slow.missed_events)
        pd.testing.assert_frame_equal(fast.events, slow.events)


def _decode_with_formats(raw: bytes, ctl: control.Control, formats: dict[str, str]) -> Decoded:
    info = json.loads((TINY / "manifest.json").read_text())
    return decode({0: raw}, ctl.header_page() or "", formats, int(info["call_insn_size"]))


def test_records_that_contradict_their_format_are_rejected_and_counted(
        raw: bytes, ctl: control.Control) -> None:
    """The formats come from the guest too: a field past the record's end, a size no C
    type has, or a field the decoder needs missing drop those records, with why."""
    good = _decode_with_formats(raw, ctl, ctl.formats())
    n_lock = good.counts["tracedep/lk__raw_spin_lock"]
    n_sleep = good.counts["tracedep/sl_msleep"]
    assert n_lock and n_sleep and not good.rejected
    fmts = dict(ctl.formats())
    fmts["tracedep/lk__raw_spin_lock"] = fmts["tracedep/lk__raw_spin_lock"].replace(
        "offset:24;\tsize:8;", "offset:4000;\tsize:8;")
    fmts["tracedep/sl_msleep"] = "\n".join(
        ln for ln in fmts["tracedep/sl_msleep"].splitlines()
        if "__probe_ip" not in ln and " ret;" not in ln)
    fmts["tracedep/ul__raw_spin_unlock"] = fmts["tracedep/ul__raw_spin_unlock"].replace(
        "offset:16;\tsize:8;", "offset:16;\tsize:3;")
    d = _decode_with_formats(raw, ctl, fmts)
    assert d.rejected == {
        "tracedep/lk__raw_spin_lock: records shorter than the format": n_lock,
        "tracedep/sl_msleep: KeyError: '__probe_ip'": n_sleep,
        "tracedep/ul__raw_spin_unlock: ValueError: a 3-byte integer field":
            good.counts["tracedep/ul__raw_spin_unlock"],
    }, d.rejected
    assert len(real(d.events)) == len(good.events) - sum(d.rejected.values())
    assert n_gaps(d) == sum(d.rejected.values())  # each one a gap: what it said is unknown
