"""The ftrace text parser: recorded guest traces, compared with the binary decode of the
same runs, the planted bug found from text, lost and truncated input, bad input.

Fixtures and how they were recorded: tests/data/text/README.md.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from tracedep.analysis.findings import SiteContext
from tracedep.analysis.ftrace_text import load_text
from tracedep.analysis.pipeline import analyze
from tracedep.analysis.text_symbols import parse_sym
from tracedep.analysis.text_values import (
    GFP_FLAG_NAMES,
    SCHED_STATE_LETTERS,
    SCHED_STATE_PREEMPTED,
    gfp_names_from_format,
    parse_gfp,
    parse_sched_state,
    sched_states_from_format,
)
from tracedep.analysis.trace import Trace, load
from tracedep.analysis.witness import clean_text_stack
from tracedep.cli import main
from tracedep.common.run_manifest import Kaslr
from tracedep.errors import InputError, TraceFormatError
from tracedep.tracer import schema

DATA = Path(__file__).parents[1] / "data" / "text"
TRACE = DATA / "trace.txt"  # `trace`, default options, td_alloc_spin_bug
PIPE = DATA / "trace_pipe_sym_addr.txt"  # `trace_pipe`, sym-addr + sym-offset, LOST lines
MUTEX = DATA / "trace_sym_offset_mutex.txt"  # `trace`, sym-offset, td_mutex_spin_bug
KALLSYMS = DATA / "kallsyms.txt"
KALLSYMS_MUTEX = DATA / "kallsyms_mutex.txt"
GFP_KERNEL = 0xCC0
GFP_ZERO = 0x100


def _module_rows(t: Trace, module: str) -> list[int]:
    """Rows whose call site is in ``module``, and its module_load/module_free."""
    ev = t.events
    out = []
    for r in range(len(ev)):
        ip, ts = int(ev["ip"].iat[r]), int(ev["ts_ns"].iat[r])
        if ip and t.symbols.module_of(ip, ts) == module:
            out.append(r)
        elif str(ev["event"].iat[r]).startswith("module/") and str(ev["func"].iat[r]) == module:
            out.append(r)
    return out


def _row(t: Trace, r: int) -> dict[str, object]:
    e = t.events.iloc[r]
    return {
        "pid": int(e["pid"]), "kind": str(e["kind"]), "event": str(e["event"]),
        "lock_addr": f"{int(e['lock_addr']):#x}", "lock_type": str(e["lock_type"]),
        "lock_flags": str(e["lock_flags"]), "ip": f"{int(e['ip']):#x}", "gfp": int(e["gfp"]),
        "ptr": f"{int(e['ptr']):#x}", "bytes": int(e["bytes"]), "func": str(e["func"]),
        "value": int(e["value"]), "irqs_off": bool(e["irqs_off"]),
        "preempt_depth": int(e["preempt_depth"]), "in_hardirq": bool(e["in_hardirq"]),
        "in_softirq": bool(e["in_softirq"]),
    }


def _reference(name: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = json.loads((DATA / name).read_text())["events"]
    return events


def _same_events(t: Trace, module: str, ref: list[dict[str, object]]) -> list[int]:
    """The text's events of ``module`` are the binary's, field for field (those whose
    call site the text's symbols place in the module: all of them with kallsyms)."""
    rows = _module_rows(t, module)
    ref = [e for e in ref if str(e["event"]).startswith("module/") or t.symbols.module_of(
        int(str(e["ip"]), 16)) == module]
    got = [_row(t, r) for r in rows]
    want = [{k: v for k, v in e.items() if k in got[0]} for e in ref] if got else []
    assert got == want
    # each ftrace instance stamps its own copy of an event: microseconds apart
    for r, e in zip(rows, ref, strict=True):
        assert abs(int(t.events["ts_ns"].iat[r]) - int(str(e["ts_ns"]))) < 1_000_000
    return rows


# -- the recorded traces ---------------------------------------------------------------


def test_default_trace_parses_to_the_schema() -> None:
    t = load_text(TRACE, KALLSYMS)
    schema.validate(t.events)
    ev = t.events
    assert list(ev.columns) == list(schema.COLUMNS)
    assert ev["ts_ns"].is_monotonic_increasing
    counts = ev["kind"].value_counts().to_dict()
    assert counts["lock_acquire"] == counts["lock_release"] == 22
    assert counts["alloc"] == 7 and counts["free"] == 2 and counts["module_load"] == 1
    assert counts["irq_entry"] == counts["irq_exit"] == 7
    assert counts["softirq_entry"] == counts["softirq_exit"] == 204
    assert counts["marker"] == 2 and counts["sleep_call"] == 2
    assert t.info.event_counts["ftrace/kernel_stack"] == 4
    src = t.info.source
    assert src["reader"] == "trace" and src["tracer"] == "nop" and src["ncpus"] == 2
    assert src["flags_width"] == [5] and not src["sym_addr"] and not src["sym_offset"]
    assert t.info.arch == "x86_64" and t.info.call_insn_size == 5
    assert t.info.lost.total == 0
    assert t.info.kaslr == Kaslr("_text", 0xFFFFFFFFABE00000)
    marks = ev.loc[ev["kind"] == "marker", "func"].astype(str).tolist()
    assert marks == ["record_text: insmod", "record_text: insmod done"]
    assert ev.loc[ev["kind"] == "module_load", "func"].astype(str).tolist() == [
        "td_alloc_spin_bug"]
    irq = ev[ev["kind"] == "irq_entry"].iloc[0]
    assert (int(irq["value"]), str(irq["func"])) == (25, "virtio0-virtqueues")
    assert bool(irq["in_hardirq"]) and bool(irq["irqs_off"])
    soft = ev[ev["kind"] == "softirq_entry"].iloc[0]
    assert str(soft["func"]) in ("TIMER", "SCHED", "RCU") and bool(soft["in_softirq"])
    # the idle task and names from the text
    assert set(ev.loc[ev["pid"] == 0, "comm"].astype(str)) == {"<idle>"}


def test_planted_gfp_kernel_kmalloc_under_spinlock() -> None:
    for kallsyms in (KALLSYMS, None):
        t = load_text(TRACE, kallsyms)
        ev = t.events
        k = ev[(ev["event"] == "kmem/kmalloc") & (ev["comm"] == "kworker/0:1")]
        assert len(k) == 5
        first, planted = k.iloc[0], k.iloc[1:]
        # kzalloc of the ring, before the lock; then the four GFP_KERNEL entries under it
        assert int(first["gfp"]) == GFP_KERNEL | GFP_ZERO and int(first["preempt_depth"]) == 0
        assert set(planted["gfp"].astype(int)) == {GFP_KERNEL}
        assert set(planted["preempt_depth"].astype(int)) == {1}
        assert not planted["irqs_off"].any() and set(planted["bytes"].astype(int)) == {32}
        assert (planted["stack_id"] >= 0).all()
        for r in planted.index:
            sid = int(ev["stack_id"].iat[r])
            names = [f.function for f in t.text_stacks[sid]]
            assert names == ["trace_event_raw_event_kmalloc", "__traceiter_kmalloc",
                             "kmalloc_trace", "td_ring_probe_work_fn", "process_one_work",
                             "worker_thread", "kthread", "ret_from_fork"]
            assert t.stacks[sid] == ()  # names only: no exact addresses
            cleaned = clean_text_stack(t.text_stacks[sid], t.call_insn_size)
            assert [f.function for f in cleaned[:2]] == ["kmalloc_trace",
                                                         "td_ring_probe_work_fn"]
            assert cleaned[1].module == "td_alloc_spin_bug"
            if kallsyms is not None:
                ip = int(ev["ip"].iat[r])
                s = t.symbols.lookup(ip)
                assert s is not None and (s.name, s.offset, s.module) == (
                    "td_ring_probe_work_fn", 0x73 - 5, "td_alloc_spin_bug")
                assert r not in t.text_sites
            else:
                assert int(ev["ip"].iat[r]) == 0
                site = t.text_sites[r]
                assert (site.function, site.offset, site.size, site.module) == (
                    "td_ring_probe_work_fn", 0x73 - 5, 0x10F, "td_alloc_spin_bug")
        if kallsyms is None:
            assert any("known only by name" in w for w in t.warnings)


@pytest.mark.parametrize("kallsyms", [KALLSYMS, None], ids=["kallsyms", "no-kallsyms"])
def test_text_analysis_finds_the_planted_bug(kallsyms: Path | None) -> None:
    for path in (TRACE, PIPE):
        t = load_text(path, kallsyms)
        a = analyze(t)
        found = [f for f in a.findings if f.kind == "sleep-in-atomic"]
        assert len(found) == 1, [f.message for f in a.findings]
        f = found[0]
        assert f.driver == "td_alloc_spin_bug"
        assert f.details["api"] == "kmalloc(GFP_KERNEL)"
        assert f.details["function"] == "td_ring_probe_work_fn"
        assert "spinlock" in f.details["context"] and f.count == 4
        assert f.sites[0].context == SiteContext(preempt_depth=1)
        sleep_frames = [fr.function for fr in f.sites[0].frames]
        assert sleep_frames[:2] == ["kmalloc_trace", "td_ring_probe_work_fn"]
        if kallsyms is not None or path == PIPE:
            # the ring's lock is a heap lock: allocated by the kzalloc of the ring
            assert f.locks == ["td_ring_probe_work_fn():obj+0x0"]


def test_trace_pipe_lost_events_are_counted() -> None:
    text = PIPE.read_text()
    lost = [int(n) for n in re.findall(r"^CPU:\d+ \[LOST (\d+) EVENTS\]$", text, re.M)]
    assert lost == [1414, 1308]
    t = load_text(PIPE)
    info = t.info.lost
    assert info.reported == sum(lost)
    # and the two changes of task no context switch explains (test_text_gaps_…)
    assert info.total == sum(lost) + info.decoder_unseen_switches == sum(lost) + 2
    assert [(x["cpu"], x["count"]) for x in info.lost_lines] == [(1, 1414), (0, 1308)]
    assert all(isinstance(x["line"], int) and x["line"] > 0 for x in info.lost_lines)
    assert not info.truncated and t.info.source is not None
    assert t.info.source["reader"] == "trace_pipe"
    a = analyze(t)
    assert a.health.lost == sum(lost) + 2
    assert any(f"{sum(lost) + 2} events were lost" in w for w in a.health.warnings)


def test_text_gaps_where_events_are_missing() -> None:
    """A ``[LOST]`` line leaves a gap row before its CPU's next row, and so does a change
    of task no sched_switch explains: here the capture's pause, 3.8 s without a record
    (tracer.unseen_switches); the analysis forgets what was held at each."""
    t = load_text(PIPE)
    ev = t.events
    gaps = ev.index[ev["kind"] == "gap"].tolist()
    lines = PIPE.read_text().splitlines()
    assert lines[0] == "CPU:1 [LOST 1414 EVENTS]" and gaps[0] == 0 and ev["cpu"].iat[1] == 1
    # CPU 0's loss: the gap is the row before CPU 0's first row after the line
    cpu0 = ev.index[(ev["cpu"] == 0) & (ev["kind"] != "gap")]
    after = int(cpu0[cpu0 > gaps[1]][0])
    assert ev["cpu"].iat[gaps[1]] == 0 and not ((ev["cpu"] == 0).iloc[gaps[1] + 1:after]).any()
    u = t.info.lost.decoder_unseen_switch
    assert len(gaps) == 4 and t.info.lost.decoder_unseen_switches == 2
    assert u == {"cpu": 0, "ts_ns": 95_840_764_000, "from_pid": 328, "to_pid": 15}
    nxt = ev.iloc[gaps[3] + 1]
    assert (nxt["cpu"], nxt["ts_ns"], nxt["pid"]) == (0, u["ts_ns"], 15)
    a = analyze(t)
    assert any(w.startswith("2 time(s) a CPU went from one task to another")
               for w in a.health.warnings)


def test_switches_a_pid_filter_leaves_out_are_no_gap() -> None:
    """trace.txt was captured with the pumps in set_event_notrace_pid: a switch between
    two pumps is not recorded, and the next pump's switch out of the CPU comes with no
    switch to it.  That is no loss of events, and makes no gap."""
    t = load_text(TRACE)
    sw = t.events[t.events["kind"] == "sched_switch"]
    # a switch out of a task that the CPU's switch before it did not go to
    unexplained = sum(int((g["pid"].to_numpy()[1:] != g["target_pid"].to_numpy()[:-1]).sum())
                      for _, g in sw.groupby("cpu"))
    assert unexplained == 2
    assert t.info.lost.decoder_unseen_switches == 0 and t.info.lost.total == 0
    assert not (t.events["kind"] == "gap").any()


def test_sym_addr_trace_gives_exact_stacks_and_its_own_symbols() -> None:
    t = load_text(PIPE)  # no kallsyms: the text places the symbols it printed
    assert t.info.source["sym_addr"] and t.info.source["sym_offset"]
    ev = t.events
    k = ev[(ev["event"] == "kmem/kmalloc") & (ev["stack_id"] >= 0)]
    assert len(k) == 4
    stack = t.stacks[int(k["stack_id"].iloc[0])]
    assert len(stack) == 8 and stack[3] == 0xFFFFFFFFC052F173
    names = [t.symbols.function(a) for a in stack]
    assert names[2:5] == ["kmalloc_trace", "td_ring_probe_work_fn", "process_one_work"]
    assert t.symbols.module_of(stack[3]) == "td_alloc_spin_bug"
    # what the text placed agrees with the machine's kallsyms
    kall = {ln.split()[2]: int(ln.split()[0], 16) for ln in KALLSYMS.read_text().splitlines()}
    for name in ("_raw_spin_lock", "kmalloc_trace", "process_one_work", "tracing_mark_write",
                 "td_ring_probe_work_fn"):
        tab = t.symbols.kernel if name != "td_ring_probe_work_fn" else next(
            m.table for m in t.symbols.modules if m.name == "td_alloc_spin_bug")
        assert tab is not None and tab.addresses_of(name) == [kall[name]], name
    # after rmmod the module's call sites print raw: still exact addresses
    frees = ev[(ev["kind"] == "free") & (ev["comm"] == "busybox")]
    assert len(frees) == 4 and set(frees["ip"].tolist()) == {0xFFFFFFFFC052F0C5 - 5}
    assert ev.loc[ev["event"] == "module/module_free", "func"].astype(str).tolist() == [
        "td_alloc_spin_bug"]


def test_text_matches_the_binary_decode_of_the_same_run() -> None:
    ref = _reference("binary_reference.json")
    # trace_pipe, sym-addr: the load and the unload, every module event
    t = load_text(PIPE, KALLSYMS)
    rows = _same_events(t, "td_alloc_spin_bug", ref)
    assert len(rows) == len(ref) == 23
    kinds = [str(t.events["kind"].iat[r]) for r in rows]
    assert kinds.count("alloc") == 5 and kinds.count("free") == 4
    for r, e in zip(rows, ref, strict=True):
        sid = int(t.events["stack_id"].iat[r])
        want = e["stack"]
        assert (None if sid < 0 else [f"{a:#x}" for a in t.stacks[sid]]) == want
    # the same trace without kallsyms: the text's own symbols place the module's core
    # (not its init code: no symbol there was printed with its address)
    assert len(_same_events(load_text(PIPE), "td_alloc_spin_bug", ref)) == 21
    # `trace`, default options: the load only; its stacks by name
    t = load_text(TRACE, KALLSYMS)
    end = int(t.events["ts_ns"].max())
    ref_load = [e for e in ref if int(str(e["ts_ns"])) <= end]
    rows = _same_events(t, "td_alloc_spin_bug", ref_load)
    for r, e in zip(rows, ref_load, strict=True):
        sid = int(t.events["stack_id"].iat[r])
        if e["stack"] is None:
            assert sid < 0
            continue
        stack = e["stack"]
        assert isinstance(stack, list)
        want = [t.symbols.function(int(a, 16)) for a in stack]
        assert [f.function for f in t.text_stacks[sid]] == want


def test_kretprobe_and_sym_offset_stacks_match_the_binary() -> None:
    ref = _reference("binary_reference_mutex.json")
    t = load_text(MUTEX, KALLSYMS_MUTEX)
    assert t.info.source["sym_offset"] and not t.info.source["sym_addr"]
    rows = _same_events(t, "td_mutex_spin_bug", ref)
    assert len(rows) == len(ref) == 24
    ev = t.events
    lr = [r for r in rows if str(ev["kind"].iat[r]) == "lock_return"]
    assert len(lr) == 4
    assert {(str(ev["lock_type"].iat[r]), int(ev["value"].iat[r])) for r in lr} == {
        ("mutex", 0)}
    # name+0xoff/0xsize frames, resolved through kallsyms: the binary's addresses
    for r, e in zip(rows, ref, strict=True):
        sid = int(ev["stack_id"].iat[r])
        assert (None if sid < 0 else [f"{a:#x}" for a in t.stacks[sid]]) == e["stack"]
    # without kallsyms, the kretprobe's return site is placed by its entry probe's ret=
    # and the caller frame of each lk_mutex_lock stack by the probe's ret=
    bare = load_text(MUTEX)
    rows = _same_events(bare, "td_mutex_spin_bug", ref)
    assert len([r for r in rows if str(bare.events["kind"].iat[r]) == "lock_return"]) == 4
    a = analyze(load_text(MUTEX, KALLSYMS_MUTEX))
    f = [x for x in a.findings if x.kind == "sleep-in-atomic"]
    assert len(f) == 1 and f[0].driver == "td_mutex_spin_bug"
    assert f[0].locks == ["td_ctrl_stats_lock"] and f[0].details["api"] == "mutex_lock()"
    assert [fr.function for fr in f[0].sites[0].frames][:2] == ["mutex_lock",
                                                                  "td_ctrl_probe_work_fn"]


def test_load_dispatches_plain_files_to_the_text_parser(tmp_path: Path) -> None:
    t = load(TRACE, KALLSYMS)
    assert t.source == TRACE and len(t.events) == 664
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress(TRACE.read_bytes()))
    assert len(load(gz).events) == 664


def test_cli_analyze_text_trace(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(["analyze", str(TRACE), "--kallsyms", str(KALLSYMS), "--out", str(out),
               "--no-dwarf"])
    assert rc == 1
    findings = json.loads((out / "findings.json").read_text())
    assert [(f["kind"], f["driver"]) for f in findings] == [
        ("sleep-in-atomic", "td_alloc_spin_bug")]


def test_truncated_last_line_is_ignored_and_counted(tmp_path: Path) -> None:
    data = PIPE.read_bytes()
    full = load_text(PIPE)
    cut = data.rstrip(b"\n")
    cut = cut[: cut.rfind(b"\n") + 40]  # the capture stopped inside the last line
    p = tmp_path / "cut.txt"
    p.write_bytes(cut)
    t = load_text(p)
    assert len(t.events) == len(full.events) - 1
    lost = t.info.lost
    assert lost.truncated_lines == 1 and lost.truncated
    assert lost.total == full.info.lost.total + 1
    assert any("cut short" in w for w in t.warnings)
    a = analyze(t)
    assert a.health.truncated


# -- bad input ------------------------------------------------------------------------


def _error(path: Path) -> str:
    with pytest.raises(TraceFormatError) as ei:
        load_text(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_input_names_file_and_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    assert ":1: binary data" in _error(junk)
    fmt = DATA / "kmem_kmalloc.format"
    assert f"{fmt}:1: not an ftrace text trace" in _error(fmt)
    lines = TRACE.read_text().splitlines(keepends=True)
    lines.insert(49, "this is not ftrace\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines))
    assert f"{bad}:50: not an ftrace event line" in _error(bad)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "no ftrace events" in _error(empty)
    orphan = tmp_path / "orphan.txt"
    orphan.write_text(" => kthread\n")
    assert ":1: stack entry without" in _error(orphan)
    gz = tmp_path / "broken.gz"
    gz.write_bytes(gzip.compress(TRACE.read_bytes())[:100])
    assert "gzip" in _error(gz)
    sw = tmp_path / "switch.txt"
    sw.write_text("  bash-1 [000] ..... 1.000001: sched_switch: prev_comm=bash\n")
    assert ":1: cannot read the fields of sched/sched_switch" in _error(sw)


def test_bad_kallsyms_is_an_input_error(tmp_path: Path) -> None:
    zeros = tmp_path / "kallsyms"
    zeros.write_text("0000000000000000 T _text\n0000000000000000 T _stext\n")
    with pytest.raises(InputError, match="every address is 0"):
        load_text(TRACE, zeros)
    with pytest.raises(InputError, match="no symbols"):
        load_text(TRACE, DATA / "kmem_kmalloc.format")


# -- the format's variants, line by line ---------------------------------------------------

SYNTHETIC = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 9/16   #P:4
#
           <...>-4242  [002] d..1   100.000100: lk__raw_spin_lock: (_raw_spin_lock+0x0/0x30) \
lock=0xffff888003a4b2c0 ret=0xffffffff81234567
            bash-4242  [002] D.H3   100.000200: irq_handler_entry: irq=4 name=ttyS0
            bash-4242  [002] b.z.   100.000300: softirq_entry: vec=3 [action=NET_RX]
     Web Content-77    (     70) [001] ..Z.   100.000400: tracing_mark_write: first line
second line
            bash-4242  [002] X..f   100.000500: lr_mutex_lock_killable: \
(td_x+0x5d/0xc5 [td_m] <ffffffffc02f505d> <- mutex_lock_killable <ffffffff81a13850>) rv=-4
CPU:3 [LOST EVENTS]
          <idle>-0     [000] d..2   100.000600: sched_switch: prev_comm=swapper/0 prev_pid=0 \
prev_prio=120 prev_state=R+ ==> next_comm=bash next_pid=4242 next_prio=120
            bash-4242  [000] ....   100.000700: kmalloc: call_site=0xffffffffc0000105 \
ptr=0xffff888003a4b2c0 bytes_req=24 bytes_alloc=32 gfp_flags=GFP_ATOMIC|__GFP_NOWARN|__GFP_BOGUS
            bash-4242  [000] ....   100.000800: my_driver_fn: trace_printk text
            bash-4242  [000] ....   100.000900: do_sys_open <-__x64_sys_openat
            bash-4242  [000] ....   100.001000: timer_expire_entry: timer=00000000d2e0c4a8 \
function=process_timeout now=4294892544 baseclk=4294892544
"""


def test_older_four_column_flags_and_other_variants(tmp_path: Path) -> None:
    p = tmp_path / "synthetic.txt"
    p.write_text(SYNTHETIC)
    t = load_text(p)
    ev = t.events
    schema.validate(ev)
    assert t.info.source["flags_width"] == [4]
    assert len(ev) == 10
    lk = ev.iloc[0]
    # "<...>": the task's name from elsewhere in the trace (sched_switch, later lines)
    assert str(lk["comm"]) == "bash" and int(lk["pid"]) == 4242 and int(lk["cpu"]) == 2
    assert bool(lk["irqs_off"]) and int(lk["preempt_depth"]) == 1
    assert (str(lk["kind"]), str(lk["lock_type"]), int(lk["lock_addr"]), int(lk["ip"])) == (
        "lock_acquire", "spinlock", 0xFFFF888003A4B2C0, 0xFFFFFFFF81234567 - 5)
    assert int(lk["ts_ns"]) == 100_000_100_000
    irq = ev.iloc[1]
    assert bool(irq["irqs_off"]) and bool(irq["bh_off"]) and bool(irq["in_hardirq"])
    assert bool(irq["in_softirq"]) and int(irq["preempt_depth"]) == 3
    soft = ev.iloc[2]
    assert bool(soft["bh_off"]) and bool(soft["in_nmi"]) and not bool(soft["irqs_off"])
    assert (str(soft["func"]), int(soft["value"])) == ("NET_RX", 3)
    mark = ev.iloc[3]
    assert str(mark["comm"]) == "Web Content" and int(mark["pid"]) == 77
    assert bool(mark["in_nmi"]) and bool(mark["in_hardirq"])
    assert (str(mark["kind"]), str(mark["func"])) == ("marker", "first line\nsecond line")
    lr = ev.iloc[4]
    assert (str(lr["kind"]), str(lr["lock_flags"]), int(lr["value"])) == (
        "lock_return", "killable", -4)
    assert int(lr["ip"]) == 0xFFFFFFFFC02F505D - 5 and int(lr["preempt_depth"]) == 15
    assert not bool(lr["irqs_off"])  # 'X': irqs-off not supported
    sw = ev.iloc[5]
    assert (int(sw["value"]), int(sw["target_pid"])) == (SCHED_STATE_PREEMPTED, 4242)
    km = ev.iloc[6]
    assert int(km["gfp"]) == GFP_FLAG_NAMES["GFP_ATOMIC"] | GFP_FLAG_NAMES["__GFP_NOWARN"]
    assert int(km["ip"]) == 0xFFFFFFFFC0000105 - 5 and int(km["ptr"]) == 0xFFFF888003A4B2C0
    assert any("__GFP_BOGUS" in w for w in t.warnings)
    assert (str(ev.iloc[7]["kind"]), str(ev.iloc[7]["event"])) == ("other", "my_driver_fn")
    assert str(ev.iloc[7]["func"]) == ""  # as the binary decoder leaves other events
    assert str(ev.iloc[8]["event"]) == "ftrace/function"
    assert str(ev.iloc[9]["event"]) == "timer/timer_expire_entry" and int(ev.iloc[9]["ip"]) == 0
    lost = t.info.lost
    # 7 overwritten (entries-written − entries-in-buffer) and one LOST line without count
    assert (lost.overwritten, lost.unknown_count_lines, lost.total) == (7, 1, 8)
    assert t.info.source["marker_continuations"] == 1


def test_arm64_is_recognised_from_its_addresses(tmp_path: Path) -> None:
    p = tmp_path / "arm.txt"
    p.write_text("  kworker/1:1-30  [001] d..1.  5.000001: lk__raw_spin_lock: "
                 "(_raw_spin_lock+0x0/0x40) lock=0xffff00000a0b0c00 ret=0xffff800008123456\n")
    t = load_text(p)
    assert (t.info.arch, t.info.call_insn_size) == ("arm64", 4)
    assert int(t.events["ip"].iat[0]) == 0xFFFF800008123456 - 4
    # arm64 kprobe handlers always run with IRQs masked: the flag means nothing there
    assert not bool(t.events["irqs_off"].iat[0]) and t.info.kprobe_irqs_unknown


def test_gfp_and_prev_state_tables_are_the_kernels() -> None:
    assert gfp_names_from_format((DATA / "kmem_kmalloc.format").read_text()) == GFP_FLAG_NAMES
    states = sched_states_from_format((DATA / "sched_sched_switch.format").read_text())
    assert states == SCHED_STATE_LETTERS
    assert SCHED_STATE_PREEMPTED == 2 * max(states.values())
    assert parse_gfp("GFP_KERNEL|__GFP_ZERO") == 0xDC0
    assert parse_gfp("GFP_KERNEL") == GFP_KERNEL
    assert parse_gfp("none") == 0
    assert parse_gfp("GFP_NOWAIT|0x4000000") == 0x4000800
    assert parse_sched_state("R") == 0 and parse_sched_state("R+") == 0x100
    assert parse_sched_state("S") == 1 and parse_sched_state("D|W") == 2
    assert parse_sched_state("I") == 0x80


def test_printed_symbols() -> None:
    s = parse_sym("td_ring_probe_work_fn+0x73/0x10f [td_alloc_spin_bug] <ffffffffc052f173>")
    assert (s.name, s.off, s.size, s.module, s.addr, s.start) == (
        "td_ring_probe_work_fn", 0x73, 0x10F, "td_alloc_spin_bug", 0xFFFFFFFFC052F173,
        0xFFFFFFFFC052F100)
    assert parse_sym("0xffffffffc0352173").addr == 0xFFFFFFFFC0352173
    assert parse_sym("0xffffffffc0352173 <ffffffffc0352173>").name is None
    assert parse_sym("free_buf.constprop.0+0xc5/0xe0 [virtio_console]").name == (
        "free_buf.constprop.0")
    assert parse_sym("kthread").off is None
    assert parse_sym("[unknown/kretprobe'd]").name == "[unknown/kretprobe'd]"


def test_lock_init_lines_match_the_binary_decode() -> None:
    """li_/lc_ lines (tracer.lock_init): the lock, key, call site, the name string (last
    on the line: it may hold spaces) and a directory re-key's mode, as the binary
    decode of the same run read them (record_text_lockinit.sh)."""
    ref = _reference("binary_reference_lock_init.json")
    t = load_text(DATA / "trace_lock_init.txt")
    ev = t.events
    init = ev[ev["kind"] == "lock_init"]
    assert len(init) >= 300
    want: dict[tuple[object, ...], list[int]] = {}
    for e in ref:
        k = (e["func"], e["lock_addr"], e["key_addr"], e["ip"], e["lock_name"], e["value"],
             e["pid"])
        want.setdefault(k, []).append(int(str(e["ts_ns"])))
    for r in init.itertuples():
        k = (str(r.func), f"{int(r.lock_addr):#x}", f"{int(r.key_addr):#x}",
             f"{int(r.ip):#x}", str(r.lock_name), int(r.value), int(r.pid))
        assert k in want, k
        assert min(abs(ts - int(r.ts_ns)) for ts in want[k]) < 1_000_000
    funcs = set(init["func"].astype(str))
    assert {"__mutex_init", "__init_rwsem", "inode_init_always_gfp",
            "unlock_new_inode"} <= funcs
    assert "&ctrl->cfg_mutex" in set(init["lock_name"].astype(str))
    dirs = init[init["func"].astype(str) == "unlock_new_inode"]
    assert (dirs["value"] & 0o170000 == 0o040000).any()


@pytest.mark.parametrize("line", [
    "  insmod-99999999999999999999 [000] ..... 10.000000: sl_msleep: (td+0x1/0x2) ret=0x1",
    "  insmod-12 [99999999999999999999] ..... 10.000000: sl_msleep: (td+0x1/0x2) ret=0x1",
    "  insmod-12 [000] ..... 10.000000: mm_page_alloc: page=0 pfn=0x1 order=99999999999999999 "
    "migratetype=0 gfp_flags=GFP_KERNEL",
    "  insmod-12 [000] ..... 10.000000: lk__raw_spin_lock: (td+0x1/0x2) "
    "lock=0x1ffffffffffffffffffffffffff ret=0x1",
    "  insmod-12 [000] ..... 99999999999999999999.000000: sl_msleep: (td+0x1/0x2) ret=0x1",
])
def test_numbers_beyond_their_width_are_bad_input_not_a_crash(tmp_path: Path, line: str) -> None:
    from tracedep.errors import TraceFormatError

    p = tmp_path / "trace.txt"
    p.write_text("# tracer: nop\n#\n" + line + "\n")
    try:
        t = load_text(p)
    except TraceFormatError as e:
        assert str(p) in str(e)
        return
    assert len(t.events) <= 1
