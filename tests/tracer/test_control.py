"""The guest's control channel (tracer.control) on a recorded control.log.

tests/data/traces/tiny/control.log is the control channel of the real run the
tiny fixture was cropped from (format blocks of events outside the crop and the
kprobe_profile files removed; see tests/data/traces/README.md).  Truncated
copies stand for a guest that died while writing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracedep.tracer import control
from tracedep.tracer.ftrace_formats import parse_format, parse_header_page

TINY = Path(__file__).parents[1] / "data" / "traces" / "tiny"


@pytest.fixture(scope="module")
def text() -> str:
    return (TINY / "control.log").read_text()


@pytest.fixture(scope="module")
def ctl(text: str) -> control.Control:
    return control.parse(text)


def test_every_block_is_closed_and_the_trace_is_done(ctl: control.Control) -> None:
    assert ctl.blocks and all(b.complete for b in ctl.blocks)
    assert ctl.done == ["trace"]


def test_hello_and_kaslr(ctl: control.Control) -> None:
    hello = ctl.keyvals("hello")
    assert hello["release"] == "6.1.0-56-cloud-amd64"
    assert hello["machine"] == "x86_64" and hello["ncpus"] == "1"
    assert "no_hash_pointers" in hello["cmdline"]
    addr, sym = ctl.kaslr_text() or (0, "")
    assert sym == "_text" and addr >= 0xFFFF_FFFF_8000_0000


def test_formats(ctl: control.Control) -> None:
    hp = parse_header_page(ctl.header_page() or "")
    assert hp.page_size == 4096
    fmts = ctl.formats()
    lk = parse_format("tracedep/lk__raw_spin_lock", fmts["tracedep/lk__raw_spin_lock"])
    assert lk is not None and {"lock", "ret", "__probe_ip"} <= set(lk.fields)
    assert (lk.fields["lock"].size, lk.fields["ret"].size) == (8, 8)
    km = parse_format("kmem/kmalloc", fmts["kmem/kmalloc"])
    assert km is not None and {"call_site", "ptr", "bytes_alloc", "gfp_flags"} <= set(km.fields)
    ml = parse_format("module/module_load", fmts["module/module_load"])
    assert ml is not None and ml.fields["name"].is_data_loc
    ids = [f.id for n, t in fmts.items() if (f := parse_format(n, t)) is not None]
    assert len(ids) == len(set(ids)) == len(fmts)
    assert ctl.file("header_event") and "type_len" in (ctl.file("header_event") or "")


def test_modules(ctl: control.Control) -> None:
    loads = ctl.module_loads()
    tiny = [m for m in loads if m.name == "td_tiny"]
    assert len(tiny) == 1
    m = tiny[0]
    # all of td_tiny's code is reached from __init only: GCC put it in .text.unlikely
    # and the module has no .text at all (docs/FACTS.md, "Probing")
    assert ".text" not in m.sections
    assert m.base == m.sections[".text.unlikely"] and m.size > 0
    assert {".init.text", ".bss", ".data"} <= set(m.sections)
    facts = json.loads((TINY / "module.json").read_text())
    assert m.base <= facts["td_tiny_fill"][0] < m.base + m.size
    assert ctl.modules()["td_tiny"] == m
    # the virtio modules the guest's init loaded before tracing, reported at the end
    assert {"virtio_console", "virtio_ring"} <= {x.name for x in loads}


def test_stats_events_and_probes(ctl: control.Control) -> None:
    st = ctl.cpu_stats()
    assert set(st) == {"cpu0"}
    assert st["cpu0"]["overrun"] == 0 and st["cpu0"]["read_events"] > 0
    ev = ctl.event_status()
    assert "kmem/kmalloc" in ev["on"] and "sched/sched_switch" in ev["on"]
    assert all(f.startswith(("p:", "r")) for f in ctl.probe_failures())
    assert ctl.keyvals("workload")["rc"] == "0"
    assert "insmod" in (ctl.file("/sys/kernel/tracing/saved_cmdlines") or "")


def test_unterminated_block_is_kept(text: str, ctl: control.Control) -> None:
    """A guest that dies mid-block: the open block keeps what arrived, marked incomplete."""
    at = text.index("@@TD stats cpu0")
    cut = text[:at + text[at:].index("read events")]
    part = control.parse(cut)
    last = part.blocks[-1]
    assert (last.tag, last.args, last.complete) == ("stats", "cpu0", False)
    assert last.lines and last.lines[0].startswith("entries")
    assert all(b.complete for b in part.blocks[:-1])
    assert part.done == []
    # what it held is still read; what never came is absent, not invented
    assert "entries" in part.cpu_stats()["cpu0"] and "read_events" not in part.cpu_stats()["cpu0"]
    assert [b.tag for b in part.blocks[:-1]] == [b.tag for b in ctl.blocks[:len(part.blocks) - 1]]


def test_cut_mid_line_and_mid_module(text: str) -> None:
    at = text.index("@@TD module td_tiny")
    body = text[at:]
    cut = text[:at + body.index("section .text") + len("section .te")]
    part = control.parse(cut)
    last = part.blocks[-1]
    assert last.tag == "module" and not last.complete
    assert last.lines[-1] == "section .te"
    (m,) = [x for x in part.module_loads() if x.name == "td_tiny"]
    assert ".text" not in m.sections  # a torn line is not taken for an address
    assert m.base  # /proc/modules came first


def test_a_new_block_while_one_is_open() -> None:
    text = ("@@TD hello\nrelease=x\n@@TD stats cpu0\nentries: 3\n@@TD end stats\n"
            "@@TD end hello\n@@TD done trace\n")
    c = control.parse(text)
    assert [(b.tag, b.complete) for b in c.blocks] == [("hello", False), ("stats", True)]
    assert c.keyvals("hello") == {"release": "x"}
    assert c.cpu_stats() == {"cpu0": {"entries": 3.0}}
    assert c.done == ["trace"]


def test_garbage_and_empty_input(tmp_path: Path) -> None:
    assert control.parse("").blocks == [] and control.parse("").done == []
    assert control.parse("noise\n@@TD end x\n").blocks == []
    p = tmp_path / "control.log"
    p.write_bytes(b"@@TD hello\nrelease=\xff\xfe\n@@TD end hello\n")
    c = control.load(p)
    assert c.blocks[0].complete and c.keyvals("hello")["release"].startswith("\ufffd")
    assert control.parse("@@TD kaslr\n@@TD end kaslr\n").kaslr_text() is None
    assert control.parse("@@TD formats\n").header_page() == ""


# The probes block of a real 6.12 x86_64 run (`tracedep run`, bundled drivers,
# 6.12.118+deb12-cloud-amd64): the kernel refused 7 may-sleep probes, each
# followed by tracefs' error_log lines the guest sent with it.
PROBES_612 = Path(__file__).parents[1] / "data" / "control" / "probes-6.12-x86_64.log"


def test_refused_probes_carry_the_kernels_reason() -> None:
    ctl = control.parse(PROBES_612.read_text())
    failed = ctl.probe_failures()
    reasons = ctl.probe_failure_reasons()
    assert len(failed) == 7 and set(reasons) == set(failed)
    assert reasons["p:tracedep/sl___wait_for_common __wait_for_common ret=+0(%sp):x64"] == (
        "Failed to register probe event")


def test_probe_reasons_are_bounded_and_printable() -> None:
    text = ("@@TD probes\nFAIL p:tracedep/sl_x x\nWHY [ 1.0] trace_kprobe: error: "
            + "A\x1b[31m" * 100 + "\nFAIL p:tracedep/sl_y y\n@@TD end probes\n")
    reasons = control.parse(text).probe_failure_reasons()
    assert set(reasons) == {"p:tracedep/sl_x x"}  # y: refused without a reason
    why = reasons["p:tracedep/sl_x x"]
    assert len(why) <= 160 and why.isprintable() and "\x1b" not in why


def test_refusals_are_named_with_their_reason_in_the_report() -> None:
    from tracedep.analysis.pipeline import _probe_failures

    ctl = control.parse(PROBES_612.read_text())
    # the 6.12 discovery boot's available_filter_functions lacks all seven
    text = _probe_failures(ctl.probe_failures(), ctl.probe_failure_reasons(),
                           {"_copy_from_user", "__wait_for_common"})
    assert "7 may-sleep probe(s)" in text
    for func in ("__wait_for_common", "_copy_from_user", "_copy_to_user", "strncpy_from_user",
                 "__closure_sync", "__closure_sync_timeout", "closure_return_sync"):
        assert f"{func} (Failed to register probe event" in text, func
    assert "_copy_from_user (Failed to register probe event: notrace" in text
    assert "_copy_to_user (Failed to register probe event)" in text


def test_numbers_the_guest_sent_that_are_no_numbers() -> None:
    """Found by tests/cli/test_fuzz.py: a /proc/modules size of 'nan' raised ValueError."""
    ctl = control.parse(
        "@@TD module m\nm nan 1 - Live 0xffffffffc04d3000\n"
        "section .text 0x1ffffffffffffffffffff\nsection .data 0xffffffffc0505000\n"
        "@@TD end module\n@@TD stats cpu0\nread events: 1.2.3\nentries: 7\n"
        "overrun: 99999999999999999999999999999999\n@@TD end stats\n"
        "@@TD insmod m 99999999999999999999\n@@TD end insmod\n"
        "@@TD kaslr\nzz T _text\n@@TD end kaslr\n")
    [m] = ctl.module_loads()
    assert (m.size, m.base, m.sections) == (0, 0xffffffffc04d3000, {".data": 0xffffffffc0505000})
    assert ctl.cpu_stats() == {"cpu0": {"entries": 7.0}}
    assert ctl.insmod_results() == {} and ctl.kaslr_text() is None
